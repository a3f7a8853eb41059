"""Parallel transport along geodesics and discrete curves."""

import math

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere

import implicit_geom as ig


def callable_sphere(scale=2.0):
    return ig.ImplicitManifold(lambda x: scale * ((x * x).sum(-1, keepdim=True) - 1) / 2, 3, 1)


def frames(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hyper = Hypersphere(2)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    direction = 1.2 * hyper.to_tangent(torch.randn(n, 3, generator=gen, dtype=torch.float64), x)
    w = hyper.to_tangent(torch.randn(n, 3, generator=gen, dtype=torch.float64), x)
    return x, direction, w


def test_transport_matches_hypersphere():
    # Before: NotImplementedError. Also catches projection transport (the
    # vector merely projected onto the end tangent space: wrong length/angle).
    sphere, hyper = callable_sphere(), Hypersphere(2)
    x, direction, w = frames()
    ref = hyper.metric.parallel_transport(w, x, direction=direction)
    out = sphere.metric.parallel_transport(w, x, direction=direction)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    end = hyper.metric.exp(direction, x)
    torch.testing.assert_close(sphere.metric.parallel_transport(w, x, end_point=end), ref,
                               rtol=0, atol=1e-6)
    assert float((sphere.vector_transport(w, x, end) - ref).abs().max()) > 1e-2


def test_holonomy_of_a_geodesic_triangle_is_its_area():
    # Around the octant triangle (three right angles, area pi/2) a vector turns
    # by pi/2: an independent check of transport along a discrete curve.
    sphere = ig.ImplicitSphere(2)
    loop = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    w0 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # at (1, 0, 0)
    path = sphere.metric.parallel_transport_along_curve(w0, loop)
    assert path.shape == (4, 3)
    w1 = path[-1]
    angle = torch.atan2(torch.linalg.cross(w0, w1) @ loop[0], w0 @ w1)
    assert abs(abs(float(angle)) - math.pi / 2) < 1e-8
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(4, dtype=torch.float64))


def test_transport_on_the_torus_is_an_isometry_into_the_tangent_space():
    torus = ig.ImplicitTorus(2.0, 1.0)
    gen = torch.Generator().manual_seed(3)
    x = torus.projection(torus.random_point(5) + 0.1 * torch.randn(5, 3, generator=gen,
                                                                    dtype=torch.float64))
    d, a, b = (torus.to_tangent(torch.randn(5, 3, generator=gen, dtype=torch.float64), x)
               for _ in range(3))
    ta = torus.metric.parallel_transport(a, x, direction=1.5 * d)
    tb = torus.metric.parallel_transport(b, x, direction=1.5 * d)
    end = torus.metric.exp(1.5 * d, x)
    assert bool(torus.is_tangent(ta, end, atol=1e-9).all())
    torch.testing.assert_close((ta * tb).sum(-1), (a * b).sum(-1), rtol=0, atol=1e-8)
    # The velocity of a geodesic is parallel along it.
    td = torus.metric.parallel_transport(d, x, direction=d)
    h = 1e-5
    vel = (torus.metric.exp((1 + h) * d, x) - torus.metric.exp((1 - h) * d, x)) / (2 * h)
    torch.testing.assert_close(td, vel, rtol=0, atol=1e-6)


def test_transport_needs_a_direction_or_an_end_point():
    sphere = ig.ImplicitSphere(2)
    with pytest.raises(ValueError, match="direction or an end_point"):
        sphere.metric.parallel_transport(torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0]))
