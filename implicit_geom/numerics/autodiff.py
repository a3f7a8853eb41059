"""Batched derivatives of a map F: (..., n) -> (..., k) with reverse-mode autograd.

F is assumed row-wise (each point's value depends only on that point), which
holds for analytic maps and MLPs: then the gradient of ``sum_b F_i(x_b)`` with
respect to the batch is every point's i-th Jacobian row at once, so k backward
passes give all Jacobians. Plain autograd is used rather than ``torch.func``:
on the small batches of geodesic integration it is 5-10x faster (functorch's
per-operator overhead dominates there).

Results are detached unless ``create_graph`` is set: geometry calls on a
trained network must neither keep graphs through its weights nor touch their
``.grad`` (only gradients with respect to the points are requested).
"""

import torch


def _leaf(x):
    return x.detach().requires_grad_(True)


def jacobian(f, x, create_graph=False):
    """Value and Jacobian of ``f`` at each point of a batch.

    Parameters
    ----------
    f : callable, (B, n) -> (B, k)
    x : torch.Tensor, shape=[B, n]
    create_graph : bool
        Keep the graph (to differentiate the Jacobian further, e.g. in training).

    Returns
    -------
    value : torch.Tensor, shape=[B, k]
    jac : torch.Tensor, shape=[B, k, n]
    """
    with torch.enable_grad():
        xg = x if (create_graph and x.requires_grad) else _leaf(x)
        value = f(xg)
        k = value.shape[-1]
        if k == 1:
            (grad,) = torch.autograd.grad(value.sum(), xg, create_graph=create_graph)
            jac = grad.unsqueeze(-2)
        else:
            # All k vector-Jacobian products in one batched (vmapped) backward pass.
            eye = torch.eye(k, dtype=value.dtype, device=value.device)
            cotangents = eye[:, None, :].expand(k, *value.shape)
            (rows,) = torch.autograd.grad(value, xg, cotangents, create_graph=create_graph,
                                          is_grads_batched=True)
            jac = rows.movedim(0, -2)
    if not create_graph:
        value = value.detach()
    return value, jac


def jvp(f, x, v):
    """Value ``f(x)`` and directional derivative ``DF(x)[v]`` per point."""
    value, jac = jacobian(f, x)
    return value, (jac @ v.unsqueeze(-1)).squeeze(-1)


def second_directional_derivative(f, x, v):
    """``D^2F(x)[v, v]`` per point (the normal acceleration term of geodesics).

    Computed as ``v . grad(grad F_i . v)`` by double backward, per constraint.
    """
    with torch.enable_grad():
        xg = _leaf(x)
        value = f(xg)
        k = value.shape[-1]
        out = []
        for i in range(k):
            grad = torch.autograd.grad(value[:, i].sum(), xg, create_graph=True)[0]
            hv = torch.autograd.grad((grad * v).sum(), xg, retain_graph=i < k - 1,
                                     allow_unused=True)[0]
            out.append(torch.zeros_like(v[:, 0]) if hv is None else (hv * v).sum(-1))
    return torch.stack(out, dim=-1)


def lagrangian_hessian(f, x, lam):
    """Hessian of ``lam . F`` at each point, shape (B, n, n) (n backward passes)."""
    with torch.enable_grad():
        xg = _leaf(x)
        grad = torch.autograd.grad((f(xg) * lam).sum(), xg, create_graph=True)[0]
        n = x.shape[-1]
        if not grad.requires_grad:  # F affine in x: the Hessian is zero
            return torch.zeros(*x.shape, n, dtype=x.dtype, device=x.device)
        rows = [torch.autograd.grad(grad[:, j].sum(), xg, retain_graph=j < n - 1,
                                    allow_unused=True)[0] for j in range(n)]
    rows = [torch.zeros_like(x) if r is None else r for r in rows]
    return torch.stack(rows, dim=-2)
