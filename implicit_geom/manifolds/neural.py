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

    def singular_values(self, points):
        """Singular values of the Jacobian of F at points, shape ``(..., k)``, decreasing."""
        return torch.linalg.svdvals(self.jacobian(points))
