"""Synthetic and real data sets for implicit manifold learning.

Every generator takes ``n_samples`` and ``seed`` and returns a ``torch.float64``
tensor of shape ``(n_samples, ambient_dim)``. Seeds are turned into
:class:`numpy.random.Generator` objects, so results are deterministic across
platforms and independent of the global torch/numpy random state.

The loaders read the CSV files in ``shared/data`` (never copied into the
repository) and validate them strictly: any problem raises
:class:`~implicit_geom.exceptions.DataError` naming the file and the 1-based
data row (the first row after the header is row 1).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from implicit_geom.exceptions import DataError, EmptyDataError, NamedText, ParameterError
from implicit_geom.numerics.validation import check_int

__all__ = [
    "DataError",
    "Dataset",
    "DATASET_NAMES",
    "von_mises_circle",
    "two_circles",
    "sphere_mixture",
    "sphere_mixture_means",
    "torus_density",
    "torus_embed",
    "torus_angles",
    "sphere_embed",
    "sphere_latlon",
    "vmf_sphere",
    "vmf_draws",
    "vmf_density",
    "projected_normal_density",
    "fibonacci_sphere",
    "true_density",
    "true_log_density",
    "load_digits",
    "load_earth",
    "load_protein",
    "load_protein_angles",
    "load_dataset",
    "load_table",
    "COORDS",
    "estimate_intrinsic_dim",
    "default_data_dir",
    "train_test_split",
]

DTYPE = torch.float64

# Tolerance (radians) on dihedral angles: the shared file stores them rounded to
# two decimals, so a value like 3.15 is a rounded pi, not an error.
_DIHEDRAL_TOL = 1e-2

SeedLike = int | np.random.Generator | None


def _rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DTYPE)


def _check_n(n_samples: int) -> int:
    return check_int(n_samples, "n_samples")


# ---------------------------------------------------------------------------
# Coordinate maps
# ---------------------------------------------------------------------------


def sphere_embed(lat, lon) -> torch.Tensor:
    """Map latitude/longitude in degrees to unit vectors in R^3.

    Parameters
    ----------
    lat, lon : array_like or torch.Tensor
        Latitude in [-90, 90] and longitude (any range, periodic) in degrees,
        broadcastable to a common shape ``S``.

    Returns
    -------
    torch.Tensor
        Shape ``S + (3,)``: ``(cos lat cos lon, cos lat sin lon, sin lat)``.
    """
    lat = torch.deg2rad(torch.as_tensor(lat, dtype=DTYPE))
    lon = torch.deg2rad(torch.as_tensor(lon, dtype=DTYPE))
    lat, lon = torch.broadcast_tensors(lat, lon)
    return torch.stack(
        [torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)],
        dim=-1,
    )


def sphere_latlon(x) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`sphere_embed` (the norm of ``x`` is ignored).

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (..., 3)

    Returns
    -------
    lat, lon : torch.Tensor
        Degrees, ``lat`` in [-90, 90] and ``lon`` in (-180, 180].
    """
    x = torch.as_tensor(x, dtype=DTYPE)
    # atan2 of the polar components is accurate near the poles, unlike arcsin.
    lat = torch.atan2(x[..., 2], torch.hypot(x[..., 0], x[..., 1]))
    lon = torch.atan2(x[..., 1], x[..., 0])
    return torch.rad2deg(lat), torch.rad2deg(lon)


def torus_embed(phi, theta, R: float = 2.0, r: float = 1.0) -> torch.Tensor:
    """Embed torus angles in R^3.

    Parameters
    ----------
    phi : array_like or torch.Tensor
        Angle around the symmetry (z) axis, radians.
    theta : array_like or torch.Tensor
        Angle around the tube, radians.
    R, r : float
        Major (centre of tube to z axis) and minor (tube) radius, ``R > r > 0``.

    Returns
    -------
    torch.Tensor
        Shape ``S + (3,)``:
        ``((R + r cos theta) cos phi, (R + r cos theta) sin phi, r sin theta)``.
    """
    _check_radii(R, r)
    phi = torch.as_tensor(phi, dtype=DTYPE)
    theta = torch.as_tensor(theta, dtype=DTYPE)
    phi, theta = torch.broadcast_tensors(phi, theta)
    rho = R + r * torch.cos(theta)
    return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), r * torch.sin(theta)], dim=-1)


def torus_angles(x, R: float = 2.0, r: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`torus_embed`.

    For points off the torus this returns the angles of the closest torus point.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (..., 3)
    R, r : float
        Torus radii (``r`` only enters through validation: the angles of the
        closest point do not depend on it).

    Returns
    -------
    phi, theta : torch.Tensor
        Radians in (-pi, pi].
    """
    _check_radii(R, r)
    x = torch.as_tensor(x, dtype=DTYPE)
    phi = torch.atan2(x[..., 1], x[..., 0])
    theta = torch.atan2(x[..., 2], torch.hypot(x[..., 0], x[..., 1]) - R)
    return phi, theta


def _check_radii(R: float, r: float) -> None:
    if not (r > 0 and R > r):
        raise ValueError(f"torus radii must satisfy R > r > 0, got R={R}, r={r}")


# ---------------------------------------------------------------------------
# Synthetic generators
# ---------------------------------------------------------------------------


def von_mises_circle(
    n_samples: int, kappa: float = 2.0, mu: float = 0.0, seed: SeedLike = 0
) -> torch.Tensor:
    """Sample the unit circle in R^2 with von Mises(mu, kappa) angles.

    Parameters
    ----------
    n_samples : int
    kappa : float
        Concentration (0 gives the uniform distribution).
    mu : float
        Mean angle in radians.
    seed : int or numpy.random.Generator

    Returns
    -------
    torch.Tensor, shape (n_samples, 2)
    """
    angles = _rng(seed).vonmises(mu, kappa, _check_n(n_samples))
    return _tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1))


#: Circle centres of the paper's two-circle data set (unit radius).
TWO_CIRCLE_CENTRES = ((-1.8, 0.0), (1.8, 0.0))
#: Mean angles of the paper's two-circle data set: the modes face each other
#: across the gap, at (-0.8, 0) and (0.8, 0).
TWO_CIRCLE_LOCS = (0.0, math.pi)


def two_circles(
    n_samples: int,
    kappa: float = 2.0,
    centres: Sequence[Sequence[float]] = TWO_CIRCLE_CENTRES,
    radius: float = 1.0,
    seed: SeedLike = 0,
    locs: Sequence[float] = TWO_CIRCLE_LOCS,
) -> torch.Tensor:
    """Equal-weight mixture of von Mises densities on two circles in R^2.

    This is the two-circle data set of Ross et al. (2023): each point picks a
    circle uniformly at random, then a von Mises(loc, kappa) angle on it, with
    the circles' modes facing each other by default.

    Parameters
    ----------
    n_samples : int
    kappa : float
        Concentration of the angle on each circle.
    centres : sequence of (x, y) pairs
    radius : float
    seed : int or numpy.random.Generator
    locs : sequence of float
        Mean angle on each circle, one per centre.

    Returns
    -------
    torch.Tensor, shape (n_samples, 2)
    """
    n = _check_n(n_samples)
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"centres must be a sequence of (x, y) pairs, got shape {centres.shape}")
    locs = np.asarray(locs, dtype=np.float64)
    if locs.shape != (len(centres),):
        raise ValueError(f"locs must give one mean angle per centre ({len(centres)}), got shape {locs.shape}")
    rng = _rng(seed)
    component = rng.integers(0, len(centres), n)
    angles = rng.vonmises(locs[component], kappa, n)
    unit = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return _tensor(centres[component] + radius * unit)


def sphere_mixture_means(n_components: int = 4) -> torch.Tensor:
    """Fixed, well-separated component means used by :func:`sphere_mixture`.

    The means are a Fibonacci (golden-angle) lattice of ``n_components``
    points on S^2: deterministic, nearly uniformly spread for any count, and
    for 4 components every pair is more than 97 degrees apart.

    Returns
    -------
    torch.Tensor, shape (n_components, 3)
    """
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    return fibonacci_sphere(n_components)


def sphere_mixture(
    n_samples: int, n_components: int = 4, scale: float = 0.3, seed: SeedLike = 0
) -> torch.Tensor:
    """Equal-weight mixture of projected Gaussians on S^2 in R^3.

    Each point is ``normalise(m + scale * N(0, I_3))`` for a component mean
    ``m`` from :func:`sphere_mixture_means` chosen uniformly at random.

    Parameters
    ----------
    n_samples : int
    n_components : int
    scale : float
        Standard deviation of the Gaussian before projection; keep it well
        below 1 so the components stay separated.
    seed : int or numpy.random.Generator

    Returns
    -------
    torch.Tensor, shape (n_samples, 3)
    """
    n = _check_n(n_samples)
    means = sphere_mixture_means(n_components).numpy()
    rng = _rng(seed)
    component = rng.integers(0, n_components, n)
    x = means[component] + scale * rng.standard_normal((n, 3))
    return _tensor(x / np.linalg.norm(x, axis=1, keepdims=True))


# (mu_phi, mu_theta, kappa_phi, kappa_theta, weight) of the torus mixture.
_TORUS_COMPONENTS = (
    (0.0, 0.0, 4.0, 4.0, 0.4),
    (2.0, math.pi / 2, 8.0, 2.0, 0.35),
    (-2.2, -2.5, 3.0, 6.0, 0.25),
)


def torus_density(
    n_samples: int, R: float = 2.0, r: float = 1.0, seed: SeedLike = 0
) -> torch.Tensor:
    """Sample a non-uniform density on the torus embedded in R^3.

    The angles follow a fixed three-component mixture of bivariate von Mises
    densities with independent marginals (the sine model with zero
    correlation), see ``_TORUS_COMPONENTS``; the points are then embedded with
    :func:`torus_embed`.

    Parameters
    ----------
    n_samples : int
    R, r : float
        Major and minor radius.
    seed : int or numpy.random.Generator

    Returns
    -------
    torch.Tensor, shape (n_samples, 3)
    """
    n = _check_n(n_samples)
    params = np.asarray(_TORUS_COMPONENTS)
    rng = _rng(seed)
    component = rng.choice(len(params), size=n, p=params[:, 4] / params[:, 4].sum())
    mu_phi, mu_theta, k_phi, k_theta = params[component, :4].T
    phi = rng.vonmises(mu_phi, k_phi)
    theta = rng.vonmises(mu_theta, k_theta)
    return torus_embed(phi, theta, R, r)


def vmf_sphere(n_samples: int, mu, kappa: float, seed: SeedLike = 0) -> torch.Tensor:
    """Exact von Mises-Fisher sampler on S^2 (see :func:`vmf_draws`).

    Parameters
    ----------
    n_samples : int
    mu : array_like, shape (3,)
        Mean direction (normalised internally).
    kappa : float
        Concentration, ``kappa >= 0`` (0 is uniform).
    seed : int or numpy.random.Generator

    Returns
    -------
    torch.Tensor, shape (n_samples, 3)
    """
    n = _check_n(n_samples)
    mu = np.asarray(torch.as_tensor(mu, dtype=DTYPE).detach().cpu(), dtype=np.float64)
    if mu.shape != (3,) or not np.all(np.isfinite(mu)) or np.linalg.norm(mu) == 0:
        raise ValueError(f"mu must be a non-zero finite vector of shape (3,), got {mu!r}")
    if not kappa >= 0:
        raise ValueError(f"kappa must be >= 0, got {kappa}")
    mu = mu / np.linalg.norm(mu)
    return _tensor(vmf_draws(np.broadcast_to(mu, (n, 3)), np.full(n, float(kappa)), _rng(seed)))


def vmf_draws(mean, kappa, rng: np.random.Generator) -> np.ndarray:
    """One exact von Mises-Fisher draw per row, on the unit circle or 2-sphere.

    On S^1 the angle is von Mises. On S^2 the component ``w = <x, mean>`` has
    the closed-form inverse CDF ``w = 1 + log(u + (1 - u) exp(-2 kappa)) /
    kappa``, evaluated as ``1 + log1p(u * expm1(-2 kappa)) / kappa`` (u
    uniform), accurate for both tiny and huge ``kappa``; the tangential
    direction is uniform.

    Parameters
    ----------
    mean : numpy.ndarray, shape (N, p), p = 2 or 3
        Unit mean directions.
    kappa : numpy.ndarray, shape (N,)
        Concentrations ``>= 0`` (0 is uniform).
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (N, p)
    """
    mean = np.asarray(mean, dtype=np.float64)
    kappa = np.asarray(kappa, dtype=np.float64)
    n, p = mean.shape
    if p not in (2, 3) or kappa.shape != (n,):
        raise ValueError(f"vmf_draws needs means (N, 2) or (N, 3) and kappas (N,); got "
                         f"{mean.shape} and {kappa.shape}")
    if p == 2:
        angle = rng.vonmises(np.arctan2(mean[:, 1], mean[:, 0]), kappa)
        return np.stack([np.cos(angle), np.sin(angle)], axis=1)
    u = rng.random(n)
    positive = kappa > 0
    safe = np.where(positive, kappa, 1.0)
    w = np.where(positive, 1.0 + np.log1p(u * np.expm1(-2.0 * safe)) / safe, 1.0 - 2.0 * u)
    w = np.clip(w, -1.0, 1.0)
    angle = rng.uniform(0.0, 2.0 * math.pi, n)
    # Orthonormal basis (e1, e2) of the plane orthogonal to each mean, built
    # from the coordinate axis least aligned with it for numerical stability.
    axis = np.eye(3)[np.argmin(np.abs(mean), axis=1)]
    e1 = axis - (axis * mean).sum(1, keepdims=True) * mean
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(mean, e1)
    radial = np.sqrt(np.clip(1.0 - w**2, 0.0, None))
    return (w[:, None] * mean + (radial * np.cos(angle))[:, None] * e1
            + (radial * np.sin(angle))[:, None] * e2)


# ---------------------------------------------------------------------------
# True densities of the synthetic data sets
# ---------------------------------------------------------------------------
# Each returns points covering the true manifold and the generator's density
# there, with respect to the manifold's volume (arc length, area): the ground
# truth the paper's discretised Wasserstein distance compares models with.


def _von_mises_angle_density(theta, mu, kappa):
    # exp(kappa (cos - 1)) / (2 pi I0e(kappa)) avoids overflow for large kappa.
    from scipy.special import i0e

    return np.exp(kappa * (np.cos(theta - mu) - 1.0)) / (2.0 * math.pi * i0e(kappa))


def fibonacci_sphere(n_points: int) -> torch.Tensor:
    """``n_points`` nearly uniformly spread points of S^2 (golden-angle lattice).

    Returns
    -------
    torch.Tensor, shape (n_points, 3)
    """
    k = np.arange(_check_n(n_points)) + 0.5
    z = 1.0 - 2.0 * k / n_points
    lon = math.pi * (3.0 - math.sqrt(5.0)) * k
    rho = np.sqrt(1.0 - z**2)
    return _tensor(np.stack([rho * np.cos(lon), rho * np.sin(lon), z], axis=1))


def vmf_density(x, mu, kappa: float) -> torch.Tensor:
    """Von Mises-Fisher density on S^2 w.r.t. area, ``kappa exp(kappa mu.x) / (4 pi sinh kappa)``."""
    x = torch.as_tensor(x, dtype=DTYPE)
    mu = torch.as_tensor(mu, dtype=DTYPE)
    mu = mu / mu.norm()
    if kappa == 0:
        return torch.full(x.shape[:-1], 1.0 / (4.0 * math.pi), dtype=DTYPE)
    # kappa / (2 pi (1 - exp(-2 kappa))) * exp(kappa (mu.x - 1)): stable for large kappa.
    return kappa / (2.0 * math.pi * -math.expm1(-2.0 * kappa)) * torch.exp(kappa * (x @ mu - 1.0))


def projected_normal_density(x, mean, scale: float) -> torch.Tensor:
    """Density on S^2 (w.r.t. area) of ``normalise(mean + scale * N(0, I_3))``.

    With ``a = <x, mean> / scale`` and ``b = |mean|^2 / scale^2`` the radial
    integral has the closed form
    ``(2 pi)^{-3/2} exp(-(b - a^2) / 2) (a exp(-a^2/2) + (1 + a^2) sqrt(2 pi) Phi(a))``.
    """
    from scipy.special import ndtr

    x = np.asarray(torch.as_tensor(x, dtype=DTYPE).cpu())
    mean = np.asarray(torch.as_tensor(mean, dtype=DTYPE).cpu())
    a = x @ mean / scale
    b = mean @ mean / scale**2
    radial = a * np.exp(-0.5 * a**2) + (1.0 + a**2) * math.sqrt(2.0 * math.pi) * ndtr(a)
    return _tensor((2.0 * math.pi) ** -1.5 * np.exp(-0.5 * (b - a**2)) * radial)


def true_density(name: str, resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points covering the true manifold of a synthetic data set and its density there.

    The parameters are those :func:`load_dataset` uses for ``name``; the
    density is with respect to the manifold's volume (arc length or area), so
    a quadrature over the returned points integrates it to 1.

    Parameters
    ----------
    name : {"circle", "two_circles", "sphere_mixture", "torus"}
    resolution : int, optional
        Points per circle (default 4000), on the sphere (default 100000), or
        per torus angle (default 400).

    Returns
    -------
    points : torch.Tensor, shape (k, ambient_dim)
    density : torch.Tensor, shape (k,)
    """
    if name not in _SYNTHETIC:
        raise ValueError(f"no known density for {name!r}: expected one of {', '.join(_SYNTHETIC)}")
    kwargs = _SYNTHETIC[name][3]
    if name in ("circle", "two_circles"):
        n = 4000 if resolution is None else _check_n(resolution)
        theta = np.linspace(-math.pi, math.pi, n, endpoint=False)
        unit = np.stack([np.cos(theta), np.sin(theta)], axis=1)
        if name == "circle":
            return _tensor(unit), _tensor(_von_mises_angle_density(theta, 0.0, kwargs["kappa"]))
        # Equal mixture over the two unit circles of two_circles().
        centres = np.array(TWO_CIRCLE_CENTRES)
        points = np.concatenate([c + unit for c in centres])
        dens = np.concatenate([_von_mises_angle_density(theta, loc, kwargs["kappa"])
                               for loc in TWO_CIRCLE_LOCS])
        return _tensor(points), _tensor(dens / len(centres))
    if name == "sphere_mixture":
        points = fibonacci_sphere(100_000 if resolution is None else resolution)
        means = sphere_mixture_means(kwargs["n_components"])
        dens = sum(projected_normal_density(points, m, kwargs["scale"]) for m in means)
        return points, dens / len(means)
    # Torus: mixture of independent von Mises angle pairs, divided by the area element.
    n = 400 if resolution is None else _check_n(resolution)
    grid = np.linspace(-math.pi, math.pi, n, endpoint=False)
    phi, theta = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
    params = np.asarray(_TORUS_COMPONENTS)
    weights = params[:, 4] / params[:, 4].sum()
    angles = sum(w * _von_mises_angle_density(phi, mp, kp) * _von_mises_angle_density(theta, mt, kt)
                 for (mp, mt, kp, kt, _), w in zip(params, weights))
    R, r = kwargs["R"], kwargs["r"]
    return torus_embed(phi, theta, R, r), _tensor(angles / (r * (R + r * np.cos(theta))))



def true_log_density(name: str, points) -> torch.Tensor:
    """Log of the generator's density of a synthetic data set at points of its manifold.

    With respect to the manifold's volume (arc length, area), like
    :func:`true_density`; the parameters are those :func:`load_dataset` uses.

    Parameters
    ----------
    name : {"circle", "two_circles", "sphere_mixture", "torus"}
    points : array_like, shape (n, ambient_dim)
        Points on the true manifold.

    Returns
    -------
    torch.Tensor, shape (n,)
    """
    if name not in _SYNTHETIC:
        raise ValueError(f"no known density for {name!r}: expected one of {', '.join(_SYNTHETIC)}")
    kwargs = _SYNTHETIC[name][3]
    x = np.asarray(torch.as_tensor(points, dtype=DTYPE).detach().cpu())
    if name == "circle":
        dens = _von_mises_angle_density(np.arctan2(x[:, 1], x[:, 0]), 0.0, kwargs["kappa"])
    elif name == "two_circles":
        centres = np.array(TWO_CIRCLE_CENTRES)
        nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        u = x - centres[nearest]
        angle = np.arctan2(u[:, 1], u[:, 0])
        dens = _von_mises_angle_density(angle, np.asarray(TWO_CIRCLE_LOCS)[nearest],
                                        kwargs["kappa"]) / len(centres)
    elif name == "sphere_mixture":
        means = sphere_mixture_means(kwargs["n_components"])
        dens = sum(projected_normal_density(x, m, kwargs["scale"]).numpy()
                   for m in means) / len(means)
    else:
        R, r = kwargs["R"], kwargs["r"]
        phi, theta = (t.numpy() for t in torus_angles(torch.as_tensor(x), R, r))
        params = np.asarray(_TORUS_COMPONENTS)
        weights = params[:, 4] / params[:, 4].sum()
        angles = sum(w * _von_mises_angle_density(phi, mp, kp) * _von_mises_angle_density(
            theta, mt, kt) for (mp, mt, kp, kt, _), w in zip(params, weights))
        dens = angles / (r * (R + r * np.cos(theta)))
    return _tensor(np.log(dens))

# ---------------------------------------------------------------------------
# Tables (CSV or whitespace-separated text, .npy arrays) with row diagnostics
# ---------------------------------------------------------------------------

#: Readings of a table's columns (``coords`` of :func:`load_table`).
COORDS = ("auto", "xyz", "latlon", "angles")

_LATLON_COLUMNS = {
    "latitude": ("latitude", "lat"),
    "longitude": ("longitude", "lon", "long", "lng"),
}
_DIHEDRAL_COLUMNS = {"residue": ("residue",), "phi": ("phi",), "psi": ("psi",)}
_ANGLE_COLUMNS = {"phi": ("phi",), "psi": ("psi",)}
#: Torus radii that angle data are embedded with (those of the glycine set).
ANGLE_TORUS = (3.0, 1.0)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@dataclass
class _Table:
    """Cells of a text table (``rows``) or a numeric array (``array``), with provenance.

    ``header`` is None for a file without a header row; columns are then
    named by their 0-based index. ``numbers`` and ``lines`` give, per row, the
    1-based data row and file line, so that messages point into the file even
    after rows were filtered out.
    """

    path: Path
    header: list[str] | None
    rows: list[list[str]] | None
    lines: list[int] | None
    numbers: list[int]
    array: np.ndarray | None = None
    n_columns: int = 0
    filters: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.numbers)

    def where(self, i: int) -> str:
        """Location of 0-based row ``i`` for error messages."""
        if self.lines is None:
            return f"{self.path}: data row {self.numbers[i]}"
        return f"{self.path}: data row {self.numbers[i]} (line {self.lines[i]})"

    def label(self, col: int) -> str:
        """``'name'`` or ``column j`` (headerless files)."""
        return repr(self.header[col]) if self.header else f"column {col}"

    def listing(self) -> str:
        """The columns as ``0 'a', 1 'b'`` (or their count), for messages."""
        if not self.header:
            return f"{self.n_columns} unnamed columns (0-{self.n_columns - 1})"
        return ", ".join(f"{j} {h!r}" for j, h in enumerate(self.header))

    def column_index(self, wanted: dict[str, Sequence[str]]) -> dict[str, int]:
        """Map canonical column names to indices, accepting case-insensitive aliases."""
        lowered = [h.strip().lower() for h in self.header or ()]
        found = {}
        for name, aliases in wanted.items():
            hits = [i for i, h in enumerate(lowered) if h in aliases]
            if not hits:
                expected = ", ".join(
                    f"{n} (or {'/'.join(a for a in al if a != n)})" if len(al) > 1 else n
                    for n, al in wanted.items()
                )
                found_text = self.header if self.header else "no header row"
                raise DataError(
                    f"{self.path}: missing column {name!r}; expected columns {expected}, "
                    f"found {found_text}"
                )
            found[name] = hits[0]
        return found

    def has_columns(self, wanted: dict[str, Sequence[str]]) -> bool:
        lowered = {h.strip().lower() for h in self.header or ()}
        return all(lowered & set(aliases) for aliases in wanted.values())

    def find(self, key) -> int:
        """Index of a column given by header name (case-insensitive) or 0-based index."""
        text = str(key).strip()
        if self.header:
            lowered = [h.strip().lower() for h in self.header]
            if text.lower() in lowered:
                return lowered.index(text.lower())
        try:
            index = int(text)
        except ValueError:
            index = None
        if index is not None and -self.n_columns <= index < self.n_columns:
            return index % self.n_columns
        raise DataError(f"{self.path}: no column {text!r}; the columns are {self.listing()}")

    def cells(self, col: int) -> list[str]:
        if self.array is not None:
            return [repr(float(v)) for v in self.array[:, col]]
        return [row[col] for row in self.rows]

    def is_numeric(self, col: int) -> bool:
        if self.array is not None:
            return True
        return all(_is_number(row[col]) for row in self.rows)

    def numeric(self, col: int, name: str | None = None) -> np.ndarray:
        """Column ``col`` as finite float64 values, or a DataError naming the row."""
        name = name or self.label(col)
        if self.array is not None:
            values = np.asarray(self.array[:, col], dtype=np.float64)
        else:
            values = np.empty(len(self.rows))
            for i, row in enumerate(self.rows):
                try:
                    values[i] = float(row[col])
                except ValueError:
                    raise DataError(
                        f"{self.where(i)}: {name} value {row[col]!r} is not numeric"
                    ) from None
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{self.where(i)}: {name} value {self.cells(col)[i]!r} is not finite")
        return values

    def check_range(
        self, values: np.ndarray, lo: float, hi: float, name: str, label: str = "", hint: str = "",
        params=(),
    ):
        """DataError naming the first row with a value outside [lo, hi] (``label`` describes it;
        ``hint`` may name the parameters ``params``, see :class:`ParameterMessage`)."""
        bad = (values < lo) | (values > hi)
        if bad.any():
            i = int(np.argmax(bad))
            label = label or f"[{lo:g}, {hi:g}]"
            raise DataError(f"{_literal(self.where(i))}: {_literal(name)} = {float(values[i])!r} "
                            f"outside {label}{hint}", params=params)

    def filter(self, condition: str) -> "_Table":
        """Rows whose column equals a value, from ``"COL=VALUE"`` (numbers compare as numbers)."""
        key, sep, value = str(condition).partition("=")
        if not sep or not key.strip():
            raise DataError(f"a row filter must read COL=VALUE (e.g. residue=P), got {condition!r}")
        col, value = self.find(key), value.strip()
        cells = self.cells(col)
        if _is_number(value):
            target = float(value)
            keep = [_is_number(c) and float(c) == target for c in cells]
        else:
            keep = [c == value for c in cells]
        if not any(keep):
            seen = sorted(set(cells), key=lambda c: (not _is_number(c), _sort_key(c)))
            shown = ", ".join(seen[:20]) + (f", ... ({len(seen)} values)" if len(seen) > 20 else "")
            raise DataError(
                f"{self.path}: no rows with {self.label(col)} = {value!r}; its values: {shown}"
            )
        pick = [i for i, k in enumerate(keep) if k]
        return _Table(
            self.path,
            self.header,
            None if self.rows is None else [self.rows[i] for i in pick],
            None if self.lines is None else [self.lines[i] for i in pick],
            [self.numbers[i] for i in pick],
            None if self.array is None else self.array[pick],
            self.n_columns,
            self.filters + [f"{self.header[col] if self.header else col}={value}"],
        )


def _literal(text) -> str:
    """``text`` (a path, a cell) safe inside a message template: braces doubled
    so that no ``{name}`` in it is read as a parameter field."""
    return str(text).replace("{", "{{").replace("}", "}}")


def _sort_key(cell: str):
    return float(cell) if _is_number(cell) else cell


def _split_lines(path: Path, text: str) -> tuple[list[list[str]], list[int]]:
    """Non-blank, non-comment lines split into stripped cells, with their line numbers.

    The delimiter is that of the first such line: a comma, else a tab, else a
    semicolon, else runs of whitespace.
    """
    kept = [(i, line) for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not kept:
        return [], []
    first = kept[0][1]
    delimiter = next((d for d in (",", "\t", ";") if d in first), None)
    if delimiter is None:
        cells = [line.split() for _, line in kept]
    else:
        try:
            cells = list(csv.reader((line for _, line in kept), delimiter=delimiter))
        except csv.Error as exc:
            raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    return [[c.strip() for c in row] for row in cells], [i for i, _ in kept]


def _read_table(path) -> _Table:
    """Read a text table: ``#`` comment lines anywhere, an optional header row.

    The first row is a header when one of its cells is not a number while the
    same column of the next row is, or when none of its cells is a number (and,
    with more rows, some later cell is): ``residue,phi,psi`` over ``G,-1.4,2.9``
    (or over ``G,NA,NA``) is a header, ``G,-1.4,2.9`` over ``G,-1.2,3.0`` is data.
    """
    path = _data_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a readable UTF-8 text file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open data file ({exc})") from None
    rows, lines = _split_lines(path, text)
    if not rows:
        raise DataError(f"{path}: file is empty (no header or data rows)")
    first = rows[0]
    if len(rows) > 1:
        header = any(not _is_number(a) and _is_number(b) for a, b in zip(first, rows[1]))
        # A first row without a single number over rows that have numbers is a header too,
        # even when the first data row has missing values (``lat,lon`` over ``NA,NA``):
        # read as data, the header line itself was blamed ("data row 1: 'lat' is not
        # numeric") instead of the row at fault.
        header = header or (not any(_is_number(c) for c in first)
                            and any(_is_number(c) for row in rows[1:] for c in row))
    else:
        header = not any(_is_number(c) for c in first)
    names = first if header else None
    width = len(first)
    if header:
        rows, lines = rows[1:], lines[1:]
    for i, (row, line) in enumerate(zip(rows, lines)):
        if len(row) != width:
            expected = f" ({', '.join(names)})" if names else ""
            raise DataError(
                f"{path}: data row {i + 1} (line {line}) has {len(row)} fields, "
                f"expected {width}{expected}"
            )
    if not rows:
        raise DataError(f"{path}: no data rows after the header {names}")
    return _Table(path, names, rows, lines, list(range(1, len(rows) + 1)), n_columns=width)


def _data_file(path) -> Path:
    """``path`` as a Path; a DataError if it is not a file (a folder is said to be one)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    return path


def _array_table(path) -> _Table:
    """A ``.npy`` file as a headerless numeric table."""
    path = _data_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a plain numeric .npy array ({exc})") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{path}: expected a non-empty 2-d array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    return _Table(path, None, None, None, list(range(1, len(array) + 1)), array=array,
                  n_columns=array.shape[1])


def _latlon_from_table(table: _Table, cols=None) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude (degrees) from columns ``cols``, their header names, or a
    headerless two-column table; range-checked."""
    if cols is None:
        if table.header is None and table.n_columns == 2:
            cols = (0, 1)
        else:
            found = table.column_index(_LATLON_COLUMNS)
            cols = (found["latitude"], found["longitude"])
    lat = table.numeric(cols[0], "latitude")
    lon = table.numeric(cols[1], "longitude")
    table.check_range(lat, -90.0, 90.0, "latitude")
    if (lon > 180.0).any():
        # Longitudes above 180 mean the [0, 360] convention for the whole file.
        table.check_range(
            lon, 0.0, 360.0, "longitude", hint=" (values above 180 imply the [0, 360] convention)"
        )
    else:
        table.check_range(lon, -180.0, 180.0, "longitude")
    return lat, lon


def _angles_from_table(table: _Table, cols, degrees: bool) -> list[np.ndarray]:
    """Angle columns in radians: [-pi, pi] or [0, 2 pi] (or degrees, [-180, 180] or [0, 360])."""
    out = []
    for col in cols:
        name = table.label(col)
        values = table.numeric(col, name)
        if degrees:
            wide = (values > 180.0).any() and (values >= 0.0).all()
            lo, hi, label = (0.0, 360.0, "[0, 360]") if wide else (-180.0, 180.0, "[-180, 180]")
            table.check_range(values, lo, hi, name, label=f"{label} degrees")
            values = np.radians(values)
        else:
            tol = _DIHEDRAL_TOL
            # [0, 2 pi] when nothing is negative and something exceeds pi.
            wide = (values > math.pi + tol).any() and (values >= -tol).all()
            lo, hi, label = (-tol, 2 * math.pi + tol, "[0, 2 pi]") if wide else (
                -math.pi - tol, math.pi + tol, "[-pi, pi]")
            hint = (" (angles must be in radians; pass {degrees=True} for degrees)"
                    if np.abs(values).max() > 2 * math.pi + tol else "")
            table.check_range(values, lo, hi, name, label=f"{label} (tolerance {tol:g})",
                              hint=hint, params=("degrees",) if hint else ())
        out.append(values)
    return out


def _fits_latlon(table: _Table) -> bool:
    """Whether a two-column numeric table reads as latitude/longitude in degrees.

    Both columns must fit the ranges, and some value must exceed 2 pi in size:
    values that small read as plain coordinates or radians (a lat/lon data set
    within 6 degrees of (0, 0) needs ``coords="latlon"``).
    """
    lat, lon = table.numeric(0), table.numeric(1)
    in_range = (np.abs(lat) <= 90).all() and (
        (np.abs(lon) <= 180).all() or ((lon >= 0).all() and (lon <= 360).all()))
    return bool(in_range and max(np.abs(lat).max(), np.abs(lon).max()) > 2 * math.pi)


def _coordinates(table: _Table, coords: str, columns, degrees: bool):
    """``(points, kind, intrinsic_dim, meta, reading)`` of a table under ``coords``."""
    if coords not in COORDS:
        raise DataError(f"unknown {{coords}} {_literal(repr(coords))}; expected one of "
                        f"{', '.join(COORDS)}", params=("coords",))
    cols = None if columns is None else [table.find(c) for c in columns]
    names = None if cols is None else [table.header[c].strip().lower() if table.header else ""
                                       for c in cols]
    source = f"{len(table)} rows of {table.path}" + (
        f" ({', '.join(table.filters)})" if table.filters else "")
    note, asked = "", coords
    if coords == "auto":
        lat_names, lon_names = _LATLON_COLUMNS["latitude"], _LATLON_COLUMNS["longitude"]
        if cols is not None:
            pair = len(cols) == 2
            if pair and names[0] in lat_names and names[1] in lon_names:
                coords = "latlon"
            elif pair and (names[0], names[1]) == ("phi", "psi"):
                coords = "angles"
            else:
                coords = "xyz"
        elif table.has_columns(_LATLON_COLUMNS):
            coords = "latlon"
        elif table.has_columns(_ANGLE_COLUMNS):
            coords = "angles"
        else:
            for j in range(table.n_columns):
                if not table.is_numeric(j):
                    bad = next(i for i, c in enumerate(table.cells(j)) if not _is_number(c))
                    raise DataError(
                        f"{_literal(table.where(bad))}: {_literal(table.label(j))} value "
                        f"{_literal(repr(table.cells(j)[bad]))} is not numeric; pick the "
                        "coordinate columns with {columns} (and rows with {where='COL=VALUE'}), "
                        "or say how to read them with {coords}",
                        params=("columns", "where", "coords"))
            coords = "xyz"
            if table.header is None and table.n_columns == 2:
                if _fits_latlon(table):
                    coords = "latlon"
                    note = ("; no header, and the two columns fit latitude [-90, 90] and "
                            "longitude ranges (pass {coords='xyz'} to read plain 2-D points)")
                else:
                    note = ("; no header, and the two columns do not read as degrees of "
                            "latitude/longitude (pass {coords='latlon'} or {coords='angles'} to "
                            "read them so)")
    if degrees and coords != "angles":
        # Say how the file is read, whether the user asked for that or auto chose
        # it, and what to do. Latitude/longitude were accepted silently: they are
        # degrees anyway, so the flag did nothing, and a headerless file of two
        # angles in degrees that auto read as latitude/longitude went onto the
        # sphere though --degrees said angles (the torus) were meant.
        if coords == "latlon":
            what, unit = "latitude/longitude", "which are always in degrees"
            how = ("{coords='latlon'}" if asked == "latlon" else
                   "by {coords='auto'}: " + ("latitude/longitude columns" if table.header
                                             or cols is not None else
                                             "no header, values in latitude/longitude ranges"))
        else:
            what, unit = "plain coordinates", "which have no unit"
            how = ("{coords='xyz'}" if asked == "xyz" else
                   "by {coords='auto'}: no latitude/longitude or phi/psi columns")
        raise DataError("{degrees=True} applies to angles ({coords='angles'}), but "
                        f"{_literal(table.path)} is read as {what} ({how}), {unit}: drop {{degrees}}, "
                        "or pass {coords='angles'} if the columns are angles",
                        params=("degrees", "coords"))
    if coords in ("latlon", "angles") and cols is not None and len(cols) != 2:
        what = "latitude, longitude" if coords == "latlon" else "two angles of the torus"
        raise DataError(f"{{coords={coords!r}}} needs 2 columns ({what}), got "
                        f"{{columns}} of {len(cols)}", params=("coords", "columns"))
    if coords == "latlon":
        lat, lon = _latlon_from_table(table, cols)
        which = cols or ((0, 1) if table.header is None and table.n_columns == 2 else tuple(
            table.column_index(_LATLON_COLUMNS).values()))
        reading = (f"read {source} as latitude, longitude in degrees "
                   f"({', '.join(table.label(c) for c in which)}) -> points on the sphere S^2")
        meta = {"coords": "latlon", "columns": [table.label(c) for c in which]}
        return sphere_embed(lat, lon), "sphere", 2, meta, _note(reading, note)
    if coords == "angles":
        if cols is None:
            if table.has_columns(_ANGLE_COLUMNS):
                found = table.column_index(_ANGLE_COLUMNS)
                cols = [found["phi"], found["psi"]]
            else:
                numeric = [j for j in range(table.n_columns) if table.is_numeric(j)]
                if len(numeric) != 2:
                    raise DataError(
                        f"{_literal(table.path)}: cannot tell which two columns hold the angles "
                        f"(the columns are {_literal(table.listing())}); pass "
                        "{columns='PHI,PSI'}", params=("columns",))
                cols = numeric
        phi, psi = _angles_from_table(table, cols, degrees)
        R, r = ANGLE_TORUS
        unit = "degrees" if degrees else "radians"
        reading = (f"read {source} as angles in {unit} "
                   f"({', '.join(table.label(c) for c in cols)}) -> points on the torus "
                   f"(R={R:g}, r={r:g})")
        axes = [table.header[c] if table.header else f"angle {c}" for c in cols]
        meta = {"coords": "angles", "columns": [table.label(c) for c in cols], "R": R, "r": r,
                "axes": axes, "degrees": bool(degrees)}
        return torus_embed(phi, psi, R, r), "torus", 2, meta, _note(reading, note)
    # Plain coordinates.
    cols = list(range(table.n_columns)) if cols is None else cols
    if len(cols) < 2:
        raise DataError(f"{table.path}: {len(cols)} coordinate column(s); a manifold needs "
                        "points with at least 2 coordinates")
    values = []
    for c in cols:
        if not table.is_numeric(c):  # a column of words: another column was meant
            try:
                table.numeric(c)
            except DataError as err:
                raise DataError(f"{_literal(err)}; pick numeric columns with {{columns}}",
                                params=("columns",)) from None
        values.append(table.numeric(c))  # a NaN or inf is an error of its own
    reading = (f"read {source} as plain {len(cols)}-D points "
               f"({', '.join(table.label(c) for c in cols)})")
    meta = {"coords": "xyz", "columns": [table.label(c) for c in cols]}
    # A curve is the only proper submanifold of the plane: its dimension is known.
    return _tensor(np.stack(values, axis=1)), "euclidean", 1 if len(cols) == 2 else None, meta, \
        _note(reading, note)


def _note(reading: str, note: str) -> NamedText:
    """How a table was read, then ``note`` (which may name ``coords``), as a
    :class:`~implicit_geom.exceptions.NamedText`."""
    return NamedText(_literal(reading) + note, ("coords",))


def load_table(path, coords: str = "auto", columns=None, where=None,
               degrees: bool = False) -> "Dataset":
    """Read a user's data file as points, choosing columns, rows and their meaning.

    Parameters
    ----------
    path : str or os.PathLike
        A text table (``.csv``, ``.tsv``, ``.txt``...: comma, tab, semicolon or
        whitespace separated; ``#`` comment lines anywhere; header row
        optional) or a ``.npy`` 2-d array.
    coords : {"auto", "xyz", "latlon", "angles"}
        How to read the chosen columns. ``"xyz"``: plain coordinates in R^n.
        ``"latlon"``: latitude, longitude in degrees, mapped onto the unit
        sphere S^2 (longitudes in [-180, 180] or [0, 360]). ``"angles"``: two
        angles in radians (or degrees with ``degrees=True``), in [-pi, pi] or
        [0, 2 pi], mapped onto the torus with radii :data:`ANGLE_TORUS`
        (first angle around the axis, second around the tube). ``"auto"``:
        latitude/longitude or phi/psi header names pick those readings;
        without a header, two columns whose values fit latitude/longitude (and
        exceed 2 pi somewhere) are read as degrees on S^2, anything else numeric
        as plain points. The reading taken is described in ``meta["reading"]``.
    columns : sequence of str or int, optional
        The columns to use, by header name (case-insensitive) or 0-based index
        (negative counts from the end), in order (latitude then longitude).
    where : str or sequence of str, optional
        Row filters ``"COL=VALUE"`` (all must hold), e.g. ``"residue=P"``;
        numbers compare as numbers.
    degrees : bool
        Angles are in degrees (``coords="angles"``; an error with any other reading).

    Returns
    -------
    Dataset
        ``kind`` ``"sphere"``, ``"torus"`` or ``"euclidean"``; ``intrinsic_dim``
        2 on the sphere and torus, 1 for plane points, else None (unknown).

    Raises
    ------
    DataError
        Missing or unreadable file, unknown column, no row matching a filter,
        non-numeric or non-finite values, angles out of range, or columns whose
        reading cannot be told (the message says which option settles it).
    """
    path = Path(path)
    table = _array_table(path) if path.suffix.lower() == ".npy" else _read_table(path)
    for condition in [where] if isinstance(where, str) else (where or ()):
        table = table.filter(condition)
    if isinstance(columns, str):
        columns = [c for c in columns.split(",") if c.strip()]
    points, kind, dim, meta, reading = _coordinates(table, coords, columns, degrees)
    meta = {"source": str(path), "reading": reading, **meta}
    if table.filters:
        meta["where"] = list(table.filters)
    return _make(points, path.stem + "".join(f"[{f}]" for f in table.filters), kind, dim, meta)


def load_digits(classes=None, return_labels: bool = False):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).

    Parameters
    ----------
    classes : iterable of int, optional
        Keep only these digits (e.g. ``range(5)`` for the paper's
        out-of-distribution test); default all ten.
    return_labels : bool
        Also return the digit of each image.

    Returns
    -------
    images : torch.Tensor, shape (N, 64)
        Grey levels scaled to [0, 1] (the raw data are 0..16), rows of 8 pixels.
    labels : numpy.ndarray of int, shape (N,)
        With ``return_labels``.
    """
    from sklearn.datasets import load_digits as _sklearn_digits

    bunch = _sklearn_digits()
    images, labels = bunch.data / 16.0, bunch.target
    if classes is not None:
        classes = list(classes)
        # A class that is no digit ("3", 12) or an empty list matched nothing:
        # an empty (0, 64) tensor came back silently and failed far away.
        unknown = [c for c in classes if c not in set(range(10))]
        if unknown or not classes:
            raise EmptyDataError(f"classes must be digits 0..9 (at least one), got {classes!r}")
        keep = np.isin(labels, np.asarray(classes))
        images, labels = images[keep], labels[keep]
    images = torch.as_tensor(images, dtype=DTYPE)
    return (images, labels) if return_labels else images


def load_earth(path) -> torch.Tensor:
    """Load an earth-science file (latitude/longitude in degrees) as unit vectors.

    The file may start with ``#`` comment lines (the source). With a header,
    it must contain a latitude column (``latitude`` or ``lat``) and a
    longitude column (``longitude``, ``lon``, ``long`` or ``lng``),
    case-insensitive; without one it must have exactly two columns, latitude
    then longitude. Longitudes may use [-180, 180] or [0, 360].

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    torch.Tensor, shape (n, 3)

    Raises
    ------
    DataError
        Missing file, missing columns, empty data, non-numeric/NaN values or
        out-of-range angles (the message names the file and the data row).
    """
    lat, lon = _latlon_from_table(_read_table(path))
    return sphere_embed(lat, lon)


def load_protein_angles(path, residue: str | None = "G") -> tuple[torch.Tensor, torch.Tensor]:
    """Load backbone dihedral angles (phi, psi) in radians.

    Parameters
    ----------
    path : str or os.PathLike
        CSV with columns ``residue, phi, psi`` (angles in radians, in
        [-pi, pi] up to a rounding tolerance of 0.01).
    residue : str or None
        One-letter amino-acid code to keep (``"G"`` is glycine); ``None``
        keeps all rows.

    Returns
    -------
    phi, psi : torch.Tensor, shape (n,)

    Raises
    ------
    DataError
        As :func:`load_earth`, plus an unknown ``residue`` (the message lists
        the available ones).
    """
    table = _read_table(path)
    cols = table.column_index(_DIHEDRAL_COLUMNS)
    residues = [row[cols["residue"]] for row in table.rows]
    if residue is not None:
        keep = np.array(residues) == residue
        if not keep.any():
            raise DataError(
                f"{path}: unknown residue {residue!r}; available: {', '.join(sorted(set(residues)))}"
            )
    angles = []
    for name in ("phi", "psi"):
        values = table.numeric(cols[name], name)
        hint = " (angles must be in radians)" if np.abs(values).max() > 2 * math.pi else ""
        table.check_range(
            values,
            -math.pi - _DIHEDRAL_TOL,
            math.pi + _DIHEDRAL_TOL,
            name,
            label=f"[-pi, pi] (tolerance {_DIHEDRAL_TOL:g})",
            hint=hint,
        )
        angles.append(values if residue is None else values[keep])
    return _tensor(angles[0]), _tensor(angles[1])


def load_protein(path, residue: str | None = "G", R: float = 3.0, r: float = 1.0) -> torch.Tensor:
    """Load dihedral angles as points on a torus in R^3.

    ``phi`` is the angle around the symmetry axis and ``psi`` the angle around
    the tube, see :func:`torus_embed`.

    Parameters
    ----------
    path : str or os.PathLike
    residue : str or None
        See :func:`load_protein_angles`.
    R, r : float
        Torus radii.

    Returns
    -------
    torch.Tensor, shape (n, 3)
    """
    phi, psi = load_protein_angles(path, residue)
    return torus_embed(phi, psi, R, r)


def estimate_intrinsic_dim(points, n_neighbors: int = 20, variance: float = 0.95,
                           max_points: int = 2000, seed: SeedLike = 0) -> int:
    """Manifold dimension of point data by local PCA.

    Around each of up to ``max_points`` points, the smallest number of
    principal directions of its ``n_neighbors`` nearest neighbours that
    explains ``variance`` of their spread; the median over points (rounded
    down).

    Parameters
    ----------
    points : torch.Tensor, shape (N, n)
    n_neighbors : int
    variance : float
        In (0, 1).
    max_points : int
        Neighbourhoods examined (a random subset of larger data).
    seed : int or numpy.random.Generator

    Returns
    -------
    int
        In ``[1, n]``; ``n`` means no lower-dimensional structure was found.

    Raises
    ------
    EmptyDataError
        Fewer than 3 points.
    ValueError
        ``variance`` outside (0, 1) or ``n_neighbors`` not a positive integer.
    """
    from .exceptions import EmptyDataError

    x = torch.as_tensor(points, dtype=DTYPE)
    if x.ndim != 2 or x.shape[0] < 3:
        raise EmptyDataError(f"need at least 3 points of shape (N, n), got {tuple(x.shape)}")
    # Outside these ranges the answer was silently meaningless: variance=1.5 gave a
    # dimension above n, n_neighbors=0 a "neighbourhood" of the point alone.
    if not 0.0 < variance < 1.0:
        raise ValueError(f"variance must be in (0, 1), got {variance}")
    k = min(check_int(n_neighbors, "n_neighbors"), x.shape[0] - 1)
    centres = x
    if x.shape[0] > max_points:
        centres = x[torch.as_tensor(_rng(seed).choice(x.shape[0], max_points, replace=False))]
    nearest = torch.cdist(centres, x).topk(k + 1, largest=False).indices
    hood = x[nearest]
    hood = hood - hood.mean(1, keepdim=True)
    spread = torch.linalg.svdvals(hood).square()
    share = spread.cumsum(-1) / spread.sum(-1, keepdim=True).clamp_min(1e-300)
    dims = (share < variance).sum(-1) + 1
    return int(dims.median())


# ---------------------------------------------------------------------------
# Data set registry
# ---------------------------------------------------------------------------


@dataclass
class Dataset:
    """Points plus what is known about the manifold they live on.

    Attributes
    ----------
    points : torch.Tensor, shape (n, ambient_dim)
    name : str
    kind : {"euclidean", "sphere", "torus", "image"}
        The known constraint manifold: ``"euclidean"`` means none (e.g. the
        circle data, whose manifold is to be learned); ``"image"``: flattened
        images (``meta["image_shape"]``, e.g. ``"8x8"``), whose manifold is
        learned too.
    ambient_dim : int
    intrinsic_dim : int or None
        Dimension of the data manifold, ``None`` when unknown (user files).
    meta : dict
        Extra information (generator parameters, source file, torus radii
        ``R`` and ``r`` for ``kind == "torus"``).
    builtin : bool
        A built-in data set loaded by name (``DATASET_NAMES``): only these get
        the tuned per-data-set presets (``learning.presets``, ``pipeline``). A
        user's file is named after its stem, and ``glycine.csv`` may hold any data.
    """

    points: torch.Tensor
    name: str
    kind: str
    ambient_dim: int
    intrinsic_dim: int | None
    meta: dict = field(default_factory=dict)
    builtin: bool = False

    @property
    def preset_name(self) -> str | None:
        """The name to look presets up by: ``name`` for a built-in data set, else None."""
        return self.name if self.builtin else None

    def __len__(self) -> int:
        return int(self.points.shape[0])


_SYNTHETIC = {
    # name: (generator, kind, intrinsic_dim, fixed keyword arguments)
    "circle": (von_mises_circle, "euclidean", 1, {"kappa": 2.0}),
    "two_circles": (two_circles, "euclidean", 1, {"kappa": 2.0}),
    "sphere_mixture": (sphere_mixture, "sphere", 2, {"n_components": 4, "scale": 0.3}),
    "torus": (torus_density, "torus", 2, {"R": 2.0, "r": 1.0}),
}
_REAL = {
    # name: (relative path, kind, loader keyword arguments)
    "flood": ("earth/flood.csv", "sphere", {}),
    "volcano": ("earth/volcano.csv", "sphere", {}),
    "glycine": ("protein/dihedrals.csv", "torus", {"residue": "G", "R": 3.0, "r": 1.0}),
}
_IMAGES = {
    # name: (loader, intrinsic_dim, image shape)
    "digits": (load_digits, 8, (8, 8)),
}
DATASET_NAMES = tuple(_SYNTHETIC) + tuple(_REAL) + tuple(_IMAGES)
_DEFAULT_N_SAMPLES = 1000
_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".dat", ".xyz", ".npy")


def default_data_dir() -> Path:
    """Directory of the shared real data: ``$IMPLICIT_GEOM_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("IMPLICIT_GEOM_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_dataset(
    name_or_path,
    n_samples: int | None = None,
    seed: SeedLike = 0,
    data_dir=None,
    intrinsic_dim: int | None = None,
    coords: str = "auto",
    columns=None,
    where=None,
    degrees: bool = False,
) -> Dataset:
    """Load a built-in data set by name, or a data file (see :func:`load_table`).

    Parameters
    ----------
    name_or_path : str or os.PathLike
        One of ``DATASET_NAMES`` (``"circle"``, ``"two_circles"``,
        ``"sphere_mixture"``, ``"torus"``, ``"flood"``, ``"volcano"``,
        ``"glycine"``, ``"digits"``: 8x8 images) or the path of a text table or ``.npy`` array, read
        by :func:`load_table`.
    n_samples : int, optional
        Synthetic data: number of samples (default 1000). Real data: size of a
        random subsample without replacement (default: all points).
    seed : int or numpy.random.Generator
        Seed for generation or subsampling.
    data_dir : str or os.PathLike, optional
        Directory holding ``earth/`` and ``protein/`` (default
        :func:`default_data_dir`).
    intrinsic_dim : int, optional
        Overrides the recorded manifold dimension (``None`` for plain points
        in more than 2 dimensions: see :func:`estimate_intrinsic_dim`).
    coords, columns, where, degrees
        How to read a file, see :func:`load_table` (files only).

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Unknown name, ``n_samples`` larger than the real data set, or file
        options for a built-in data set.
    DataError
        Missing or malformed data file.
    """
    key = str(name_or_path)
    builtin = key in _SYNTHETIC or key in _REAL or key in _IMAGES
    if builtin and (coords != "auto" or columns or where or degrees):
        raise ParameterError("{coords}, {columns}, {where} and {degrees} read data files; "
                             f"{_literal(repr(key))} is a built-in data set",
                             params=("coords", "columns", "where", "degrees"))
    if key in _SYNTHETIC:
        generator, kind, dim, kwargs = _SYNTHETIC[key]
        n = _DEFAULT_N_SAMPLES if n_samples is None else n_samples
        points = generator(n, seed=seed, **kwargs)
        meta = {"seed": seed, **kwargs}
        return _make(points, key, kind, dim if intrinsic_dim is None else intrinsic_dim, meta,
                     builtin=True)

    if key in _IMAGES:
        loader, dim, shape = _IMAGES[key]
        points = loader()
        meta = {"image_shape": "x".join(str(s) for s in shape)}
        kind = "image"
        dim = dim if intrinsic_dim is None else intrinsic_dim
    elif key in _REAL:
        rel, kind, kwargs = _REAL[key]
        path = Path(data_dir) if data_dir is not None else default_data_dir()
        path = path / rel
        points = load_protein(path, **kwargs) if kind == "torus" else load_earth(path)
        meta = {"source": str(path), **kwargs}
        dim = 2 if intrinsic_dim is None else intrinsic_dim
    else:
        path = Path(name_or_path)
        if not path.exists() and path.suffix.lower() not in _TABLE_SUFFIXES:
            raise ValueError(
                f"unknown data set {key!r}: expected one of {', '.join(DATASET_NAMES)} "
                "or the path of a data file (.csv, .tsv, .txt, .npy...)"
            )
        data = load_table(path, coords=coords, columns=columns, where=where, degrees=degrees)
        points, kind, key, meta = data.points, data.kind, data.name, data.meta
        dim = intrinsic_dim if intrinsic_dim is not None else data.intrinsic_dim

    if n_samples is not None:
        n = _check_n(n_samples)
        if n > len(points):
            raise ParameterError(f"{{n_samples={n}}} exceeds the {len(points)} points of "
                                 f"{_literal(repr(key))}", params=("n_samples",))
        index = np.sort(_rng(seed).choice(len(points), size=n, replace=False))
        points = points[torch.as_tensor(index)]
        meta["subsample_seed"] = seed
    # Not by the name: a file's is its stem, which may be a built-in set's.
    return _make(points, key, kind, dim, meta, builtin=builtin)


def _make(points: torch.Tensor, name: str, kind: str, dim, meta: dict,
          builtin: bool = False) -> Dataset:
    return Dataset(points, name, kind, int(points.shape[1]), dim, meta, builtin)


def train_test_split(
    points: torch.Tensor, test_fraction: float = 0.2, seed: SeedLike = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly split points into train and test sets.

    Parameters
    ----------
    points : torch.Tensor, shape (n, ...)
        ``n >= 2``.
    test_fraction : float
        In (0, 1); the test set gets ``round(n * test_fraction)`` points,
        clipped so that both sets are non-empty.
    seed : int or numpy.random.Generator

    Returns
    -------
    train, test : torch.Tensor
    """
    if not 0.0 < test_fraction < 1.0:
        raise ParameterError(f"{{test_fraction}} must be in (0, 1), got "
                             f"{_literal(test_fraction)}", params=("test_fraction",))
    n = int(points.shape[0])
    if n < 2:
        raise ValueError(f"need at least 2 points to split, got {n}")
    n_test = min(max(int(round(n * test_fraction)), 1), n - 1)
    perm = torch.as_tensor(_rng(seed).permutation(n))
    return points[perm[n_test:]], points[perm[:n_test]]
