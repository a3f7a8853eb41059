"""Batched Newton solvers: convergence flags, caps, singular Jacobians."""

import pytest
import torch

from implicit_geom.exceptions import SingularJacobianError
from implicit_geom.numerics import autodiff
from implicit_geom.numerics.linalg import gram_solve, tangent_basis, tangent_projector
from implicit_geom.numerics.newton import newton_min_norm, solve_along_normals


def circle(x):
    return ((x * x).sum(-1, keepdim=True) - 1) / 2


def f_and_jac(x):
    return autodiff.jacobian(circle, x)


def test_min_norm_newton_converges_quadratically_with_flags():
    x0 = torch.tensor([[2.0, 0.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64)
    res = newton_min_norm(f_and_jac, x0, tol=1e-12, max_iter=30)
    assert res.converged.tolist() == [True, True, False]  # the centre is a critical point
    assert res.n_iter[:2].max() <= 6
    assert (res.residual[:2] <= 1e-12).all()
    torch.testing.assert_close(res.x[1], torch.tensor([0.6, 0.8], dtype=torch.float64))


def test_iteration_cap_is_respected():
    res = newton_min_norm(f_and_jac, torch.tensor([[100.0, 0.0]], dtype=torch.float64),
                          tol=1e-12, max_iter=2)
    assert not res.converged.item() and res.n_iter.item() == 2


def test_solve_along_normals_moves_only_along_given_normals():
    base = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    normals = f_and_jac(base)[1]  # the x-axis
    y0 = torch.tensor([[1.2, 0.5]], dtype=torch.float64)
    res = solve_along_normals(f_and_jac, y0, normals, tol=1e-12)
    assert res.converged.all()
    torch.testing.assert_close(res.x[0, 1], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(res.x.norm(), torch.tensor(1.0, dtype=torch.float64))
    # No solution along the normal line y = 1.5: reported, not returned as converged.
    bad = solve_along_normals(f_and_jac, torch.tensor([[1.0, 1.5]], dtype=torch.float64),
                              normals, tol=1e-12, max_iter=20)
    assert not bad.converged.any()


def test_linear_algebra_helpers():
    jac = torch.tensor([[[1.0, 1.0, 0.0]]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    tan = tangent_projector(jac, v)
    torch.testing.assert_close(tan, torch.tensor([[0.5, -0.5, 0.0]], dtype=torch.float64))
    basis = tangent_basis(jac)
    assert basis.shape == (1, 3, 2)
    torch.testing.assert_close(basis.transpose(1, 2) @ basis, torch.eye(2).double()[None])
    torch.testing.assert_close(jac @ basis, torch.zeros(1, 1, 2, dtype=torch.float64))
    with pytest.raises(SingularJacobianError):
        gram_solve(torch.zeros(1, 1, 3, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))


def test_autodiff_matches_closed_forms():
    x = torch.randn(5, 2, dtype=torch.float64)
    v = torch.randn(5, 2, dtype=torch.float64)
    value, jac = autodiff.jacobian(circle, x)
    torch.testing.assert_close(jac[:, 0], x)
    torch.testing.assert_close(autodiff.second_directional_derivative(circle, x, v)[:, 0],
                               (v * v).sum(-1))
    hess = autodiff.lagrangian_hessian(circle, x, torch.full((5, 1), 2.0, dtype=torch.float64))
    torch.testing.assert_close(hess, 2 * torch.eye(2).double().expand(5, 2, 2))
    assert not value.requires_grad and not jac.requires_grad


def arctan_and_jac(x):
    # F = arctan(x_0): plain Newton from |x_0| > 1.39 overshoots ever further.
    return autodiff.jacobian(lambda p: torch.atan(p[:, :1]), x)


def test_result_carries_value_and_jacobian_of_the_last_iterate():
    x0 = torch.tensor([[2.0, 0.0], [0.3, 0.4], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    res = newton_min_norm(f_and_jac, x0, tol=1e-12, max_iter=30)
    assert res.converged.tolist() == [True, True, False, True]
    value, jac = f_and_jac(res.x)
    torch.testing.assert_close(res.value, value, rtol=0, atol=1e-15)
    torch.testing.assert_close(res.jac, jac, rtol=0, atol=1e-15)
    assert res.n_iter[3] == 0 and res.x.data_ptr() != x0.data_ptr()  # a copy, even untouched


def test_halving_rescues_an_overshooting_step_and_without_it_the_row_stops():
    y0 = torch.tensor([[3.0, 0.5], [0.5, 0.5], [0.0, 0.5]], dtype=torch.float64)
    normals = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64).expand(3, 1, 2)
    plain = solve_along_normals(arctan_and_jac, y0, normals, tol=1e-12, max_iter=20)
    assert plain.converged.tolist() == [False, True, True]
    assert plain.n_iter.tolist()[0] == 1 and plain.n_iter.tolist()[2] == 0  # stalled at once
    damped = solve_along_normals(arctan_and_jac, y0, normals, tol=1e-12, max_iter=20,
                                 max_halvings=4)
    assert damped.converged.all()
    torch.testing.assert_close(damped.x[:, 0], torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(damped.x[:, 1], y0[:, 1])  # moved along the normal only
    torch.testing.assert_close(damped.x[1:], plain.x[1:])  # halving never touched these rows


def test_solve_along_two_normals():
    # The unit circle in the plane z = 0 of R^3: two constraints.
    def f(x):
        return torch.stack([((x * x).sum(-1) - 1) / 2, x[:, 2]], dim=-1)

    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    normals = autodiff.jacobian(f, base)[1]
    y0 = base + torch.tensor([[0.1, 0.3, 0.2], [-0.2, 0.1, -0.1]], dtype=torch.float64)
    res = solve_along_normals(lambda x: autodiff.jacobian(f, x), y0, normals, tol=1e-12)
    assert res.converged.all() and float(res.residual.max()) <= 1e-12
    # x - y0 lies in the span of the two normals: its tangent part vanishes.
    torch.testing.assert_close(tangent_projector(normals, res.x - y0),
                               torch.zeros_like(y0), rtol=0, atol=1e-12)


def test_chord_solve_finds_the_newton_root_at_large_codimension():
    # The chord method (Newton matrix frozen at the previous point) must land
    # on the same point of M as full Newton along the same normals, to the
    # tolerance, on a curved 8-dimensional zero set in R^64; and a step too
    # long to converge is reported, not emitted. Catches a chord step that
    # uses the wrong operator (e.g. J^T instead of J^T (J J^T)^-1) or that
    # declares convergence without re-evaluating F.
    from implicit_geom.manifolds.residual import ResidualMDFNetwork
    from implicit_geom.numerics.newton import solve_along_normals_chord

    gen = torch.Generator().manual_seed(0)
    data = torch.sin(3 * torch.rand(300, 8, generator=gen, dtype=torch.float64)) @ \
        torch.randn(8, 64, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    net = ResidualMDFNetwork(64, 56, hidden=(32,), init_gain=0.5).init_from_data(data)
    with torch.no_grad():
        start = newton_min_norm(net.value_and_jacobian, data[:50], tol=1e-12).x
        _, jac = net.value_and_jacobian(start)
        kick = 0.05 * torch.randn(50, 64, generator=gen, dtype=torch.float64)
        exact = solve_along_normals(net.value_and_jacobian, start + kick, jac, tol=1e-11)
        chord = solve_along_normals_chord(net, net.value_and_jacobian, start + kick, jac,
                                          tol=1e-11, max_iter=60)
    assert bool(exact.converged.all()) and bool(chord.converged.all())
    torch.testing.assert_close(chord.x, exact.x, rtol=0, atol=1e-9)
    assert float(net(chord.x).detach().norm(dim=-1).max()) <= 1e-11
    # The result carries F and J at the returned point.
    value, jac_end = net.value_and_jacobian(chord.x)
    torch.testing.assert_close(chord.jac, jac_end)
    # Far too long a step: no root along those normals within reach.
    with torch.no_grad():
        far = solve_along_normals_chord(net, net.value_and_jacobian, start + 50 * kick, jac,
                                        tol=1e-11, max_iter=5)
    assert not bool(far.converged.all())
    assert bool((far.residual[~far.converged] > 1e-11).all())


def test_chord_rows_it_cannot_finish_get_full_newton():
    # From the point (1, 0) of the unit circle (normal (1, 0)) two tangent
    # steps: one with a root along the normal (1 - lam = sqrt(0.75)), which two
    # linear chord iterations cannot reach to 1e-12, and one too long for any
    # root (1.5 > 1). With the Newton fallback the outcome is full Newton's:
    # the first row solved, the second reported failed. Catches a fallback
    # that is skipped, that restarts from the chord's last iterate along other
    # normals, or that turns a rootless row into a converged one.
    from implicit_geom.numerics.newton import solve_along_normals_chord

    y0 = torch.tensor([[1.0, 0.5], [1.0, 1.5]], dtype=torch.float64)
    normals = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]], dtype=torch.float64)
    newton = solve_along_normals(f_and_jac, y0, normals, tol=1e-12, max_iter=20)
    chord_only = solve_along_normals_chord(circle, f_and_jac, y0, normals, tol=1e-12, max_iter=2)
    both = solve_along_normals_chord(circle, f_and_jac, y0, normals, tol=1e-12, max_iter=2,
                                     newton_max_iter=20)
    assert newton.converged.tolist() == both.converged.tolist() == [True, False]
    assert not bool(chord_only.converged[0])
    torch.testing.assert_close(both.x[0], torch.tensor([0.75 ** 0.5, 0.5], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(both.jac[0], both.x[0:1])  # J of the circle at x is x
    assert float(both.residual[1]) > 1e-12


def test_newton_accepts_the_rounding_floor_of_large_coordinates():
    # Catches the absolute |F| <= tol test: a circle of radius 1e4 (|x|^2 - r^2)
    # has |F| ~ 1e-8 at its best float64 points, so every solve failed.
    from implicit_geom.numerics.newton import rounding_floor, solve_along_normals_chord

    r = 1e4

    def big(x):
        return (x * x).sum(-1, keepdim=True) - r * r

    def fj(x):
        return autodiff.jacobian(big, x)

    gen = torch.Generator().manual_seed(0)
    angle = 6.3 * torch.rand(64, generator=gen, dtype=torch.float64)
    x0 = r * (1 + 1e-6 * torch.rand(64, 1, generator=gen, dtype=torch.float64)) \
        * torch.stack([angle.cos(), angle.sin()], -1)
    res = newton_min_norm(fj, x0, tol=1e-10)
    assert bool(res.converged.all())
    assert bool((res.residual > 1e-10).any())  # tol itself is out of reach here
    assert bool((res.residual <= rounding_floor(res.x, res.jac)).all())
    # Checked: within the floor's 64 eps |x| of the circle.
    assert float((res.x.norm(dim=-1) / r - 1).abs().max()) <= 64 * 2.3e-16
    normals = fj(res.x)[1]
    moved = res.x + 1e-3 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    for sol in (solve_along_normals(fj, moved, normals),
                solve_along_normals_chord(big, fj, moved, normals)):
        assert bool(sol.converged.all())
    # Unit scale: the floor (~1e-14) is far below tol, which alone decides.
    unit = rounding_floor(*[torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                            f_and_jac(torch.tensor([[1.0, 0.0]], dtype=torch.float64))[1]])
    assert float(unit) < 1e-13


@pytest.mark.parametrize("r", [1e-3, 1e-6])
def test_tolerance_in_f_units_shrinks_with_a_small_jacobian(r):
    # Catches |F| <= tol read as "on M" for an F in small units: |x|^2 - r^2
    # on a circle of radius 1e-3 (|J| = 2e-3) accepted points 5e-5 of the
    # radius off it, and at radius 1e-6 every point of the disc (|F| < tol
    # at the start: no iteration at all). Below |J|_F = 0.1, tol is
    # multiplied by |J|_F / 0.1, so the distance to M stays below 10 tol.
    def small(x):
        return (x * x).sum(-1, keepdim=True) - r * r

    def fj(x):
        return autodiff.jacobian(small, x)

    gen = torch.Generator().manual_seed(0)
    x0 = r * (2 * torch.rand(64, 2, generator=gen, dtype=torch.float64) - 1)
    res = newton_min_norm(fj, x0, tol=1e-10)
    assert bool(res.converged.all())
    # Checked against the circle: within 10 tol of it (not tol / |J|).
    assert float((res.x.norm(dim=-1) - r).abs().max()) <= 10 * 1e-10
    assert bool((res.n_iter >= 1).all())
    # |J| >= 0.1 (unit scale): tol alone decides, as before.
    unit = newton_min_norm(f_and_jac, torch.tensor([[1.0 + 1e-11, 0.0]], dtype=torch.float64),
                           tol=1e-10)
    assert bool(unit.converged.all()) and int(unit.n_iter) == 0
