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
