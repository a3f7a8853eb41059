"""Curvature computed from the defining function (second fundamental form,
Gauss equation) against closed forms, with F a plain torch callable."""

import math

import pytest
import torch

import implicit_geom as ig
from implicit_geom.exceptions import CurvatureError, InvalidPointError
from implicit_geom.models.normalization import manifold_quadrature

R, r = 2.0, 1.0


def callable_sphere(radius=1.0, scale=1.0, dim=2):
    # scale != 1 gives |grad F| != 1 on M (catches a missing 1/|grad F|^2).
    return ig.ImplicitManifold(
        lambda x: scale * ((x * x).sum(-1, keepdim=True) - radius**2) / 2, dim + 1, 1)


def callable_torus(scale=1.0):
    def f(x):
        rho = torch.sqrt(x[..., 0] ** 2 + x[..., 1] ** 2)
        return scale * ((rho - R) ** 2 + x[..., 2] ** 2 - r * r)[..., None] / (2 * r)

    return ig.ImplicitManifold(f, 3, 1)


def torus_frame(theta, phi):
    """Points and the orthonormal (e_phi, e_theta) frame of the torus."""
    theta, phi = (torch.as_tensor(t, dtype=torch.float64) for t in (theta, phi))
    rho = R + r * theta.cos()
    pts = torch.stack([rho * phi.cos(), rho * phi.sin(), r * theta.sin()], -1)
    e_phi = torch.stack([-phi.sin(), phi.cos(), torch.zeros_like(phi)], -1)
    e_theta = torch.stack([-theta.sin() * phi.cos(), -theta.sin() * phi.sin(), theta.cos()], -1)
    return pts, e_phi, e_theta, rho


def sphere_frame(n=7, radius=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    x = radius * x / x.norm(dim=-1, keepdim=True)
    a = torch.linalg.cross(x, torch.randn(n, 3, generator=gen, dtype=torch.float64))
    b = torch.randn(n, 3, generator=gen, dtype=torch.float64)  # not tangent, not unit
    return x, a, b


@pytest.mark.parametrize("radius, expected", [(1.0, 1.0), (2.0, 0.25)])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_sphere_sectional_curvature(radius, expected, scale):
    # Before: 0 (Christoffel symbols of the constant identity metric matrix).
    sphere = callable_sphere(radius, scale)
    x, a, b = sphere_frame(radius=radius)
    k = sphere.metric.sectional_curvature(a, b, x)
    torch.testing.assert_close(k, torch.full_like(k, expected), rtol=0, atol=1e-6)


def test_torus_gaussian_curvature_and_its_derivative():
    # K = cos(theta) / (r (R + r cos theta)) takes both signs: catches a sign
    # error or an |II|^2 in place of det(II).
    torus = callable_torus(scale=2.5)
    theta = torch.linspace(-3.0, 3.0, 9, dtype=torch.float64)
    phi = torch.linspace(0.0, 6.0, 9, dtype=torch.float64)
    pts, e_phi, e_theta, rho = torus_frame(theta, phi)
    exact = theta.cos() / (r * rho)
    k = torus.metric.sectional_curvature(e_phi + 0.3 * e_theta, 2 * e_theta, pts)
    torch.testing.assert_close(k, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(torus.metric.scalar_curvature(pts), 2 * exact, rtol=0, atol=1e-6)
    # On a surface (nabla_H R)(a, b)c = dK(H) (<b, c> a - <a, c> b):
    # with H = b = c = e_theta, a = e_phi it is dK/dtheta / r * e_phi.
    d_k = -R * theta.sin() / (r * r * rho**2)
    deriv = torus.metric.curvature_derivative(e_theta, e_phi, e_theta, e_theta, pts)
    torch.testing.assert_close(deriv, d_k[:, None] * e_phi, rtol=0, atol=1e-6)


def test_ricci_scalar_and_riemann_tensor_of_spheres():
    # S^3 of radius 2 in R^4: Ric = (m - 1)/rho^2 g, scalar m (m - 1)/rho^2.
    s3 = callable_sphere(radius=2.0, dim=3)
    x = torch.tensor([[2.0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    proj = torch.eye(4, dtype=torch.float64) - x[:, :, None] * x[:, None, :] / 4
    torch.testing.assert_close(s3.metric.ricci_tensor(x), 2 / 4 * proj, rtol=0, atol=1e-12)
    torch.testing.assert_close(s3.metric.scalar_curvature(x),
                               torch.full((2,), 6 / 4, dtype=torch.float64), rtol=0,
                               atol=1e-12)
    # The tensor contracts to curvature(a, b, c) (geomstats' index convention).
    sphere = ig.ImplicitSphere(2)
    p, a, b = sphere_frame()
    c = torch.randn(7, 3, dtype=torch.float64)
    from_tensor = torch.einsum("...ijkl,...j,...k,...i->...l",
                               sphere.metric.riemann_tensor(p), a, b, c)
    torch.testing.assert_close(from_tensor, sphere.metric.curvature(a, b, c, p))
    # Constant curvature 1: R(a, b)c = <b, c> a - <a, c> b for tangent a, b, c.
    ta, tb, tc = (sphere.to_tangent(v, p) for v in (a, b, c))
    expected = (tb * tc).sum(-1, keepdim=True) * ta - (ta * tc).sum(-1, keepdim=True) * tb
    torch.testing.assert_close(from_tensor, expected, rtol=0, atol=1e-12)


def test_second_fundamental_form_and_shape_operator():
    # Radius-2 sphere: II(u, v) = -<u, v> x / 4 and <A_x(u), w> = <II(u, w), x>,
    # so A_x(u) = -u (x the outward normal, of length 2): independent closed forms.
    sphere = callable_sphere(radius=2.0, scale=5.0)
    x = torch.tensor([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    u = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    v = torch.tensor([[0.2, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    ii = sphere.metric.second_fundamental_form(u, v, x)
    torch.testing.assert_close(ii, -(u * v).sum(-1, keepdim=True) * x / 4)
    torch.testing.assert_close(sphere.metric.shape_operator(u, x, x), -u)


def test_christoffels_give_the_geodesic_equation():
    # x'' = -Gamma(v, v) must be the sphere's geodesic acceleration -|v|^2 x.
    sphere = callable_sphere(scale=2.0)
    x, a, _ = sphere_frame()
    gamma = sphere.metric.christoffels(x)
    acc = -torch.einsum("...lij,...i,...j->...l", gamma, a, a)
    torch.testing.assert_close(acc, -(a * a).sum(-1, keepdim=True) * x)


def test_undefined_curvature_raises_instead_of_answering_flat():
    sphere = ig.ImplicitSphere(2)
    p = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    with pytest.raises(CurvatureError, match="span no plane"):
        sphere.metric.sectional_curvature(a, 2 * a + p, p)  # same tangent direction
    with pytest.raises(CurvatureError):
        sphere.metric.inner_product_derivative_matrix(p)
    with pytest.raises(CurvatureError, match="base_point"):
        sphere.metric.riemann_tensor()


def test_gauss_bonnet_with_the_quadrature_area_element():
    # int K dA = 2 pi chi: 4 pi on the sphere, 0 on the torus. K comes from
    # F, dA from the quadrature rule: catches a wrong torus area element
    # (r R instead of r (R + r cos theta) gives a nonzero total) as well as
    # a wrong curvature.
    torus = ig.ImplicitTorus(R, r)
    rule = manifold_quadrature(torus, 64)
    pts = rule.points
    e_phi = torch.stack([-pts[:, 1], pts[:, 0], torch.zeros_like(pts[:, 0])], -1)
    e_z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(pts)
    k = torus.metric.sectional_curvature(e_phi, torus.to_tangent(e_z + 0.1 * pts, pts), pts)
    assert float((rule.weights * k).sum()) == pytest.approx(0.0, abs=1e-9)
    # int rho^2 dA = 4 pi^2 r R^3 + 6 pi^2 R r^3 (the r R element gives 2 pi^2 R r^3).
    rho2 = pts[:, 0] ** 2 + pts[:, 1] ** 2
    exact = 4 * math.pi**2 * r * R**3 + 6 * math.pi**2 * R * r**3
    assert float((rule.weights * rho2).sum()) == pytest.approx(exact, rel=1e-10)
    sphere = ig.ImplicitSphere(2, radius=2.0)
    srule = manifold_quadrature(sphere, 32)
    total = (srule.weights * sphere.metric.scalar_curvature(srule.points) / 2).sum()
    assert float(total) == pytest.approx(4 * math.pi, rel=1e-10)


def test_curvature_rejects_base_points_off_the_manifold():
    # Catches curvature-type methods answering with the geometry of another
    # level set at a base point off M (sectional curvature 1/4 at (2, 0, 0) on
    # the unit sphere): InvalidPointError, as log and dist raise.
    metric = callable_sphere().metric
    off = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    a = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    calls = [lambda: metric.sectional_curvature(a, b, off), lambda: metric.curvature(a, b, a, off),
             lambda: metric.second_fundamental_form(a, b, off),
             lambda: metric.shape_operator(a, off, off), lambda: metric.christoffels(off),
             lambda: metric.riemann_tensor(off), lambda: metric.ricci_tensor(off),
             lambda: metric.scalar_curvature(off),
             lambda: metric.curvature_derivative(a, b, a, b, off)]
    for call in calls:
        with pytest.raises(InvalidPointError, match="not on"):
            call()
    on = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert float(metric.sectional_curvature(a, b, on)) == pytest.approx(1.0, abs=1e-10)
