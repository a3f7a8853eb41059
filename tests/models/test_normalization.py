"""Quadrature log Z against closed forms."""

import math

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere

from implicit_geom import ImplicitSphere, ImplicitTorus, union
from implicit_geom.models.normalization import (
    box_quadrature,
    circle_quadrature,
    has_quadrature,
    log_partition,
    manifold_quadrature,
    monte_carlo_log_partition,
    sphere_quadrature,
    torus_quadrature,
)
from implicit_geom.datasets import vmf_sphere


def vmf_energy(mu, kappa):
    mu = torch.as_tensor(mu, dtype=torch.float64)
    return lambda x: -kappa * (x @ mu)


@pytest.mark.parametrize("kappa", [0.5, 5.0, 40.0])
def test_vmf_normaliser_on_the_sphere(kappa):
    rule = sphere_quadrature(64, 128)
    mu = torch.tensor([0.3, -0.5, 0.8])
    exact = math.log(4 * math.pi * math.sinh(kappa) / kappa)
    assert float(log_partition(vmf_energy(mu / mu.norm(), kappa), rule)) == pytest.approx(
        exact, abs=1e-8)


def test_areas_of_sphere_torus_circle():
    assert sphere_quadrature(8, 16, radius=2.0).volume == pytest.approx(16 * math.pi, rel=1e-12)
    R, r = 3.0, 1.0
    assert torus_quadrature(R, r, 32, 16).volume == pytest.approx(4 * math.pi**2 * R * r,
                                                                   rel=1e-12)
    assert circle_quadrature(16, radius=1.5).volume == pytest.approx(3 * math.pi, rel=1e-12)


def test_torus_quadrature_points_lie_on_the_torus_and_integrate_a_density():
    torus = ImplicitTorus(3.0, 1.0)
    rule = manifold_quadrature(torus, 64)
    assert float(torus.submersion(rule.points).abs().max()) < 1e-12
    # E = -x_3 / r = -sin(theta): Z = int r (R + r cos t) exp(sin t) = 2 pi r R 2 pi I0(1)
    i0 = sum((0.5**k / math.factorial(k)) ** 2 for k in range(30))
    exact = math.log(4 * math.pi**2 * 3.0 * 1.0 * i0)
    assert float(log_partition(lambda x: -x[:, 2], rule)) == pytest.approx(exact, abs=1e-10)


def test_dispatch_covers_geomstats_spheres_and_unions():
    assert has_quadrature(Hypersphere(2))
    assert manifold_quadrature(Hypersphere(2), 32).volume == pytest.approx(4 * math.pi)
    assert manifold_quadrature(Hypersphere(1), 32).volume == pytest.approx(2 * math.pi)
    two = union(ImplicitSphere(1, center=[-2.0, 0.0]), ImplicitSphere(1, center=[2.0, 0.0]))
    assert manifold_quadrature(two, 32).volume == pytest.approx(4 * math.pi)


def test_unsupported_manifold_and_bad_resolution():
    from implicit_geom import ImplicitManifold

    plane = ImplicitManifold(lambda x: x[:, :1], 2, 1)
    assert not has_quadrature(plane)
    with pytest.raises(NotImplementedError):
        manifold_quadrature(plane)
    with pytest.raises(ValueError):
        sphere_quadrature(1, 8)


def test_monte_carlo_agrees_with_quadrature():
    uniform = vmf_sphere(200_000, [0, 0, 1.0], 0.0, seed=3)
    energy = vmf_energy([0.0, 0.0, 1.0], 2.0)
    mc = float(monte_carlo_log_partition(energy, uniform, 4 * math.pi))
    assert mc == pytest.approx(math.log(4 * math.pi * math.sinh(2) / 2), abs=0.02)
    with pytest.raises(ValueError):
        monte_carlo_log_partition(energy, uniform, 0.0)


def test_log_partition_is_differentiable():
    kappa = torch.tensor(3.0, requires_grad=True)
    rule = sphere_quadrature(32, 64)
    value = log_partition(lambda x: -kappa * x[:, 2], rule)
    value.backward()
    # d/dk log(4 pi sinh k / k) = coth k - 1/k
    assert float(kappa.grad) == pytest.approx(1 / math.tanh(3.0) - 1 / 3.0, abs=1e-10)


def test_box_quadrature_gaussian():
    rule = box_quadrature([-8.0, -8.0], [8.0, 8.0], 200)
    assert float(log_partition(lambda z: 0.5 * z.square().sum(-1), rule)) == pytest.approx(
        math.log(2 * math.pi), abs=1e-6)
    with pytest.raises(ValueError):
        box_quadrature([0.0], [-1.0])
