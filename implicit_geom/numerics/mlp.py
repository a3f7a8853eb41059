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
