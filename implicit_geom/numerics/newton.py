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


def _run(step, x, residual_of, tol, max_iter):
    """Shared driver: apply ``step`` to the rows that have not yet converged.

    ``step(x_active, idx) -> (x_new, res_new)`` performs one safeguarded Newton
    iteration for the active rows; ``residual_of(x)`` gives the starting |F|.
    """
    x = x.clone()
    residual = residual_of(x)
    n_iter = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    active = residual > tol
    for _ in range(max_iter):
        if not active.any():
            break
        idx = active.nonzero().squeeze(-1)
        x_new, res_new = step(x[idx], idx)
        x[idx] = x_new
        residual[idx] = res_new
        n_iter[idx] += 1
        # NaN residuals stay "active" until max_iter and are reported unconverged.
        active[idx] = ~(res_new <= tol)
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

    def residual_of(x):
        return f_and_jac(x)[0].norm(dim=-1)

    def step(x, idx):
        value, jac = f_and_jac(x)
        res = value.norm(dim=-1)
        lam = gram_solve(jac, value, damping=res.square(), check=False)
        delta = (jac.transpose(-1, -2) @ lam.unsqueeze(-1)).squeeze(-1)
        alpha = torch.ones_like(res)
        for _ in range(max_halvings + 1):
            x_try = x - alpha[:, None] * delta
            res_try = residual_of(x_try)
            worse = ~(res_try < res) & (res > 0)
            if not worse.any():
                break
            alpha = torch.where(worse, alpha / 2, alpha)
        return x_try, res_try

    return _run(step, x0, residual_of, tol, max_iter)


def solve_along_normals(f_and_jac, y0, normals, tol=1e-10, max_iter=50):
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

    Returns
    -------
    NewtonResult
        ``x`` holds the solved positions; the multipliers are ``lam`` such that
        ``x = y0 - normals^T lam`` (recover with :func:`multipliers`).
    """
    normals_t = normals.transpose(-1, -2)

    def residual_of(y):
        return f_and_jac(y)[0].norm(dim=-1)

    def step(y, idx):
        value, jac = f_and_jac(y)
        mat = jac @ normals_t[idx]
        dlam, info = torch.linalg.solve_ex(mat, value.unsqueeze(-1))
        dlam = torch.where((info == 0)[:, None, None], dlam, torch.nan)
        y_new = y - (normals_t[idx] @ dlam).squeeze(-1)
        return y_new, residual_of(y_new)

    return _run(step, y0, residual_of, tol, max_iter)
