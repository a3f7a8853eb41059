"""A manifold defined by a network: the zero set of an MDF (Ross et al., 2023).

Only the geometry lives here: the MDF network and the exact, graph-free value
and Jacobian of its zero set. Learning the network from data is
:class:`implicit_geom.learning.NeuralImplicitManifold` (geometry never imports
training code).
"""

import torch
from torch import nn

from ..numerics import mlp
from ..numerics.validation import DTYPE
from .implicit import ImplicitManifold

ACTIVATIONS = {name: mlp.ACTIVATIONS[name] for name in ("silu", "softplus", "tanh", "gelu")}


class MDFNetwork(nn.Module):
    """Smooth MLP ``R^n -> R^k`` with a fixed input standardisation.

    ``F(x) = MLP(u) + radial (|u|^2 - 1) / 2`` with ``u = (x - shift) / scale``;
    ``shift`` and ``scale`` are buffers set from the training data, so the same
    weights work for data of any size. A positive ``radial`` weight is a
    compactness prior: the MLP grows at most linearly, so F > 0 far away and
    every piece of the zero set is closed and bounded; it cannot leave the data
    region through a sparsely sampled gap.
    """

    def __init__(self, ambient_dim, codim, hidden=(32, 32, 32), activation="silu", radial=0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of "
                             f"{sorted(ACTIVATIONS)}")
        # The library's one MLP builder (torch's default initialisation).
        self.net = mlp.build_mlp(ambient_dim, codim, hidden, activation, DTYPE)
        self.register_buffer("shift", torch.zeros(ambient_dim, dtype=DTYPE))
        self.register_buffer("scale", torch.ones((), dtype=DTYPE))
        self.radial = float(radial)

    def _fingerprint_params(self):
        # A plain attribute, not in the state dict: the same weights with
        # another prior are another zero set.
        return {"radial": self.radial}

    def forward(self, x):
        """``F(x)``, shape ``(..., k)``."""
        u = (x - self.shift) / self.scale
        out = self.net(u)
        if self.radial:
            out = out + 0.5 * self.radial * ((u * u).sum(-1, keepdim=True) - 1.0)
        return out

    def value_and_jacobian(self, x):
        """``F(x)`` and its Jacobian (B, k, n), exact and without an autograd
        graph (propagated by hand through the MLP), or None when the inner
        network is not a plain supported MLP (then use autograd)."""
        layers = mlp.mlp_layers(self.net)
        if layers is None:
            return None
        u = (x - self.shift) / self.scale
        value, jac = mlp.value_and_jacobian(layers, u)
        if self.radial:  # + radial (|u|^2 - 1) / 2, whose u-gradient is radial u
            half = 0.5 * self.radial
            sq = torch.linalg.vector_norm(u, dim=-1, keepdim=True).square()
            value = torch.add(value, sq, alpha=half) - half
            jac = torch.add(jac, u.unsqueeze(1), alpha=self.radial)
        return value, jac / self.scale  # chain rule through u = (x - shift) / scale

    def _second_order_layers(self):
        layers = mlp.mlp_layers(self.net)
        return layers if layers is not None and mlp.second_order_supported(layers) else None

    def jacobian_and_second(self, x, v):
        """The Jacobian (B, k, n) and ``D^2F(x)[v, v]`` (B, k) in closed form
        (the geodesic equation's two derivatives, one forward pass), or None
        when the network has no closed-form second derivatives."""
        layers = self._second_order_layers()
        if layers is None:
            return None
        u, w = (x - self.shift) / self.scale, v / self.scale
        _, jac, second = mlp.value_jacobian_and_second(layers, u, w)
        if self.radial:
            jac = torch.add(jac, u.unsqueeze(1), alpha=self.radial)
            second = second + self.radial * (w * w).sum(-1, keepdim=True)
        return jac / self.scale, second

    def second_forms(self, x, dirs):
        """``D^2F(x)[d_i, d_j]`` for directions ``dirs`` (B, m, n), shape
        (B, k, m, m), in closed form; or None (see :meth:`jacobian_and_second`)."""
        layers = self._second_order_layers()
        if layers is None:
            return None
        u, d = (x - self.shift) / self.scale, dirs / self.scale
        _, _, second = mlp.value_and_second_forms(layers, u, d)
        if self.radial:
            second = second + self.radial * (d @ d.transpose(1, 2)).unsqueeze(1)
        return second


def _defining_class(cls, name):
    """The first class in ``cls``'s MRO that defines attribute ``name``."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def _exact_hook(net):
    """``net.value_and_jacobian`` if it belongs to ``net``'s own ``forward``, else None.

    A subclass that overrides ``forward`` but inherits the hook (e.g. an
    MDFNetwork plus an extra term) would get the parent's Jacobian: the hook
    is trusted only when the class that defines ``forward`` also defines it.
    """
    hook = getattr(net, "value_and_jacobian", None)
    if not callable(hook):
        return None
    cls = type(net)
    if _defining_class(cls, "forward") is not _defining_class(cls, "value_and_jacobian"):
        return None
    return hook


class NetworkImplicitManifold(ImplicitManifold):
    """The zero set of a network ``F: R^n -> R^k`` (an :class:`MDFNetwork`, a
    :class:`~implicit_geom.manifolds.residual.ResidualMDFNetwork` or any
    ``nn.Module`` mapping ``(..., n)`` to ``(..., k)``).

    The network is a submodule: ``.to(device, dtype)`` moves it, its weights
    are in ``state_dict``. Geometry calls never build graphs through the
    weights (see :class:`ImplicitManifold`).

    Parameters
    ----------
    net : nn.Module
    ambient_dim, codim : int
    **kwargs
        ``tol``, ``max_iter``, ``bounds``, ``name``, see :class:`ImplicitManifold`.
    """

    def __init__(self, net, ambient_dim, codim=1, **kwargs):
        super().__init__(None, ambient_dim, codim, **kwargs)
        self.net = net
        self._adopt_precision(net)

    def _fingerprint_params(self):
        # The network's own (an MDF's radial weight), named for the messages.
        hook = getattr(self.net, "_fingerprint_params", None)
        return {f"net.{k}": v for k, v in (hook() if callable(hook) else {}).items()}

    def _value(self, x):
        return self.net(x.to(self.device)).to(x.device)

    def _value_and_jacobian(self, x):
        # The Jacobian propagated by hand through the MLP (exact, no autograd
        # graph): several times cheaper on the batches samplers and Newton use.
        # Any network with an exact ``value_and_jacobian`` hook (MDFNetwork,
        # ResidualMDFNetwork) answers it; None means "use autograd".
        hook = _exact_hook(self.net)
        out = hook(x.to(self.device)) if hook is not None else None
        if out is None:  # a replaced or customised network
            return super()._value_and_jacobian(x)
        value, jac = out
        return value.to(x.device), jac.to(x.device)

    # Second derivatives in closed form for the MDF network (forward-mode
    # second-order tangents, :mod:`implicit_geom.numerics.mlp`): the geodesic
    # equation needs D^2F[v, v] at every step, where double backward passes
    # through the network cost ~1.6x more. Path straightening's Hessians along
    # a tangent basis are cheaper as differences of the (hand-propagated)
    # Jacobian, accurate to ~1e-7, ample for Newton.
    _hessian_by_differences = True
    # Distance matrices skip the shoot-first stage (GeodesicLogSolver): each
    # right-hand side of the geodesic ODE is a pass with second-order
    # tangents through the network and one shot needs hundreds of them plus
    # 2m more flows for d exp, more than a pair's share of the graph routes'
    # Newton steps (200 x 200 on the learned glycine torus, one thread: 75 s
    # CPU shooting first, 50 s without).
    _shoot_first = False

    def _second_forms(self, x, dirs):
        if type(self.net) is not MDFNetwork:
            return None
        out = self.net.second_forms(x.to(self.device), dirs.to(self.device))
        return None if out is None else out.to(x.device)

    def _jacobian_and_second_derivative(self, x, v):
        out = (self.net.jacobian_and_second(x.to(self.device), v.to(self.device))
               if type(self.net) is MDFNetwork else None)
        if out is None:
            return self._jacobian(x), self._second_derivative(x, v)
        return out[0].to(x.device), out[1].to(x.device)

    def _second_derivative(self, x, v):
        out = self._second_forms(x, v.unsqueeze(1))
        return super()._second_derivative(x, v) if out is None else out[..., 0, 0]

    def _hessians(self, x):
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        out = self._second_forms(x, eye.expand(x.shape[0], -1, -1))
        return super()._hessians(x) if out is None else out

    def _lagrangian_hessian(self, x, lam):
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        out = self._second_forms(x, eye.expand(x.shape[0], -1, -1))
        if out is None:
            return super()._lagrangian_hessian(x, lam)
        return torch.einsum("bk,bkij->bij", lam, out)

    def singular_values(self, points):
        """Singular values of the Jacobian of F at points, shape ``(..., k)``, decreasing."""
        return torch.linalg.svdvals(self.jacobian(points))
