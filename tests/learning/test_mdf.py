"""The MDF objective: norms, exact Jacobian singular values, hinge, full loss."""

import pytest
import torch

from implicit_geom.learning import (
    MDFObjective,
    constraint_norm,
    jacobian_singular_values,
    rank_penalty,
)
from implicit_geom.numerics import autodiff


def linear_map(matrix):
    return lambda x: x @ matrix.T


def test_norms():
    v = torch.tensor([[3.0, -4.0], [0.0, 0.0]], dtype=torch.float64)
    assert constraint_norm(v, "l1").tolist() == [7.0, 0.0]
    assert constraint_norm(v, "l2").tolist() == [5.0, 0.0]
    assert constraint_norm(v, "l2_squared").tolist() == [25.0, 0.0]
    with pytest.raises(ValueError, match="norm"):
        constraint_norm(v, "linf")


def test_l2_norm_gradient_is_finite_at_zero():
    v = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    constraint_norm(v, "l2").sum().backward()
    assert torch.isfinite(v.grad).all()


def test_exact_singular_values_codim_two():
    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    values, sv = jacobian_singular_values(linear_map(a), x)
    assert torch.allclose(values, x @ a.T)
    assert torch.allclose(sv, torch.tensor([2.0, 0.5], dtype=torch.float64).expand(4, 2))


def test_codim_one_singular_value_is_gradient_norm():
    x = torch.randn(5, 2, dtype=torch.float64)
    _, sv = jacobian_singular_values(lambda y: (y**2).sum(-1, keepdim=True), x)
    assert torch.allclose(sv[:, 0], 2 * x.norm(dim=-1))


def test_rank_penalty_is_a_hinge():
    sv = torch.tensor([[0.5], [1.0], [5.0], [12.0]], dtype=torch.float64)
    assert float(rank_penalty(sv[1:3], 1.0, 10.0)) == 0.0
    assert float(rank_penalty(sv, 1.0, 10.0)) == pytest.approx((0.25 + 4.0) / 4)


def test_rank_penalty_trains_the_weights():
    layer = torch.nn.Linear(3, 1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.fill_(0.1)
    loss, terms = MDFObjective(mu=1.0, w_neg=0.0, beta=0.0)(layer, torch.randn(8, 3))
    loss.backward()
    # Raising the too-small gradient norm means growing the weights.
    assert terms["rank"] > 0 and (layer.weight.grad < 0).all()


def test_full_loss_matches_its_definition():
    a = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    f = linear_map(a)
    pos, neg, box = (torch.randn(6, 2, dtype=torch.float64) for _ in range(3))
    obj = MDFObjective(s_min=3.0, s_max=4.0, mu=2.0, w_neg=0.5, beta=0.25, mu_box=3.0,
                       box_s_min=3.0, norm="l1")
    loss, terms = obj(f, pos, neg, box)
    hinge = (3.0 - 5.0**0.5) ** 2
    expected = (f(pos).abs().mean() - 0.5 * f(neg).abs().mean() + 2.0 * hinge
                + 0.25 * f(neg).square().mean() + 3.0 * hinge)
    assert float(loss.detach()) == pytest.approx(float(expected))
    assert terms["sv_min"] == pytest.approx(5.0**0.5)


@pytest.mark.parametrize("kwargs", [dict(norm="max"), dict(s_min=2.0, s_max=1.0), dict(mu=-1.0)])
def test_bad_objective_settings(kwargs):
    with pytest.raises(ValueError):
        MDFObjective(**kwargs)


def test_orientation_penalises_slopes_against_the_normals():
    f = linear_map(torch.tensor([[2.0, 0.0]], dtype=torch.float64))  # grad F = (2, 0)
    x = torch.zeros(4, 2, dtype=torch.float64)
    normals = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]],
                           dtype=torch.float64)
    obj = MDFObjective(s_min=1.0, mu=0.0, w_neg=0.0, beta=0.0, mu_orient=3.0)
    loss, terms = obj(f, x, normals=normals)
    # Slopes 2, -2, 0 against s_min = 1 (the zero normal is left out).
    expected = (0.0 + 3.0**2 + 1.0**2) / 3
    assert terms["orientation"] == pytest.approx(expected)
    assert float(loss.detach()) == pytest.approx(3.0 * expected)
    assert obj(f, x)[1]["orientation"] == 0.0  # no normals, no term


def test_orientation_trains_the_sign_of_f():
    layer = torch.nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.0, 0.5]]))
    x = torch.zeros(8, 2, dtype=torch.float64)  # the positive term then only moves the bias
    normals = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(8, 2)
    loss, _ = MDFObjective(mu=0.0, w_neg=0.0, beta=0.0, mu_orient=1.0)(layer, x, normals=normals)
    loss.backward()
    # F decreases along +x where it should increase: the slope is pushed up,
    # which the rank term alone (|grad F| = 1.1 > s_min) would not ask for.
    assert float(layer.weight.grad[0, 0]) < 0 and float(layer.weight.grad[0, 1]) == 0


def test_orientation_needs_codim_one():
    obj = MDFObjective(mu=0.0, w_neg=0.0, beta=0.0, mu_orient=1.0)
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="codim 1"):
        obj(linear_map(torch.eye(2, 3, dtype=torch.float64)), x, normals=x)


def test_batched_jacobian_matches_singular_values():
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    values, jac = autodiff.jacobian(linear_map(a), x, create_graph=True)
    assert torch.allclose(values, x @ a.T) and torch.allclose(jac, a.expand(5, 2, 3))
    _, sv = jacobian_singular_values(linear_map(a), x)
    assert torch.allclose(sv, torch.linalg.svdvals(a).expand(5, 2))


def test_positive_term_trains_without_the_rank_penalty():
    # With mu = 0 (and no orientation) the Jacobian is taken without a graph;
    # the positive term must still pull F towards 0 on the data. Catches a
    # positive term built on the detached values of that Jacobian (its
    # gradient was silently zero). Also: rank_batch evaluates the Jacobian
    # terms on the first rows only, the positive term on all.
    from implicit_geom.learning.mdf import MDFObjective

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8, dtype=torch.float64), torch.nn.Tanh(),
                              torch.nn.Linear(8, 1, dtype=torch.float64))
    x = torch.randn(16, 2, dtype=torch.float64)
    loss, _ = MDFObjective(mu=0.0, w_neg=0.0, beta=0.0)(net, x)
    loss.backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in net.parameters())
    full, terms_full = MDFObjective(w_neg=0.0, beta=0.0)(net, x)
    sub, terms_sub = MDFObjective(w_neg=0.0, beta=0.0, rank_batch=4)(net, x)
    assert terms_sub["positive"] == pytest.approx(terms_full["positive"], rel=1e-12)
    assert terms_sub["rank"] != pytest.approx(terms_full["rank"], rel=1e-6)
