"""Quadrature log Z against closed forms."""

import math

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere

from implicit_geom import ImplicitSphere, ImplicitTorus, union
from implicit_geom.models.normalization import (
    ais_log_partition,
    box_quadrature,
    circle_quadrature,
    component_log_partitions,
    has_quadrature,
    log_partition,
    log_partition_error,
    manifold_quadrature,
    monte_carlo_log_partition,
    sphere_quadrature,
    surface_mesh_quadrature,
    torus_quadrature,
    traced_curve_quadrature,
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
    from implicit_geom import ImplicitManifold, NormalizationError

    line = ImplicitManifold(lambda x: x[:, :1], 2, 1)
    assert not has_quadrature(line)  # no box: an unbounded curve has no finite rule
    with pytest.raises(NormalizationError, match="no box"):
        manifold_quadrature(line)
    s3 = ImplicitManifold(lambda x: x.square().sum(-1, keepdim=True) - 1, 4, 1,
                          bounds=([-2] * 4, [2] * 4))
    assert not has_quadrature(s3)
    with pytest.raises(NotImplementedError, match="ais_log_partition"):
        manifold_quadrature(s3)
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


# ------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("kappa", [0.5, 4.0, 30.0])
def test_von_mises_normaliser_on_a_circle(kappa):
    # int exp(kappa cos t) r dt = 2 pi r I0(kappa) on a circle of radius r.
    from scipy.special import i0e

    rule = circle_quadrature(256, radius=1.7, center=(0.3, -0.2))
    energy = lambda x: -kappa * (x[:, 0] - 0.3) / 1.7
    exact = math.log(2 * math.pi * 1.7 * i0e(kappa)) + kappa
    assert float(log_partition(energy, rule)) == pytest.approx(exact, abs=1e-10)


def test_torus_area_element_is_exercised():
    # int exp(k cos theta) r (R + r cos theta) dphi dtheta = 4 pi^2 r (R I0(k) + r I1(k)).
    # A rule with the area element r R (no cos theta term) gives 4 pi^2 r R I0(k)
    # and fails by far more than the tolerance.
    from scipy.special import i0, i1

    R, r, k = 3.0, 1.0, 2.0
    rule = torus_quadrature(R, r, 64, 64)
    energy = lambda x: -k * (torch.hypot(x[:, 0], x[:, 1]) - R) / r  # = -k cos(theta)
    exact = math.log(4 * math.pi**2 * r * (R * i0(k) + r * i1(k)))
    assert float(log_partition(energy, rule)) == pytest.approx(exact, abs=1e-10)
    assert abs(math.log(4 * math.pi**2 * r * R * i0(k)) - exact) > 0.1


# ------------------------------------------------------ learned curves and surfaces
def _exact_network_sphere(dim, radius, center):
    """A network-defined manifold whose zero set is exactly a sphere (radial term only)."""
    from implicit_geom.manifolds.neural import MDFNetwork, NetworkImplicitManifold

    net = MDFNetwork(dim + 1, 1, hidden=(8,), radial=1.0)
    with torch.no_grad():
        net.net[-1].weight.zero_()
        net.net[-1].bias.zero_()
        net.shift.copy_(torch.as_tensor(center, dtype=torch.float64))
        net.scale.fill_(radius)
    pad = radius + 0.3
    c = torch.as_tensor(center, dtype=torch.float64)
    return NetworkImplicitManifold(net, dim + 1, 1, bounds=(c - pad, c + pad))


def test_traced_curves_give_exact_lengths_and_components():
    # Two network circles (radii 1 and 0.5): each traced component has its
    # length to 1e-8 and its own label; a vMF-type energy's per-component log Z
    # matches the closed form. Catches chord-length weights (error ~1e-5), a
    # component traced twice or missed, or a wrong closing arc.
    from scipy.special import i0e

    a = _exact_network_sphere(1, 1.0, (-1.8, 0.0))
    b = _exact_network_sphere(1, 0.5, (1.5, 0.3))
    rule = manifold_quadrature(union(a, b), 128)
    assert rule.n_components == 2 and rule.n_open == 0
    lengths = sorted(rule.component_volumes().tolist())
    assert lengths == pytest.approx([math.pi, 2 * math.pi], abs=1e-8)
    energy = lambda x: -2.0 * torch.where(x[:, 0] < 0, x[:, 0] + 1.8, (x[:, 0] - 1.5) / 0.5)
    comp = component_log_partitions(energy, rule)
    exact = [math.log(2 * math.pi * r * i0e(2.0)) + 2.0 for r in (0.5, 1.0)]
    assert sorted(comp.tolist()) == pytest.approx(sorted(exact), abs=1e-8)
    assert log_partition_error(energy, rule) < 1e-6


def test_a_float32_network_curve_is_traced_in_float32():
    # Catches float64 start points (box draws) reaching a float32 network's
    # Jacobian in the tracer ("mat1 and mat2 must have the same dtype"): a
    # learned curve moved to float32 had no quadrature (ConstrainedEBM failed).
    from implicit_geom.models import ConstrainedEBM

    curve = _exact_network_sphere(1, 1.0, (0.3, -0.2)).to(torch.float32)
    rule = manifold_quadrature(curve, 64)
    assert rule.points.dtype == torch.float32
    assert rule.volume == pytest.approx(2 * math.pi, abs=1e-4)
    assert rule.min_error >= 64 * torch.finfo(torch.float32).eps  # float32's floor
    model = ConstrainedEBM(curve, hidden=[8], n_iter=3, quadrature_resolution=32)
    model.fit(curve.random_point(50))
    assert model.sample(4, n_steps=2).dtype == torch.float32


def test_ellipse_perimeter_by_tracing():
    # A non-circular curve: the perimeter against the complete elliptic integral.
    from scipy.special import ellipe

    from implicit_geom import ImplicitManifold

    a, b = 2.0, 1.0
    ellipse = ImplicitManifold(lambda x: (x[:, :1] / a) ** 2 + (x[:, 1:] / b) ** 2 - 1, 2, 1,
                               bounds=([-2.5, -1.5], [2.5, 1.5]))
    rule = traced_curve_quadrature(ellipse)
    assert rule.volume == pytest.approx(4 * a * ellipe(1 - (b / a) ** 2), rel=1e-7)


def test_traced_quadrature_of_a_slim_ellipse_and_a_tiny_circle():
    # Catches a 100:1 ellipse that could not be traced (NormalizationError)
    # and a circle of radius 0.01 (shorter than two trace steps) counted 9
    # times (total 19.415 for 18.912 beside a circle of radius 3).
    from scipy.special import ellipe

    from implicit_geom import ImplicitManifold

    a = 100.0
    ellipse = ImplicitManifold(lambda x: (x[:, :1] / a) ** 2 + x[:, 1:] ** 2 - 1, 2, 1,
                               bounds=([-1.3 * a, -1.3], [1.3 * a, 1.3]))
    rule = traced_curve_quadrature(ellipse)
    assert rule.volume == pytest.approx(4 * a * ellipe(1 - 1 / a ** 2), rel=1e-9)
    centres = torch.tensor([[0.0, 0.0], [3.5, 0.0]], dtype=torch.float64)
    radii = torch.tensor([3.0, 0.01], dtype=torch.float64)

    def circles(x):
        sq = ((x[..., None, :] - centres) ** 2).sum(-1) - radii ** 2
        return (sq / (2 * radii)).prod(-1, keepdim=True)

    rule = traced_curve_quadrature(ImplicitManifold(circles, 2, 1,
                                                    bounds=([-3.5, -3.5], [4.0, 3.5])))
    assert rule.volume == pytest.approx(2 * math.pi * 3.01, rel=1e-9)


def test_projected_mesh_of_a_network_sphere():
    # A network-defined sphere of radius 0.8: area and a vMF log Z within 1e-3
    # relative (the goal), with an error estimate of the right size. Catches
    # unprojected vertices (area error ~1e-2) and wrong vertex weights.
    sphere = _exact_network_sphere(2, 0.8, (0.1, 0.0, -0.2))
    rule = surface_mesh_quadrature(sphere, grid=20, n_refine=2)
    assert rule.n_components == 1 and rule.n_open == 0
    assert rule.volume == pytest.approx(4 * math.pi * 0.64, rel=1e-3)
    c = torch.tensor([0.1, 0.0, -0.2], dtype=torch.float64)
    energy = lambda x: -3.0 * (x - c)[:, 2] / 0.8
    exact = math.log(4 * math.pi * 0.64 * math.sinh(3.0) / 3.0)
    value = float(log_partition(energy, rule))
    assert value == pytest.approx(exact, rel=1e-3)
    err = log_partition_error(energy, rule)
    assert abs(value - exact) < 3 * err < 3e-3


def test_learned_circle_and_sphere_of_known_size():
    # The check: manifolds *learned from data* on a circle of radius
    # 1.5 and a sphere of radius 0.8 give log Z within 1e-3 of the analytic
    # value (the learning error included).
    from scipy.special import i0

    from implicit_geom.datasets import von_mises_circle, vmf_sphere
    from implicit_geom.learning import NeuralImplicitManifold

    X = 1.5 * von_mises_circle(500, kappa=0.5, seed=0)
    circle = NeuralImplicitManifold(2, 1, hidden=(16, 16), epochs=60, progress=False).fit(X)
    value = float(log_partition(lambda x: -2.0 * x[:, 0] / 1.5, manifold_quadrature(circle)))
    assert value == pytest.approx(math.log(2 * math.pi * 1.5 * i0(2.0)), rel=1e-3)
    S = 0.8 * vmf_sphere(800, [0, 0, 1.0], 0.5, seed=0)
    sphere = NeuralImplicitManifold(3, 1, hidden=(16, 16), epochs=150, progress=False).fit(S)
    value = float(log_partition(lambda x: -3.0 * x[:, 2] / 0.8, manifold_quadrature(sphere)))
    assert value == pytest.approx(math.log(4 * math.pi * 0.64 * math.sinh(3.0) / 3.0), abs=1e-3)


def test_ais_log_partition_on_a_three_sphere_has_honest_error_bars():
    # S^3 in R^4 (no quadrature): AIS + tube volume against the closed form
    # (2 pi)^2 I_1(k) / k, within 3 standard errors, and the standard error small.
    from scipy.special import iv

    from implicit_geom import ImplicitManifold

    s3 = ImplicitManifold(lambda x: (x.square().sum(-1, keepdim=True) - 1) / 2, 4, 1,
                          bounds=([-1.3] * 4, [1.3] * 4))
    mu = torch.tensor([0.0, 0.0, 0.6, 0.8], dtype=torch.float64)
    est = ais_log_partition(s3, lambda x: -3.0 * (x @ mu), n_chains=256, n_temps=40,
                            n_burn=60, step_size=0.5, n_points=2**14, n_rep=4, n_cover=2000)
    exact = math.log((2 * math.pi) ** 2 * iv(1, 3.0) / 3.0)
    assert 0 < est.error < 0.06
    assert abs(est.value - exact) < 3 * est.error
    assert est.component_log_z.shape == (1,)


class _Spike(torch.nn.Module):
    """A smooth vMF energy plus a peak of ``height`` nats and width ``sigma`` at ``p``."""

    def __init__(self, p, height, sigma, kappa=2.0):
        super().__init__()
        self.register_buffer("p", p)
        self.height, self.sigma, self.kappa = height, sigma, kappa
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        bump = torch.exp(-((x - self.p) ** 2).sum(-1) / (2 * self.sigma ** 2))
        return self.scale * (-self.kappa * x[..., 2] - self.height * bump)


def _farthest_from_nodes(rule):
    """The point of the unit sphere farthest from every node (among 4000 draws), and its gap."""
    draws = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    draws = draws / torch.linalg.vector_norm(draws, dim=-1, keepdim=True)
    gap = rule.node_distance(draws)
    return draws[int(gap.argmax())], float(gap.max())


def test_peak_between_nodes_is_caught_where_the_coarse_rule_cannot_see_it():
    # Catches: a log Z that misses a density's peak narrower than the node
    # spacing, the state maximum likelihood drifts to on a fixed rule (learned
    # flood, 2026-12-02: log Z 2.11 by the mesh, 4.37 by Monte Carlo). The
    # fine-minus-coarse error is blind to it (nested nodes); peak_excess and
    # the model's normalizer are not.
    from implicit_geom.exceptions import NormalizationError
    from implicit_geom.models import ConstrainedEBM

    rule = surface_mesh_quadrature(ImplicitSphere(), grid=16, n_refine=1)
    p, gap = _farthest_from_nodes(rule)
    spike = _Spike(p, height=8.0, sigma=gap / 5)
    assert log_partition_error(spike, rule) < 1e-2  # the old check passes it
    assert float(rule.peak_excess(spike, p[None])[0]) > 7.0
    smooth = _Spike(p, height=0.0, sigma=gap / 5)
    data = vmf_sphere(200, mu=(0.0, 0.0, 1.0), kappa=2.0, seed=0)
    assert float(rule.peak_excess(smooth, data).max()) < 0.05  # a resolved density passes
    # The model refuses a log Z for the spiked energy (peak at a training
    # point, between the nodes of its own rule) and gives one for the smooth one.
    for height in (8.0, 0.0):
        model = ConstrainedEBM(ImplicitSphere(), _Spike(p, height, 1.0), method="mle",
                               n_iter=1, lr=1e-12, progress=False)
        q, gap = _farthest_from_nodes(model.quadrature())
        model.energy_net.p.copy_(q)
        model.energy_net.sigma = gap / 5
        model.fit(torch.cat([data, q[None]]))
        if height:
            with pytest.raises(NormalizationError, match="peaks"):
                model.normalizer()
        else:
            exact = math.log(4 * math.pi * math.sinh(2.0) / 2.0)
            assert model.normalizer().value == pytest.approx(exact, abs=1e-6)


def test_projected_mesh_that_folds_over_itself_is_refined():
    # A torus of tube radius 0.5 on an 8^3 lattice over a flat box: the
    # lattice cuts the tube into 4 closed pieces whose projections fold over
    # each other, so the mesh counted 11% of the area twice (43.88 for
    # 4 pi^2 = 39.48) while every point of M had a node nearby and the
    # fine-coarse error said 1%. Folded triangles (normal against grad F)
    # now refine the lattice like missing coverage does, and raise at max_grid.
    from implicit_geom import ImplicitManifold
    from implicit_geom.exceptions import NormalizationError

    def tube(x):
        return ((x[:, :2].norm(dim=-1) - 2.0) ** 2 + x[:, 2] ** 2 - 0.25).unsqueeze(-1)

    torus = ImplicitManifold(tube, 3, 1, bounds=([-3.0, -3.0, -1.0], [3.0, 3.0, 1.0]))
    rule = surface_mesh_quadrature(torus, grid=8, n_refine=2)
    assert rule.n_components == 1
    assert rule.volume == pytest.approx(4 * math.pi**2, rel=1e-3)
    with pytest.raises(NormalizationError, match="folds"):
        surface_mesh_quadrature(torus, grid=8, n_refine=2, max_grid=8)


def test_open_traced_curve_is_integrated_inside_its_box_only():
    # The line y = 0.3 x + 0.1 crosses the box [-1, 1]^2 with length
    # 2 sqrt(1.09). The tracer runs 5% of the box and a step past it, and the
    # rule integrated all of that (length 2.404, log Z off by 0.14 with an
    # error of 1e-3 reported); its coarse rule also halved the end weights
    # twice (an error estimate of O(h) instead of O(h^2)).
    from scipy.integrate import quad

    from implicit_geom import ImplicitManifold

    line = ImplicitManifold(lambda x: (x[:, 1] - 0.3 * x[:, 0] - 0.1).unsqueeze(-1), 2, 1,
                            bounds=([-1.0, -1.0], [1.0, 1.0]))
    rule = traced_curve_quadrature(line, step=0.01)
    assert rule.n_open == 1
    assert rule.volume == pytest.approx(2 * math.sqrt(1.09), rel=1e-10)
    assert rule.coarse.volume == pytest.approx(rule.volume, rel=1e-10)
    energy = lambda x: x[:, 0] ** 2
    exact = math.log(math.sqrt(1.09) * quad(lambda t: math.exp(-t * t), -1, 1)[0])
    value = float(log_partition(energy, rule))
    err = log_partition_error(energy, rule)
    assert abs(value - exact) < 1.5 * err < 1e-4


def test_ais_and_tube_volumes_on_a_float32_network_manifold():
    # Catches tube_volumes feeding float64 Sobol points to a float32 network
    # manifold ("expected m1 and m2 to have the same dtype"), and the samplers'
    # emitted-|F| check at exactly Newton's float32 floor (a false "internal
    # error" on re-evaluation rounding): the AIS normaliser of a float32
    # learned 3-manifold crashed.
    from scipy.special import iv

    from implicit_geom.models.normalization import tube_volumes

    s3 = _exact_network_sphere(3, 1.0, (0.0, 0.0, 0.0, 0.0)).to(torch.float32)
    volumes, stderr = tube_volumes(s3, None, lambda x: torch.zeros(x.shape[0], dtype=torch.long),
                                   1, 0.1, n_points=2**12, n_rep=2)
    assert float(volumes[0]) == pytest.approx(2 * math.pi**2, rel=0.05)
    mu = torch.tensor([0.0, 0.0, 0.6, 0.8], dtype=torch.float32)
    est = ais_log_partition(s3, lambda x: -3.0 * (x @ mu), n_chains=64, n_temps=10, n_burn=20,
                            step_size=0.5, n_points=2**12, n_rep=2, n_cover=500)
    exact = math.log((2 * math.pi) ** 2 * iv(1, 3.0) / 3.0)
    assert abs(est.value - exact) < max(3 * est.error, 0.05)


def test_ais_with_a_float64_energy_on_a_float32_manifold():
    # Catches ais_log_partition called directly with an energy in another
    # dtype than the manifold's: a float64 network met the float32 chains
    # ("mat1 and mat2 must have the same dtype"; only ConstrainedEBM cast).
    kappa, mu = 3.0, torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)
    energy = torch.nn.Linear(3, 1, bias=False).double()  # E = -kappa mu.x, (B, 1)
    with torch.no_grad():
        energy.weight.copy_(-kappa * mu)
    sphere = ImplicitSphere(2).to(torch.float32)
    est = ais_log_partition(sphere, energy, n_chains=64, n_temps=10, n_burn=20, step_size=0.5,
                            n_points=2**12, n_rep=2, n_cover=500)
    exact = math.log(4 * math.pi * math.sinh(kappa) / kappa)
    assert abs(est.value - exact) < max(3 * est.error, 0.05)
