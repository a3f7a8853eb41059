"""Hand-propagated MLP Jacobians: equal to autograd for every supported network,
writable per-row outputs, autograd fallback for anything else."""

import itertools

import pytest
import torch
from torch import nn

from implicit_geom.manifolds.neural import MDFNetwork, NetworkImplicitManifold
from implicit_geom.numerics import autodiff, mlp

ACTIVATIONS = {
    "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus,
    # beta != 1 and a low threshold: both branches of softplus and its slope.
    "softplus_b2_t3": lambda: nn.Softplus(beta=2.0, threshold=3.0),
    "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
}


def sequential(widths, act, lead=False, trail=False, bias=True):
    layers = [act()] if lead else []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias, dtype=torch.float64))
        if i < len(widths) - 2 or trail:
            layers.append(act())
    return nn.Sequential(*layers)


def assert_matches_autograd(f, value, jac, x):
    ref_value, ref_jac = autodiff.jacobian(f, x)
    assert value.shape == ref_value.shape and jac.shape == ref_jac.shape
    torch.testing.assert_close(value, ref_value, rtol=0, atol=1e-12)
    torch.testing.assert_close(jac, ref_jac, rtol=0, atol=1e-12)


# n <= k runs forward mode, n > k reverse mode; depth 0 is a single Linear layer.
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("n, k", [(1, 1), (1, 3), (2, 2), (2, 5), (3, 1), (5, 2)])
def test_matches_autograd_for_every_supported_network(act, n, k):
    torch.manual_seed(n * 10 + k)
    for depth, (lead, trail), rows in itertools.product(
            (0, 1, 3), ((False, False), (True, False), (False, True)), (1, 33)):
        net = sequential([n] + [7] * depth + [k], ACTIVATIONS[act], lead, trail)
        layers = mlp.mlp_layers(net)
        assert layers is not None
        x = 3.0 * torch.randn(rows, n, dtype=torch.float64)
        value, jac = mlp.value_and_jacobian(layers, x)
        assert_matches_autograd(net, value, jac, x)


def test_nested_sequential_and_no_bias():
    torch.manual_seed(0)
    inner = sequential([4, 6, 6], nn.Tanh, trail=True, bias=False)
    net = nn.Sequential(inner, nn.Linear(6, 2, dtype=torch.float64))
    x = torch.randn(9, 4, dtype=torch.float64)
    assert_matches_autograd(net, *mlp.value_and_jacobian(mlp.mlp_layers(net), x), x)


@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("widths", [[3, 2], [1, 2], [3, 1], [3, 4, 1]])
def test_outputs_own_their_rows_and_build_no_graph(widths, rows):
    torch.manual_seed(1)
    net = sequential(widths, nn.SiLU)
    weights = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(rows, widths[0], dtype=torch.float64)
    value, jac = mlp.value_and_jacobian(mlp.mlp_layers(net), x)
    assert not value.requires_grad and not jac.requires_grad
    assert all(p.grad is None for p in net.parameters())
    before = jac[-1].clone()
    # With Linear layers only, a broadcast J would tie all rows together and a
    # view of a weight would write into the network.
    jac[0] = 0.0
    value[0] = 0.0
    if rows > 1:
        assert torch.equal(jac[-1], before)
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), weights))


class ShiftedSiLU(nn.SiLU):
    def forward(self, x):
        return super().forward(x) + 1.0


@pytest.mark.parametrize("net", [
    nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)),  # not smooth
    nn.Sequential(nn.Linear(2, 3), ShiftedSiLU(), nn.Linear(3, 1)),  # overridden forward
    nn.Sequential(nn.Tanh()),  # no Linear layer
    nn.Linear(2, 1),  # not a Sequential
    nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Softsign()), nn.Linear(3, 1)),
])
def test_unsupported_networks_are_reported(net):
    assert mlp.mlp_layers(net) is None


def mdf_model(ambient_dim, codim, hidden, activation, radial, seed):
    # The learned manifold's network and hooks, unfitted: a bare
    # NetworkImplicitManifold (an unfitted NeuralImplicitManifold refuses geometry).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NetworkImplicitManifold(MDFNetwork(ambient_dim, codim, hidden, activation,
                                                   radial), ambient_dim, codim)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a non-trivial input standardisation, as after fit
        model.net.shift.copy_(torch.randn(ambient_dim, generator=gen, dtype=torch.float64))
        model.net.scale.fill_(1.7)
    return model


@pytest.mark.parametrize("activation", ["silu", "softplus", "tanh", "gelu"])
@pytest.mark.parametrize("ambient_dim, codim", [(2, 1), (3, 1), (3, 2), (5, 3)])
def test_learned_manifold_hook_matches_autograd(activation, ambient_dim, codim):
    x = 2.0 * torch.randn(40, ambient_dim, dtype=torch.float64)
    for seed, (hidden, radial) in enumerate(itertools.product(((), (6,), (8, 8, 8)),
                                                              (0.0, 1.3))):
        model = mdf_model(ambient_dim, codim, hidden, activation, radial, seed)
        value, jac = model._value_and_jacobian(x)
        assert_matches_autograd(model._value, value, jac, x)


def test_learned_manifold_falls_back_to_autograd_for_a_custom_network():
    class Custom(MDFNetwork):
        def forward(self, x):
            return super().forward(x) + x[..., :1].sin()

    model = mdf_model(2, 1, (8, 8), "silu", 1.0, seed=3)
    custom = Custom(2, 1, (8, 8), "silu", 1.0)
    custom.load_state_dict(model.net.state_dict())
    custom.requires_grad_(False)
    model.net = custom
    x = torch.randn(25, 2, dtype=torch.float64)
    value, jac = model._value_and_jacobian(x)
    assert_matches_autograd(custom, value, jac, x)  # the sin term included


# ------------------------------------------------------------- second order
def hessian_reference(f, x):
    """Per-row Hessians of each output, (B, k, n, n), by torch.func (independent
    of the forward-mode second-order tangents under test)."""
    def one(xi):
        return torch.func.hessian(lambda z: f(z[None])[0])(xi)
    return torch.stack([one(xi) for xi in x])


# Catches a wrong act'' for any activation (e.g. SiLU's s(1-s)(2+h-2hs) with a
# sign slip, softplus' second derivative kept beyond its linear threshold), a
# dropped act' * d2H term (exact for one hidden layer, wrong from two on) and a
# wrong symmetric fill of the pair (i, j) table.
@pytest.mark.parametrize("act", ["silu", "tanh", "sigmoid", "softplus", "softplus_b2_t3",
                                 "gelu"])
@pytest.mark.parametrize("n, k, m", [(1, 1, 1), (3, 1, 2), (3, 2, 3), (4, 3, 2)])
def test_second_forms_match_torch_func_hessian(act, n, k, m):
    torch.manual_seed(7 * n + k + 31 * m)
    for depth, (lead, trail) in itertools.product((0, 1, 3), ((False, False), (True, True))):
        net = sequential([n] + [6] * depth + [k], ACTIVATIONS[act], lead, trail)
        layers = mlp.mlp_layers(net)
        assert mlp.second_order_supported(layers)
        x = 2.0 * torch.randn(5, n, dtype=torch.float64)
        dirs = torch.randn(5, m, n, dtype=torch.float64)
        value, first, second = mlp.value_and_second_forms(layers, x, dirs)
        _, ref_jac = autodiff.jacobian(net, x)
        hess = hessian_reference(net, x)
        torch.testing.assert_close(value, net(x).detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(first, ref_jac @ dirs.transpose(1, 2), rtol=0, atol=1e-11)
        ref = dirs[:, None] @ hess @ dirs.transpose(1, 2)[:, None]
        torch.testing.assert_close(second, ref, rtol=0, atol=1e-10)
        # The one-direction pass (value, Jacobian, D^2F[v, v]) agrees too;
        # it runs the reverse chain for n > k and forward mode otherwise.
        v = dirs[:, 0]
        val2, jac2, sec2 = mlp.value_jacobian_and_second(layers, x, v)
        torch.testing.assert_close(val2, value, rtol=0, atol=1e-12)
        torch.testing.assert_close(jac2, ref_jac, rtol=0, atol=1e-11)
        torch.testing.assert_close(sec2, ref[:, :, 0, 0], rtol=0, atol=1e-10)


# Batches above SECOND_FORMS_BLOCK go in blocks of rows (cache-sized passes):
# catches blocks stitched in the wrong order or axis, a last partial block
# dropped or repeated, and outputs whose shapes differ from one pass's.
def test_second_forms_in_blocks_match_one_pass(monkeypatch):
    torch.manual_seed(3)
    net = sequential([3, 6, 6, 2], nn.SiLU)
    layers = mlp.mlp_layers(net)
    x = 2.0 * torch.randn(11, 3, dtype=torch.float64)
    dirs = torch.randn(11, 3, 3, dtype=torch.float64)
    whole = mlp.value_and_second_forms(layers, x, dirs)
    monkeypatch.setattr(mlp, "SECOND_FORMS_BLOCK", 4)  # blocks of 4, 4 and 3 rows
    blocks = mlp.value_and_second_forms(layers, x, dirs)
    for a, b in zip(blocks, whole):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    ref = dirs[:, None] @ hessian_reference(net, x) @ dirs.transpose(1, 2)[:, None]
    torch.testing.assert_close(blocks[2], ref, rtol=0, atol=1e-10)


def test_second_order_support_is_reported():
    # The tanh approximation of GELU has no closed form here: callers must
    # fall back to autograd instead of getting exact-GELU curvatures.
    assert not mlp.second_order_supported(
        mlp.mlp_layers(sequential([2, 3, 1], ACTIVATIONS["gelu_tanh"])))
    assert mlp.second_order_supported(mlp.mlp_layers(sequential([2, 3, 1], nn.SiLU)))


@pytest.mark.parametrize("activation", ["silu", "tanh"])
def test_learned_manifold_second_derivatives_match_autograd(activation):
    # The MDF's own second derivatives (input standardisation, radial term):
    # catches a missing 1/scale^2, a dropped radial |w|^2 term, and a
    # Hessian hook that drifts from the geodesic equation's D^2F[v, v].
    x = 2.0 * torch.randn(6, 3, dtype=torch.float64)
    v = torch.randn(6, 3, dtype=torch.float64)
    for seed, radial in enumerate((0.0, 1.3)):
        model = mdf_model(3, 2, (8, 8), activation, radial, seed)
        hess = hessian_reference(model._value, x)  # (B, k, n, n)
        torch.testing.assert_close(model._hessians(x), hess, rtol=0, atol=1e-10)
        ref = torch.einsum("bi,bkij,bj->bk", v, hess, v)
        torch.testing.assert_close(model._second_derivative(x, v), ref, rtol=0, atol=1e-10)
        jac, sec = model._jacobian_and_second_derivative(x, v)
        torch.testing.assert_close(jac, autodiff.jacobian(model._value, x)[1], rtol=0,
                                   atol=1e-11)
        torch.testing.assert_close(sec, ref, rtol=0, atol=1e-10)
        lam = torch.randn(6, 2, dtype=torch.float64)
        torch.testing.assert_close(model._lagrangian_hessian(x, lam),
                                   torch.einsum("bk,bkij->bij", lam, hess), rtol=0, atol=1e-10)
