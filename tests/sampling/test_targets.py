"""Target: energy and gradient w.r.t. points only, shapes checked, wraps geomstats spaces."""

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere

from implicit_geom import InvalidPointError
from implicit_geom.manifolds import ImplicitManifold
from implicit_geom.sampling import ConstrainedTarget


def test_state_of_quadratic_energy_on_geomstats_sphere():
    target = ConstrainedTarget(Hypersphere(2), lambda x: 0.5 * x.square().sum(-1) + x[:, 0])
    assert isinstance(target.manifold, ImplicitManifold)
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    state = target.state(x)
    assert torch.allclose(state.energy, torch.tensor([1.5, 0.5], dtype=torch.float64))
    assert torch.allclose(state.grad, x + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert state.jac.shape == (2, 1, 3)
    assert float(state.residual.max()) < 1e-15


def test_module_energy_parameters_get_no_grad_and_none_is_uniform():
    net = torch.nn.Linear(3, 1).double()
    target = ConstrainedTarget(Hypersphere(2), net)
    x = torch.randn(5, 3, dtype=torch.float64)
    energy, grad = target.energy_and_grad(x)
    assert energy.shape == (5,) and not energy.requires_grad
    assert torch.allclose(grad, net.weight.detach().expand(5, 3))
    assert all(p.grad is None for p in net.parameters())
    zero = ConstrainedTarget(Hypersphere(2))
    energy, grad = zero.energy_and_grad(x)
    assert torch.equal(energy, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(grad, torch.zeros_like(x))


def test_wrong_energy_shape_and_type():
    target = ConstrainedTarget(Hypersphere(2), lambda x: x[:, :2])
    with pytest.raises(InvalidPointError, match="energy returned shape"):
        target.energy(torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError):
        ConstrainedTarget(Hypersphere(2), "not callable")


def test_sequential_mlp_energy_is_differentiated_exactly_without_autograd():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 16),
                              torch.nn.Softplus(), torch.nn.Linear(16, 1)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    fast = ConstrainedTarget(Hypersphere(2), net).energy_and_grad(x)
    ref = ConstrainedTarget(Hypersphere(2), lambda p: net(p)).energy_and_grad(x)  # autograd
    for a, b in zip(fast, ref):
        assert a.shape == b.shape and not a.requires_grad
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(InvalidPointError, match="energy returned shape"):
        wide = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
        ConstrainedTarget(Hypersphere(2), wide).energy_and_grad(x)


def test_state_reuses_a_given_value_and_jacobian():
    target = ConstrainedTarget(Hypersphere(2), lambda x: x[:, 0])
    x = torch.tensor([[0.0, 0.6, 0.8]], dtype=torch.float64)
    value, jac = target.value_and_jacobian(x)
    state = target.state(x, 2 * value + 1e-3, 2 * jac)  # deliberately not F(x), J(x)
    torch.testing.assert_close(state.jac, 2 * jac)
    torch.testing.assert_close(state.residual, torch.full((1,), 1e-3, dtype=torch.float64))
    torch.testing.assert_close(target.state(x).jac, jac)


@pytest.mark.parametrize("fast", [True, False])
def test_energy_of_another_dtype_is_cast_both_ways(fast):
    # Catches float32 points fed to a float64 energy (a raw dtype-mismatch
    # RuntimeError) and float64 energies/gradients handed to float32 chains,
    # on both the graph-free MLP path and the autograd path.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(),
                              torch.nn.Linear(8, 1)).double()
    energy = net if fast else torch.nn.Sequential(net, torch.nn.Identity())  # not an MLP
    target = ConstrainedTarget(Hypersphere(2), energy)
    assert (target._energy_layers is not None) == fast
    x64 = torch.randn(5, 3, dtype=torch.float64)
    x32 = x64.float()
    e, g = target.energy_and_grad(x32)
    e_ref, g_ref = ConstrainedTarget(Hypersphere(2), net).energy_and_grad(x32.double())
    assert e.dtype == g.dtype == torch.float32
    torch.testing.assert_close(e, e_ref.float())
    torch.testing.assert_close(g, g_ref.float())
    assert target.energy(x32).dtype == torch.float32


@pytest.mark.parametrize("dim", [1, 2])
def test_plain_function_energy_with_float64_constants_on_a_float32_manifold(dim):
    # Catches a plain function (no declared dtype) holding float64 constants
    # crashing float32 chains with torch's raw dtype-mismatch RuntimeError
    # (ConstrainedTarget cast only a declared energy dtype).
    from implicit_geom import ImplicitSphere
    from implicit_geom.sampling import ConstrainedLangevin, ConstrainedMALA

    space = ImplicitSphere(dim).to(torch.float32)
    mu = torch.zeros(dim + 1, dtype=torch.float64)
    mu[-1] = 1.0
    calls = []

    def energy(x):
        calls.append(x.dtype)
        return -3.0 * (x @ mu)

    target = ConstrainedTarget(space, energy)
    x = space.random_point(16)
    assert x.dtype == torch.float32
    e, g = target.energy_and_grad(x)
    assert e.dtype == g.dtype == torch.float32
    torch.testing.assert_close(e, -3.0 * x[:, -1])
    torch.testing.assert_close(g, -3.0 * mu.float().expand_as(x))
    assert calls == [torch.float32, torch.float64]  # one failed try, then cast
    calls.clear()
    assert target.energy(x).dtype == torch.float32
    assert calls == [torch.float64]  # the found dtype is kept: no second failure
    for cls in (ConstrainedLangevin, ConstrainedMALA):
        samples, _ = cls(space, energy, step_size=0.2, seed=0).sample(x, 30)
        assert samples.dtype == torch.float32
        assert float(space.submersion(samples.reshape(-1, dim + 1)).abs().max()) < 1e-4
        assert float(samples[-1, :, -1].mean()) > 0.3  # drawn toward mu
    # An energy that fails for another reason raises its own error.
    broken = ConstrainedTarget(space, lambda p: p[:, 99])
    with pytest.raises(IndexError):
        broken.energy(x)
