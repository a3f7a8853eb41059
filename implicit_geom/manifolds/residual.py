"""A defining function for high-dimensional data (images): principal normals plus an MLP.

For data near an m-dimensional manifold in R^n with a large codimension
k = n - m (8x8 images on an 8-dimensional manifold: k = 56) a plain MLP F starts
from a random zero set and has to find the data from scratch. Here

    F(x) = A u + g(u),    u = (x - shift) / scale,

where the rows of ``A`` (k x n, orthogonal) span the k directions of least
variance of the training data and ``g`` is an MLP whose last layer starts small.
At initialisation the zero set is the data's m-dimensional principal subspace
(PCA), a submersion everywhere with equal singular values; training bends it
towards the data. The residual form keeps the linear part exact and cheap, and
the value and Jacobian stay graph-free (:mod:`implicit_geom.numerics.mlp`):
``J = (A + J_g) / scale``.
"""

import torch
from torch import nn

from ..numerics import mlp
from ..exceptions import EmptyDataError
from ..numerics.validation import DTYPE, as_points

ACTIVATIONS = ("silu", "softplus", "tanh", "gelu")


class ResidualMDFNetwork(nn.Module):
    """``F(x) = A (x - shift) / scale + g((x - shift) / scale)``, ``R^n -> R^k``.

    Parameters
    ----------
    ambient_dim : int
        ``n`` (e.g. the number of pixels of an image).
    codim : int
        ``k``; the manifold has dimension ``n - k``.
    hidden : sequence of int
        Hidden widths of the MLP ``g``.
    activation : {"silu", "softplus", "tanh", "gelu"}
    init_gain : float
        Scale of the last layer of ``g`` at initialisation (its bias starts at
        0): small, so that training starts from the principal subspace.

    Attributes
    ----------
    normals : torch.Tensor, shape=[k, n]
        ``A`` (a buffer): orthogonal rows of equal norm, set by :meth:`init_from_data`.
    shift : torch.Tensor, shape=[n]
    scale : torch.Tensor, scalar
    net : nn.Sequential
        ``g``.
    """

    def __init__(self, ambient_dim, codim, hidden=(256, 256), activation="silu",
                 init_gain=0.1):
        super().__init__()
        n, k = int(ambient_dim), int(codim)
        if not 1 <= k < n:
            raise ValueError(f"need 1 <= codim < ambient_dim, got codim={codim}, "
                             f"ambient_dim={ambient_dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of "
                             f"{sorted(ACTIVATIONS)}")
        self.net = mlp.build_mlp(n, k, hidden, activation, DTYPE)  # the library's one MLP
        with torch.no_grad():
            self.net[-1].weight.mul_(float(init_gain))
            self.net[-1].bias.zero_()
        self.register_buffer("normals", torch.eye(n, dtype=DTYPE)[n - k:].clone())
        self.register_buffer("shift", torch.zeros(n, dtype=DTYPE))
        self.register_buffer("scale", torch.ones((), dtype=DTYPE))

    @property
    def ambient_dim(self):
        """``n``."""
        return self.normals.shape[1]

    @property
    def codim(self):
        """``k``."""
        return self.normals.shape[0]

    @torch.no_grad()
    def init_from_data(self, data, slope=1.0):
        """Set ``shift``, ``scale`` and ``A`` from training data ``(N, n)``.

        ``shift`` is the mean, ``scale`` the mean per-coordinate standard
        deviation (one scale for all axes keeps the geometry isotropic) and the
        rows of ``A`` the k right singular vectors of the centred data with the
        smallest singular values, times ``slope * scale``: the linear part of F
        then has all its singular values equal to ``slope`` in the units of x
        (the objective's ``s_min``, so training does not start by stretching
        it). Returns self.
        """
        data = as_points(data, self.ambient_dim, "data").reshape(-1, self.ambient_dim)
        if data.shape[0] < 2:
            # One point has no standard deviation: scale (and so F) became NaN.
            raise EmptyDataError(f"init_from_data needs at least 2 points, got {data.shape[0]}")
        data = data.to(self.normals)
        centred = data - data.mean(0)
        self.shift.copy_(data.mean(0))
        self.scale.copy_(data.std(0).mean().clamp_min(1e-12))
        # Full V: with fewer points than dimensions the trailing directions
        # (no variance at all) are still an orthonormal completion.
        _, _, vh = torch.linalg.svd(centred, full_matrices=True)
        self.normals.copy_(vh[self.ambient_dim - self.codim:] * (float(slope) * self.scale))
        return self

    def forward(self, x):
        """``F(x)``, shape ``(..., k)``."""
        u = (x - self.shift) / self.scale
        return u @ self.normals.T + self.net(u)

    def value_and_jacobian(self, x):
        """``F(x)`` (B, k) and its Jacobian (B, k, n), exact and without an autograd graph.

        Returns None when ``g`` is not a plain supported MLP (then the caller
        uses autograd).
        """
        layers = mlp.mlp_layers(self.net)
        if layers is None:
            return None
        u = (x - self.shift) / self.scale
        value, jac = mlp.value_and_jacobian(layers, u)
        value = torch.addmm(value, u, self.normals.T)
        # Contiguous (B, k, n): the solvers' batched products would otherwise
        # copy the permuted stack matrix by matrix.
        jac = ((jac + self.normals) / self.scale).contiguous()
        return value, jac
