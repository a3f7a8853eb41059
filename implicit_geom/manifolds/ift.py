"""Gradients of projection, exp, log and dist by the implicit function theorem.

The solvers (Newton projection, geodesic integration, log shooting or any
other log solver) run without autograd; these ``torch.autograd.Function`` s
attach the exact derivative of the *converged* result, never the derivative of
the iterations that produced it:

- closest point ``y = pi(x)``: the KKT conditions ``y - x + J(y)^T lam = 0``,
  ``F(y) = 0`` define ``(y, lam)`` implicitly; their Jacobian
  ``K = [[I + sum_r lam_r H_r, J^T], [J, 0]]`` gives ``dy/dx`` (and, through
  ``dF/dtheta``, the derivative with respect to parameters of F);
- ``y = exp_x(v)``: the derivative of the geodesic flow (Jacobi fields), taken
  by central differences of perturbed geodesics integrated in one batch with a
  shared step sequence (the integrator's error cancels, ~1e-9), followed by
  the tangent projection at ``y`` (the landing on M is a normal correction);
- ``v = log_x(y)``: ``exp_x(v) = y`` with ``v`` tangent at ``x`` defines ``v``
  implicitly: ``P_y D_v exp dv = P_y (dy - D_x exp dx)`` for the tangential
  part of ``dv``, while its normal part follows from ``J(x) v = 0``. Only the
  converged ``v`` and the derivatives of exp are needed, whatever solver
  found ``v``;
- ``d = |log_x(y)|`` in the parameters of F (:func:`length_variation`): the
  first variation of the length of the geodesic as M moves with them.

The backward passes are first order only (no graph): a second derivative
through them (``create_graph=True``) raises :class:`DifferentiationError`
(:func:`first_order_only`) rather than silently leave their part out of a
Hessian.

Exp and Log differentiate in their points and vectors only, not in the
parameters of F (dist does, through :func:`length_variation`).
"""

import torch

from ..exceptions import DifferentiationError
from ..numerics.linalg import gram_solve, tangent_basis, tangent_projector


def needs_grad(*tensors):
    """Whether autograd is on and some input requires a gradient."""
    return torch.is_grad_enabled() and any(
        torch.is_tensor(t) and t.requires_grad for t in tensors)


def trainable_tensors(module):
    """Parameters and buffers of ``module`` that require a gradient."""
    return [t for t in (*module.parameters(), *module.buffers()) if t.requires_grad]


class _NoSecondDerivative(torch.autograd.Function):
    """Identity on gradients computed without a graph; raises if differentiated."""

    @staticmethod
    def forward(ctx, n_grads, *tensors):
        return tuple(t.clone() for t in tensors[:n_grads])

    @staticmethod
    def backward(ctx, *_):
        raise DifferentiationError(
            "second derivatives through projection, to_tangent, exp, log or dist are not "
            "available: their implicit-function gradients are first order only.")


def first_order_only(grads, *anchors):
    """``grads`` of a backward pass, tied to ``anchors`` (its inputs and incoming
    gradients) through a node that raises when differentiated.

    Under ``create_graph=True`` these gradients, computed without a graph,
    would be constants to a second derivative: the Hessian would silently lack
    this operation's part (``torch``'s ``once_differentiable`` does not help:
    its error node is cut off from the inputs, so the second derivative
    skips it).
    """
    if not torch.is_grad_enabled():
        return grads
    anchors = [t for t in anchors if torch.is_tensor(t) and t.requires_grad]
    idx = [i for i, g in enumerate(grads) if torch.is_tensor(g)]
    if not anchors or not idx:
        return grads
    tied = _NoSecondDerivative.apply(len(idx), *(grads[i] for i in idx), *anchors)
    out = list(grads)
    for i, g in zip(idx, tied):
        out[i] = g
    return tuple(out)


# ------------------------------------------------------------------ projection
class ClosestPoint(torch.autograd.Function):
    """``y = pi(x)``, the closest point on M, differentiable in x and in the
    trainable tensors of the manifold (e.g. the MDF weights)."""

    @staticmethod
    def forward(ctx, space, x, *params):
        with torch.no_grad():
            y = space._project_flat(x)
            jac = space._jacobian(y)
            lam = gram_solve(jac, (jac @ (x - y).unsqueeze(-1)).squeeze(-1))
        ctx.space = space
        ctx.save_for_backward(y, lam, *params)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, lam, *params = ctx.saved_tensors
        space = ctx.space
        n, k = space.ambient_dim, space.codim
        with torch.no_grad():
            jac = space._jacobian(y)
            kkt = y.new_zeros(y.shape[0], n + k, n + k)
            kkt[:, :n, :n] = torch.eye(n, dtype=y.dtype, device=y.device) + \
                space._lagrangian_hessian(y, lam)
            kkt[:, :n, n:] = jac.transpose(-1, -2)
            kkt[:, n:, :n] = jac
            rhs = torch.cat([grad_y, grad_y.new_zeros(y.shape[0], k)], -1)
            sol = torch.linalg.solve(kkt, rhs.unsqueeze(-1)).squeeze(-1)  # K symmetric
            a, b = sol[:, :n], sol[:, n:]
        grad_params = [None] * len(params)
        if params:
            # d/dtheta of the KKT residual, contracted with (a, b):
            # a . J(y)^T lam + b . F(y), then negated.
            with torch.enable_grad():
                yy = y.detach().requires_grad_(True)
                value = space._value(yy)
                (normal,) = torch.autograd.grad((value * lam).sum(), yy, create_graph=True)
                total = (normal * a).sum() + (value * b).sum()
                grads = torch.autograd.grad(total, params, allow_unused=True)
            grad_params = [None if g is None else -g for g in grads]
        return (None, *first_order_only((a, *grad_params), grad_y, y, *params))


class TangentProjection(torch.autograd.Function):
    """``u = P(x) v``, the tangent projection, differentiable in x and v.

    With ``mu = G^{-1} J v``: ``d(Pv) = -P L(mu) dx - J^T G^{-1} C dx + P dv``,
    ``L(mu) = sum_r mu_r H_r``, ``C_r = (H_r P v)^T``.
    """

    @staticmethod
    def forward(ctx, space, x, v):
        with torch.no_grad():
            jac = space._jacobian(x)
            u = tangent_projector(jac, v)
            mu = gram_solve(jac, (jac @ v.unsqueeze(-1)).squeeze(-1))
        ctx.space = space
        ctx.save_for_backward(x, u, mu)
        return u

    @staticmethod
    def backward(ctx, grad_u):
        x, u, mu = ctx.saved_tensors
        space = ctx.space
        with torch.no_grad():
            jac = space._jacobian(x)
            grad_v = tangent_projector(jac, grad_u)
            nu = gram_solve(jac, (jac @ grad_u.unsqueeze(-1)).squeeze(-1))
            grad_x = -(space._lagrangian_hessian(x, mu) @ grad_v.unsqueeze(-1)).squeeze(-1) \
                - (space._lagrangian_hessian(x, nu) @ u.unsqueeze(-1)).squeeze(-1)
        return (None, *first_order_only((grad_x, grad_v), grad_u, x))


# --------------------------------------------------------------------- exp/log
def flow_derivatives(metric, x, v, eps=None):
    """Derivatives of the geodesic flow ``g(x, v) = x(1)`` from ``(x, P_x v)``.

    Returns
    -------
    d_x : torch.Tensor, shape=[B, n, n]
        ``d/dx flow(x, P_x v)`` (the projection of v moves with x).
    d_v : torch.Tensor, shape=[B, n, m]
        ``d/da flow(x, E a)`` along an orthonormal tangent basis E at x.
    basis : torch.Tensor, shape=[B, n, m]
        E.
    """
    space = metric._space
    n = space.ambient_dim
    b = x.shape[0]
    jac = space._jacobian(x)
    basis = tangent_basis(jac)
    m = basis.shape[-1]
    if eps is None:  # ~ cube root of the unit roundoff: central differences
        eps = max(1e-6, torch.finfo(x.dtype).eps ** (1 / 3))
    v_t = metric._project_tangent(x, v)
    h = eps * (getattr(space, "tol_scale", 1.0) + v.norm(dim=-1) + x.norm(dim=-1))  # (B,)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    dx = eye.expand(b, n, n) * h[:, None, None]  # rows: perturbations of x
    da = basis.transpose(1, 2) * h[:, None, None]  # rows: tangent perturbations of v
    xs = torch.cat([x[:, None] + dx, x[:, None] - dx,
                    x[:, None].expand(b, 2 * m, n)], 1)  # (B, 2n + 2m, n)
    shifted = xs[:, :2 * n].reshape(-1, n)
    # v follows the tangent space of the perturbed base point.
    v_x = metric._project_tangent(shifted, v.repeat_interleave(2 * n, 0)).reshape(b, 2 * n, n)
    vs = torch.cat([v_x, v_t[:, None] + da, v_t[:, None] - da], 1)
    ends, _ = metric._flow(xs.reshape(-1, n), vs.reshape(-1, n))
    ends = ends.reshape(b, 2 * (n + m), n)
    two_h = 2 * h[:, None, None]
    d_x = ((ends[:, :n] - ends[:, n:2 * n]) / two_h).transpose(1, 2)
    d_v = ((ends[:, 2 * n:2 * n + m] - ends[:, 2 * n + m:]) / two_h).transpose(1, 2)
    return d_x, d_v, basis


class Exp(torch.autograd.Function):
    """``y = exp_x(v)`` with the derivative of the geodesic flow."""

    @staticmethod
    def forward(ctx, metric, x, v):
        with torch.no_grad():
            y = metric._exp_flat(x, metric._project_tangent(x, v))
        ctx.metric = metric
        ctx.save_for_backward(x, v, y)  # v as given: the projection moves with x
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, v, y = ctx.saved_tensors
        metric = ctx.metric
        with torch.no_grad():
            d_x, d_v, basis = flow_derivatives(metric, x, v)
            g = metric._project_tangent(y, grad_y)  # landing: tangent projection at y
            grad_x = (d_x.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1)
            coef = (d_v.transpose(1, 2) @ g.unsqueeze(-1))  # (B, m, 1)
            grad_v = (basis @ coef).squeeze(-1)
        return (None, *first_order_only((grad_x, grad_v), grad_y, x, v))


class Log(torch.autograd.Function):
    """``v = log_x(y)`` found by ``metric._solve_log`` (any solver), with the
    implicit-function derivative of ``exp_x(v) = y``."""

    @staticmethod
    def forward(ctx, metric, x, y):
        with torch.no_grad():
            v = metric._solve_log(x, y)
        ctx.metric = metric
        ctx.save_for_backward(x, y, v)
        return v

    @staticmethod
    def backward(ctx, grad_v):
        x, y, v = ctx.saved_tensors
        metric = ctx.metric
        space = metric._space
        with torch.no_grad():
            d_x, d_v, basis = flow_derivatives(metric, x, v)
            basis_y = tangent_basis(space._jacobian(y))
            mat = basis_y.transpose(1, 2) @ d_v  # (B, m, m): T_x -> T_y
            rhs = basis.transpose(1, 2) @ grad_v.unsqueeze(-1)  # E^T vbar
            coef = torch.linalg.solve(mat.transpose(1, 2), rhs)  # M^{-T} E^T vbar
            grad_y = (basis_y @ coef).squeeze(-1)
            grad_x = -(d_x.transpose(1, 2) @ grad_y.unsqueeze(-1)).squeeze(-1)
            # Normal part of dv, from J(x) v = 0: -C^T G^{-1} J vbar with
            # C_r = (H_r v)^T, i.e. the Hessian of mu . F applied to v.
            jac = space._jacobian(x)
            mu = gram_solve(jac, (jac @ grad_v.unsqueeze(-1)).squeeze(-1))
            grad_x = grad_x - (space._lagrangian_hessian(x, mu) @ v.unsqueeze(-1)).squeeze(-1)
            # Only tangential moves of x stay on M; the normal part of d_x
            # (flows off M along level sets of F) is no derivative of log on
            # M. Drop it, as grad_y (tangent at y) does: log(x, y) is
            # differentiated as log(pi(x), pi(y)), so the gradient of dist in
            # point_a is exactly -log_a(b) / d, and a parameter gradient
            # through a projected point is not counted twice (see
            # length_variation).
            grad_x = tangent_projector(jac, grad_x)
        return (None, *first_order_only((grad_x, grad_y), grad_v, x, y))


# ------------------------------------------------------------ dist in theta
def length_variation(metric, x, v, length):
    """Zero-valued tensor, shape (B,), whose gradient in the trainable tensors
    theta of F is ``d length / d theta`` of the geodesic ``t -> exp_x(t v)``.

    As theta moves, M moves normally by ``V = -J^T G^{-1} dF/dtheta`` and the
    end points with it (the convention of :class:`Log`: points are taken as
    their projections, which move normally), so the first variation of the
    length ``L = |v|`` has no end-point term:
    ``dL = -(1/L) int_0^1 <V, gamma''> dt = (1/L) int_0^1 dF/dtheta .
    G^{-1} J gamma'' dt`` with ``J gamma'' = -D^2F[gamma', gamma']`` (sphere of
    radius r: ``dL/dr = L / r``). Without it the distance differentiates in
    theta only through its end points, which is wrong (e.g. zero for the
    radius of a sphere, points given by projection). Gauss-Legendre nodes on
    [0, 1], 8 per macro step of the geodesic integrator.
    """
    import math

    import numpy as np

    from ..numerics.ode import n_macro_steps

    space = metric._space
    b, n = x.shape
    n_nodes = 8 * max(2, n_macro_steps(length.max() if b else 0.0, metric.arc_per_step))
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    t = torch.as_tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)
    q = torch.as_tensor(weights / 2, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        pts, vel = metric._flow(x.repeat_interleave(n_nodes, 0),
                                (t[None, :, None] * v[:, None, :]).reshape(-1, n))
        vel = vel / t.repeat(b)[:, None]  # the flow of t v has velocity t gamma'(t)
        jac = space._jacobian(pts)
        # G^{-1} J gamma'' = -G^{-1} D^2F[gamma', gamma'], per node.
        w = -gram_solve(jac, space._second_derivative(pts, vel).detach())
        scale = q.repeat(b) / length.repeat_interleave(n_nodes).clamp_min(
            math.sqrt(torch.finfo(x.dtype).tiny))  # L = 0: w = 0, no variation
        w = (w * scale[:, None]).detach()
        pts = pts.detach()
    with torch.enable_grad():
        term = (w * space._value(pts)).reshape(b, -1).sum(-1)
    return term - term.detach()
