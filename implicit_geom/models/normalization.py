"""Normalising constants of densities on low-dimensional manifolds.

``Z = int_M exp(-E(x)) dvol(x)`` with the induced (Riemannian) volume of M. For
the circle, the 2-sphere and the torus of revolution, tensor-product
quadratures with the exact area element are spectrally accurate for smooth
energies; :func:`log_partition` evaluates ``log Z`` from any such rule with a
log-sum-exp, differentiably in the energy's parameters (which direct maximum
likelihood training needs). :func:`monte_carlo_log_partition` covers manifolds
with a uniform sampler and a known volume.
"""

import math

import numpy as np
import torch

from ..manifolds.analytic import GeomstatsLevelSet, ImplicitSphere, ImplicitTorus, as_implicit
from ..manifolds.arithmetic import UnionManifold
from ..exceptions import InvalidPointError
from ..numerics.validation import DTYPE, as_points

__all__ = [
    "Quadrature",
    "circle_quadrature",
    "sphere_quadrature",
    "torus_quadrature",
    "box_quadrature",
    "manifold_quadrature",
    "has_quadrature",
    "log_partition",
    "monte_carlo_log_partition",
]


class Quadrature:
    """Nodes on a manifold with volume weights: ``int_M f dvol ~ sum_i w_i f(x_i)``.

    Attributes
    ----------
    points : torch.Tensor, shape (N, n)
    weights : torch.Tensor, shape (N,)
        Positive; they sum to the volume of M.
    """

    def __init__(self, points, weights):
        self.points = points
        self.weights = weights

    @property
    def volume(self):
        """Total volume (length, area) of the manifold, ``sum(weights)``."""
        return float(self.weights.sum())

    def to(self, device):
        """The same rule on another device."""
        return Quadrature(self.points.to(device), self.weights.to(device))

    def __add__(self, other):
        """Concatenation: the rule of a union of pieces that overlap on a null set."""
        return Quadrature(torch.cat([self.points, other.points]),
                          torch.cat([self.weights, other.weights]))


def _check_resolution(value, name):
    if isinstance(value, bool) or int(value) != value or value < 2:
        raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    return int(value)


def circle_quadrature(n=512, radius=1.0, center=(0.0, 0.0)):
    """Trapezoid rule on the circle ``|x - c| = r`` in R^2 (exact for trig. polynomials)."""
    n = _check_resolution(n, "n")
    center = torch.as_tensor(center, dtype=DTYPE)
    angle = torch.arange(n, dtype=DTYPE) * (2 * math.pi / n)
    points = center + radius * torch.stack([angle.cos(), angle.sin()], -1)
    return Quadrature(points, torch.full((n,), 2 * math.pi * radius / n, dtype=DTYPE))


def sphere_quadrature(n_lat=96, n_lon=192, radius=1.0, center=(0.0, 0.0, 0.0)):
    """Gauss-Legendre in ``z`` times the trapezoid rule in longitude on a 2-sphere.

    The area element in ``(z, lon)`` is ``r^2 dz dlon``, so the rule integrates
    spherical harmonics of degree ``< min(2 n_lat, n_lon)`` exactly.
    """
    n_lat = _check_resolution(n_lat, "n_lat")
    n_lon = _check_resolution(n_lon, "n_lon")
    center = torch.as_tensor(center, dtype=DTYPE)
    z, wz = np.polynomial.legendre.leggauss(n_lat)
    z, wz = torch.as_tensor(z, dtype=DTYPE), torch.as_tensor(wz, dtype=DTYPE)
    lon = torch.arange(n_lon, dtype=DTYPE) * (2 * math.pi / n_lon)
    zz, ll = torch.meshgrid(z, lon, indexing="ij")
    rho = torch.sqrt(1 - zz**2)
    points = center + radius * torch.stack([rho * ll.cos(), rho * ll.sin(), zz], -1)
    weights = (radius**2 * wz[:, None] * (2 * math.pi / n_lon)).expand(n_lat, n_lon)
    return Quadrature(points.reshape(-1, 3), weights.reshape(-1).clone())


def torus_quadrature(major_radius=2.0, minor_radius=1.0, n_phi=128, n_theta=96):
    """Trapezoid rule in both angles of a torus of revolution, area element ``r (R + r cos theta)``.

    Uses the embedding of :func:`implicit_geom.datasets.torus_embed`.
    """
    n_phi = _check_resolution(n_phi, "n_phi")
    n_theta = _check_resolution(n_theta, "n_theta")
    R, r = float(major_radius), float(minor_radius)
    phi = torch.arange(n_phi, dtype=DTYPE) * (2 * math.pi / n_phi)
    theta = torch.arange(n_theta, dtype=DTYPE) * (2 * math.pi / n_theta)
    pp, tt = torch.meshgrid(phi, theta, indexing="ij")
    rho = R + r * tt.cos()
    points = torch.stack([rho * pp.cos(), rho * pp.sin(), r * tt.sin()], -1)
    weights = r * rho * (2 * math.pi / n_phi) * (2 * math.pi / n_theta)
    return Quadrature(points.reshape(-1, 3), weights.reshape(-1))


def _sphere_params(manifold):
    """(dim, radius, center) of a round sphere manifold, or None."""
    if isinstance(manifold, ImplicitSphere):
        return manifold.dim, manifold.radius, manifold.center
    if isinstance(manifold, GeomstatsLevelSet) and type(manifold.space).__name__ == "Hypersphere":
        return manifold.dim, 1.0, torch.zeros(manifold.ambient_dim, dtype=DTYPE)
    return None


def has_quadrature(manifold):
    """Whether :func:`manifold_quadrature` knows an exact rule for ``manifold``."""
    manifold = as_implicit(manifold)
    if isinstance(manifold, UnionManifold):
        return all(has_quadrature(c) for c in manifold.components)
    params = _sphere_params(manifold)
    return (params is not None and params[0] in (1, 2)) or isinstance(manifold, ImplicitTorus)


def manifold_quadrature(manifold, resolution=128):
    """Quadrature rule with the induced volume for a supported analytic manifold.

    Supported: circles and 2-spheres (:class:`ImplicitSphere` or geomstats'
    ``Hypersphere`` of dimension 1 or 2), :class:`ImplicitTorus`, and unions of
    those (their pieces meet on null sets, so the rules add).

    Parameters
    ----------
    manifold : ImplicitManifold
    resolution : int
        Number of nodes along the longest angular direction; the other
        direction of a 2-d rule gets half as many (spectral accuracy makes a
        few dozen per direction ample for smooth densities).

    Returns
    -------
    Quadrature

    Raises
    ------
    NotImplementedError
        For manifolds without a known rule (e.g. learned ones); use
        :func:`monte_carlo_log_partition` with a uniform sampler instead.
    """
    resolution = _check_resolution(resolution, "resolution")
    manifold = as_implicit(manifold)
    if isinstance(manifold, UnionManifold):
        rules = [manifold_quadrature(c, resolution) for c in manifold.components]
        out = rules[0]
        for rule in rules[1:]:
            out = out + rule
        return out
    params = _sphere_params(manifold)
    if params is not None and params[0] == 1:
        return circle_quadrature(resolution, params[1], params[2])
    if params is not None and params[0] == 2:
        return sphere_quadrature(max(resolution // 2, 2), resolution, params[1], params[2])
    if isinstance(manifold, ImplicitTorus):
        return torus_quadrature(manifold.major_radius, manifold.minor_radius,
                                resolution, max(resolution // 2, 2))
    raise NotImplementedError(
        f"no exact quadrature for {manifold!r}; supported: circle, 2-sphere, torus "
        "and their unions. Use monte_carlo_log_partition with uniform samples.")


def log_partition(energy, quadrature, chunk_size=65536):
    """``log Z = log sum_i w_i exp(-E(x_i))`` over a quadrature rule.

    Differentiable with respect to the parameters of ``energy`` (so
    ``mean E(data) + log_partition(E, rule)`` is an exact negative
    log-likelihood to minimise).

    Parameters
    ----------
    energy : callable
        Maps ``(N, n)`` points to ``(N,)`` energies.
    quadrature : Quadrature
    chunk_size : int
        Points per call of ``energy`` (bounds memory).

    Returns
    -------
    torch.Tensor, shape ()
    """
    terms = []
    for start in range(0, quadrature.points.shape[0], chunk_size):
        x = quadrature.points[start:start + chunk_size]
        w = quadrature.weights[start:start + chunk_size]
        terms.append(-energy(x) + torch.log(w))
    return torch.logsumexp(torch.cat(terms), dim=0)


def monte_carlo_log_partition(energy, uniform_points, volume):
    """Monte Carlo ``log Z = log vol(M) + log mean_i exp(-E(x_i))``.

    Parameters
    ----------
    energy : callable
        ``(N, n) -> (N,)``.
    uniform_points : torch.Tensor, shape (N, n)
        Points distributed uniformly on M with respect to its volume.
    volume : float
        ``vol(M) > 0``.

    Returns
    -------
    torch.Tensor, shape ()
    """
    shape = np.shape(uniform_points)
    if len(shape) != 2:
        raise InvalidPointError(f"uniform_points must have shape (N, n), got {tuple(shape)}")
    points = as_points(uniform_points, shape[-1], "uniform_points")
    if not volume > 0:
        raise ValueError(f"volume must be positive, got {volume}")
    values = -energy(points)
    return torch.logsumexp(values, 0) - math.log(values.numel()) + math.log(volume)


def box_quadrature(low, high, resolution=256):
    """Midpoint rule on the box ``[low, high]`` of R^d (for d <= 3).

    Used for ``log Z`` of unconstrained energies in low-dimensional spaces
    (e.g. the latent EBM of the pushforward baseline).
    """
    resolution = _check_resolution(resolution, "resolution")
    low = torch.as_tensor(low, dtype=DTYPE).reshape(-1)
    high = torch.as_tensor(high, dtype=DTYPE).reshape(-1)
    if low.shape != high.shape or not bool((high > low).all()):
        raise ValueError("need low < high, with equal shapes")
    d = low.numel()
    if d > 3:
        raise ValueError(f"a grid quadrature in {d} dimensions is too large; use Monte Carlo")
    width = (high - low) / resolution
    axes = [low[j] + width[j] * (torch.arange(resolution, dtype=DTYPE) + 0.5) for j in range(d)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    return Quadrature(points, torch.full((points.shape[0],), float(width.prod()), dtype=DTYPE))
