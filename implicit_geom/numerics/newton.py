"""Batched Newton solvers onto the zero set of F (projection, SHAKE/RATTLE steps).

Each solver runs on the whole batch at once, freezes points as soon as they
converge, and returns a per-point converged flag: callers decide whether a
failure is an exception (geometry) or a rejection (samplers). Nothing here
returns an unconverged point as if it were on the manifold.
"""

from dataclasses import dataclass

import torch

from .linalg import gram_solve


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
    """

    x: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    n_iter: torch.Tensor


def _run(direction, f_and_jac, x0, tol, max_iter, max_halvings):
    """Shared damped-Newton driver over the rows that have not converged yet.

    ``direction(value, jac, idx) -> delta`` gives the Newton correction of the
    active rows (``x_new = x - alpha * delta``). Values and Jacobians of an
    accepted trial are kept for the next iteration, so a full step costs one
    evaluation of F and its Jacobian; a trial that does not reduce ``|F|`` is
    halved (for the offending rows only).
    """
    x = x0.clone()
    value, jac = f_and_jac(x)
    residual = value.norm(dim=-1)
    n_iter = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    active = ~(residual <= tol)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = active.nonzero().squeeze(-1)
        delta = direction(value[idx], jac[idx], idx)
        alpha = torch.ones(idx.numel(), 1, dtype=x.dtype, device=x.device)
        rows = torch.arange(idx.numel(), device=x.device)
        x_new, val_new, jac_new = x[idx].clone(), value[idx].clone(), jac[idx].clone()
        res_old = residual[idx]
        res_new = torch.full_like(res_old, torch.nan)
        stalled = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        for halving in range(max_halvings + 1):
            trial = x[idx[rows]] - alpha[rows] * delta[rows]
            v, j = f_and_jac(trial)
            r = v.norm(dim=-1)
            x_new[rows], val_new[rows], jac_new[rows], res_new[rows] = trial, v, j, r
            worse = ~(r < res_old[rows])
            if not worse.any():
                break
            rows = rows[worse]
            if halving == max_halvings:
                # No decrease even after the last halving: treat it as
                # divergence, stop paying for the row, report it unconverged.
                stalled[rows] = True
            alpha[rows] = alpha[rows] / 2
        x[idx], value[idx], jac[idx], residual[idx] = x_new, val_new, jac_new, res_new
        n_iter[idx] += 1
        active[idx] = ~(res_new <= tol) & ~stalled
    converged = residual <= tol
    return NewtonResult(x=x, converged=converged, residual=residual, n_iter=n_iter)


def newton_min_norm(f_and_jac, x0, tol=1e-10, max_iter=50, max_halvings=8):
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
        Target ``|F|``.
    max_iter : int
        Iteration cap (per point).
    max_halvings : int
        Backtracking cap per iteration.

    Returns
    -------
    NewtonResult
    """

    def direction(value, jac, idx):
        lam = gram_solve(jac, value, damping=value.norm(dim=-1).square(), check=False)
        return (jac.transpose(-1, -2) @ lam.unsqueeze(-1)).squeeze(-1)

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
    normals_t = normals.transpose(-1, -2)

    def direction(value, jac, idx):
        mat = jac @ normals_t[idx]
        if mat.shape[-1] == 1:
            dlam = value.unsqueeze(-1) / mat
        else:
            dlam, info = torch.linalg.solve_ex(mat, value.unsqueeze(-1))
            dlam = torch.where((info == 0)[:, None, None], dlam, torch.nan)
        return (normals_t[idx] @ dlam).squeeze(-1)

    return _run(direction, f_and_jac, y0, tol, max_iter, max_halvings)
