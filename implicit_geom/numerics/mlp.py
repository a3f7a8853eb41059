"""Exact value and Jacobian of a smooth MLP, propagated by hand (no autograd graph).

A network that is an ``nn.Sequential`` of ``nn.Linear`` layers and elementwise
smooth activations (SiLU, softplus, tanh, GELU, sigmoid) has the Jacobian

    J = W_L D_{L-1} W_{L-1} ... D_1 W_1,    D_l = diag(act'(h_l)),

so one pass that keeps the pre-activations gives the value, and a chain of
batched matrix products gives J: from the input side (forward mode, cost
proportional to the input width n) or from the output side (reverse mode,
proportional to the output width k), whichever is narrower. On the small
batched networks of learned manifolds this is several times cheaper than
autograd, whose per-node bookkeeping and k backward passes dominate there.

The slopes are applied with autograd's own backward kernels (``aten``'s
``*_backward`` ops), so the result agrees with
:func:`~implicit_geom.numerics.autodiff.jacobian` to rounding. Any other module
(or a Sequential with an unknown layer) is reported as unsupported
(:func:`mlp_layers` returns None) and the caller falls back to autograd.
"""

import torch
import torch.nn.functional as fn
from torch import nn

_aten = torch.ops.aten

# Per activation type: value ``a = act(h)`` and ``grad * act'(h)`` (broadcast over
# the stacked (co)tangents), the latter with the kernels autograd itself uses
# for the backward pass: one fused op per layer and the very same slopes.
_ACTIVATIONS = {
    nn.SiLU: (lambda m, h: fn.silu(h),
              lambda m, g, h, a: _aten.silu_backward(g, h)),
    nn.Tanh: (lambda m, h: torch.tanh(h),
              lambda m, g, h, a: _aten.tanh_backward(g, a)),
    nn.Sigmoid: (lambda m, h: torch.sigmoid(h),
                 lambda m, g, h, a: _aten.sigmoid_backward(g, a)),
    nn.Softplus: (lambda m, h: fn.softplus(h, m.beta, m.threshold),
                  lambda m, g, h, a: _aten.softplus_backward(g, h, m.beta, m.threshold)),
    nn.GELU: (lambda m, h: fn.gelu(h, approximate=m.approximate),
              lambda m, g, h, a: _aten.gelu_backward(g, h, approximate=m.approximate)),
}


# Activations by name for :func:`build_mlp`: all smooth (Langevin dynamics and
# the geometry need continuous derivatives) and all in ``_ACTIVATIONS``.
ACTIVATIONS = {"silu": nn.SiLU, "softplus": nn.Softplus, "tanh": nn.Tanh, "gelu": nn.GELU,
               "sigmoid": nn.Sigmoid}


def build_mlp(n_in, n_out, hidden=(), activation="silu", dtype=torch.float64,
              generator=None):
    """The library's one MLP: ``Linear, act, ..., Linear`` as an ``nn.Sequential``.

    Every network it builds is supported by :func:`value_and_jacobian` (the
    graph-free Jacobian), so the MDF network, energy networks and the
    autoencoder all get exact Jacobians without autograd.

    Parameters
    ----------
    n_in, n_out : int
    hidden : sequence of int
        Hidden widths (empty: a single affine layer).
    activation : {"silu", "softplus", "tanh", "gelu", "sigmoid"}
    dtype : torch.dtype
    generator : torch.Generator, optional
        If given, weights and biases are drawn from ``U(-1/sqrt(fan_in),
        1/sqrt(fan_in))`` with it, layer by layer (weight, then bias), leaving
        the global RNG untouched; otherwise torch's default initialisation
        (the same distribution for weights, from the global RNG).

    Raises
    ------
    ValueError
        Unknown activation or non-positive widths.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from "
                         f"{sorted(ACTIVATIONS)}")
    widths = (int(n_in), *(int(h) for h in hidden), int(n_out))
    if min(widths) < 1:
        raise ValueError(f"MLP widths must be >= 1, got {widths}")
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layer = nn.Linear(a, b, dtype=dtype)
        if generator is not None:
            bound = a ** -0.5
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        layers += [layer, ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-1])


def mlp_layers(module):
    """The layers of a supported MLP as a tuple, or None.

    Supported: an ``nn.Sequential`` (nested ones are flattened) of
    ``nn.Linear`` and the activations above (exact types: a subclass may
    override ``forward``), with at least one Linear layer.
    """
    if type(module) is not nn.Sequential:
        return None
    layers = []
    for child in module:
        if type(child) is nn.Sequential:
            sub = mlp_layers(child)
            if sub is None:
                return None
            layers += sub
        elif type(child) is nn.Linear or type(child) in _ACTIVATIONS:
            if type(child) is nn.GELU and child.approximate not in ("none", "tanh"):
                return None
            layers.append(child)
        else:
            return None
    if not any(type(layer) is nn.Linear for layer in layers):
        return None
    return tuple(layers)


def value_and_jacobian(layers, x):
    """``F(x)`` and its Jacobian for a batch, through the MLP ``layers``.

    Parameters
    ----------
    layers : tuple of nn.Module
        As returned by :func:`mlp_layers`.
    x : torch.Tensor, shape=[B, n]

    Returns
    -------
    value : torch.Tensor, shape=[B, k]
    jac : torch.Tensor, shape=[B, k, n]
        Detached (computed without autograd); possibly a non-contiguous view,
        but one that owns every entry (callers may write into it).
    """
    with torch.no_grad():
        # Feature-major (width, B) layout throughout: a (w_out, w_in) @ (w_in, B)
        # product with a long last axis is several times faster in BLAS than the
        # (B, w_in) @ (w_in, w_out) of nn.Linear for the narrow layers here.
        # The (co)tangents are a (width, m, B) stack, or (width, B) when m = 1
        # (the usual single constraint), which spares the reshapes.
        n, n_rows = x.shape[-1], x.shape[0]
        k = next(m.out_features for m in reversed(layers) if type(m) is nn.Linear)
        forward = n <= k
        value, stack = (_forward_mode if forward else _reverse_mode)(layers, x.t())
        if len(layers) == 1 or stack.shape[-1] != n_rows:
            # Linear layers only: J is the same for every row and may still be
            # a view of a weight; give each row its own copy.
            stack = stack.expand(*stack.shape[:-1], n_rows).clone()
        if stack.dim() == 2:  # (k, B) with n = 1, or (n, B) with k = 1
            jac = stack.t().unsqueeze(2 if forward else 1)
        else:
            jac = stack.permute(2, 0, 1) if forward else stack.permute(2, 1, 0)
        return value.t(), jac


def _linear(layer, a):
    if layer.bias is None:
        return torch.mm(layer.weight, a)
    return torch.addmm(layer.bias.unsqueeze(1), layer.weight, a)


def _forward_mode(layers, a):
    """Values ``a`` (k, B) and tangents ``T[j, i, b] = d a_j / d x_i`` (k, n, B)."""
    n = a.shape[0]
    tangents = None  # the identity, not materialised
    for layer in layers:
        if type(layer) is nn.Linear:
            a = _linear(layer, a)
            w = layer.weight
            # Through the first layer the tangents are W's columns, the same for all points.
            if tangents is None:
                tangents = w if n == 1 else w[:, :, None]
            else:
                tangents = _left_mul(w, tangents)
        else:
            if tangents is None:
                tangents = _eye(a)
            h, a = a, _ACTIVATIONS[type(layer)][0](layer, a)
            tangents = _through(layer, tangents, h, a)
    return a, tangents


def _reverse_mode(layers, a):
    """Values ``a`` (k, B) and cotangents ``C[i, r, b] = d out_r / d x_i`` (n, k, B)."""
    saved = []
    for layer in layers:
        if type(layer) is nn.Linear:
            a = _linear(layer, a)
        else:
            h, a = a, _ACTIVATIONS[type(layer)][0](layer, a)
            saved.append((h, a))
    k = a.shape[0]
    cot = None  # the identity, not materialised
    for layer in reversed(layers):
        if type(layer) is nn.Linear:
            w_t = layer.weight.t()
            if cot is None:
                cot = w_t if k == 1 else w_t[:, :, None]
            else:
                cot = _left_mul(w_t, cot)
        else:
            if cot is None:
                cot = _eye(a)
            cot = _through(layer, cot, *saved.pop())
    return a, cot


def _through(layer, stack, h, a):
    """``act'(h) * stack`` for every (co)tangent in the stack."""
    backward = _ACTIVATIONS[type(layer)][1]
    if stack.dim() == 2:
        return backward(layer, stack, h, a)
    return backward(layer, stack, h.unsqueeze(1), a.unsqueeze(1))


def _left_mul(mat, stack):
    """``mat @ stack[:, i, :]`` for every i, as one (m, w) @ (w, i * B) product."""
    if stack.dim() == 2:
        return torch.mm(mat, stack)
    out = torch.mm(mat, stack.reshape(stack.shape[0], -1))
    return out.reshape(mat.shape[0], *stack.shape[1:])


def _eye(a):
    """Identity stack for an activation met before any Linear layer (width m)."""
    m = a.shape[0]
    if m == 1:
        return torch.ones(1, 1, dtype=a.dtype, device=a.device)
    return torch.eye(m, dtype=a.dtype, device=a.device)[:, :, None]


# --------------------------------------------------------------- second order
def _curvatures(layer, h, a):
    """``(act'(h), act''(h))`` in closed form, or None (then autograd)."""
    kind = type(layer)
    if kind is nn.SiLU:
        # act' = s + h s (1 - s), act'' = s (1 - s) (2 + h - 2 h s): fused ops,
        # these elementwise passes dominate the cost on large batches.
        s = torch.sigmoid(h)
        q = torch.addcmul(s, s, s, value=-1.0)  # s (1 - s)
        d2 = torch.addcmul(h + 2.0, h, s, value=-2.0).mul_(q)
        return torch.addcmul(s, h, q), d2
    if kind is nn.Tanh:
        d1 = 1 - a * a
        return d1, -2 * a * d1
    if kind is nn.Sigmoid:
        d1 = a * (1 - a)
        return d1, d1 * (1 - 2 * a)
    if kind is nn.Softplus:
        beta = layer.beta
        s = torch.sigmoid(beta * h)
        linear = beta * h > layer.threshold  # torch's softplus is the identity there
        return (torch.where(linear, torch.ones_like(s), s),
                torch.where(linear, torch.zeros_like(s), beta * s * (1 - s)))
    if kind is nn.GELU and layer.approximate == "none":
        phi = torch.exp(-0.5 * h * h) * (2 * torch.pi) ** -0.5
        cdf = 0.5 * (1 + torch.erf(h * 0.5 ** 0.5))
        return cdf + h * phi, phi * (2 - h * h)
    return None


def second_order_supported(layers):
    """Whether :func:`value_and_second_forms` has closed forms for ``layers``."""
    return all(type(m) is nn.Linear or type(m) in (nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)
               or (type(m) is nn.GELU and m.approximate == "none") for m in layers)


#: Rows per pass of :func:`value_and_second_forms` (larger batches go in blocks:
#: 0.26 s instead of 0.78 s CPU for 20 000 rows of a 3-64-64-64-1 SiLU MLP; 256 to
#: 4096 rows per block all took 0.22-0.27 s).
SECOND_FORMS_BLOCK = 2048


def value_and_second_forms(layers, x, dirs):
    """``F(x)``, the directional derivatives ``DF(x)[d_i]`` and the second
    derivatives ``D^2F(x)[d_i, d_j]`` along given directions, by forward-mode
    propagation of first- and second-order tangents through the MLP.

    Through a Linear layer every tangent is multiplied by W; through an
    activation, ``dA = act'(h) dH`` and ``d^2A[i, j] = act''(h) dH_i dH_j +
    act'(h) d^2H[i, j]``. One pass costs about ``m + m (m + 1) / 2`` forward
    passes for m directions, without any autograd graph.

    Parameters
    ----------
    layers : tuple of nn.Module
        As returned by :func:`mlp_layers`, with :func:`second_order_supported`.
    x : torch.Tensor, shape=[B, n]
    dirs : torch.Tensor, shape=[B, m, n]

    Returns
    -------
    value : torch.Tensor, shape=[B, k]
    first : torch.Tensor, shape=[B, k, m]
    second : torch.Tensor, shape=[B, k, m, m]
        Symmetric in the last two axes.
    """
    if x.shape[0] > SECOND_FORMS_BLOCK:
        # In blocks of rows: the (width, pairs, B) second-order tangents of a
        # large batch (64 x 6 x 20 000 doubles, 61 MB, for the Hessians of a
        # learned glycine torus at 20 000 points) leave the cache, and the
        # elementwise passes over them ran 3x slower than in blocks.
        parts = [value_and_second_forms(layers, x[i:i + SECOND_FORMS_BLOCK],
                                        dirs[i:i + SECOND_FORMS_BLOCK])
                 for i in range(0, x.shape[0], SECOND_FORMS_BLOCK)]
        return tuple(torch.cat(out) for out in zip(*parts))
    with torch.no_grad():
        m = dirs.shape[1]
        iu, ju = torch.triu_indices(m, m, device=x.device)
        a = x.t()  # (width, B), feature-major as in value_and_jacobian
        tan = dirs.permute(2, 1, 0)  # (width, m, B)
        sec = None  # (width, pairs, B); zero until the first activation
        for layer in layers:
            if type(layer) is nn.Linear:
                a = _linear(layer, a)
                tan = _left_mul(layer.weight, tan)
                if sec is not None:
                    sec = _left_mul(layer.weight, sec)
            else:
                h, a = a, _ACTIVATIONS[type(layer)][0](layer, a)
                d1, d2 = _curvatures(layer, h, a)
                outer = tan[:, iu] * tan[:, ju]
                sec = d2.unsqueeze(1) * outer + (d1.unsqueeze(1) * sec if sec is not None
                                                 else 0)
                tan = d1.unsqueeze(1) * tan
        k, b = a.shape
        second = x.new_zeros(b, k, m, m)
        if sec is not None:
            pairs = sec.permute(2, 0, 1)  # (B, k, pairs)
            second[:, :, iu, ju] = pairs
            second[:, :, ju, iu] = pairs
        return a.t(), tan.permute(2, 0, 1), second


def value_jacobian_and_second(layers, x, v):
    """``F(x)``, its Jacobian and ``D^2F(x)[v, v]`` from one forward pass: the
    tangent and second-order tangent along ``v`` ride with the values (see
    :func:`value_and_second_forms`), and the Jacobian comes from the saved
    activations by the reverse chain of :func:`value_and_jacobian`.

    Returns
    -------
    value : torch.Tensor, shape=[B, k]
    jac : torch.Tensor, shape=[B, k, n]
    second : torch.Tensor, shape=[B, k]
    """
    with torch.no_grad():
        n, n_rows = x.shape[-1], x.shape[0]
        a, t, s = x.t(), v.t(), None
        saved = []
        for layer in layers:
            if type(layer) is nn.Linear:
                a = _linear(layer, a)
                t = torch.mm(layer.weight, t)
                if s is not None:
                    s = torch.mm(layer.weight, s)
            else:
                h, a = a, _ACTIVATIONS[type(layer)][0](layer, a)
                d1, d2 = _curvatures(layer, h, a)
                # s' = act'' t^2 + act' s, t' = act' t (fused, in place on
                # the tensors this pass made).
                s = (d2.mul_(t).mul_(t) if s is None else s.mul_(d1).addcmul_(d2, t.square()))
                t = d1 * t
                saved.append((h, a))
        k = a.shape[0]
        if n <= k or len(layers) == 1:  # forward mode is the cheaper Jacobian there
            _, jac = value_and_jacobian(layers, x)
        else:
            cot = None
            for layer in reversed(layers):
                if type(layer) is nn.Linear:
                    w_t = layer.weight.t()
                    cot = (w_t if k == 1 else w_t[:, :, None]) if cot is None else \
                        _left_mul(w_t, cot)
                else:
                    if cot is None:
                        cot = _eye(a)
                    cot = _through(layer, cot, *saved.pop())
            if cot.shape[-1] != n_rows:
                cot = cot.expand(*cot.shape[:-1], n_rows).clone()
            jac = cot.t().unsqueeze(1) if cot.dim() == 2 else cot.permute(2, 1, 0)
        second = s.t() if s is not None else x.new_zeros(n_rows, k)
        return a.t(), jac, second
