"""RATTLE step: lands on M, is reversible where it says so, flags failures honestly."""

import torch

from implicit_geom.manifolds import ImplicitSphere, ImplicitTorus
from implicit_geom.numerics.linalg import tangent_projector
from implicit_geom.sampling import ConstrainedTarget, SolverOptions, StepStatus, rattle_step
from implicit_geom.sampling.integrators import position_step

from sampling_helpers import vmf_energy


def tangent_momenta(state, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tangent_projector(state.jac, torch.randn(state.x.shape, generator=gen,
                                                    dtype=torch.float64))


def test_step_lands_on_manifold_with_tangent_momentum_and_reverses():
    target = ConstrainedTarget(ImplicitSphere(2), vmf_energy)
    torch.manual_seed(0)
    state = target.state(target.manifold.random_point(200))
    p = tangent_momenta(state)
    opts = SolverOptions(tol=1e-12, max_iter=20)
    new, p_new, status = rattle_step(target, state, p, 0.2, opts)
    assert bool((status == StepStatus.OK).all())
    assert float(target.manifold.submersion(new.x).abs().max()) <= 1e-12
    assert float((new.jac @ p_new.unsqueeze(-1)).abs().max()) < 1e-12  # tangent at x'
    # The step's displacement minus the tangent move is normal at x (SHAKE).
    move = tangent_projector(state.jac, p - 0.1 * state.grad)
    correction = new.x - state.x - 0.2 * move
    assert float(tangent_projector(state.jac, correction).abs().max()) < 1e-12
    assert float(correction.norm(dim=-1).max()) > 1e-3  # ...and not trivially zero
    back, p_back, status_back = rattle_step(target, new, -p_new, 0.2, opts)
    assert bool((status_back == StepStatus.OK).all())
    assert torch.allclose(back.x, state.x, atol=1e-9)
    assert torch.allclose(-p_back, p, atol=1e-9)

    # RATTLE is symplectic and second order: the one-step energy error is
    # O(h^3), so halving h cuts it about 8x (3x asserted, with margin).
    def energy_error(h):
        n, pn, _ = rattle_step(target, state, p, h, opts)
        return (n.energy + 0.5 * pn.square().sum(-1) - state.energy
                - 0.5 * p.square().sum(-1)).abs().mean()
    assert energy_error(0.05) < energy_error(0.1) / 3


def test_failed_projection_keeps_the_old_state():
    target = ConstrainedTarget(ImplicitSphere(2))
    torch.manual_seed(1)
    state = target.state(target.manifold.random_point(50))
    p = tangent_momenta(state)
    p = p / p.norm(dim=-1, keepdim=True)
    # A tangent move of length 1.5 on the unit sphere: the normal line misses M.
    new, p_new, status = rattle_step(target, state, p, 1.5, SolverOptions(max_iter=10))
    assert bool((status == StepStatus.PROJECTION_FAILED).all())
    assert torch.equal(new.x, state.x) and torch.equal(p_new, p)


def test_nonreversible_flag_means_the_reverse_solve_does_not_return():
    target = ConstrainedTarget(ImplicitTorus(1.0, 0.5))
    torch.manual_seed(2)
    state = target.state(target.manifold.random_point(2000))
    p = tangent_momenta(state, seed=3)
    opts = SolverOptions(max_iter=10)
    new, p_new, status = rattle_step(target, state, p, 1.2, opts)
    flagged = status == StepStatus.NONREVERSIBLE
    assert int(flagged.sum()) > 0 and int((status == StepStatus.OK).sum()) > 0
    assert torch.equal(new.x[flagged], state.x[flagged])  # rejected: not moved
    # Redo the flagged forward steps without the check and verify the claim.
    loose = SolverOptions(max_iter=10, check_reversibility=False)
    fwd, pf, st = rattle_step(target, state.select(flagged), p[flagged], 1.2, loose)
    assert bool((st == StepStatus.OK).all())
    back = position_step(target, fwd, -pf, 1.2, opts)
    missed = ~back.converged | ((back.x - state.x[flagged]).norm(dim=-1) > opts.reverse_tol)
    assert bool(missed.all())
    # ...and accepted steps do return.
    ok = status == StepStatus.OK
    back_ok = position_step(target, new.select(ok), -p_new[ok], 1.2, opts)
    assert bool(back_ok.converged.all())
    assert float((back_ok.x - state.x[ok]).norm(dim=-1).max()) <= opts.reverse_tol


def test_new_state_reuses_the_solve_and_equals_a_fresh_evaluation():
    # F and J of the new state come from the Newton solve; they must be those
    # of the new points, and failed rows must keep their whole old state.
    target = ConstrainedTarget(ImplicitTorus(1.0, 0.5), vmf_energy)
    torch.manual_seed(4)
    state = target.state(target.manifold.random_point(500))
    p = tangent_momenta(state, seed=5)
    new, _, status = rattle_step(target, state, p, 1.0,
                                 SolverOptions(max_iter=10, check_reversibility=False),
                                 momentum=False)
    ok = status == StepStatus.OK
    assert 0 < int(ok.sum()) < 500
    fresh = target.state(new.x)
    for field in ("energy", "grad", "jac", "residual"):
        torch.testing.assert_close(getattr(new, field), getattr(fresh, field),
                                   rtol=0, atol=1e-12)
    for field in ("x", "energy", "grad", "jac", "residual"):
        assert torch.equal(getattr(new, field)[~ok], getattr(state, field)[~ok])
