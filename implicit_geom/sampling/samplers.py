"""Constrained samplers on implicit manifolds: unadjusted Langevin, MALA and HMC.

All samplers share one loop: a batch of chains is one ``(n_chains, n)`` tensor,
each iteration is one batched transition, and a failed projection or a
non-reversible step is a rejection (the chain stays put) counted per chain;
no point off the manifold is ever emitted.

Step-size convention (all three samplers): ``h`` is the RATTLE step, so one
Langevin/MALA proposal is ``x - (h^2/2) grad E + h xi`` (tangent parts), landed
on M along the normals at ``x`` — time step ``h^2/2`` of
``dX = -grad E dt + sqrt(2) dW``.
"""

import math
import numbers
import time

import torch
from ..exceptions import InvalidPointError, ProjectionError
from ..numerics.linalg import tangent_projector
from ..numerics.validation import as_points, check_int
from ..progress import Progress
from .adaptation import DualAveragingStepSize
from .diagnostics import SamplerInfo, effective_sample_size
from .integrators import SolverOptions, StepStatus, rattle_step
from .targets import ConstrainedTarget

#: Every emitted sample has ``|F|`` at most this (float64); checked, not assumed.
EMIT_TOL = 1e-9
#: Default Newton cap of the position solves (see SolverOptions.max_iter).
MAX_ITER = 10
#: From this codimension on, position solves use the chord method by default:
#: a Jacobian costs about ``codim`` evaluations of F, the chord method needs one.
CHORD_CODIM = 8


def _is_real(value):
    """A real number, numpy's included (``np.float32(0.1)``); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _ConstrainedSampler:
    """Shared machinery; subclasses implement :meth:`_transition`.

    Parameters
    ----------
    manifold : ImplicitManifold or geomstats LevelSet
    energy : callable or torch.nn.Module, optional
        ``(B, n) -> (B,)``; None for the uniform distribution.
    step_size : float
        RATTLE step ``h`` (see module docstring).
    seed : int or torch.Generator, optional
        An int seeds a generator created on the chains' device at the first
        call and reused by later calls (a run is reproducible as a sequence of
        calls); a Generator is used as given (it must live on that device).
    tol : float, optional
        Newton target ``|F|`` of every new point; default
        ``min(manifold.tol, 1e-10)``; must not exceed ``EMIT_TOL``. The chains
        run in the manifold's dtype, and ``tol`` (with ``EMIT_TOL``) is floored
        at ``64 eps`` of that dtype, ``reverse_tol`` at ``1000 eps``.
    max_iter : int, optional
        Newton iteration cap of each position solve; default
        ``min(manifold.max_iter, 10)`` (see :class:`SolverOptions`).
    reverse_tol : float
        Tolerance of the reversibility check on ``|x_back - x|``.
    newton : {"exact", "chord"}, optional
        Position-solve method (:class:`SolverOptions`); default ``"chord"``
        from codimension :data:`CHORD_CODIM` on (images), else ``"exact"``.
    moves : sequence of callable
        Extra Metropolis-Hastings moves run after each transition (e.g.
        :class:`~implicit_geom.sampling.ComponentJump` between connected
        components); each maps ``(sampler, state)`` to the new state.
    """

    default_target_accept = None
    default_check_reversibility = True

    def __init__(self, manifold, energy=None, step_size=0.1, seed=None, *, tol=None,
                 max_iter=None, reverse_tol=1e-8, check_reversibility=None, newton=None,
                 moves=()):
        self.moves = tuple(moves)
        if not all(callable(m) for m in self.moves):
            raise TypeError("moves must be callables (sampler, state) -> state")
        self.target = ConstrainedTarget(manifold, energy)
        self.manifold = self.target.manifold
        if not (_is_real(step_size) and math.isfinite(step_size)
                and step_size > 0):
            raise ValueError(f"step_size must be a positive float, got {step_size!r}")
        self.step_size = float(step_size)
        tol = min(self.manifold.tol, 1e-10) if tol is None else float(tol)
        if not 0 < tol <= EMIT_TOL:
            raise ValueError(f"tol must lie in (0, {EMIT_TOL:g}] so that emitted samples "
                             f"satisfy |F| <= {EMIT_TOL:g}; got {tol}")
        # A cap <= 0 or a non-positive/NaN reverse_tol would reject every step
        # silently (all chains frozen, counted as failures), and max_iter=0
        # used to fall back to the default: both are bad settings.
        if max_iter is not None:
            max_iter = check_int(max_iter, "max_iter")
        if not float(reverse_tol) > 0:
            raise ValueError(f"reverse_tol must be a positive float, got {reverse_tol!r}")
        if check_reversibility is None:
            check_reversibility = self.default_check_reversibility
        if newton is None:
            newton = "chord" if self.manifold.codim >= CHORD_CODIM else "exact"
        # The chains run in the manifold's dtype; a float32 manifold cannot
        # reach |F| <= 1e-10 or return within 1e-8: both are floored at what
        # the dtype resolves (as ImplicitManifold.tol_for; no-ops in float64).
        eps = torch.finfo(self.manifold.dtype).eps
        tol = max(tol, 64 * eps)
        # The emitted |F| is re-evaluated (plain forward, not Newton's hook):
        # twice the floor, or float32 rounding (|F| 7.69e-6 > 7.63e-6 on a
        # float32 network sphere) raised a false "internal error".
        self.emit_tol = max(EMIT_TOL, tol, 128 * eps)
        self.options = SolverOptions(
            tol=tol, max_iter=int(min(self.manifold.max_iter, MAX_ITER) if max_iter is None
                                  else max_iter),
            reverse_tol=max(float(reverse_tol), 1e3 * eps),
            check_reversibility=bool(check_reversibility), newton=newton)
        if seed is not None and not isinstance(seed, torch.Generator):
            try:
                seed = check_int(seed, "seed", minimum=None)
            except ValueError:
                raise TypeError(f"seed must be an int, a torch.Generator or None, got "
                                f"{seed!r}") from None
        self._seed = seed
        self._generator = seed if isinstance(seed, torch.Generator) else None
        self._rng_device = None

    # ---------------------------------------------------------------- plumbing
    def _rng(self, device):
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            if self._seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(self._seed)
        if device != self._rng_device:  # checked once per device, not per draw
            if self._generator.device.type != torch.device(device).type:
                raise ValueError(f"the sampler's generator lives on {self._generator.device} "
                                 f"but the chains are on {device}")
            self._rng_device = device
        return self._generator

    def _randn(self, like):
        return torch.randn(like.shape, dtype=like.dtype, device=like.device,
                           generator=self._rng(like.device))

    def _rand(self, n, like):
        return torch.rand(n, dtype=like.dtype, device=like.device,
                          generator=self._rng(like.device))

    def _tangent_gaussian(self, state):
        """Standard Gaussian on ``T_xM`` (ambient N(0, I) projected)."""
        return tangent_projector(state.jac, self._randn(state.x), check=False)

    def _initial_state(self, x0):
        """Chains as a (B, n) batch on M; off-manifold starts are projected."""
        x0 = as_points(x0, self.manifold.ambient_dim, "x0")
        if x0.ndim == 1:
            x0 = x0[None]
        if x0.ndim != 2:
            raise InvalidPointError(f"x0 must have shape (n_chains, {self.manifold.ambient_dim}); "
                                    f"got {tuple(x0.shape)}")
        x0 = x0.detach().to(self.manifold.dtype)
        state = self.target.state(x0)
        # On M as Newton and the emission check accept points: |F| <= tol, or at
        # the rounding of F there (float32 |x|^2 - 1: |F| up to 64 eps |J| |x|
        # = 2 * 64 eps, which Newton accepts and a bare |F| <= tol refused).
        off = ~self.manifold._within(state.x, state.residual, self.options.tol)
        if bool(off.any()):
            # Any nearby point of M is a valid start; the closest-point
            # refinement would only add work and ways to fail.
            res = self.manifold.solve_projection(x0[off], closest=False)
            if not bool(res.converged.all()):
                raise ProjectionError(
                    f"{int((~res.converged).sum())} of {x0.shape[0]} starting point(s) "
                    f"are off {self.manifold.name} and could not be projected onto it."
                    + self.manifold._failure_suffix(res.x[~res.converged]),
                    failed=~res.converged, residual=res.residual, points=res.x)
            idx = off.nonzero().squeeze(-1)
            state.put(idx, self.target.state(res.x))
            off = ~self.manifold._within(state.x, state.residual, self.options.tol)
            if bool(off.any()):  # the projection's own tol may be looser than ours
                raise ProjectionError(
                    f"{int(off.sum())} starting point(s) projected only to |F| = "
                    f"{float(state.residual.max()):.3g} > tol = {self.options.tol:g}; "
                    "build the manifold with a smaller tol.")
        if not bool(torch.isfinite(state.energy).all() & torch.isfinite(state.grad).all()):
            raise InvalidPointError("the energy or its gradient is NaN/inf at some starting points")
        return state

    # ------------------------------------------------------------------- API
    def sample(self, x0, n_steps, n_warmup=0, thin=1, target_accept=None, progress=False):
        """Run the chains and keep every ``thin``-th state after warm-up.

        Parameters
        ----------
        x0 : array-like, shape=[n_chains, n]
            Starting points (projected onto M if they are off it).
        n_steps : int
            Iterations after warm-up.
        n_warmup : int
            Iterations whose states are discarded; the step size adapts during them
            when the sampler is Metropolis-adjusted.
        thin : int
        target_accept : float, optional
            Target mean acceptance probability of the warm-up adaptation; default
            the sampler's ``default_target_accept``.
        progress : bool
            Report progress (a bar on a terminal, periodic lines otherwise).

        Returns
        -------
        samples : torch.Tensor, shape=[n_steps // thin, n_chains, n]
        info : SamplerInfo
        """
        return self._loop(x0, n_steps, n_warmup, thin, target_accept, progress, keep=True)

    def run(self, x0, n_steps, n_warmup=0, target_accept=None, progress=False):
        """Advance the chains ``n_warmup + n_steps`` iterations, keeping only the end.

        For persistent contrastive divergence: no trajectory is stored and the
        energy's parameters receive no gradient.

        Returns
        -------
        x_final : torch.Tensor, shape=[n_chains, n]
        info : SamplerInfo
            ``ess`` is None; ``max_abs_F`` is over the final states.
        """
        return self._loop(x0, n_steps, n_warmup, 1, target_accept, progress, keep=False)

    def _loop(self, x0, n_steps, n_warmup, thin, target_accept, progress, keep):
        start = time.perf_counter()
        n_steps, n_warmup, thin = (check_int(val, name, minimum=low) for name, val, low in (
            ("n_steps", n_steps, 1), ("n_warmup", n_warmup, 0), ("thin", thin, 1)))
        if keep and n_steps < thin:  # would return no samples at all
            raise ValueError(f"thin = {thin} exceeds n_steps = {n_steps}: no sample would be kept")
        adapter = self._adapter(target_accept, n_warmup)
        state = self._initial_state(x0)
        n_chains = state.x.shape[0]
        device = state.x.device
        counts = {s: torch.zeros(n_chains, dtype=torch.long, device=device) for s in StepStatus}
        n_accepted = torch.zeros(n_chains, dtype=torch.long, device=device)
        accept_sum = torch.zeros((), dtype=torch.float64, device=device)
        n_kept = n_steps // thin if keep else 0
        samples = state.x.new_empty(n_kept, n_chains, state.x.shape[1]) if keep else None
        h = self.step_size
        with Progress(n_warmup + n_steps, type(self).__name__, enabled=progress) as bar:
            for it in range(n_warmup + n_steps):
                state, accept_prob, accepted, status = self._transition(state, h)
                for move in self.moves:
                    state = move(self, state)
                if it < n_warmup:
                    if adapter is not None:
                        h = adapter.update(float(accept_prob.mean()))
                        if it == n_warmup - 1:
                            h = adapter.final_step_size
                    bar.update()
                    continue
                n_accepted += accepted
                accept_sum += accept_prob.mean()
                for s in (StepStatus.PROJECTION_FAILED, StepStatus.NONREVERSIBLE):
                    counts[s] += status == s
                j = it - n_warmup + 1
                if keep and j % thin == 0:
                    samples[j // thin - 1] = state.x
                bar.update()
        # Re-evaluate F on what is emitted rather than trusting the solver's
        # bookkeeping: this is the figure users rely on.
        emitted = samples.reshape(-1, samples.shape[-1]) if keep else state.x
        with torch.no_grad():
            value = self.manifold._value(emitted)
            max_abs_f = float(value.abs().max()) if len(emitted) else 0.0
            # |F| <= emit_tol, or at F's rounding where Newton accepted it (the
            # manifold's one test: large coordinates, float32).
            ok = bool(self.manifold._within(emitted, value.norm(dim=-1), self.emit_tol).all())
        if not ok:  # an invariant of the step, verified
            raise ProjectionError(f"internal error: an emitted sample has |F| = {max_abs_f:.3g} "
                                  f"> {self.emit_tol:g} (and above F's rounding there)")
        ess = None
        if keep and n_kept >= 4:
            ess = _ess(samples)
        info = SamplerInfo(
            acceptance_rate=n_accepted.to(torch.float64) / n_steps,
            n_projection_failures=counts[StepStatus.PROJECTION_FAILED],
            n_nonreversible=counts[StepStatus.NONREVERSIBLE],
            max_abs_F=max_abs_f, step_size=h, ess=ess,
            wall_time=time.perf_counter() - start, n_steps=n_steps, n_warmup=n_warmup,
            thin=thin, mean_accept_prob=float(accept_sum) / n_steps)
        return (samples if keep else state.x), info

    def _adapter(self, target_accept, n_warmup):
        if target_accept is None:
            target_accept = self.default_target_accept
        if target_accept is None or n_warmup == 0:
            return None
        return DualAveragingStepSize(self.step_size, target_accept)

    def _transition(self, state, h):
        """One iteration: returns (state, accept_prob (B,), accepted (B,), status (B,))."""
        raise NotImplementedError


def _ess(samples):
    return effective_sample_size(samples.cpu()).to(samples.device)


class ConstrainedLangevin(_ConstrainedSampler):
    """Unadjusted constrained Langevin dynamics (Ross et al. 2023), as used for training.

    ``x' = x - (h^2/2) P grad E(x) + h P xi`` (``P`` the tangent projection at
    ``x``, ``xi ~ N(0, I)``), landed on M by a Newton solve for the Lagrange
    multipliers along the normals ``J(x)^T``. A failed solve leaves the chain
    where it is (counted), and so does a step to a point where the energy or
    its gradient is NaN/inf (not counted as a failure; it lowers
    ``acceptance_rate``); the reversibility check is off by default, as in the
    paper. Being unadjusted, its stationary law is biased by O(h^2); there is no
    step-size adaptation (``target_accept`` must stay None).

    Examples
    --------
    >>> sampler = ConstrainedLangevin(ImplicitSphere(2), energy, step_size=0.1, seed=0)
    >>> x_final, info = sampler.run(x0, n_steps=50)
    """

    default_check_reversibility = False

    def _adapter(self, target_accept, n_warmup):
        if target_accept is not None:
            raise ValueError("the unadjusted ConstrainedLangevin has no acceptance "
                             "probability to adapt to; leave target_accept=None")
        return None

    def _transition(self, state, h):
        # The position step moves along P_x(p - h/2 grad E) and p is not kept,
        # so the ambient Gaussian serves as is: projecting it first changes
        # nothing but the cost.
        new, _, status = rattle_step(self.target, state, self._randn(state.x),
                                     h, self.options, momentum=False)
        # A step onto a point where E or grad E is NaN/inf (outside the
        # target's support, e.g. past a log barrier) is refused, as such a
        # start is: otherwise the chain sits there and every later step fails.
        # MALA/HMC reject such proposals through their acceptance ratio.
        finite = torch.isfinite(new.energy) & torch.isfinite(new.grad).all(-1)
        accepted = status == StepStatus.OK
        if not bool(finite.all()):  # rare: spare the usual step the row selection
            accepted = accepted & finite
            new = state.where(accepted, new)
        return new, accepted.to(torch.float64), accepted, status


class ConstrainedHMC(_ConstrainedSampler):
    """Constrained Hamiltonian Monte Carlo with RATTLE and the reversibility check.

    Each iteration draws ``p ~ N(0, I)`` projected to ``T_xM``, takes
    ``n_leapfrog`` RATTLE steps (each checked for convergence and
    reversibility; a failure rejects the whole trajectory) and accepts with
    probability ``min(1, exp(H - H'))``, ``H = E(x) + |p|^2/2``. Its stationary
    law is exactly ``exp(-E)`` w.r.t. the volume of M (Lelièvre, Rousset &
    Stoltz 2019). During warm-up one global step size is tuned by dual averaging
    toward ``target_accept`` (default 0.9), then frozen.

    The default targets (0.9 here, 0.8 for MALA) are higher than the
    unconstrained optima (about 0.65 and 0.574): rejections from failed or
    non-reversible projections concentrate where the curvature or the energy
    gradient is large, and with a long step a chain that enters such a region
    sticks there, which costs far more effective samples than shorter steps.

    Parameters
    ----------
    n_leapfrog : int
        RATTLE steps per iteration.
    **kwargs
        See :class:`ConstrainedMALA`.
    """

    default_target_accept = 0.9

    def __init__(self, manifold, energy=None, step_size=0.1, seed=None, n_leapfrog=5,
                 **kwargs):
        super().__init__(manifold, energy, step_size, seed, **kwargs)
        self.n_leapfrog = check_int(n_leapfrog, "n_leapfrog")

    def _trajectory(self, state, p, h):
        """``n_leapfrog`` RATTLE steps; rows stop at their first failure."""
        status = torch.zeros(state.x.shape[0], dtype=torch.int8, device=state.x.device)
        for _ in range(self.n_leapfrog):
            alive = status == StepStatus.OK
            if bool(alive.all()):
                state, p, status = rattle_step(self.target, state, p, h, self.options)
                continue
            idx = alive.nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            sub, p_sub, st = rattle_step(self.target, state.select(idx), p[idx], h, self.options)
            state = state.clone().put(idx, sub)
            p = p.clone()
            p[idx] = p_sub
            status[idx] = st
        return state, p, status

    def _transition(self, state, h):
        p = self._tangent_gaussian(state)
        proposal, p_new, status = self._trajectory(state, p, h)
        ok = status == StepStatus.OK
        log_ratio = (state.energy + 0.5 * p.square().sum(-1)
                     - proposal.energy - 0.5 * p_new.square().sum(-1))
        log_ratio = torch.where(ok & ~torch.isnan(log_ratio), log_ratio, -math.inf)
        accept_prob = log_ratio.clamp(max=0.0).exp()
        accepted = self._rand(state.x.shape[0], state.x) < accept_prob
        return state.where(accepted, proposal), accept_prob, accepted, status


class ConstrainedMALA(ConstrainedHMC):
    """Constrained Metropolis-adjusted Langevin: one-step RATTLE HMC.

    The proposal is the unadjusted :class:`ConstrainedLangevin` move; RATTLE's
    momentum update, the reversibility check and Metropolis-Hastings make it
    exact (Zappa, Holmes-Cerfon & Goodman 2018; Lelièvre, Rousset & Stoltz
    2019). Warm-up adaptation targets an acceptance of 0.8 by default (see
    :class:`ConstrainedHMC` for why not 0.574).

    Parameters
    ----------
    manifold : ImplicitManifold or geomstats LevelSet
    energy : callable or torch.nn.Module, optional
        ``(B, n) -> (B,)``; None for the uniform distribution.
    step_size : float
        RATTLE step ``h``.
    seed : int or torch.Generator, optional
    tol, max_iter, reverse_tol : optional
        Newton tolerance (<= 1e-9), iteration cap and reversibility tolerance.

    Examples
    --------
    >>> sampler = ConstrainedMALA(Hypersphere(2), lambda x: -5 * x[:, 2], step_size=0.5, seed=0)
    >>> samples, info = sampler.sample(x0, n_steps=200, n_warmup=100)
    """

    default_target_accept = 0.8

    def __init__(self, manifold, energy=None, step_size=0.1, seed=None, **kwargs):
        super().__init__(manifold, energy, step_size, seed, n_leapfrog=1, **kwargs)
