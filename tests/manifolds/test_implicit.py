"""ImplicitManifold core: projection, tangent spaces, errors, the induced metric."""

import math
import subprocess
import sys

import pytest
import sympy
import torch
from geomstats.geometry.hypersphere import Hypersphere

import implicit_geom as ig
from implicit_geom.exceptions import (
    BackendError,
    EmptyDataError,
    GeodesicError,
    InvalidPointError,
    ProjectionError,
    SingularJacobianError,
)

X, Y, Z = sympy.symbols("x y z")


def sympy_sphere():
    return ig.from_sympy([(X**2 + Y**2 + Z**2 - 1) / 2], [X, Y, Z])


SPHERES = {
    "closed_form": lambda: ig.ImplicitSphere(2),
    "sympy": sympy_sphere,
    "torch_callable": lambda: ig.ImplicitManifold(
        lambda x: ((x * x).sum(-1, keepdim=True) - 1) / 2, ambient_dim=3, codim=1),
}


def random_pairs(n, max_dist, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hyper = Hypersphere(2)
    a = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    keep = hyper.metric.dist(a, b) <= max_dist
    return a[keep], b[keep]


@pytest.mark.parametrize("kind", sorted(SPHERES))
def test_sphere_exp_log_dist_match_hypersphere(kind):
    sphere, hyper = SPHERES[kind](), Hypersphere(2)
    a, b = random_pairs(60, 2.5)
    assert len(a) > 30
    v_ref = hyper.metric.log(b, a)
    d_ref = hyper.metric.dist(a, b)
    v = sphere.metric.log(b, a)
    torch.testing.assert_close(v, v_ref, rtol=1e-8, atol=1e-8 * d_ref.max().item())
    torch.testing.assert_close(sphere.metric.dist(a, b), d_ref, rtol=1e-8, atol=0)
    end = sphere.metric.exp(v_ref, a)
    torch.testing.assert_close(end, hyper.metric.exp(v_ref, a), rtol=0, atol=1e-8)
    assert sphere.submersion(end).abs().max() <= 1e-10


def test_frechet_mean_matches_hypersphere():
    from geomstats.learning.frechet_mean import FrechetMean

    hyper, sphere = Hypersphere(2), ig.ImplicitSphere(2)
    points = hyper.random_von_mises_fisher(kappa=5, n_samples=100)
    means = []
    for space in (hyper, sphere):
        est = FrechetMean(space).set(epsilon=1e-14, max_iter=100)
        means.append(est.fit(points).estimate_)
    torch.testing.assert_close(means[1], means[0], rtol=0, atol=1e-6)
    assert sphere.belongs(means[1], atol=1e-10)


def test_torus_exp_stays_on_manifold_and_log_inverts_exp():
    torus = ig.ImplicitTorus(2.0, 1.0)
    base = torus.random_point(40)
    vec = torus.random_tangent_vec(base)
    # Lengths up to 1.5, below the injectivity radius (pi * r on the tube).
    vec = vec / vec.norm(dim=-1, keepdim=True) * torch.linspace(0.05, 1.5, 40)[:, None]
    end = torus.metric.exp(vec, base)
    assert torus.submersion(end).abs().max() <= 1e-10
    back = torus.metric.log(end, base)
    torch.testing.assert_close(back, vec, rtol=0, atol=1e-8)
    # Tube circles (meridians) are geodesics: the closed form checks the integrator.
    phi = torch.tensor(0.3, dtype=torch.float64)
    start = torch.stack([3 * torch.cos(phi), 3 * torch.sin(phi), torch.zeros(())])
    up = torch.tensor([0.0, 0.0, 1.2], dtype=torch.float64)
    meridian = torus.metric.exp(up, start)
    expected = torch.stack([(2 + torch.cos(torch.tensor(1.2))) * torch.cos(phi),
                            (2 + torch.cos(torch.tensor(1.2))) * torch.sin(phi),
                            torch.sin(torch.tensor(1.2))]).double()
    torch.testing.assert_close(meridian, expected, rtol=0, atol=1e-9)


def test_geodesic_callable_and_batch_shapes():
    sphere = ig.ImplicitSphere(2)
    a, b = random_pairs(5, 2.0)
    path = sphere.metric.geodesic(a[0], end_point=b[0])
    pts = path(torch.linspace(0, 1, 7))
    assert pts.shape == (7, 3)
    torch.testing.assert_close(pts[-1], b[0], rtol=0, atol=1e-9)
    # Leading batch dimensions are kept.
    grid = torch.stack([a, b])  # (2, B, 3)
    assert sphere.submersion(grid).shape == (2, len(a), 1)
    assert sphere.belongs(grid).shape == (2, len(a))
    assert sphere.metric.exp(sphere.to_tangent(grid, grid), grid).shape == grid.shape


def test_projection_reaches_tolerance_and_is_closest_point():
    sphere = ig.ImplicitSphere(2)
    pts = 2 * torch.rand(500, 3, dtype=torch.float64) - 1
    pts = pts[pts.norm(dim=-1) > 0.05]
    proj = sphere.projection(pts)
    assert sphere.submersion(proj).abs().max() <= 1e-10
    torch.testing.assert_close(proj, pts / pts.norm(dim=-1, keepdim=True), rtol=0, atol=1e-9)
    res = sphere.solve_projection(pts)
    assert res.converged.all() and res.n_iter.median() <= 8


def test_projection_on_torus_is_closest_point():
    torus = ig.ImplicitTorus(2.0, 1.0)
    pts = torus.random_point(200) + 0.3 * torch.randn(200, 3, dtype=torch.float64)
    proj = torus.projection(pts)
    # Closed form closest point on a torus of revolution.
    rho = pts[:, :2].norm(dim=-1, keepdim=True)
    ring = torch.cat([2 * pts[:, :2] / rho, torch.zeros(200, 1)], -1)
    expected = ring + (pts - ring) / (pts - ring).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(proj, expected, rtol=0, atol=1e-8)


def test_projection_beyond_a_focal_point_is_closest_point():
    # Points of y = sin(3x) about a radius of curvature from the curve, where
    # I + lam * D^2F is indefinite: the undamped KKT Newton step crept uphill
    # (or ran off) and the projection of a training point failed with
    # "could not be projected" (the glycine pipeline's learned torus, seed 11).
    # Catches a refinement whose steps may move a point away from x0.
    wavy = ig.ImplicitManifold(lambda x: x[..., 1:] - torch.sin(3 * x[..., :1]), 2, 1)
    x = torch.tensor([[-0.5357534549155782, -0.342696141024492],
                      [1.5537179247390764, -0.4330406198214858],
                      [0.5198993996148544, -0.24789721017380928]], dtype=torch.float64)
    res = wavy.solve_projection(x)
    assert bool(res.converged.all())
    t = torch.linspace(-4.0, 4.0, 400_001, dtype=torch.float64)
    curve = torch.stack([t, torch.sin(3 * t)], -1)
    brute = torch.cdist(x, curve).amin(-1)
    got = torch.linalg.vector_norm(res.x - x, dim=-1)
    assert torch.all(got <= brute + 1e-8), (got, brute)
    assert float(wavy.submersion(res.x).abs().max()) < 1e-9


def test_to_tangent_is_orthogonal_projection():
    torus = ig.ImplicitTorus(2.0, 1.0)
    base = torus.random_point(10)
    vec = torch.randn(10, 3, dtype=torch.float64)
    tan = torus.to_tangent(vec, base)
    assert torus.is_tangent(tan, base, atol=1e-12).all()
    normal = torus.jacobian(base)[:, 0]
    torch.testing.assert_close(((vec - tan) * tan).sum(-1), torch.zeros(10), atol=1e-12, rtol=0)
    assert (torch.linalg.cross(vec - tan, normal).norm(dim=-1) < 1e-12).all()


def test_retraction_and_vector_transport_land_on_manifold():
    sphere = ig.ImplicitSphere(2)
    base = sphere.random_point(20)
    vec = 0.3 * sphere.random_tangent_vec(base)
    end = sphere.retraction(vec, base)
    assert sphere.belongs(end, atol=1e-10).all()
    moved = sphere.vector_transport(vec, base, end)
    assert sphere.is_tangent(moved, end, atol=1e-12).all()


@pytest.mark.parametrize("bad", [
    torch.tensor([[float("nan"), 0.0, 1.0]]),
    torch.tensor([[float("inf"), 0.0, 1.0]]),
])
def test_non_finite_input_raises(bad):
    sphere = ig.ImplicitSphere(2)
    for call in (sphere.projection, sphere.submersion, sphere.belongs):
        with pytest.raises(InvalidPointError, match="NaN or inf"):
            call(bad)


def test_wrong_shape_and_empty_input_raise():
    sphere = ig.ImplicitSphere(2)
    with pytest.raises(InvalidPointError, match=r"shape \(\.\.\., 3\)"):
        sphere.projection(torch.zeros(4, 2))
    with pytest.raises(EmptyDataError):
        sphere.projection(torch.zeros(0, 3))
    wrong_codim = ig.ImplicitManifold(lambda x: x[..., :2], ambient_dim=3, codim=1)
    with pytest.raises(InvalidPointError, match="returned shape"):
        wrong_codim.submersion(torch.ones(3, 3))


def test_defining_function_without_codim_axis_raises_in_every_solver():
    # Catches f returning (B,) for codim 1: projection, to_tangent, exp and
    # random_point crashed with torch's bare "expand" RuntimeError.
    flat = ig.ImplicitManifold(lambda x: ((x * x).sum(-1) - 1) / 2, ambient_dim=3, codim=1)
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, 0.5, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    for call in (lambda: flat.projection(2 * x), lambda: flat.to_tangent(v, x),
                 lambda: flat.metric.exp(v, x), lambda: flat.random_point(3)):
        with pytest.raises(InvalidPointError, match="returned shape"):
            call()


def test_metric_checks_vectors_and_batch_shapes():
    # Catches the inner product / norm taking any array (a 4-vector "tangent"
    # to a point of R^3 got a norm, NaN gave NaN) and torch's bare RuntimeError
    # for batches that do not broadcast in the geometry calls.
    sphere = ig.ImplicitSphere(2)
    base = sphere.projection(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
    vec = sphere.to_tangent(torch.ones(4, 3), base)
    metric = sphere.metric
    assert torch.allclose(metric.squared_norm(vec, base), (vec * vec).sum(-1))
    assert torch.allclose(metric.inner_product(vec, 2 * vec, base), 2 * (vec * vec).sum(-1))
    with pytest.raises(InvalidPointError, match=r"shape \(\.\.\., 3\)"):
        metric.squared_norm(torch.ones(4, 4), base)
    with pytest.raises(InvalidPointError, match=r"base_point must have shape"):
        metric.inner_product(vec, vec, torch.ones(4, 2))
    with pytest.raises(InvalidPointError, match="NaN or inf"):
        metric.inner_product(vec, torch.full((4, 3), float("nan")))
    two_by_two = base.reshape(2, 2, 3)
    for call in (lambda: metric.log(base, two_by_two), lambda: metric.dist(base, two_by_two),
                 lambda: sphere.to_tangent(vec, two_by_two),
                 lambda: metric.inner_product(vec, vec, two_by_two),
                 lambda: metric.log_solver.solve(base, base[:3])):
        with pytest.raises(InvalidPointError, match="do not broadcast"):
            call()
    with pytest.raises(InvalidPointError, match=r"shape \(N, 3\)"):
        metric.dist_pairwise(two_by_two)  # not the matrix of the flattened points


def test_unprojectable_points_raise_projection_error():
    sphere = ig.ImplicitSphere(2)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    with pytest.raises(ProjectionError) as info:
        sphere.projection(pts)
    assert info.value.failed.tolist() == [True, False]
    # A function without zeros: nothing can be projected.
    no_zero = ig.ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) + 1, 3, 1)
    with pytest.raises(ProjectionError, match="could not be projected"):
        no_zero.projection(torch.ones(3, 3))


def test_projection_does_not_depend_on_the_length_unit():
    # Catches the Levenberg-Marquardt damping mu = |F|^2 (units of F^2, against
    # J J^T in (F / length)^2) stalling Newton a few length units off M: a
    # point 30% off a sphere of radius 50 (or 10 km above one of radius 6371)
    # raised ProjectionError although the same configuration at radius 1 projects.
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(
        torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=-1)
    for radius, factors in ((50.0, (1.3, 3.0, 0.2)), (6371.0, (1 + 10 / 6371, 2.0))):
        center = torch.tensor([100.0, -3.0, 0.0, 7.0], dtype=torch.float64)
        sphere = ig.ImplicitSphere(3, radius=radius, center=center)
        for factor in factors:
            y = sphere.projection(center + factor * radius * dirs)
            torch.testing.assert_close(y, center + radius * dirs, rtol=0, atol=1e-12 * radius)
    # The same through a callable with |grad F| != 1, and through a union.
    big = ig.ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) - 2500.0, 3, 1)
    torch.testing.assert_close(big.projection(torch.tensor([0.0, 0.0, 70.0], dtype=torch.float64)),
                               torch.tensor([0.0, 0.0, 50.0], dtype=torch.float64))
    pair = ig.union(ig.ImplicitSphere(2, radius=50.0),
                    ig.ImplicitSphere(2, radius=50.0, center=[200.0, 0.0, 0.0]))
    torch.testing.assert_close(
        pair.projection(torch.tensor([[70.0, 0.0, 0.0], [135.0, 0.0, 0.0]], dtype=torch.float64)),
        torch.tensor([[50.0, 0.0, 0.0], [150.0, 0.0, 0.0]], dtype=torch.float64))


def test_singular_jacobian_raises():
    sphere = ig.ImplicitSphere(2)
    with pytest.raises(SingularJacobianError, match="rank deficient"):
        sphere.to_tangent(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


def test_log_rejects_points_off_manifold_and_other_components():
    sphere = ig.ImplicitSphere(2)
    base = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # (the message names the method called: log's said "dist:")
    with pytest.raises(InvalidPointError, match="^log: 1 point.* not on"):
        sphere.metric.log(torch.tensor([0.0, 0.0, 1.5], dtype=torch.float64), base)
    with pytest.raises(InvalidPointError, match="^dist_pairwise: 1 point.* not on"):
        sphere.metric.dist_pairwise(torch.tensor([[0.0, 0.0, 1.5], [0.0, 0.0, 1.0]],
                                                 dtype=torch.float64))
    two = ig.union(ig.ImplicitSphere(2), ig.ImplicitSphere(2, center=[4.0, 0, 0]))
    with pytest.raises(GeodesicError):
        two.metric.log(torch.tensor([3.0, 0, 0], dtype=torch.float64), base)


def test_wrong_backend_raises_backend_error():
    code = ("import os; os.environ['GEOMSTATS_BACKEND']='numpy'; import geomstats.backend; "
            "import implicit_geom")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "BackendError" in proc.stderr and "pytorch backend" in proc.stderr
    assert issubclass(BackendError, RuntimeError)


def test_no_autograd_graph_through_module_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
    net = net.double()
    with torch.no_grad():  # make the zero set a sphere-like surface near the origin
        net[2].bias.fill_(-0.2)
    manifold = ig.ImplicitManifold(net, ambient_dim=3, codim=1)
    res = manifold.solve_projection(torch.randn(50, 3, dtype=torch.float64))
    assert not res.x.requires_grad
    ok = res.x[res.converged]
    assert len(ok) > 0
    tan = manifold.to_tangent(torch.randn_like(ok), ok)
    assert not tan.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_sympy_and_closed_form_torus_agree():
    R, r = 2.0, 1.0
    expr = ((sympy.sqrt(X**2 + Y**2) - R) ** 2 + Z**2 - r**2) / (2 * r)
    sym = ig.from_sympy(expr, [X, Y, Z])
    closed = ig.ImplicitTorus(R, r)
    pts = closed.random_point(30)
    v = closed.random_tangent_vec(pts)
    torch.testing.assert_close(sym.jacobian(pts), closed.jacobian(pts), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sym.metric.exp(0.5 * v, pts), closed.metric.exp(0.5 * v, pts),
                               rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="not among the coordinates"):
        ig.from_sympy(X + sympy.Symbol("w"), [X, Y, Z])


def test_sympy_strings_names_and_unsupported_functions():
    # Catches: strings parsed without the given coordinates (symbols with
    # assumptions were "not among the coordinates ['x', 'y', 'z']"), "x y z"
    # read letter by letter, repeated coordinates reaching lambdify's
    # SyntaxError, and functions torch lacks failing inside a solver (NameError,
    # RuntimeError) instead of at construction.
    x, y, z = sympy.symbols("x y z", real=True)
    reference = ig.from_sympy([(x**2 + y**2 + z**2 - 1) / 2], [x, y, z])
    pts = reference.random_point(5)
    for exprs, coords in [("(x**2 + y**2 + z**2 - 1) / 2", [x, y, z]),
                          ("(x^2 + y^2 + z^2 - 1) / 2", "x y z"),
                          (["(x**2 + y**2 + z**2 - 1) / 2"], ["x", "y", "z"])]:
        sym = ig.from_sympy(exprs, coords)
        assert sym.ambient_dim == 3 and sym.codim == 1
        torch.testing.assert_close(sym.jacobian(pts), reference.jacobian(pts))
    for exprs, coords, match in [
            ("x**2 + y**2 +", [x, y, z], "cannot read"),
            (x**2 + y**2 - 1, [x, x, y], "repeat"),
            (x**2 - 1, [x**2], "must be sympy Symbols"),
            ([], [x], "at least one expression"),
            (sympy.besselj(0, x) + y**2 + z**2 - 1, [x, y, z], "besselj"),
            (sympy.Max(x, y) + z**2 - 1, [x, y, z], "cannot evaluate")]:
        with pytest.raises(ValueError, match=match):
            ig.from_sympy(exprs, coords)


def test_special_orthogonal_via_geomstats_levelset():
    from geomstats.geometry.special_orthogonal import SpecialOrthogonal

    so3 = ig.as_implicit(SpecialOrthogonal(3))
    assert so3.dim == 3 and so3.codim == 6
    gen = torch.Generator().manual_seed(1)
    rot = torch.linalg.matrix_exp(_skew(torch.randn(3, generator=gen, dtype=torch.float64)))
    skew = _skew(torch.randn(3, generator=gen, dtype=torch.float64)) * 0.7
    vec = (rot @ skew).reshape(9)
    end = so3.metric.exp(vec, rot.reshape(9))
    # Geodesics of the Frobenius metric on SO(3) are R expm(t A).
    torch.testing.assert_close(end.reshape(3, 3), rot @ torch.linalg.matrix_exp(skew),
                               rtol=0, atol=1e-9)


def _skew(w):
    zero = torch.zeros((), dtype=w.dtype)
    return torch.stack([torch.stack([zero, -w[2], w[1]]),
                        torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])


def test_random_point_on_manifold():
    torus = ig.ImplicitTorus(2.0, 1.0)
    pts = torus.random_point(100)
    assert pts.shape == (100, 3) and torus.belongs(pts, atol=1e-10).all()
    assert math.isclose(float(torus.random_point().shape[0]), 3)
    # Catches counts below 1 reaching torch ("negative dimension") or the
    # empty-point check ("point is empty"), and 2.5 truncated to 2.
    for bad in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="n_samples"):
            torus.random_point(bad)


def test_random_tangent_vec_follows_the_geomstats_sample_convention():
    # Catches random_tangent_vec(point of shape (n,), n_samples=k) drawing one
    # vector of shape (k,): an InvalidPointError for k != n, and for k == n
    # (here 3 samples on S^2 in R^3) silently one tangent vector instead of 3.
    sphere = ig.ImplicitSphere(2, radius=2.0, center=[1.0, 0.0, -1.0])
    base = sphere.projection(torch.tensor([3.0, 0.5, -1.0], dtype=torch.float64))
    torch.manual_seed(0)
    for k in (3, 5):
        vec = sphere.random_tangent_vec(base, n_samples=k)
        assert vec.shape == (k, 3)
        assert sphere.is_tangent(vec, base, atol=1e-12).all()
        assert torch.linalg.matrix_rank(vec) == 2  # distinct draws span T_x S^2
    pts = sphere.random_point(4)
    assert sphere.random_tangent_vec(pts).shape == (4, 3)
    assert sphere.random_tangent_vec(pts, n_samples=4).shape == (4, 3)
    with pytest.raises(InvalidPointError):  # geomstats refuses this too
        sphere.random_tangent_vec(pts, n_samples=3)
    assert ig.ImplicitSphere(3).random_tangent_vec(
        torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), n_samples=3).shape == (3, 4)


@pytest.mark.parametrize("radius", [1e4, 1e6])
def test_projection_belongs_and_dist_at_large_length_scale(radius):
    # Catches the absolute |F| <= tol test: |x|^2 - r^2 cannot get below
    # ~eps |J| |x| (1e-8 at r = 1e4), so projection raised ProjectionError and
    # dist/belongs disagreed with what projection returns.
    circle = ig.ImplicitManifold(
        lambda x: (x * x).sum(-1, keepdim=True) - radius**2, ambient_dim=2, codim=1,
        bounds=([-1.5 * radius] * 2, [1.5 * radius] * 2))
    sphere = ig.from_sympy([X**2 + Y**2 + Z**2 - radius**2], [X, Y, Z])
    for space in (circle, sphere):
        n = space.ambient_dim
        p = torch.full((3, n), 0.3 * radius, dtype=torch.float64)
        p[:, 0] = radius * torch.tensor([1.1, 0.9, 2.0], dtype=torch.float64)
        y = space.projection(p)
        # Checked: the closest point (along the ray) to float64 accuracy.
        assert torch.allclose(y, radius * p / p.norm(dim=-1, keepdim=True), rtol=1e-13, atol=0)
        assert bool(space.belongs(y).all())
        assert not bool(space.belongs(1.001 * y).any())
    a, b = torch.tensor([[radius, 0.0], [0.0, radius]], dtype=torch.float64)
    assert float(circle.metric.dist(a, b)) == pytest.approx(math.pi / 2 * radius, rel=1e-8)


@pytest.mark.parametrize("radius", [1e4, 1e6])
def test_random_point_and_geometry_at_large_length_scale(radius):
    # Catches the box draws landed by the damped Newton alone: mu = |F|^2 is in
    # units of F squared, J J^T of (F / length) squared, so draws a few
    # thousand units off a sphere of radius 1e4 stalled; random_point raised
    # ProjectionError, and without bounds dist/exp/log raised GeodesicError
    # (the global solver's graph projected 0 box points).
    spaces = (ig.ImplicitSphere(2, radius=radius),
              ig.ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) - radius**2, 3, 1),
              ig.ImplicitManifold(lambda x: x.norm(dim=-1, keepdim=True) - radius, 3, 1))
    a = radius * torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    b = radius * torch.tensor([[0.0, 0.0, 1.0], [math.cos(2.5), math.sin(2.5), 0.0]],
                              dtype=torch.float64)
    angle = torch.tensor([math.pi / 2, 2.5 - math.pi / 2], dtype=torch.float64)
    for space in spaces:
        torch.manual_seed(0)
        p = space.random_point(20, bound=1.5 * radius)
        assert torch.allclose(p.norm(dim=-1), torch.full((20,), radius, dtype=torch.float64),
                              rtol=1e-12, atol=0)
        assert bool(space.belongs(p).all())
        # Checked against the closed form r * angle.
        assert torch.allclose(space.metric.dist(a, b), radius * angle, rtol=1e-8, atol=0)
        v = space.metric.log(b, a)
        assert torch.allclose(v.norm(dim=-1), radius * angle, rtol=1e-8, atol=0)
        assert torch.allclose(space.metric.exp(v, a), b, rtol=0, atol=1e-9 * radius)


@pytest.mark.parametrize("radius", [1e-3, 1e-6])
def test_tolerances_scale_with_a_small_box(radius):
    # Catches absolute tolerances (tol = 1e-10, belongs' atol = 1e-6, the
    # integrator's atol = 1e-10) on a sphere of radius 1e-3: random points
    # 7e-8 of the radius off it, exp(log) 3e-8 of the radius off the target,
    # transport changing a norm by 1e-8, and belongs accepting points 0.01%
    # off the sphere. They now scale with the box (tol_scale).
    sphere = ig.ImplicitSphere(2, radius=radius)
    torch.manual_seed(0)
    p = sphere.random_point(20)
    assert torch.allclose(p.norm(dim=-1), torch.full((20,), radius, dtype=torch.float64),
                          rtol=1e-8, atol=0)
    assert bool(sphere.belongs(p).all())
    assert not bool(sphere.belongs((1 + 1e-4) * p).any())
    a = radius * torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    b = radius * torch.tensor([[0.0, 0.0, 1.0], [math.cos(2.5), math.sin(2.5), 0.0]],
                              dtype=torch.float64)
    angle = torch.tensor([math.pi / 2, 2.5 - math.pi / 2], dtype=torch.float64)
    assert torch.allclose(sphere.metric.dist(a, b), radius * angle, rtol=1e-9, atol=0)
    v = sphere.metric.log(b, a)
    assert torch.allclose(sphere.metric.exp(v, a), b, rtol=0, atol=1e-8 * radius)
    w = sphere.to_tangent(radius * torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]],
                                                dtype=torch.float64), a)
    moved = sphere.metric.parallel_transport(w, a, end_point=b)
    assert torch.allclose(moved.norm(dim=-1), w.norm(dim=-1), rtol=5e-9, atol=0)
    assert bool(sphere.is_tangent(moved, b).all())
    assert sphere.tol_scale == pytest.approx(1.5 * radius / 0.1)
    assert ig.ImplicitSphere(2, radius=1.0).tol_scale == 1.0  # unit scale: unchanged


@pytest.mark.parametrize("radius", [1e-3, 1e-6])
def test_small_sphere_given_in_small_units_of_f(radius):
    # Catches Newton's |F| <= tol for F = |x|^2 - r^2 (|J| = 2r): in its box
    # at radius 1e-3 random points were 7e-7 of the radius off the sphere,
    # at 1e-6 3e-4 of it, and exp(log) as far off the target.
    space = ig.ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) - radius**2, 3, 1,
                                bounds=([-1.5 * radius] * 3, [1.5 * radius] * 3))
    torch.manual_seed(0)
    p = space.random_point(8)
    assert torch.allclose(p.norm(dim=-1), torch.full((8,), radius, dtype=torch.float64),
                          rtol=1e-7, atol=0)
    angle = torch.arccos((p[1:4] @ p[0] / radius**2).clamp(-1, 1))
    assert torch.allclose(space.metric.dist(p[0], p[1:4]), radius * angle, rtol=1e-6, atol=0)
    v = space.metric.log(p[1:4], p[0])
    assert torch.allclose(space.metric.exp(v, p[0]), p[1:4], rtol=0, atol=1e-7 * radius)
    # belongs and the metric's on-manifold check read |F| as a distance only
    # where |J| ~ 1: |F| <= 1e-6 * tol_scale accepted points 0.7% off the
    # sphere (and exp computed the geometry of another level set).
    off = 1.001 * p[:2]
    assert bool(space.belongs(p).all()) and not bool(space.belongs(off).any())
    with pytest.raises(InvalidPointError):
        space.metric.exp(space.to_tangent(off[1] - off[0], off[0]), off[0])


def _unbounded_sphere(form, radius, center):
    """A sphere given as a plain callable (no bounds: no scale given)."""
    c = torch.tensor(center, dtype=torch.float64)
    if form == "squared":
        return ig.ImplicitManifold(lambda x: ((x - c) ** 2).sum(-1, keepdim=True) - radius**2,
                                   3, 1)
    if form == "norm":
        return ig.ImplicitManifold(lambda x: (x - c).norm(dim=-1, keepdim=True) - radius, 3, 1)
    x, y, z = X - center[0], Y - center[1], Z - center[2]
    return ig.from_sympy([x**2 + y**2 + z**2 - radius**2], [X, Y, Z])


@pytest.mark.parametrize("form", ["squared", "norm", "sympy"])
@pytest.mark.parametrize("center", [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0)])
@pytest.mark.parametrize("radius", [1e-3, 1e-6, 1e4])
def test_sphere_far_from_unit_size_without_bounds(form, center, radius):
    # Catches the absolute tolerances of a manifold with no box (no scale):
    # at radius 1e-6 projections came out 7e-4 of the radius off (F =
    # |x-c|^2 - r^2), exp 4e-6 and transport 1.5e-6 off, and belongs accepted
    # points 0.1% off the sphere, all silently. The length is now M's radius
    # of curvature at the call's points (local_scale). Radius 1e4 checks
    # that large scales keep working. Reference: geomstats' unit Hypersphere,
    # scaled (dist = r * angle).
    space = _unbounded_sphere(form, radius, center)
    s2 = Hypersphere(2)
    c = torch.tensor(center, dtype=torch.float64)
    u = torch.tensor([[0.3, -0.5, 0.8], [-0.6, 0.2, 0.7], [0.1, 0.9, -0.4]],
                     dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    off = c + radius * 1.3 * u
    y = space.projection(off)
    assert torch.allclose(y, c + radius * u, rtol=0, atol=1e-8 * radius)
    p = c + radius * u
    assert bool(space.belongs(p).all())
    assert not bool(space.belongs(c + radius * (1 + 1e-3) * u).any())
    x_u, y_u = u[:2], u[[2, 0]]
    x, y = c + radius * x_u, c + radius * y_u
    v_u = s2.metric.log(y_u, x_u)
    end = space.metric.exp(0.7 * radius * v_u, x)
    assert torch.allclose(end, c + radius * s2.metric.exp(0.7 * v_u, x_u), rtol=0,
                          atol=3e-8 * radius)
    assert torch.allclose(space.metric.log(y, x), radius * v_u, rtol=0, atol=1e-8 * radius)
    assert torch.allclose(space.metric.dist(x, y), radius * s2.metric.dist(x_u, y_u),
                          rtol=1e-8, atol=0)
    w_u = s2.to_tangent(torch.tensor([[0.4, 0.1, -0.3]] * 2, dtype=torch.float64), x_u)
    moved = space.metric.parallel_transport(radius * w_u, x, direction=0.7 * radius * v_u)
    ref = radius * s2.metric.parallel_transport(w_u, x_u, direction=0.7 * v_u)
    assert torch.allclose(moved, ref, rtol=0, atol=3e-8 * radius)
    if radius < 1:  # (random_point draws in [-1, 1]^3: no sphere of radius 1e4 there)
        torch.manual_seed(0)
        pts = space.random_point(6)
        assert torch.allclose((pts - c).norm(dim=-1), torch.full((6,), radius,
                              dtype=torch.float64), rtol=2e-8, atol=0)
    assert space.tol_scale == 1.0  # the local length applies within a call only


def test_tiny_sphere_far_from_the_origin_raises_scale_error():
    # Catches silent answers 1e-5 of the radius off for a sphere of radius
    # 1e-9 around (1, 0, 0): float64 coordinates near 1 resolve 2e-16, more
    # than 1e-8 of the radius. Centred at 0 it works.
    with pytest.raises(ig.ScaleError, match="rescale"):
        _unbounded_sphere("norm", 1e-9, (1.0, 0.0, 0.0)).projection(
            torch.tensor([1.0 + 1.3e-9, 0.0, 0.0], dtype=torch.float64))
    y = _unbounded_sphere("norm", 1e-9, (0.0, 0.0, 0.0)).projection(
        torch.tensor([0.6e-9, 0.0, 0.8e-9], dtype=torch.float64) * 1.3)
    assert torch.allclose(y.norm(), torch.tensor(1e-9, dtype=torch.float64), rtol=1e-8)


def test_codim2_length_does_not_depend_on_how_the_constraints_are_scaled():
    # Catches a false ScaleError (and needlessly tightened tolerances) on a
    # unit circle written [s (x^2 + y^2 - 1), z]: the curvature bound was
    # |B^T H_r B| / sigma_min(J) = 2s, mixing the rows' scales, so s = 1e3
    # shrank every tolerance 256-fold and s = 1e9 refused the circle.
    th = torch.linspace(0.0, 6.0, 7, dtype=torch.float64)
    p = torch.stack([th.cos(), th.sin(), 0 * th], -1)
    for s in (1.0, 1e3, 1e9):
        circle = ig.ImplicitManifold(
            lambda x, s=s: torch.stack([s * ((x[..., :2] ** 2).sum(-1) - 1), x[..., 2]], -1),
            ambient_dim=3, codim=2)
        torch.testing.assert_close(circle._normal_curvature(p), torch.ones(7, dtype=torch.float64))
        with circle.local_scale(p):
            assert circle.tol_scale == 1.0
        v = circle.to_tangent(torch.stack([-th.sin(), th.cos(), 0 * th], -1) * 0.5, p)
        want = torch.stack([(th + 0.5).cos(), (th + 0.5).sin(), 0 * th], -1)
        torch.testing.assert_close(circle.metric.exp(v, p), want, rtol=0, atol=1e-9)
    # Still a bound of |II(u, u)| where the normals mix the rows: the circle
    # of radius sqrt(3)/2 cut from the unit sphere by a plane written 100 (z - 1/2).
    cut = ig.ImplicitManifold(
        lambda x: torch.stack([(x ** 2).sum(-1) - 1, 100 * (x[..., 2] - 0.5)], -1),
        ambient_dim=3, codim=2)
    q = torch.tensor([[math.sqrt(0.75), 0.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(cut._normal_curvature(q),
                               torch.tensor([1 / math.sqrt(0.75)], dtype=torch.float64))


def test_large_scale_failure_names_the_scale():
    # Catches the unexplained failures at large coordinates: the error now says
    # the length scale (and what float64 resolves there) and to rescale.
    r = 1e6
    space = ig.ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) - r * r,
                                ambient_dim=2, codim=1, max_iter=2,
                                bounds=([-1.5 * r] * 2, [1.5 * r] * 2))
    with pytest.raises(ProjectionError, match="length scale.*rescale"):
        space.projection(torch.tensor([[3 * r, 0.5 * r]], dtype=torch.float64))
    with pytest.raises(ProjectionError, match="length scale.*rescale"):
        space.random_point(4, max_rounds=1)
    with pytest.raises(ig.ComponentError, match="length scale.*rescale"):
        space.n_components


def test_local_scale_is_no_state_change():
    # Catches local_scale's per-call factor counted as state: the sample
    # graph and union overlap caches (keyed by _state_version, checked by
    # _state_fingerprint) built inside a call on a small bounds-less manifold
    # were stale outside it and rebuilt on every call.
    from implicit_geom.manifolds.state import _state_fingerprint, _state_version

    tiny = ig.ImplicitManifold(lambda x: (x ** 2).sum(-1, keepdim=True) - 1e-6, 3)
    x = torch.nn.functional.normalize(
        torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        dim=-1) * 1e-3
    hashed, key = _state_fingerprint(tiny), _state_version(tiny)[0]
    with tiny.local_scale(x):
        assert tiny.tol_scale < 1.0  # the factor is in force
        assert _state_fingerprint(tiny) == hashed
        assert _state_version(tiny)[0] == key


def _cone(apex):
    a = torch.tensor(apex, dtype=torch.float64)
    return ig.ImplicitManifold(lambda x: ((x - a)[..., :2] ** 2).sum(-1, keepdim=True)
                               - (x - a)[..., 2:] ** 2, ambient_dim=3), a


@pytest.mark.parametrize("apex", [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0)])
def test_singular_point_is_no_tiny_manifold(apex):
    # Catches local_scale reading the cone x^2 + y^2 - z^2 near its apex (a
    # singular point: J -> 0, curvature ~ 1/distance) as a tiny manifold: one
    # point landing 1e-9 from the apex raised ScaleError ("curves on a length
    # of 1.49e-09") for the whole batch, and belongs refused points 2e-8 off
    # the cone near the apex that the release accepted.
    cone, a = _cone(apex)
    pts = a + torch.tensor([[1.0, 0.0, 1.05], [0.6, 0.8, 0.95], [1e-9, 0.0, 1.1e-9]],
                           dtype=torch.float64)
    y = cone.projection(pts)
    want = a + torch.tensor([[1.025, 0.0, 1.025], [0.585, 0.78, 0.975],
                             [1.05e-9, 0.0, 1.05e-9]], dtype=torch.float64)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-15)
    off = a + torch.tensor([[0.0, 0.0, 3e-8], [1e-4, 0.0, 1e-4 + 3e-8]], dtype=torch.float64)
    assert bool(cone.belongs(off).all())
    assert not bool(cone.belongs(a + torch.tensor([0.0, 0.0, 1e-3],
                                                  dtype=torch.float64)).any())


def test_small_sphere_is_not_read_as_a_singular_point():
    # Guards the singular-point test against exempting what is tiny: both
    # forms of a small sphere (a critical point of F at the centre with value
    # -r^2; none for |x - c| - r) keep their length.
    for form in ("squared", "norm"):
        space = _unbounded_sphere(form, 1e-6, (0.0, 0.0, 0.0))
        p = 1e-6 * torch.tensor([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0]], dtype=torch.float64)
        assert not bool(space._near_singular(p).any())


def test_elongated_small_ellipsoid_is_not_read_as_a_singular_point():
    # Catches the singular-point test taking an elongated ellipsoid for a cone
    # (it asked for the normal nearly orthogonal to the way to the critical
    # point, which holds on a cigar away from its axes): semi-axes 1e-6, 1e-6,
    # 1e-4 with F in units of length^2 were "singular" everywhere, so belongs
    # kept the unit-scale atol and accepted points 1% of the width off.
    a, c = 1e-6, 1e-4
    s = torch.tensor([a, a, c], dtype=torch.float64)
    cigar = ig.ImplicitManifold(lambda x: a * a * (((x / s) ** 2).sum(-1, keepdim=True) - 1), 3)
    th = torch.tensor([0.3, 0.8, 1.2, 1.5], dtype=torch.float64)
    u = torch.stack([th.sin(), 0 * th, th.cos()], -1)
    p = s * u
    normal = u / s
    normal = normal / normal.norm(dim=-1, keepdim=True)
    assert not bool(cigar._near_singular(p).any())
    assert bool(cigar.belongs(p).all())
    assert not bool(cigar.belongs(p + 1e-2 * a * normal).any())
    # A hyperboloid far from its waist (1e-9 against 1e-6 from the centre) is a near-cone.
    hyp = ig.ImplicitManifold(lambda x: (x[..., :2] ** 2).sum(-1, keepdim=True)
                              - x[..., 2:] ** 2 - 1e-18, 3)
    q = 1e-6 * torch.tensor([[0.6, 0.8, 1.0]], dtype=torch.float64)
    q[:, 2] = (q[:, :2].square().sum(-1) - 1e-18).sqrt()
    assert bool(hyp._near_singular(q).all())


@pytest.mark.parametrize("form", ["squared", "norm"])
def test_random_point_refuses_a_draw_box_that_misses_the_manifold(form):
    # Catches random_point without bounds on a unit sphere around (1e5, 0, 0):
    # [-1, 1]^3 does not meet it and every draw landed within 1e-5 of
    # (99999, 0, 0), a silently useless sample.
    space = _unbounded_sphere(form, 1.0, (1e5, 0.0, 0.0))
    for n in (1, 20):
        torch.manual_seed(0)
        with pytest.raises(ig.ProjectionError, match="does not meet the box"):
            space.random_point(n)
    # A manifold outside the box that faces it with a wide patch still samples.
    torus = ig.ImplicitManifold(lambda x: (x[..., :2].norm(dim=-1, keepdim=True) - 2) ** 2
                                + x[..., 2:] ** 2 - 0.25, ambient_dim=3)
    plane = ig.ImplicitManifold(lambda x: x[..., :1] - 5, ambient_dim=3)
    for m in (torus, plane):
        torch.manual_seed(0)
        assert bool(m.belongs(m.random_point(3)).all())
        torch.manual_seed(0)
        assert bool(m.belongs(m.random_point()).all())


def test_random_point_refuses_a_product_factor_that_misses_the_draw_box():
    # Catches the draw-box check of a product judging the spread over all
    # coordinates: a unit sphere around (1e5, 0, 0) times a circle of radius 5
    # passed (the circle's coordinates spread), and the sphere factor was
    # sampled within 1e-5 of one point, silently.
    far = _unbounded_sphere("squared", 1.0, (1e5, 0.0, 0.0))
    circle = ig.ImplicitManifold(lambda x: (x**2).sum(-1, keepdim=True) - 25, 2)
    for n in (1, 20):
        torch.manual_seed(0)
        with pytest.raises(ig.ProjectionError, match="does not meet the box"):
            ig.product(far, circle).random_point(n)
    torch.manual_seed(0)
    both = ig.product(circle, circle)
    assert bool(both.belongs(both.random_point(5)).all())
