"""Component jumps: exact Metropolis-Hastings moves between connected components."""

import math

import pytest
import torch

from implicit_geom import ImplicitSphere, union
from implicit_geom.sampling import ComponentJump, ConstrainedMALA, monte_carlo_estimate

LEFT = torch.tensor([-1.8, 0.0], dtype=torch.float64)
RIGHT = torch.tensor([1.8, 0.0], dtype=torch.float64)


def two_circle_energy(x):
    """Von Mises modes facing each other; the right circle carries 7/3 times the left's mass."""
    right = x[:, 0] > 0
    u = x - torch.where(right[:, None], RIGHT, LEFT)
    angle = torch.atan2(u[:, 1], u[:, 0])
    loc = torch.where(right, torch.full_like(angle, math.pi), torch.zeros_like(angle))
    return -2.0 * torch.cos(angle - loc) - math.log(0.7 / 0.3) * right


def test_jumps_give_each_circle_its_share_within_two_standard_errors():
    # All chains start on the left circle; local MALA alone would keep the
    # right circle's share at 0. With jumps the share must be 0.7 within 2
    # Monte Carlo standard errors (ESS-based). Catches a missing
    # Metropolis-Hastings correction (the tangent-noise ratio or the
    # energy difference), an asymmetric choice of target component, or
    # jumps that never fire.
    circles = union(ImplicitSphere(1, center=LEFT.tolist()), ImplicitSphere(1, center=RIGHT.tolist()))
    jump = ComponentJump(torch.stack([LEFT, RIGHT]), lambda x: (x[:, 0] > 0).long(),
                         scale=0.3, prob=0.5)
    x0 = (LEFT + torch.tensor([1.0, 0.0], dtype=torch.float64)).repeat(500, 1)
    sampler = ConstrainedMALA(circles, two_circle_energy, step_size=0.5, seed=0, moves=[jump])
    samples, info = sampler.sample(x0, n_steps=300, n_warmup=100)
    share, se, ess = monte_carlo_estimate((samples[..., 0] > 0).double())
    assert ess > 1000
    assert abs(share - 0.7) < 2 * se
    assert info.max_abs_F <= 1e-9
    assert 0.05 < jump.n_accepted / jump.n_proposed < 0.9


def test_jump_from_cover_labels_and_validation():
    # from_cover: centres are the labelled points' means and a point's label is
    # its nearest cover point's; bad arguments raise.
    t = torch.linspace(0, 2 * math.pi, 50, dtype=torch.float64)[:-1]
    ring = torch.stack([t.cos(), t.sin()], -1)
    points = torch.cat([ring + LEFT, ring + RIGHT])
    labels = torch.cat([torch.zeros(49), torch.ones(49)]).long()
    jump = ComponentJump.from_cover(points, labels)
    assert torch.allclose(jump.centres, torch.stack([LEFT, RIGHT]), atol=1e-12)
    assert jump.label(torch.tensor([[1.0, 0.1], [-2.8, 0.0]], dtype=torch.float64)).tolist() == [1, 0]
    with pytest.raises(ValueError):
        ComponentJump(LEFT[None], lambda x: x[:, 0].long())
    with pytest.raises(ValueError):
        ComponentJump(torch.stack([LEFT, RIGHT]), lambda x: x[:, 0].long(), prob=0.0)
    with pytest.raises(TypeError):
        ConstrainedMALA(ImplicitSphere(1), None, moves=[object()])


def test_jump_labels_only_converged_proposals():
    # A chain at a component's reference point jumps exactly onto the other
    # circle's centre, where the Jacobian vanishes: the Newton iterate is
    # NaN/inf. Catches the label (from_cover's k-d tree, which raises on
    # non-finite points) being called on unconverged iterates: the jump must
    # be a counted rejection, the chains stay on M.
    circles = union(ImplicitSphere(1, center=LEFT.tolist()), ImplicitSphere(1, center=RIGHT.tolist()))
    t = torch.linspace(0, 2 * math.pi, 50, dtype=torch.float64)[:-1]
    ring = torch.stack([t.cos(), t.sin()], -1)
    cover = ComponentJump.from_cover(torch.cat([ring + LEFT, ring + RIGHT]),
                                     torch.cat([torch.zeros(49), torch.ones(49)]).long())
    east = torch.tensor([1.0, 0.0], dtype=torch.float64)
    jump = ComponentJump(torch.stack([LEFT + east, RIGHT]), cover.label, scale=1e-3, prob=1.0)
    sampler = ConstrainedMALA(circles, None, step_size=0.1, seed=0, moves=[jump])
    state = sampler.target.state((LEFT + east).repeat(4, 1))
    new = jump(sampler, state)
    assert jump.n_proposed == 4 and jump.n_accepted == 0
    assert torch.equal(new.x, state.x)


def test_jump_validation_of_cover_and_tolerances():
    # Catches a component number without points (its centre the NaN mean of
    # nothing, every jump to it a NaN proposal) and a NaN/negative
    # reverse_tol (every jump silently rejected) being accepted.
    t = torch.linspace(0, 2 * math.pi, 50, dtype=torch.float64)[:-1]
    ring = torch.stack([t.cos(), t.sin()], -1)
    points = torch.cat([ring + LEFT, ring + RIGHT])
    with pytest.raises(ValueError, match="labels"):
        ComponentJump.from_cover(points, torch.cat([torch.zeros(49), 2 * torch.ones(49)]).long())
    with pytest.raises(ValueError, match="labels"):
        ComponentJump.from_cover(points, torch.zeros(10).long())
    for bad in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="reverse_tol"):
            ComponentJump(torch.stack([LEFT, RIGHT]), lambda x: (x[:, 0] > 0).long(),
                          reverse_tol=bad)
    with pytest.raises(ValueError, match="centres"):
        ComponentJump(torch.stack([LEFT, torch.full((2,), float("nan"), dtype=torch.float64)]),
                      lambda x: (x[:, 0] > 0).long())
