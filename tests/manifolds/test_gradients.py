"""Differentiable geometry: implicit-function gradients of projection, to_tangent,
exp, log, dist and the samplers' log-density, checked with gradcheck and
against closed forms; geomstats' GeodesicRegression(method="riemannian")."""

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere
from geomstats.learning.geodesic_regression import GeodesicRegression
from torch.autograd import gradcheck

import implicit_geom as ig
from implicit_geom.manifolds import MDFNetwork, NetworkImplicitManifold
from implicit_geom.sampling.targets import ConstrainedTarget


def callable_sphere(scale=2.0):
    return ig.ImplicitManifold(lambda x: scale * ((x * x).sum(-1, keepdim=True) - 1) / 2, 3, 1)


def pairs(n=3, seed=0, spread=0.6):
    gen = torch.Generator().manual_seed(seed)
    hyper = Hypersphere(2)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    v = spread * hyper.to_tangent(torch.randn(n, 3, generator=gen, dtype=torch.float64), x)
    return x, hyper.metric.exp(v, x), v


def leaf(t):
    return t.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("kind", ["callable", "torus"])
def test_tangential_gradient_of_dist_is_minus_log_over_dist(kind):
    # Gauss lemma; catches a gradient taken through a frozen (no_grad) solve
    # (None) or through the unrolled iterations of the shooting.
    if kind == "callable":
        space = callable_sphere()
        x, y, _ = pairs()
    else:
        space = ig.ImplicitTorus(2.0, 1.0)
        x = space.random_point(3)
        y = space.metric.exp(0.4 * space.random_tangent_vec(x), x)
    xg = leaf(x)
    d = space.metric.dist(xg, y)
    d.sum().backward()
    tangential = space.to_tangent(xg.grad, x)
    expected = -space.metric.log(y, x) / d.detach()[:, None]
    torch.testing.assert_close(tangential, expected, rtol=0, atol=1e-6)


def test_gradcheck_projection_to_tangent_exp_log_dist():
    # Numerical vs implicit-function derivatives (inputs off M go through the
    # differentiable projection, so gradcheck may perturb them freely).
    space = callable_sphere()
    x, y, v = pairs(n=2)
    proj = space.projection
    checks = {
        "projection": (lambda a: proj(a), (leaf(1.3 * x),)),
        "to_tangent": (lambda a, w: space.to_tangent(w, a), (leaf(x), leaf(v + x))),
        # w with a normal part: exp projects it, and the projection moves with a.
        "exp": (lambda a, w: space.metric.exp(w, proj(a)), (leaf(x), leaf(v + 0.3 * x))),
        "log": (lambda a, b: space.metric.log(proj(b), proj(a)), (leaf(x), leaf(y))),
        "dist": (lambda a, b: space.metric.dist(proj(a), proj(b)), (leaf(x), leaf(y))),
        "squared_dist": (lambda a, b: space.metric.squared_dist(proj(a), proj(b)),
                         (leaf(x), leaf(y))),
    }
    for name, (fn, inputs) in checks.items():
        assert gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True), name


def graph_nodes(tensor):
    seen, stack = [], [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.append(node)
            stack += [nxt for nxt, _ in node.next_functions]
    return [type(node).__name__ for node in seen]


def test_gradients_do_not_unroll_the_solvers():
    # The graph holds one node per geometric operation (plus reshapes), not
    # one per Newton/integrator/shooting iteration.
    space = callable_sphere()
    x, y, v = pairs()
    for out, name in ((space.metric.exp(leaf(v), x), "ExpBackward"),
                      (space.metric.log(y, leaf(x)), "LogBackward"),
                      (space.projection(leaf(x * 1.1)), "ClosestPointBackward")):
        nodes = graph_nodes(out)
        assert name in nodes and len(nodes) <= 6, nodes
    assert not space.metric.exp(v, x).requires_grad  # no input needs a gradient


def test_projection_gradient_in_the_parameters_of_F():
    # Closed form: the closest point on the sphere |x - c| = rho is c + rho u,
    # u = (x - c)/|x - c|: d/d rho = u, d/dc = I - rho/|x - c| (I - u u^T).
    sphere = ig.ImplicitSphere(2, radius=1.5, center=[0.2, -0.1, 0.3])
    sphere.radius.requires_grad_(True)
    sphere.center.requires_grad_(True)
    x = torch.tensor([[1.0, 2.0, -0.5]], dtype=torch.float64)
    y = sphere.projection(x)
    (g_rho,) = torch.autograd.grad(y[0, 0], sphere.radius, retain_graph=True)
    u = (x[0] - sphere.center.detach())
    dist = u.norm()
    u = u / dist
    assert float(g_rho) == pytest.approx(float(u[0]), abs=1e-10)
    (g_c,) = torch.autograd.grad(y[0, 1], sphere.center)
    jac_c = torch.eye(3, dtype=torch.float64) - 1.5 / dist * (
        torch.eye(3, dtype=torch.float64) - torch.outer(u, u))
    torch.testing.assert_close(g_c, jac_c[1], rtol=0, atol=1e-10)


def test_gradcheck_in_network_weights_and_log_density():
    # A network-defined manifold whose weights require grad: the projection
    # (and the sampler's log-density at it) differentiates through them.
    torch.manual_seed(0)
    net = MDFNetwork(2, 1, hidden=(6,), radial=1.0)
    manifold = NetworkImplicitManifold(net, 2, 1)
    x = torch.tensor([[1.1, 0.2], [-0.3, 0.9]], dtype=torch.float64)
    weight = net.net[0].weight

    def project_with(w):
        with torch.no_grad():
            weight.copy_(w.detach())
        weight.requires_grad_(True)
        out = manifold.projection(x)
        grads = torch.autograd.grad(out, weight, torch.ones_like(out), create_graph=False)
        return out, grads

    w0 = weight.detach().clone()
    out, (g,) = project_with(w0)
    # Directional derivative against a central difference in the weights.
    direction = torch.randn_like(w0)
    h = 1e-6
    plus, _ = project_with(w0 + h * direction)
    minus, _ = project_with(w0 - h * direction)
    numeric = float((plus - minus).detach().sum()) / (2 * h)
    assert float((g * direction).sum()) == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    weight.requires_grad_(False)
    with torch.no_grad():
        weight.copy_(w0)
    target = ConstrainedTarget(manifold, lambda p: (p * p).sum(-1) + p[:, 0])
    assert gradcheck(lambda p: target.log_density(p, project=True), (leaf(x),),
                     eps=1e-6, atol=1e-6, rtol=1e-5)


def test_geodesic_regression_matches_hypersphere():
    # Before: "'NoneType' object has no attribute 'detach'" (exp and dist ran
    # without gradients).
    hyper = Hypersphere(2)
    gen = torch.Generator().manual_seed(0)
    base = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    coef = torch.tensor([0.6, 0.3, 0.0], dtype=torch.float64)
    t = torch.linspace(-1, 1, 10, dtype=torch.float64)
    y = hyper.projection(hyper.metric.exp(t[:, None] * coef, base)
                         + 0.05 * torch.randn(10, 3, generator=gen, dtype=torch.float64))
    fits = {}
    for name, space in (("hyper", hyper), ("implicit", callable_sphere())):
        reg = GeodesicRegression(space, method="riemannian", initialization="frechet")
        reg.optimizer.max_iter = 30
        reg.fit(t, y)
        fits[name] = (reg.intercept_, reg.coef_)
    torch.testing.assert_close(fits["implicit"][0], fits["hyper"][0], rtol=0, atol=1e-3)
    torch.testing.assert_close(fits["implicit"][1], fits["hyper"][1], rtol=0, atol=1e-3)


def test_dist_gradient_in_point_a_is_exactly_minus_log_over_dist():
    # The docstring's promise, normal part included. Before: the gradient in
    # point_a carried a normal part (the flows of the log's derivative started
    # off M, along level sets of F; 2.7 here) while the one in point_b had
    # none, and through a projection with trainable parameters that normal
    # part entered d dist / d theta.
    space = callable_sphere()
    x, y, _ = pairs()
    xg = leaf(x)
    d = space.metric.dist(xg, y)
    (grad,) = torch.autograd.grad(d.sum(), xg)
    expected = -space.metric.log(y, x) / d.detach()[:, None]
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-6)


def test_dist_gradient_in_the_parameters_of_F():
    # d = rho * angle(a - c, b - c) between the projections of a and b onto the
    # sphere |x - c| = rho: closed-form gradients in rho and c, for a near pair
    # (shooting) and a near-antipodal one (graph + path straightening), dist
    # and squared_dist. Before: the distance moved with theta only through
    # its end points, not through the metric (d dist / d c off by up to 2.1).
    sphere = ig.ImplicitSphere(2, radius=1.5, center=[0.2, -0.1, 0.3])
    sphere.radius.requires_grad_(True)
    sphere.center.requires_grad_(True)
    a = torch.tensor([[1.0, 2.0, -0.5], [0.4, -0.7, 1.3]], dtype=torch.float64)
    b = torch.tensor([[1.3, 1.7, -0.2], [0.05, 0.45, -0.8]], dtype=torch.float64)
    rho, c = sphere.radius, sphere.center
    ua, ub = a - c, b - c
    angle = torch.arccos((ua * ub).sum(-1) / (ua.norm(dim=-1) * ub.norm(dim=-1)))
    assert float(angle[1].detach()) > 3.0  # a far pair
    for fn, closed in ((sphere.metric.dist, rho * angle),
                       (sphere.metric.squared_dist, (rho * angle) ** 2)):
        value = fn(sphere.projection(a), sphere.projection(b))
        torch.testing.assert_close(value.detach(), closed.detach(), rtol=0, atol=1e-8)
        for i in range(2):
            got = torch.autograd.grad(value[i], (rho, c), retain_graph=True)
            want = torch.autograd.grad(closed[i], (rho, c), retain_graph=True)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_dist_gradient_in_the_weights_of_a_callable_module():
    # An ellipsoid whose semi-axis is an nn.Parameter of a torch module F:
    # d/da of dist(pi(p), pi(q)) against a central difference in a (before:
    # 0.575 against 0.489).
    class Ellipsoid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

        def forward(self, x):
            return ((x[..., :1] / self.a) ** 2 + (x[..., 1:] ** 2).sum(-1, keepdim=True) - 1) / 2

    f = Ellipsoid()
    space = ig.ImplicitManifold(f, 3, 1)
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    q = torch.randn(3, 3, generator=gen, dtype=torch.float64)

    def total():
        return space.metric.dist(space.projection(p), space.projection(q)).sum()

    (grad,) = torch.autograd.grad(total(), f.a)
    h = 1e-5
    with torch.no_grad():
        f.a += h
        plus = total()
        f.a -= 2 * h
        minus = total()
        f.a += h
    assert float(grad) == pytest.approx(float(plus - minus) / (2 * h), abs=1e-7)


def test_second_derivatives_through_the_geometry_raise():
    # The backward passes run without a graph: a Hessian of dist(pi(a), y) +
    # |a|^2 silently came out as the |a|^2 part alone (2 I, the geodesic
    # part dropped); now a double backward through them raises (torch's
    # once_differentiable would not: its error node is cut off from a).
    space = callable_sphere()
    x, y, _ = pairs(n=1)
    a = leaf(1.2 * x)
    total = space.metric.dist(space.projection(a), y).sum() + (a * a).sum()
    (grad,) = torch.autograd.grad(total, a, create_graph=True)
    with pytest.raises(ig.DifferentiationError):
        torch.autograd.grad(grad[0, 0], a)


def test_dist_pairwise_is_differentiable_like_dist():
    # Before: the matrix came back with requires_grad=False from points that
    # required a gradient (the pairwise solver ran under no_grad), so a loss
    # mixing it with other terms silently lost its part of the gradient.
    space = callable_sphere()
    x, y, _ = pairs(n=2)
    points = torch.cat([x, y])
    pg = leaf(points)
    matrix = space.metric.dist_pairwise(pg)
    assert matrix.requires_grad
    torch.testing.assert_close(matrix.detach(), space.metric.dist_pairwise(points),
                               rtol=0, atol=1e-8)
    (grad,) = torch.autograd.grad(matrix[0, 1:].sum(), pg)
    qg = leaf(points)
    rows = space.metric.dist(qg[:1].expand(3, 3), qg[1:]).sum()
    (expected,) = torch.autograd.grad(rows, qg)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-7)
