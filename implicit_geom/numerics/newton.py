"""Batched Newton solvers onto the zero set of F (projection, SHAKE/RATTLE steps).

Each solver runs on the whole batch at once, freezes points as soon as they
converge, and returns a per-point converged flag: callers decide whether a
failure is an exception (geometry) or a rejection (samplers). Nothing here
returns an unconverged point as if it were on the manifold.
"""

from dataclasses import dataclass

import torch

from .linalg import gram_solve, normal_combination


@dataclass
class NewtonResult:
    """Outcome of a batched Newton solve.

    Attributes
    ----------
    x : torch.Tensor, shape=[B, n]
        Last iterate (on the zero set where ``converged``).
    converged : torch.Tensor of bool, shape=[B]
    residual : torch.Tensor, shape=[B]
        ``|F(x)|`` (Euclidean norm over the k constraints).
    n_iter : torch.Tensor of int, shape=[B]
        Newton iterations each point used.
    value : torch.Tensor, shape=[B, k], optional
        ``F(x)`` at the last iterate (the solvers here always fill it in), so
        that callers need not evaluate it again.
    jac : torch.Tensor, shape=[B, k, n], optional
        ``J(x)`` at the last iterate.
    """

    x: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    n_iter: torch.Tensor
    value: torch.Tensor = None
    jac: torch.Tensor = None


def _norm(value):
    """``|F|`` per row (the kernel itself: Tensor.norm's Python wrapper costs more here)."""
    return torch.linalg.vector_norm(value, dim=-1)


#: Multiple of ``eps |J|_F |x|`` (the rounding of F at x) below which ``|F|``
#: counts as zero whatever the solver's ``tol``: see :func:`rounding_floor`.
ROUNDING_FACTOR = 64


def rounding_floor(x, jac):
    """Smallest ``|F|`` a point ``x`` can be relied on to reach in its dtype, per row.

    Rounding x to the dtype moves it by up to about ``eps |x|``, which changes F
    by up to ``|J| eps |x|``; evaluating F adds errors of the same order for
    the usual F (e.g. ``|x|^2 - r^2``: terms ``|x|^2 ~ |J| |x| / 2``). No point
    of the dtype may have ``|F|`` below that, however close to M: the circle of
    radius 1e4 given as ``|x|^2 - r^2`` has ``|F| ~ 1e-8`` at its best points,
    so an absolute tolerance 1e-10 is unreachable there. The floor is
    :data:`ROUNDING_FACTOR` times ``eps |J|_F |x|``; a point with ``|F|`` below
    it is within about ``64 eps |x| * cond(J)`` of M (a few dozen units in the
    last place of its coordinates). At unit scale it is about 1e-14, far below
    the default tolerances, which it then leaves unchanged.

    Parameters
    ----------
    x : torch.Tensor, shape=[B, n]
    jac : torch.Tensor, shape=[B, k, n]
        ``J(x)`` (or an approximation of it, e.g. the normals of a nearby point).

    Returns
    -------
    torch.Tensor, shape=[B]
        NaN where x or J is not finite (no such point counts as converged).
    """
    return floor_from_norm(x, torch.linalg.matrix_norm(jac))


def floor_from_norm(x, jnorm):
    """:func:`rounding_floor` from ``|J|_F`` (``jnorm``, shape [B]), for callers
    that need ``|J|_F`` for :func:`tol_factor` too."""
    return (ROUNDING_FACTOR * torch.finfo(x.dtype).eps) * jnorm * _norm(x)


#: ``sigma_min(J)`` (F units per unit length) below which the tolerance on
#: ``|F|`` shrinks in proportion: see :func:`_threshold`.
JACOBIAN_REFERENCE = 0.1


def _threshold(x, jac, tol, residual):
    """Per-row convergence threshold on ``|F|`` (``residual``, the rows' ``|F|``,
    which it is compared with): ``tol`` floored at :func:`rounding_floor`.

    Exactly ``tol`` wherever the floor is below it and ``sigma_min(J) >= 0.1``
    (unit scale, well conditioned), so results there do not depend on either.

    ``tol`` is in units of F, a distance only where ``|J| ~ 1``. The point
    is within ``|J^+ F| <= |F| / sigma_min(J)`` of M, which ``|F| <= tol``
    no longer bounds where sigma_min(J) is small: F given as ``|x|^2 - r^2``
    on a sphere of radius 1e-3 (``|J| = 2e-3``) accepted points 5e-5 of the
    radius off it, and at radius 1e-6 every point of the ball. There ``tol``
    is multiplied by ``sigma_min(J) / JACOBIAN_REFERENCE``
    (:func:`tol_factor_of`): the distance to M stays below ``10 tol``.
    """
    jnorm = torch.linalg.matrix_norm(jac)
    factor = tol_factor(jnorm)
    if jac.shape[-2] > 1:
        # sigma_min <= |J|_F: only rows within tol * tol_factor(|J|_F) can be
        # decided by the sharper factor (the others fail both tests, or pass
        # by the floor alike), so its Cholesky/SVD runs on those alone: at
        # codimension 56 (digits) on every row it cost the chord step +50%.
        near = (residual <= tol * factor).nonzero().squeeze(-1)
        if near.numel():
            factor = factor.index_copy(0, near, tol_factor_of(jac.index_select(0, near),
                                                              jnorm.index_select(0, near)))
    return torch.maximum(floor_from_norm(x, jnorm), tol * factor)


def tol_factor(jnorm):
    """``min(1, |J|_F / JACOBIAN_REFERENCE)`` per row (``jnorm``: ``|J|_F``,
    shape [B]): :func:`tol_factor_of` for one constraint, where ``|J|_F``
    is ``sigma_min(J)``."""
    return (jnorm / JACOBIAN_REFERENCE).clamp(max=1.0)


def tol_factor_of(jac, jnorm=None):
    """``min(1, sigma_min(J) / JACOBIAN_REFERENCE)`` per row: what :func:`_threshold`
    multiplies ``tol`` by (``jac``: shape [B, k, n]; ``jnorm``: its ``|J|_F``
    if the caller has it). NaN where J is not finite.

    sigma_min, not ``|J|_F``: with several constraints a row of J in small
    units was hidden by the others. The circle of radius 1e-6 as
    ``[|x|^2 - 1e-12, z]`` (rows of norm 2e-6 and 1, ``|J|_F ~ 1``) kept
    the full ``tol`` and was projected 4e-4 of its radius off, and belongs
    accepted points 5% off it. Computed by an SVD only on the rows that a
    Cholesky factorisation of ``J J^T - 0.01 I`` does not certify well
    conditioned (at unit scale: none, usually); exactly 1 on those."""
    if jnorm is None:
        jnorm = torch.linalg.matrix_norm(jac)
    if jac.shape[-2] == 1:  # sigma_min(J) = |J|_F: the same bits as before
        return tol_factor(jnorm)
    factor = torch.where(torch.isfinite(jnorm), 1.0, torch.nan).to(jac.dtype)
    finite = torch.isfinite(jnorm)
    gram = jac @ jac.transpose(-1, -2)
    eye = torch.eye(jac.shape[-2], dtype=jac.dtype, device=jac.device)
    info = torch.linalg.cholesky_ex(gram - JACOBIAN_REFERENCE ** 2 * eye).info
    idx = (finite & (info != 0)).nonzero().squeeze(-1)
    if idx.numel():
        sigma = torch.linalg.svdvals(jac.index_select(0, idx))[..., -1]
        factor = factor.index_copy(0, idx, (sigma / JACOBIAN_REFERENCE).clamp(max=1.0))
    return factor


def _run(direction, f_and_jac, x0, tol, max_iter, max_halvings):
    """Shared damped-Newton driver over the rows that have not converged yet.

    ``direction(value, jac, idx) -> delta`` gives the Newton correction of the
    active rows (``x_new = x - alpha * delta``); ``idx`` indexes them in the
    batch, or is None while every row is active (which spares the gathers).
    Values and Jacobians of an accepted trial are kept for the next iteration,
    so a full step costs one evaluation of F and its Jacobian. A row whose
    trial does not reduce ``|F|`` is halved (up to ``max_halvings`` times); if
    it still does not decrease the row stops, unconverged (divergence), so a
    hopeless row costs nothing further.

    The arrays are updated out of place (``index_copy``): what ``f_and_jac``
    returns may be shared or broadcast, and the loop never writes into it.
    """
    value, jac = f_and_jac(x0)
    x, residual = x0, _norm(value)
    n_rows = x.shape[0]
    n_iter = torch.zeros(n_rows, dtype=torch.long, device=x.device)
    # |F| <= tol, or at the rounding floor of F (large coordinates): rounding_floor.
    idx = (~(residual <= _threshold(x, jac, tol, residual))).nonzero().squeeze(-1)  # the active rows
    for it in range(max_iter):
        if idx.numel() == 0:
            break
        whole = idx.numel() == n_rows
        if whole:
            x_a, val_a, jac_a, res_a = x, value, jac, residual
        else:
            x_a, val_a, jac_a, res_a = (t.index_select(0, idx) for t in (x, value, jac, residual))
        delta = direction(val_a, jac_a, None if whole else idx)
        trial = x_a - delta
        val_t, jac_t = f_and_jac(trial)
        res_t = _norm(val_t)
        if max_halvings:
            trial, val_t, jac_t, res_t = _backtrack(f_and_jac, x_a, delta, res_a, trial, val_t,
                                                    jac_t, res_t, max_halvings)
        if whole:
            x, value, jac, residual = trial, val_t, jac_t, res_t
            n_iter.fill_(it + 1)
        else:
            x, value, jac, residual = (full.index_copy(0, idx, part) for full, part in (
                (x, trial), (value, val_t), (jac, jac_t), (residual, res_t)))
            n_iter.index_fill_(0, idx, it + 1)
        # Rows go on while above tol (and the rounding floor) and still
        # decreasing (NaN stops them too).
        idx = idx.masked_select((res_t < res_a) & (res_t > _threshold(trial, jac_t, tol, res_t)))
    if x is x0:  # never return the caller's tensor
        x = x0.clone()
    converged = residual <= _threshold(x, jac, tol, residual)
    return NewtonResult(x=x, converged=converged, residual=residual, n_iter=n_iter,
                        value=value, jac=jac)


def _backtrack(f_and_jac, x_a, delta, res_a, trial, val_t, jac_t, res_t, max_halvings):
    """Halve the step of the rows whose full trial did not reduce ``|F|``.

    A row still being retried has failed every earlier trial, so all of them
    share the current step length. Rows that never decrease keep their last
    trial (the caller reports them unconverged). Returns the updated
    ``(trial, val_t, jac_t, res_t)``.
    """
    rows = (~(res_t < res_a)).nonzero().squeeze(-1)
    alpha = 1.0
    for _ in range(max_halvings):
        if rows.numel() == 0:
            break
        alpha /= 2
        x_h = x_a[rows] - alpha * delta[rows]
        v, j = f_and_jac(x_h)
        r = _norm(v)
        trial, val_t, jac_t, res_t = (full.index_copy(0, rows, part) for full, part in (
            (trial, x_h), (val_t, v), (jac_t, j), (res_t, r)))
        rows = rows[~(r < res_a[rows])]
    return trial, val_t, jac_t, res_t


def newton_min_norm(f_and_jac, x0, tol=1e-10, max_iter=50, max_halvings=8,
                    capped_damping=False):
    """Reach ``F(x) = 0`` from ``x0`` with minimum-norm Gauss-Newton steps.

    The step ``-J^T (J J^T + mu I)^{-1} F`` is the smallest displacement that
    zeroes the linearised constraint; ``mu = |F|^2`` (Levenberg-Marquardt) keeps
    it defined near singular Jacobians without spoiling quadratic convergence,
    and backtracking halves a step that does not reduce |F|.

    Parameters
    ----------
    f_and_jac : callable
        ``x (B, n) -> (F (B, k), J (B, k, n))``.
    x0 : torch.Tensor, shape=[B, n]
    tol : float
        Target ``|F|``, floored per point at :func:`rounding_floor` (large
        coordinates, where ``tol`` is below the rounding of F).
    max_iter : int
        Iteration cap (per point).
    max_halvings : int
        Backtracking cap per iteration.
    capped_damping : bool
        Cap ``mu`` at ``|J|_F^2``. ``mu = |F|^2`` is in units of F squared, ``J J^T``
        in units of (F / length) squared: a point a few length units off M
        (30% off a sphere of radius 50) gets steps ~1/|F|^2 of Newton's and
        stalls. The cap keeps every step at least about half the Gauss-Newton
        step there, and changes nothing where ``|F|^2 <= |J|^2`` (near M).

    Returns
    -------
    NewtonResult
    """

    def direction(value, jac, idx):
        damping = _norm(value).square()
        if capped_damping:
            damping = torch.minimum(damping, jac.square().sum((-2, -1)))
        lam = gram_solve(jac, value, damping=damping, check=False)
        return normal_combination(jac, lam)

    return _run(direction, f_and_jac, x0, tol, max_iter, max_halvings)


def solve_along_normals(f_and_jac, y0, normals, tol=1e-10, max_iter=50, max_halvings=0):
    """Find ``y = y0 - normals^T lam`` with ``F(y) = 0`` (SHAKE/RATTLE position solve).

    The correction is restricted to the span of the given normal directions
    (the rows of ``J(x)`` at the *previous* point), which is what makes a
    constrained integrator reversible; the k x k Newton system is
    ``J(y) normals^T dlam = F(y)``.

    Parameters
    ----------
    f_and_jac : callable
        ``x (B, n) -> (F (B, k), J (B, k, n))``.
    y0 : torch.Tensor, shape=[B, n]
        Unconstrained proposal.
    normals : torch.Tensor, shape=[B, k, n]
    tol : float
    max_iter : int
    max_halvings : int
        Backtracking cap. Default 0: a constrained integrator treats a
        non-decreasing Newton iterate as divergence (a rejected step) rather
        than paying for damped iterations.

    Returns
    -------
    NewtonResult
        ``x`` holds the solved positions (``x - y0`` lies in the span of the
        normals by construction).
    """
    if normals.shape[-2] == 1:
        normal = normals[:, 0, :]

        def direction(value, jac, idx):
            # One constraint: the k x k system is a division, and J^T dlam a
            # broadcast product (cheaper than batched 1 x 1 matmuls).
            nrm = normal if idx is None else normal.index_select(0, idx)
            return nrm * (value / (jac @ nrm.unsqueeze(-1)).squeeze(-1))
    else:
        normals_t = normals.transpose(-1, -2)

        def direction(value, jac, idx):
            nt = normals_t if idx is None else normals_t.index_select(0, idx)
            dlam, info = torch.linalg.solve_ex(jac @ nt, value.unsqueeze(-1))
            dlam = torch.where((info == 0)[:, None, None], dlam, torch.nan)
            return (nt @ dlam).squeeze(-1)

    return _run(direction, f_and_jac, y0, tol, max_iter, max_halvings)


def solve_along_normals_chord(f, f_and_jac, y0, normals, tol=1e-10, max_iter=50,
                              newton_max_iter=None, max_halvings=0):
    """:func:`solve_along_normals` by the chord (simplified Newton) method.

    The normals are the Jacobian rows at the previous point, so the Newton
    matrix ``J(y) normals^T`` is close to ``normals normals^T``; the chord
    method keeps that matrix (one Cholesky factorisation per point) and each
    iteration costs one evaluation of F only. J is evaluated once, at the end.
    For a map with k outputs a Jacobian costs about k evaluations of F, so at
    large codimension (images: k ~ 50) a solve is several times cheaper than
    full Newton. Convergence is linear with rate about (curvature x step);
    a row whose residual stops decreasing is stopped and reported
    unconverged, like a divergent Newton row, and the root found is the one
    full Newton finds (the same equation, solved to the same ``tol``).

    Parameters
    ----------
    f : callable
        ``x (B, n) -> F (B, k)``.
    f_and_jac : callable
        ``x (B, n) -> (F (B, k), J (B, k, n))``, called once at the end.
    y0 : torch.Tensor, shape=[B, n]
    normals : torch.Tensor, shape=[B, k, n]
    tol : float
    max_iter : int
        Iteration cap (cheap iterations: allow more than for full Newton).
    newton_max_iter : int, optional
        If given, the rows the chord method does not finish (a long step,
        strong curvature, a stalled linear rate) are solved again from ``y0``
        by :func:`solve_along_normals` with this cap and ``max_halvings``, so
        that which rows fail is what full Newton decides: the chord method
        then only saves time. Default: no second solve.
    max_halvings : int
        Backtracking cap of that second solve.

    Returns
    -------
    NewtonResult
        As :func:`solve_along_normals`, with ``value`` and ``jac`` at ``x``.
    """
    res = _chord(f, f_and_jac, y0, normals, tol, max_iter)
    failed = (~res.converged).nonzero().squeeze(-1)
    if newton_max_iter is None or failed.numel() == 0:
        return res
    retry = solve_along_normals(f_and_jac, y0.index_select(0, failed),
                                normals.index_select(0, failed), tol, newton_max_iter,
                                max_halvings=max_halvings)
    return NewtonResult(*(full.index_copy(0, failed, part) for full, part in (
        (res.x, retry.x), (res.converged, retry.converged), (res.residual, retry.residual),
        (res.n_iter, retry.n_iter), (res.value, retry.value), (res.jac, retry.jac))))


def _chord(f, f_and_jac, y0, normals, tol, max_iter):
    """The chord iterations of :func:`solve_along_normals_chord` (no second solve)."""
    n_rows = y0.shape[0]
    chol, info = torch.linalg.cholesky_ex(normals @ normals.transpose(-1, -2))
    usable = info == 0  # a degenerate normal space: the row fails
    # The whole chord step as one matrix per point, N^T (N N^T)^{-1} (n x k):
    # an iteration is then a batched matrix-vector product.
    step = torch.cholesky_solve(normals, chol).transpose(-1, -2)
    value = f(y0)
    x, residual = y0, _norm(value)
    n_iter = torch.zeros(n_rows, dtype=torch.long, device=x.device)
    # The iterations have no J: the normals (J at the previous point) stand in
    # for it in the rounding floor; the final test uses J at x.
    idx = (usable & ~(residual <= _threshold(x, normals, tol, residual))).nonzero().squeeze(-1)
    for it in range(max_iter):
        if idx.numel() == 0:
            break
        if idx.numel() == n_rows:  # every row active: no gathers
            x_a, val_a, res_a, op = x, value, residual, step
        else:
            x_a, val_a, res_a, op = (t.index_select(0, idx) for t in (x, value, residual, step))
        trial = x_a - (op @ val_a.unsqueeze(-1)).squeeze(-1)
        val_t = f(trial)
        res_t = _norm(val_t)
        better = res_t < res_a  # NaN compares False: stops the row
        keep = idx[better]
        x = x.index_copy(0, keep, trial[better])
        value = value.index_copy(0, keep, val_t[better])
        residual = residual.index_copy(0, keep, res_t[better])
        n_iter.index_fill_(0, keep, it + 1)
        res_k = res_t[better]
        idx = keep[res_k > _threshold(trial[better], normals.index_select(0, keep), tol, res_k)]
    if x is y0:
        x = y0.clone()
    value, jac = f_and_jac(x)
    residual = _norm(value)
    converged = usable & (residual <= _threshold(x, jac, tol, residual))
    return NewtonResult(x=x, converged=converged, residual=residual,
                        n_iter=n_iter, value=value, jac=jac)
