r"""One constrained (RATTLE / SHAKE) step for a batch of chains, with explicit failures.

With step size ``h``, current point ``x`` (on M), tangent momentum ``p`` and
``P_x`` the orthogonal projection onto :math:`T_xM = \ker J(x)`:

1. position (SHAKE) solve: ``x' = x + h P_x(p - h/2 grad E(x)) - J(x)^T lam`` with
   ``F(x') = 0``, found by Newton on ``lam``
   (:func:`~implicit_geom.numerics.newton.solve_along_normals`);
2. velocity (RATTLE) update: ``p' = P_{x'}((x' - x)/h - h/2 grad E(x'))``;
3. optional reversibility check (Zappa, Holmes-Cerfon & Goodman 2018;
   Lelièvre, Rousset & Stoltz 2019): the same step from ``(x', -p')`` must
   converge and return to ``x`` within ``reverse_tol``. Without it the
   Newton solve may pick a different root for the reverse move and the map is
   not an involution, which biases Metropolis-Hastings.

The unadjusted constrained Langevin step of Ross et al. (2023) is step 1 with a
fresh Gaussian ``p``: ``x' = x - (h^2/2) P grad E + h P xi`` projected back
along the normals, an Euler-Maruyama step of ``dX = -grad E dt + sqrt(2) dW``
on M with ``dt = h^2 / 2``.

A row whose step fails keeps its previous state and is flagged with a
:class:`StepStatus`; nothing here returns an unconverged point.
"""

from dataclasses import dataclass
from enum import IntEnum

import torch

from ..numerics.linalg import tangent_projector
from ..numerics.newton import solve_along_normals, solve_along_normals_chord
from .targets import ChainState


class StepStatus(IntEnum):
    """Outcome of a constrained step, per chain."""

    OK = 0
    PROJECTION_FAILED = 1  # the forward position solve did not converge
    NONREVERSIBLE = 2  # the reverse solve failed or landed elsewhere


@dataclass
class SolverOptions:
    """Newton settings of the position solves and the reversibility check.

    Attributes
    ----------
    tol : float
        Target ``|F|`` of every accepted point.
    max_iter : int
        Newton iteration cap per solve. From a step of a sensible size Newton
        converges quadratically in a handful of iterations; a solve that needs
        more is (nearly always) one without a nearby root, and every batch waits
        for its slowest row, so samplers keep this cap small.
    max_halvings : int
        Backtracking halvings per Newton iteration; 0 (plain Newton, the usual
        SHAKE/RATTLE solver) is cheapest: a solve without a nearby root fails
        after ``max_iter`` single evaluations instead of stalling on halvings.
    reverse_tol : float
        Largest ``|x_back - x|`` accepted by the reversibility check.
    check_reversibility : bool
    newton : {"exact", "chord"}
        Full Newton (a Jacobian per iteration), or the chord method
        (:func:`~implicit_geom.numerics.newton.solve_along_normals_chord`: the
        Newton matrix frozen at the previous point, one Jacobian per solve),
        which is cheaper when F has many outputs. The chord method converges
        linearly, so it gets ``3 * max_iter`` (cheap) iterations; rows it does
        not finish are solved again by full Newton (same rejections as
        ``"exact"``).
    """

    tol: float = 1e-10
    max_iter: int = 50
    max_halvings: int = 0
    reverse_tol: float = 1e-8
    check_reversibility: bool = True
    newton: str = "exact"

    def __post_init__(self):
        if self.newton not in ("exact", "chord"):
            raise ValueError(f"newton must be 'exact' or 'chord', got {self.newton!r}")


def position_step(target, state, p, h, opts):
    """SHAKE position solve from ``state`` with tangent momentum ``p``.

    Returns
    -------
    NewtonResult
        ``x`` on M where ``converged``.
    """
    drift = tangent_projector(state.jac, torch.add(p, state.grad, alpha=-0.5 * h), check=False)
    y0 = torch.add(state.x, drift, alpha=h)
    if opts.newton == "chord":
        # Rows the chord method cannot finish get full Newton, so that
        # rejections are those of Newton: the chord method only saves time.
        return solve_along_normals_chord(target.value, target.value_and_jacobian, y0,
                                         state.jac, opts.tol, 3 * opts.max_iter,
                                         newton_max_iter=opts.max_iter,
                                         max_halvings=opts.max_halvings)
    return solve_along_normals(target.value_and_jacobian, y0, state.jac, opts.tol,
                               opts.max_iter, max_halvings=opts.max_halvings)


def _state_at(target, state, res, moved):
    """State at the solve's end points where ``moved``, the old state elsewhere.

    ``F`` and ``J`` come from the solve (its last iterate); only the energy is
    evaluated, at every row (old rows at their old point, so nothing is
    evaluated off M), which is cheaper than gathering and scattering a subset.
    """
    m = moved[:, None]
    x = torch.where(m, res.x, state.x)
    energy, grad = target.energy_and_grad(x)
    return ChainState(x=x, energy=torch.where(moved, energy, state.energy),
                      grad=torch.where(m, grad, state.grad),
                      jac=torch.where(m[..., None], res.jac, state.jac),
                      residual=torch.where(moved, res.residual, state.residual))


def rattle_step(target, state, p, h, opts, momentum=True):
    """One RATTLE step for a batch, with per-row failure status.

    Parameters
    ----------
    target : ConstrainedTarget
    state : ChainState
        Current points (on M), batch B.
    p : torch.Tensor, shape=[B, n]
        Momenta, tangent at ``state.x`` (the position update uses only their
        tangent part, so a step that discards momenta may pass ambient ones).
    h : float
        Step size.
    opts : SolverOptions
    momentum : bool
        Compute the new momenta (needed by HMC and by the reversibility check;
        the unadjusted Langevin step without the check skips it).

    Returns
    -------
    new_state : ChainState
        The step's end points; rows that failed keep ``state``.
    p_new : torch.Tensor or None, shape=[B, n]
        Tangent momenta at the new points (``p`` where failed); None when not
        ``momentum`` and not ``opts.check_reversibility``.
    status : torch.Tensor of int8, shape=[B]
        :class:`StepStatus` codes.
    """
    fwd = position_step(target, state, p, h, opts)
    status = torch.where(fwd.converged, int(StepStatus.OK),
                         int(StepStatus.PROJECTION_FAILED)).to(torch.int8)
    moved = fwd.converged
    new = _state_at(target, state, fwd, moved)
    if not (momentum or opts.check_reversibility):
        return new, None, status
    p_new = tangent_projector(new.jac, (new.x - state.x) / h - (0.5 * h) * new.grad,
                              check=False)
    if opts.check_reversibility and bool(moved.any()):
        idx = moved.nonzero().squeeze(-1)
        back = position_step(target, new.select(idx), -p_new[idx], h, opts)
        returned = back.converged & ((back.x - state.x[idx]).norm(dim=-1) <= opts.reverse_tol)
        status[idx] = torch.where(returned, status[idx],
                                  int(StepStatus.NONREVERSIBLE)).to(torch.int8)
        moved = status == StepStatus.OK
    new = state.where(moved, new)
    p_new = torch.where(moved[:, None], p_new, p)
    return new, p_new, status
