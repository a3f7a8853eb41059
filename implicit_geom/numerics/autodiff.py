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

from .linalg import rowdot

try:  # the engine call behind torch.autograd.grad, without its argument checks
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - other torch versions
    _engine_run_backward = None


def _grad(output, inputs, grad_output, create_graph=False, retain_graph=None):
    """``torch.autograd.grad`` for one output and one input, the checks skipped.

    The geodesic integrator differentiates F hundreds of times per geodesic
    on small batches, where the Python-side validation of autograd.grad costs
    as much as the backward pass itself. Unused inputs give None.
    """
    if _engine_run_backward is None:
        return torch.autograd.grad(output, inputs, grad_output, create_graph=create_graph,
                                   retain_graph=retain_graph, allow_unused=True)[0]
    retain = create_graph if retain_graph is None else retain_graph
    return _engine_run_backward((output,), (grad_output,), retain, create_graph, (inputs,),
                                True, False)[0]


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
            if not grad.requires_grad:  # F_i affine: no second derivative
                out.append(torch.zeros_like(v[:, 0]))
                continue
            hv = torch.autograd.grad((grad * v).sum(), xg, retain_graph=i < k - 1,
                                     allow_unused=True)[0]
            out.append(torch.zeros_like(v[:, 0]) if hv is None else (hv * v).sum(-1))
    return torch.stack(out, dim=-1)


def jacobian_and_second_derivative(f, x, v):
    """``J(x)`` (B, k, n) and ``D^2F(x)[v, v]`` (B, k) in one forward and two
    backward passes (the geodesic acceleration needs both at the same point).

    One constraint: the gradient with ``create_graph`` and one more backward
    of ``grad . v``; several: all k rows at once by a batched backward, then
    a batched second backward of the k directional derivatives.
    """
    with torch.enable_grad():
        xg = _leaf(x)
        value = f(xg)
        k = value.shape[-1]
        if k == 1:
            grad = _grad(value, xg, torch.ones_like(value), create_graph=True)
            if grad is None or not grad.requires_grad:  # constant or affine F
                jac = torch.zeros_like(x) if grad is None else grad
                return jac.detach().unsqueeze(-2), x.new_zeros(x.shape[0], 1)
            directional = rowdot(grad, v)  # J v
            hv = _grad(directional, xg, torch.ones_like(directional))
            hv = torch.zeros_like(x) if hv is None else hv
            return grad.detach().unsqueeze(-2), rowdot(hv, v)
        eye = torch.eye(k, dtype=value.dtype, device=value.device)
        (rows,) = torch.autograd.grad(value, xg, eye[:, None, :].expand(k, *value.shape),
                                      create_graph=True, is_grads_batched=True)
        jac = rows.movedim(0, -2)
        if not jac.requires_grad:  # affine F
            return jac.detach(), x.new_zeros(x.shape[0], k)
        directional = (jac * v.unsqueeze(-2)).sum(-1)  # (B, k) = J v
        (hvs,) = torch.autograd.grad(directional, xg,
                                     eye[:, None, :].expand(k, *directional.shape),
                                     is_grads_batched=True, allow_unused=True)
    hvs = torch.zeros(k, *x.shape, dtype=x.dtype, device=x.device) if hvs is None else hvs
    return jac.detach(), (hvs * v).sum(-1).t()


def lagrangian_hessian(f, x, lam):
    """Hessian of ``lam . F`` at each point, shape (B, n, n) (n backward passes)."""
    with torch.enable_grad():
        xg = _leaf(x)
        grad = torch.autograd.grad((f(xg) * lam).sum(), xg, create_graph=True)[0]
        n = x.shape[-1]
        if not grad.requires_grad:  # affine F: zero Hessian
            return x.new_zeros(x.shape[0], n, n)
        rows = [torch.autograd.grad(grad[:, j].sum(), xg, retain_graph=j < n - 1,
                                    allow_unused=True)[0] for j in range(n)]
    rows = [torch.zeros_like(x) if r is None else r for r in rows]
    return torch.stack(rows, dim=-2)


def hessians(f, x):
    """Per-constraint Hessians ``d^2 F_i / dx dx`` at each point, shape (B, k, n, n).

    ``torch.func`` (``vmap(jacfwd(jacrev(f)))``: one vectorised forward-over-
    reverse pass) for functions it can trace; others (in-place updates, data-
    dependent Python control flow) fall back to a loop of double-backward passes.
    """
    def single(point):
        return f(point.unsqueeze(0)).squeeze(0)

    with torch.no_grad():
        try:
            return torch.func.vmap(torch.func.jacfwd(torch.func.jacrev(single)))(x)
        except (RuntimeError, NotImplementedError, ValueError):
            pass
    k = f(x[:1]).shape[-1]
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    return torch.stack([lagrangian_hessian(f, x, eye[i].expand(x.shape[0], k))
                        for i in range(k)], dim=1)
