"""Curves (1-dimensional implicit manifolds): distances by arc-length tables
against closed forms and against shooting."""

import math

import pytest
import torch
from scipy.special import ellipe

import implicit_geom as ig
from implicit_geom.exceptions import DisconnectedError
from implicit_geom.manifolds.curves import CurveTraceError, _powers


def ellipse(a=2.0, b=1.0):
    # |grad F| varies along it and the curvature ranges over [b/a^2, a/b^2].
    return ig.ImplicitManifold(lambda x: (x[..., :1] / a) ** 2 + (x[..., 1:] / b) ** 2 - 1,
                               2, 1, bounds=([-1.3 * a, -1.3 * b], [1.3 * a, 1.3 * b]))


def test_quintic_hermite_basis_interpolates_its_data():
    # Catches a wrong basis coefficient: values, first and second derivatives
    # at both ends of the segment must be the data.
    from implicit_geom.manifolds.curves import _HERMITE

    coef = torch.tensor(_HERMITE, dtype=torch.float64)
    at = _powers(torch.tensor([0.0, 1.0], dtype=torch.float64)) @ coef  # (3, 2, 6)
    expected = torch.zeros(3, 2, 6, dtype=torch.float64)
    for order in range(3):
        expected[order, 0, order] = 1.0
        expected[order, 1, 3 + order] = 1.0
    torch.testing.assert_close(at, expected)


def test_ellipse_perimeter_and_arcs_against_elliptic_integrals():
    curve = ellipse()
    # Distance between the ends of the axes: a quarter of the perimeter
    # 4 a E(1 - b^2/a^2); between opposite vertices: half.
    quarter = 2.0 * ellipe(1 - 0.25)
    x = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0], [-2.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    d = curve.metric.dist(x, y)
    torch.testing.assert_close(d, torch.tensor([quarter, 2 * quarter, 2 * quarter],
                                               dtype=torch.float64), rtol=0, atol=1e-9)
    table = curve._curve_tracer().tables[0]
    assert table.closed and table.length == pytest.approx(4 * quarter, abs=1e-9)


def test_log_points_along_the_shorter_arc_and_inverts_exp():
    curve = ellipse()
    gen = torch.Generator().manual_seed(0)
    ang = 2 * math.pi * torch.rand(2, 8, generator=gen, dtype=torch.float64)
    x = torch.stack([2 * ang[0].cos(), ang[0].sin()], -1)
    y = torch.stack([2 * ang[1].cos(), ang[1].sin()], -1)
    v = curve.metric.log(y, x)
    torch.testing.assert_close(v.norm(dim=-1), curve.metric.dist(x, y))
    torch.testing.assert_close(curve.metric.exp(v, x), y, rtol=0, atol=1e-8)
    # Shooting (integrating the geodesic equation) agrees where it converges.
    near = v.norm(dim=-1) < 1.5
    torch.testing.assert_close(curve.metric._shoot(x[near], y[near]), v[near],
                               rtol=0, atol=1e-8)


def test_open_curve_arc_length():
    # Parabola y = x^2 from (0, 0) to (1, 1): (2 sqrt 5 + asinh 2) / 4.
    parabola = ig.ImplicitManifold(lambda x: x[..., 1:] - x[..., :1] ** 2, 2, 1,
                                   bounds=([-1.2, -0.5], [1.2, 1.5]))
    d = parabola.metric.dist(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert float(d) == pytest.approx((2 * math.sqrt(5) + math.asinh(2)) / 4, abs=1e-10)
    assert not parabola._curve_tracer().tables[0].closed


def test_separate_closed_curves_are_disconnected_without_labels():
    # Two circles as the zero set of one callable with no component map: the
    # tables tell them apart (dist +inf, log raises), never a finite answer.
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)

    def f(x):
        sq = ((x[..., None, :] - centres) ** 2).sum(-1) - 1.0
        return (sq[..., 0] * sq[..., 1]).unsqueeze(-1)

    curves = ig.ImplicitManifold(f, 2, 1, bounds=([-3.5, -1.5], [3.5, 1.5]))
    x = torch.tensor([[-1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[-3.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    d = curves.metric.dist(x, y)
    assert float(d[0]) == pytest.approx(math.pi, abs=1e-10) and math.isinf(float(d[1]))
    with pytest.raises(DisconnectedError):
        curves.metric.log(y, x)
    assert len(curves._curve_tracer().tables) == 2


def test_curves_that_cannot_be_tabulated_fall_back_to_shooting():
    # An open curve with no box: tracing would never stop; shooting answers.
    line = ig.ImplicitManifold(lambda x: x[..., 1:] - 0.5 * x[..., :1], 2, 1)
    with pytest.raises(CurveTraceError):
        line._curve_tracer().trace(torch.tensor([0.0, 0.0], dtype=torch.float64))
    d = line.metric.dist(torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0]))
    assert float(d) == pytest.approx(math.sqrt(5), abs=1e-10)


def test_curve_tables_follow_changes_of_F():
    # The learned manifold's tables are rebuilt after load_state_dict/.to:
    # catches a stale cache answering for the old curve.
    small = ig.ImplicitSphere(1, radius=1.0)
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(small.metric.dist(x, y)) == pytest.approx(math.pi / 2, abs=1e-10)
    small.load_state_dict(ig.ImplicitSphere(1, radius=2.0).state_dict())
    assert float(small.metric.dist(2 * x, 2 * y)) == pytest.approx(math.pi, abs=1e-10)


def test_closed_curve_shorter_than_two_steps_is_traced_once():
    # Catches a tiny circle (radius 0.01 beside one of radius 3) traced lap
    # after lap into one table: length 9 laps, dist 0.157 for pi * 0.01.
    centres = torch.tensor([[0.0, 0.0], [3.5, 0.0]], dtype=torch.float64)
    radii = torch.tensor([3.0, 0.01], dtype=torch.float64)

    def f(x):
        sq = ((x[..., None, :] - centres) ** 2).sum(-1) - radii ** 2
        return (sq / (2 * radii)).prod(-1, keepdim=True)

    curves = ig.ImplicitManifold(f, 2, 1, bounds=([-3.5, -3.5], [4.0, 3.5]))
    d = curves.metric.dist(torch.tensor([3.51, 0.0]), torch.tensor([3.49, 0.0]))
    assert float(d) == pytest.approx(math.pi * 0.01, abs=1e-10)
    assert curves._curve_tracer().tables[0].length == pytest.approx(2 * math.pi * 0.01, abs=1e-10)


@pytest.mark.parametrize("t0", [0.0, 1.0])
def test_slim_ellipse_is_tabulated(t0):
    # Catches a 40:1 ellipse that could not be traced (a step across the far
    # tip, a false close on the opposite side, nodes farther than check_tol
    # where |grad F| is small): dist fell back to shooting (+inf at 100:1) and
    # traced_curve_quadrature raised.
    a = 40.0
    perimeter = 4 * a * ellipe(1 - 1 / a ** 2)
    curve = ellipse(a, 1.0)
    start = torch.tensor([a * math.cos(t0), math.sin(t0)], dtype=torch.float64)
    table = curve._curve_tracer().trace(start)
    assert table.closed and table.length == pytest.approx(perimeter, rel=1e-11)
    d = curve.metric.dist(torch.tensor([a, 0.0]), torch.tensor([-a, 0.0]))
    assert float(d) == pytest.approx(perimeter / 2, rel=1e-11)


@pytest.mark.parametrize("start", [(math.sqrt(2), 0.0), (1.3726, 0.1940)])
def test_a_curve_through_a_singular_point_is_not_tabulated(start):
    # Lemniscate (x^2 + y^2)^2 = 2 (x^2 - y^2), crossing itself at 0 where
    # grad F = 0: catches a trace that creeps up to the crossing and turns
    # there into a table that passes its check (perimeter off by 1.5e-5).
    lemniscate = ig.ImplicitManifold(
        lambda x: ((x ** 2).sum(-1) ** 2 - 2 * (x[..., 0] ** 2 - x[..., 1] ** 2)).unsqueeze(-1),
        2, 1, bounds=([-1.6, -0.6], [1.6, 0.6]))
    with pytest.raises(CurveTraceError):
        lemniscate._curve_tracer().trace(torch.tensor(start, dtype=torch.float64))
