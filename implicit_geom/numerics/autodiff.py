"""Batched derivatives of a map F: (..., n) -> (..., k) with torch.func.

F is assumed row-wise (each point's output depends only on that point), which
holds for analytic maps and MLPs; this lets one forward pass serve the whole
batch and k vector-Jacobian products give every per-point Jacobian.
"""

import torch
from torch.func import vjp as _vjp, jvp as _jvp, vmap


def jacobian(f, x):
    """Value and Jacobian of ``f`` at each point of a batch.

    Parameters
    ----------
    f : callable, (B, n) -> (B, k)
    x : torch.Tensor, shape=[B, n]

    Returns
    -------
    value : torch.Tensor, shape=[B, k]
    jac : torch.Tensor, shape=[B, k, n]
    """
    value, pullback = _vjp(f, x)
    k = value.shape[-1]
    basis = torch.eye(k, dtype=value.dtype, device=value.device)
    cotangents = basis.unsqueeze(1).expand(k, *value.shape)
    (rows,) = vmap(pullback)(cotangents)
    return value, rows.movedim(0, -2)


def jvp(f, x, v):
    """Value ``f(x)`` and directional derivative ``DF(x)[v]`` per point."""
    return _jvp(f, (x,), (v,))


def second_directional_derivative(f, x, v):
    """``D^2F(x)[v, v]`` per point (the normal acceleration term of geodesics)."""

    def first(y):
        return _jvp(f, (y,), (v,))[1]

    return _jvp(first, (x,), (v,))[1]
