"""Langevin negative sampler: descends |F|, stays in the box, persists, restarts."""

import pytest
import torch

from implicit_geom import CheckpointError
from implicit_geom.learning import LangevinNegativeSampler

LOW = torch.tensor([-2.0, -2.0], dtype=torch.float64)
HIGH = torch.tensor([2.0, 2.0], dtype=torch.float64)


def circle_f(x):
    return x.square().sum(-1, keepdim=True) - 1.0


def sampler(**kwargs):
    args = dict(n_negatives=200, buffer_size=400, steps=50, step_size=0.02,
                temperature=1e-4, reinit_prob=0.0,
                generator=torch.Generator().manual_seed(0))
    args.update(kwargs)
    return LangevinNegativeSampler(LOW, HIGH, **args)


def test_chains_descend_to_the_zero_set_inside_the_box():
    s = sampler()
    before = circle_f(s.buffer).abs().mean()
    x = s.sample(circle_f)
    assert x.shape == (200, 2) and not x.requires_grad
    assert float(circle_f(x).abs().median()) < 0.1 < float(before)
    assert ((x >= LOW) & (x <= HIGH)).all()


def test_buffer_is_persistent_and_updated():
    s = sampler(n_negatives=400, steps=1)
    x = s.sample(circle_f)
    assert torch.equal(torch.sort(s.buffer, 0).values, torch.sort(x, 0).values)


def test_reinitialisation_draws_fresh_box_points():
    s = sampler(n_negatives=400, steps=0, reinit_prob=1.0)
    old = s.buffer.clone()
    x = s.sample(circle_f)
    assert not torch.isin(x[:, 0], old[:, 0]).any()


def test_state_round_trip_and_bad_state():
    s = sampler()
    s.sample(circle_f)
    t = sampler()
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.buffer, s.buffer)
    with pytest.raises(CheckpointError):
        t.load_state_dict({"buffer": torch.zeros(3, 2)})


def test_bad_settings():
    with pytest.raises(ValueError):
        sampler(n_negatives=500)
    with pytest.raises(ValueError):
        sampler(reinit_prob=1.5)


@pytest.mark.parametrize("norm", ["l2", "l1", "l2_squared"])
def test_graph_free_gradient_moves_chains_like_autograd(norm):
    # Catches a wrong gradient of the norm (sign, factor 2, F/|F|) or a
    # Jacobian used transposed in the graph-free path the MDF fit uses.
    def two_constraints(x):
        return torch.stack([x.square().sum(-1) - 1.0, x[:, 0] * x[:, 1] - 0.2], -1)

    def value_and_jacobian(x):
        jac = torch.stack([2 * x, torch.stack([x[:, 1], x[:, 0]], -1)], 1)
        return two_constraints(x), jac

    a, b = sampler(norm=norm, steps=5), sampler(norm=norm, steps=5)
    xa = a.sample(two_constraints)
    xb = b.sample(two_constraints, value_and_jacobian)
    assert torch.allclose(xa, xb, atol=1e-12)
    # One constraint (the MDF of a hypersurface) takes its own shortcut.
    c, d = sampler(norm=norm, steps=5), sampler(norm=norm, steps=5)
    xc = c.sample(circle_f)
    xd = d.sample(circle_f, lambda x: (circle_f(x), 2 * x[:, None, :]))
    assert torch.allclose(xc, xd, atol=1e-12)
