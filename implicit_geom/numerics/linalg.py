"""Small batched linear algebra around a Jacobian J of shape (..., k, n)."""

import torch

from ..exceptions import SingularJacobianError

# Relative size of the smallest singular value of J below which the normal
# space is treated as degenerate.
SINGULAR_RTOL = 1e-10


def rowdot(a, b):
    """Row-wise dot products ``sum_i a_i b_i`` over the last axis, shape (..., 1).

    A matrix product with a column of ones: torch's reductions over a short
    last axis (n = 2, 3) cost several times more on the batches of the
    geodesic integrator.
    """
    ones = torch.ones(a.shape[-1], 1, dtype=a.dtype, device=a.device)
    return (a * b) @ ones


def gram_solve(jac, rhs, damping=None, check=True):
    """Solve ``(J J^T + damping I) y = rhs`` for each batch element.

    Parameters
    ----------
    jac : torch.Tensor, shape=[..., k, n]
    rhs : torch.Tensor, shape=[..., k] or [..., k, p]
    damping : torch.Tensor or float, optional
        Levenberg-Marquardt damping, broadcast over the batch.
    check : bool
        If True, raise :class:`SingularJacobianError` where the Gram matrix is
        (numerically) singular; if False, regularise those entries so the rest
        of the batch still solves (the caller masks them out).

    Returns
    -------
    y : torch.Tensor, same shape as ``rhs``
    """
    if jac.shape[-2] == 1:
        return _scalar_gram_solve(jac, rhs, damping, check)
    gram = jac @ jac.transpose(-1, -2)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    if damping is not None:
        damping = torch.as_tensor(damping, dtype=gram.dtype, device=gram.device)
        gram = gram + damping[..., None, None] * eye
    scale = gram.diagonal(dim1=-2, dim2=-1).amax(-1)
    chol, info = torch.linalg.cholesky_ex(gram)
    pivots = chol.diagonal(dim1=-2, dim2=-1).square().amin(-1)
    bad = (info != 0) | ~(pivots > SINGULAR_RTOL**2 * scale)
    if bad.any():
        if check:
            raise SingularJacobianError(
                f"the Jacobian of the submersion is rank deficient at {int(bad.sum())} "
                "point(s) (e.g. where components of a union meet, or a critical "
                "point of F); the normal space is not defined there."
            )
        fix = bad.to(gram.dtype) * (scale.clamp_min(1.0) * SINGULAR_RTOL)
        chol, _ = torch.linalg.cholesky_ex(gram + fix[..., None, None] * eye)
    vec = rhs.ndim == jac.ndim - 1
    out = torch.cholesky_solve(rhs.unsqueeze(-1) if vec else rhs, chol)
    return out.squeeze(-1) if vec else out


def _scalar_gram_solve(jac, rhs, damping, check):
    """Codimension 1: the Gram matrix is |grad F|^2, so a division suffices
    (batched LAPACK on 1 x 1 matrices costs far more than the arithmetic)."""
    # A norm kernel, not sum((-1, -2)): reductions over a few trailing entries
    # are slow in torch.
    sq = torch.linalg.vector_norm(jac.flatten(-2), dim=-1).square()
    bad = ~(sq > SINGULAR_RTOL**2 * sq.amax().clamp_min(1e-300)) if check else None
    if damping is not None:
        sq = sq + torch.as_tensor(damping, dtype=sq.dtype, device=sq.device)
    if check and damping is None and bool(bad.any()):
        raise SingularJacobianError(
            f"the Jacobian of the submersion is rank deficient (zero gradient) at "
            f"{int(bad.sum())} point(s) (a "
            "critical point of F, e.g. where components of a union meet); the normal "
            "space is not defined there.")
    sq = torch.where(sq > 0, sq, 1.0)
    vec = rhs.ndim == jac.ndim - 1
    return rhs / (sq[..., None] if vec else sq[..., None, None])


def normal_space_solve(jac, vector, check=True):
    """Coefficients ``lam`` of the normal component ``J^T lam`` of ``vector``."""
    return gram_solve(jac, (jac @ vector.unsqueeze(-1)).squeeze(-1), check=check)


def normal_combination(jac, lam):
    """``J^T lam``: the normal vector with coefficients ``lam`` (shape (..., n))."""
    if jac.shape[-2] == 1:  # a broadcast product beats batched 1-column matmuls
        return jac[..., 0, :] * lam
    return (jac.transpose(-1, -2) @ lam.unsqueeze(-1)).squeeze(-1)


def tangent_projector(jac, vector, check=True):
    """Orthogonal projection of ``vector`` onto ``ker J`` (the tangent space)."""
    return vector - normal_combination(jac, normal_space_solve(jac, vector, check=check))


def tangent_basis(jac):
    """Orthonormal basis of ``ker J``, shape ``(..., n, n - k)``, via a full QR of J^T."""
    k, n = jac.shape[-2:]
    q, _ = torch.linalg.qr(jac.transpose(-1, -2), mode="complete")
    return q[..., :, k:n]
