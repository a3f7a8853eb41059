"""One invariant suite over every kind of implicit manifold (torch callable,
sympy, closed form, geomstats LevelSet, union, intersection, product, learned),
plus checks against independent references: the closest point on an ellipsoid
by a 1-D root-find, defining functions with |grad F| != 1, Clairaut's relation
on the torus."""

import math

import numpy as np
import pytest
import sympy
import torch
from geomstats.geometry.hypersphere import Hypersphere
from scipy.optimize import brentq

import implicit_geom as ig

X, Y, Z = sympy.symbols("x y z")
AXES = (2.0, 1.0, 0.5)


def ellipsoid_f(x):
    a = torch.tensor(AXES, dtype=x.dtype, device=x.device)
    return ((x / a) ** 2).sum(-1, keepdim=True) - 1.0  # |grad F| varies on M


def learned_circle():
    from implicit_geom.datasets import von_mises_circle

    data = von_mises_circle(400, kappa=0.5, seed=1)
    return ig.NeuralImplicitManifold(2, hidden=(32, 32), epochs=150, batch_size=400,
                                     n_negatives=64, buffer_size=256, langevin_steps=3,
                                     progress=False).fit(data)


# name -> (builder, geodesic step, number of components)
KINDS = {
    "callable": (lambda: ig.ImplicitManifold(ellipsoid_f, 3, 1, bounds=(
        [-2.5, -1.3, -0.7], [2.5, 1.3, 0.7])), 0.3, 1),
    "sympy": (lambda: ig.from_sympy(
        [3 * ((sympy.sqrt(X**2 + Y**2) - 2) ** 2 + Z**2 - 1)], [X, Y, Z],
        bounds=([-3.5, -3.5, -1.5], [3.5, 3.5, 1.5])), 0.4, 1),
    "closed_form": (lambda: ig.ImplicitSphere(2, radius=1.5, center=[0.5, 0.0, 0.0]), 0.5, 1),
    "geomstats": (lambda: ig.as_implicit(Hypersphere(2)), 0.5, 1),
    "union": (lambda: ig.union(ig.ImplicitSphere(1, center=[-2.0, 0.0]),
                               ig.ImplicitSphere(1, center=[2.0, 0.0])), 0.5, 2),
    "intersection": (lambda: ig.intersection(
        ig.ImplicitSphere(2), ig.ImplicitManifold(lambda x: x[..., 2:] - 0.3, 3, 1)), 0.4, 1),
    "product": (lambda: ig.product(ig.ImplicitSphere(1), ig.ImplicitSphere(1, radius=2.0)),
                0.4, 1),
    "learned": (learned_circle, 0.2, 1),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request):
    build, step, n_comp = KINDS[request.param]
    manifold = build()
    gen = torch.Generator().manual_seed(0)
    x = manifold.random_point(4)
    v = manifold.to_tangent(torch.randn(4, manifold.ambient_dim, generator=gen,
                                        dtype=torch.float64), x)
    v = step * v / v.norm(dim=-1, keepdim=True)
    return request.param, manifold, x, v, n_comp


def test_projection_is_the_closest_point(kind):
    # Catches a projection that only lands on M (Newton foot point): the
    # displacement must be normal, and projecting again must not move it.
    _, manifold, x, _, _ = kind
    gen = torch.Generator().manual_seed(1)
    x0 = x + 0.05 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    y = manifold.projection(x0)
    assert float(manifold.submersion(y).norm(dim=-1).max()) <= 10 * manifold.tol
    tangential = manifold.to_tangent(x0 - y, y)
    assert float(tangential.norm(dim=-1).max()) <= 1e-8
    torch.testing.assert_close(manifold.projection(y), y, rtol=0, atol=1e-10)


def test_exp_log_and_the_geodesic_equation(kind):
    # exp lands on M, log inverts it, dist is the length; the geodesic has
    # constant speed and normal acceleration (central differences along it).
    # Catches a wrong acceleration (e.g. without 1/|grad F|^2 where |grad F| != 1).
    _, manifold, x, v, _ = kind
    metric = manifold.metric
    y = metric.exp(v, x)
    assert float(manifold.submersion(y).norm(dim=-1).max()) <= 10 * manifold.tol
    torch.testing.assert_close(metric.log(y, x), v, rtol=0, atol=1e-7)
    torch.testing.assert_close(metric.dist(x, y), v.norm(dim=-1), rtol=0, atol=1e-7)
    h = 1e-3
    times = torch.tensor([0.5 - h, 0.5, 0.5 + h], dtype=torch.float64)
    path = metric.geodesic(x, initial_tangent_vec=v)(times)  # (B, 3, n)
    speed = (path[:, 2] - path[:, 0]) / (2 * h)
    acc = (path[:, 2] - 2 * path[:, 1] + path[:, 0]) / h**2
    torch.testing.assert_close(speed.norm(dim=-1), v.norm(dim=-1), rtol=1e-5, atol=0)
    tangential_acc = manifold.to_tangent(acc, path[:, 1]).norm(dim=-1)
    assert float(tangential_acc.max()) <= 1e-4 * (1 + float(acc.norm(dim=-1).max()))
    # Two leading batch axes give (B1, B2, T, n), the same points (catches the
    # time axis mixed into the batch: a (B1, 1, B2, n) result).
    if x.shape[0] % 2 == 0:
        x2, v2 = (a.reshape(2, -1, a.shape[-1]) for a in (x, v))
        path2 = metric.geodesic(x2, initial_tangent_vec=v2)(times)
        torch.testing.assert_close(path2, path.reshape(2, -1, 3, path.shape[-1]),
                                   rtol=0, atol=1e-9)


def test_curvature_identities(kind):
    # Algebraic symmetries of the Gauss-equation tensor and the first Bianchi
    # identity; curves (dim 1) and the product of two circles are flat.
    name, manifold, x, _, _ = kind
    gen = torch.Generator().manual_seed(2)
    a, b, c, d = (manifold.to_tangent(torch.randn(x.shape, generator=gen,
                                                  dtype=torch.float64), x) for _ in range(4))
    curv = manifold.metric.curvature

    def rm(p, q, s, t):
        return (curv(p, q, s, x) * t).sum(-1)

    torch.testing.assert_close(rm(a, b, c, d), -rm(b, a, c, d), rtol=0, atol=1e-10)
    torch.testing.assert_close(rm(a, b, c, d), -rm(a, b, d, c), rtol=0, atol=1e-10)
    torch.testing.assert_close(rm(a, b, c, d), rm(c, d, a, b), rtol=0, atol=1e-10)
    bianchi = curv(a, b, c, x) + curv(b, c, a, x) + curv(c, a, b, x)
    assert float(bianchi.abs().max()) <= 1e-10
    scalar = manifold.metric.scalar_curvature(x)
    if manifold.dim == 1 or name == "product":
        assert float(scalar.abs().max()) <= 1e-10
    else:
        assert float(scalar.abs().max()) > 1e-3


def test_transport_is_an_isometry_and_dist_has_the_gauss_gradient(kind):
    _, manifold, x, v, _ = kind
    gen = torch.Generator().manual_seed(3)
    a, b = (manifold.to_tangent(torch.randn(x.shape, generator=gen, dtype=torch.float64), x)
            for _ in range(2))
    ta = manifold.metric.parallel_transport(a, x, direction=v)
    tb = manifold.metric.parallel_transport(b, x, direction=v)
    torch.testing.assert_close((ta * tb).sum(-1), (a * b).sum(-1), rtol=0, atol=1e-8)
    y = manifold.metric.exp(v, x)
    assert bool(manifold.is_tangent(ta, y, atol=1e-8).all())
    # Tangential gradient of dist in x is -log_x(y) / d (Gauss lemma).
    xg = x.clone().requires_grad_(True)
    manifold.metric.dist(xg, y).sum().backward()
    torch.testing.assert_close(manifold.to_tangent(xg.grad, x), -v / v.norm(dim=-1, keepdim=True),
                               rtol=0, atol=1e-6)


def test_components_and_dtype(kind):
    _, manifold, x, v, n_comp = kind
    assert manifold.n_components == n_comp
    labels = manifold.component_of(x)
    assert labels.dtype == torch.long and bool((labels >= 0).all())
    y = manifold.metric.exp(v.float(), x.float())
    assert y.dtype == torch.float32 and manifold.projection(x.float()).dtype == torch.float32


def ellipsoid_closest_point(p):
    """Closest point of the ellipsoid sum (x_i / a_i)^2 = 1 to p by a 1-D root-find:
    y_i = a_i^2 p_i / (a_i^2 + t), with t > -min a_i^2 the root of
    sum (a_i p_i / (a_i^2 + t))^2 = 1 (decreasing in t there)."""
    a2 = np.asarray(AXES) ** 2
    p = np.asarray(p, dtype=float)

    def g(t):
        return np.sum(a2 * p**2 / (a2 + t) ** 2) - 1.0

    lo = -a2.min() + 1e-15
    hi = 1.0
    while g(hi) > 0:
        hi *= 2
    t = brentq(g, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    return a2 * p / (a2 + t)


@pytest.mark.parametrize("build", [
    lambda: ig.ImplicitManifold(ellipsoid_f, 3, 1),
    lambda: ig.from_sympy([X**2 / 4 + Y**2 + 4 * Z**2 - 1], [X, Y, Z]),
], ids=["callable", "sympy"])
def test_ellipsoid_closest_point_matches_a_root_find(build):
    # Catches dropping the Hessian term of the closest-point Newton step (an
    # error of 0.09 on this ellipsoid) and any foot-point-only projection.
    ellipsoid = build()
    gen = torch.Generator().manual_seed(4)
    direction = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    on = ellipsoid.projection(direction)  # points on M...
    radial = 1 + 0.6 * (torch.rand(40, 1, generator=gen, dtype=torch.float64) - 0.4)
    pts = on * radial  # ...pushed in and out (general position: no ties)
    out = ellipsoid.projection(pts)
    ref = torch.tensor(np.stack([ellipsoid_closest_point(p) for p in pts.numpy()]))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("scaled", [
    lambda: ig.ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) - 1, 3, 1),  # 2F
    lambda: ig.as_implicit(Hypersphere(2)),  # geomstats' |x|^2 - 1
    lambda: ig.ImplicitManifold(lambda x: 5 * ((x * x).sum(-1, keepdim=True) - 1), 3, 1),
], ids=["2F", "hypersphere", "10F"])
def test_geometry_does_not_depend_on_the_scale_of_F(scaled):
    # The unit sphere with |grad F| = 2 or 10 on M must have the geometry of
    # F = (|x|^2 - 1)/2: catches a missing 1/|grad F|^2 in the geodesic
    # acceleration, in the curvature or in the projection.
    ref, space = ig.ImplicitSphere(2), scaled()
    gen = torch.Generator().manual_seed(5)
    x = ref.projection(torch.randn(6, 3, generator=gen, dtype=torch.float64))
    v = 1.2 * ref.to_tangent(torch.randn(6, 3, generator=gen, dtype=torch.float64), x)
    torch.testing.assert_close(space.metric.exp(v, x), ref.metric.exp(v, x), rtol=0, atol=1e-9)
    y = ref.metric.exp(v, x)
    torch.testing.assert_close(space.metric.log(y, x), v, rtol=0, atol=1e-8)
    torch.testing.assert_close(space.metric.sectional_curvature(v, x.roll(1, 0), x),
                               torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-9)
    w = x + 0.3 * torch.randn(6, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(space.projection(w), w / w.norm(dim=-1, keepdim=True),
                               rtol=0, atol=1e-10)


def test_clairaut_relation_on_the_torus():
    # A torus geodesic conserves rho * cos(psi) (psi its angle with the
    # parallels), i.e. the angular momentum x y' - y x' about the axis:
    # catches any acceleration with a tangential part. Long geodesics (length
    # 6, winding through regions of both signs of curvature).
    torus = ig.ImplicitManifold(
        lambda x: ((torch.sqrt(x[..., 0] ** 2 + x[..., 1] ** 2) - 2.0) ** 2
                   + x[..., 2] ** 2 - 1.0)[..., None], 3, 1)
    x0 = torch.tensor([[3.0, 0.0, 0.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    v0 = torch.tensor([[0.0, 0.6, 0.8], [0.0, 0.9, 0.0]], dtype=torch.float64) * 6.0
    h = 1e-4
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    times = torch.stack([t - h, t + h], -1).reshape(-1)
    path = torus.metric.geodesic(x0, initial_tangent_vec=v0)(times).reshape(2, 5, 2, 3)
    mid = (path[:, :, 0] + path[:, :, 1]) / 2
    vel = (path[:, :, 1] - path[:, :, 0]) / (2 * h)
    momentum = mid[..., 0] * vel[..., 1] - mid[..., 1] * vel[..., 0]
    initial = x0[:, 0] * v0[:, 1] - x0[:, 1] * v0[:, 0]
    torch.testing.assert_close(momentum, initial[:, None].expand(2, 5), rtol=0, atol=1e-6)
    torch.testing.assert_close(vel.norm(dim=-1), v0.norm(dim=-1)[:, None].expand(2, 5),
                               rtol=0, atol=1e-6)
