"""Evaluation metrics: discretised Wasserstein distance and distance to a manifold.

``effective_sample_size`` lives with the samplers
(:mod:`implicit_geom.sampling.diagnostics`, which must not import this module)
and is re-exported here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import ot
import torch

from .exceptions import EmptyDataError, InvalidPointError, ProjectionError
from .sampling.diagnostics import effective_sample_size

__all__ = [
    "discretized_wasserstein",
    "paper_wasserstein",
    "DistanceStats",
    "distance_to_manifold",
    "effective_sample_size",
]

# POT's default of 1e5 network-simplex iterations is too small for a few
# thousand occupied bins; the limit only guards against pathological inputs.
_EMD_MAX_ITER = 10_000_000


def _as_numpy(x, name: str, ndim: int | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if ndim is not None and x.ndim != ndim:
        raise InvalidPointError(f"{name} must be {ndim}-d, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InvalidPointError(f"{name} contains NaN or inf")
    return x


def _grid(bins, bounds, d):
    """``(lo, hi, width, n_bins)`` of a regular grid with ``bins`` per axis over ``bounds``."""
    requested = np.asarray(bins, dtype=np.float64)
    # A cast to int would silently turn bins=2.7 into 2 (another grid than asked).
    if (requested.ndim > 1 or requested.size not in (1, d) or not np.all(np.isfinite(requested))
            or np.any(requested != np.round(requested))):
        raise ValueError(f"bins must be an integer or {d} integers (one per axis), got {bins!r}")
    n_bins = np.broadcast_to(requested.astype(np.int64), (d,)).copy()
    if (n_bins < 1).any():
        raise ValueError(f"bins must be >= 1, got {bins}")
    if math.prod(float(k) for k in n_bins) >= 2.0**62:
        # The flat cell ids are int64 (29 bins on each of 16 axes would overflow).
        raise ValueError(f"{'x'.join(str(int(k)) for k in n_bins)} bins are too many for a "
                         f"grid in {d} dimensions; use fewer bins")
    try:
        lo, hi = (np.broadcast_to(np.asarray(v, dtype=np.float64), (d,)) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be (lower, upper), each a scalar or {d} numbers, "
                         f"got {bounds!r}") from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"bounds must be finite, got {bounds!r}")
    if (hi < lo).any():
        raise ValueError(f"bounds must satisfy lower <= upper, got {bounds}")
    # Degenerate (flat) directions get unit-width bins so everything lands in bin 0.
    return lo, hi, np.where(hi > lo, (hi - lo) / n_bins, 1.0), n_bins


def _bin_points(points, lo, width, n_bins):
    """Grid cell of each point and the occupied cells.

    Returns the per-point cell indices ``(N, d)``, the occupied flat cell ids
    (sorted), the first point of each, each point's occupied-cell number and
    the points per occupied cell.
    """
    # Points outside the bounds fall into the edge bins instead of vanishing.
    idx = np.clip(np.floor((points - lo) / width).astype(np.int64), 0, n_bins - 1)
    flat = np.ravel_multi_index(idx.T, tuple(n_bins))
    bins, first, inverse, counts = np.unique(
        flat, return_index=True, return_inverse=True, return_counts=True)
    return idx, bins, first, inverse, counts


def _bin_means(values, inverse, counts):
    """Mean of ``values`` over the points of each occupied cell."""
    return np.bincount(inverse, weights=values, minlength=len(counts)) / counts


def _bin_measure(points, density, lo, width, n_bins, support, aggregate="mean"):
    """Collapse points to (location, weight) per occupied grid bin.

    ``support`` is ``"centroid"`` (mean of the bin's points) or ``"centre"``
    (the grid cell's centre); ``aggregate`` weighs a bin by the mean (a
    density) or the sum (a mass) of its points' values. Returns the flat bin
    ids (sorted), the locations and weights summing to 1.
    """
    idx, bins, first, inverse, counts = _bin_points(points, lo, width, n_bins)
    if support == "centre":
        locations = lo + (idx[first] + 0.5) * width
    else:
        locations = np.stack([_bin_means(points[:, j], inverse, counts)
                              for j in range(points.shape[1])], axis=1)
    if density is None:
        weights = counts / counts.sum()
    elif aggregate == "sum":
        weights = np.bincount(inverse, weights=density, minlength=len(counts))
    else:
        weights = _bin_means(density, inverse, counts)
    return bins, locations, _normalise(weights)


def _normalise(weights):
    total = weights.sum()
    if total <= 0:
        raise ValueError("density values sum to zero: cannot weight the bins")
    return weights / total


def _grid_cost_scale(lo, width, n_bins, points=None, locations=None, hi=None):
    """Largest squared distance over the whole grid (the paper's normaliser).

    Between two grids it is the distance between opposite corner cells; from
    the grid's centres to raw ``points`` the farthest centre of each point is
    one of the 2^d corner centres. With centroid support (``locations``, the
    binned support points, and ``hi``, the box's upper corner) the mass sits
    anywhere in the cells, so the extremes are the box's corners, widened to
    any centroid outside the bounds (points beyond them put into edge bins).
    """
    first, last = lo + 0.5 * width, lo + (n_bins - 0.5) * width
    if locations is not None:
        # The centres' corners underestimated the farthest centroids (up to one cell
        # per side): the normalised cost exceeded 1 (4.0 for points at 0 and 1 on
        # a 2-bin grid over [0, 1]).
        first = np.minimum(lo, locations.min(axis=0))
        last = np.maximum(hi, locations.max(axis=0))
    if points is None:
        return float(np.square(last - first).sum())
    d = len(lo)
    corners = np.array([[last[j] if (k >> j) & 1 else first[j] for j in range(d)]
                        for k in range(1 << d)])
    return float(ot.dist(corners, points, metric="sqeuclidean").max())


def discretized_wasserstein(
    samples_a,
    samples_b,
    bins: int | Sequence[int] = 20,
    bounds=None,
    density_a=None,
    density_b=None,
    normalize_cost: bool = True,
    support: str = "centroid",
    cost_scale: str = "support",
    bin_b: bool = True,
    aggregate: str = "mean",
) -> float:
    """Discretised Wasserstein distance between two point sets (Ross et al., 2023).

    Both sets are binned on one regular grid over a common box in the ambient
    space. Every occupied bin becomes a support point, weighted by the fraction
    of points it holds, or, when per-point densities are given, by the mean
    density of its points (normalised to sum to 1): that variant compares a
    model density evaluated at points covering its manifold with data or with
    the true density. The ground cost is the squared Euclidean distance
    between support points, divided by a maximum, and the optimal transport
    cost is solved exactly with :func:`ot.emd2`. :func:`paper_wasserstein`
    fixes the options to the reference code's protocol.

    Parameters
    ----------
    samples_a, samples_b : torch.Tensor or array_like, shape (n_a, d), (n_b, d)
    bins : int or sequence of int
        Number of bins per dimension.
    bounds : array_like, shape (2, d) or pair of scalars, optional
        ``(lower, upper)`` corners of the grid. By default, the bounding box of
        both sets together. Points outside are put into the edge bins.
    density_a, density_b : torch.Tensor or array_like, shape (n_a,), (n_b,), optional
        Non-negative per-point density values. If given, the bins of that set
        are weighted by mean density instead of by count (``density_b``
        weights the raw points of ``samples_b`` when ``bin_b`` is false).
    normalize_cost : bool
        Divide the cost matrix by a maximum, which makes the value scale-free
        and at most 1.
    support : {"centroid", "centre"}
        Where a bin's mass sits: at the mean of its points (less
        discretisation error) or at the grid cell's centre (the paper).
    cost_scale : {"support", "grid"}
        The maximum that normalises the cost: over the occupied support
        points, or over the whole grid (the paper: the box's extreme cells, so
        the value depends on the box but not on where the mass is; with
        centroid support, whose mass may sit anywhere in a cell, the box's
        corners, widened to the centroids of points outside the bounds).
    bin_b : bool
        Bin ``samples_b`` too (default) or keep its points as they are, each
        with weight 1/n_b or its normalised density (the paper's
        density-to-data comparison).
    aggregate : {"mean", "sum"}
        How per-point values weigh a bin: their mean (densities at points
        covering a manifold, the paper) or their sum (probability masses of
        quadrature nodes: the bin's exact mass).

    Returns
    -------
    float
        The optimal transport cost. It is exactly 0 when both sets give the same
        discretised measure.
    """
    if support not in ("centroid", "centre"):
        raise ValueError(f"support must be 'centroid' or 'centre', got {support!r}")
    if cost_scale not in ("support", "grid"):
        raise ValueError(f"cost_scale must be 'support' or 'grid', got {cost_scale!r}")
    if aggregate not in ("mean", "sum"):
        raise ValueError(f"aggregate must be 'mean' or 'sum', got {aggregate!r}")
    a = _as_numpy(samples_a, "samples_a", 2)
    b = _as_numpy(samples_b, "samples_b", 2)
    if a.shape[1] != b.shape[1]:
        raise InvalidPointError(
            f"dimension mismatch: samples_a has {a.shape[1]}, samples_b {b.shape[1]}")
    if len(a) == 0 or len(b) == 0:
        raise EmptyDataError("both point sets must be non-empty")
    d = a.shape[1]

    densities = []
    for name, dens, pts in (("density_a", density_a, a), ("density_b", density_b, b)):
        if dens is not None:
            dens = _as_numpy(dens, name, 1)
            if len(dens) != len(pts):
                raise InvalidPointError(f"{name} has {len(dens)} values for {len(pts)} points")
            if (dens < 0).any():
                raise InvalidPointError(f"{name} must be non-negative")
        densities.append(dens)

    if bounds is None:
        bounds = (np.minimum(a.min(axis=0), b.min(axis=0)),
                  np.maximum(a.max(axis=0), b.max(axis=0)))
    lo, hi, width, n_bins = _grid(bins, bounds, d)

    bins_a, loc_a, w_a = _bin_measure(a, densities[0], lo, width, n_bins, support, aggregate)
    if bin_b:
        bins_b, loc_b, w_b = _bin_measure(b, densities[1], lo, width, n_bins, support, aggregate)
        if (
            np.array_equal(bins_a, bins_b)
            and np.array_equal(loc_a, loc_b)
            and np.array_equal(w_a, w_b)
        ):
            # The simplex would return 0 too, but possibly with round-off; identical
            # measures must give exactly zero.
            return 0.0
    else:
        loc_b = b
        w_b = np.full(len(b), 1.0 / len(b)) if densities[1] is None else _normalise(densities[1])

    cost = ot.dist(loc_a, loc_b, metric="sqeuclidean")
    if normalize_cost:
        if cost_scale == "grid":
            centroids = None
            if support == "centroid":
                centroids = np.concatenate([loc_a, loc_b]) if bin_b else loc_a
            scale = _grid_cost_scale(lo, width, n_bins, None if bin_b else b, centroids, hi)
        else:
            scale = cost.max()
        if scale > 0:
            cost = cost / scale
    value, log = ot.emd2(w_a, w_b, cost, numItermax=_EMD_MAX_ITER, log=True)
    if log.get("warning"):
        warnings.warn(f"ot.emd2: {log['warning']}", RuntimeWarning, stacklevel=2)
    return max(float(value), 0.0)


def paper_wasserstein(model_points, model_density, target_points, target_density=None, *,
                      bins, bounds) -> float:
    """The discretised W of Ross et al. (2023) between a model density and a target.

    The model's density is evaluated at points covering its manifold (a dense
    set; how many fall in a bin does not matter, only their mean density) and
    binned on a ``bins``-per-axis grid over ``bounds``, mass at the cell
    centres. The target is either a density on points covering the true
    manifold (``target_density`` given: binned the same way; the paper's
    synthetic experiments) or data points used as they are, with equal weights
    (the paper's real-data experiments). The squared Euclidean cost is
    normalised by its maximum over the whole grid. This is the reference
    code's ``wasserstein_between_discretized_densities`` /
    ``wasserstein_discretized_density_to_points`` with ``granularity = bins + 1``.

    Parameters
    ----------
    model_points : array_like, shape (n, d)
    model_density : array_like, shape (n,)
        Non-negative, unnormalised (e.g. ``exp(-E)`` at temperature 1).
    target_points : array_like, shape (k, d)
    target_density : array_like, shape (k,), optional
    bins : int or sequence of int
    bounds : array_like, shape (2, d)

    Returns
    -------
    float
    """
    return discretized_wasserstein(
        model_points, target_points, bins=bins, bounds=bounds, density_a=model_density,
        density_b=target_density, support="centre", cost_scale="grid",
        bin_b=target_density is not None)


@dataclass
class DistanceStats:
    """Summary of point-to-manifold distances.

    Attributes
    ----------
    min, median, mean, max : float
    distances : torch.Tensor, shape (n,)
        The raw distances.
    """

    min: float
    median: float
    mean: float
    max: float
    distances: torch.Tensor

    def as_dict(self, include_distances: bool = False) -> dict:
        """The summary as a plain dict (the raw tensor only if asked for)."""
        out = {"min": self.min, "median": self.median, "mean": self.mean, "max": self.max}
        if include_distances:
            out["distances"] = self.distances
        return out


def distance_to_manifold(points, manifold) -> DistanceStats:
    """Euclidean distances from points to their closest points on a manifold.

    Parameters
    ----------
    points : torch.Tensor, shape (n, d)
    manifold : object
        Any object whose ``projection(points)`` returns the closest points as a
        tensor of the same shape. It is called without ``torch.no_grad`` since
        projections onto implicit manifolds may need autograd.

    Returns
    -------
    DistanceStats

    Raises
    ------
    InvalidPointError, EmptyDataError
        Points not of shape (n, d), with NaN/inf entries, or none.
    ProjectionError
        The projection failed (raised by it, or NaN/inf closest points).
    """
    points = torch.as_tensor(points, dtype=torch.float64)
    if points.ndim != 2:
        raise InvalidPointError(
            f"points must be a non-empty (n, d) tensor, got shape {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise EmptyDataError("points must be a non-empty (n, d) tensor, got no points")
    if not torch.isfinite(points).all():
        raise InvalidPointError("points contain NaN or inf")
    projected = torch.as_tensor(manifold.projection(points), dtype=torch.float64)
    if projected.shape != points.shape:
        raise ValueError(
            f"manifold.projection returned shape {tuple(projected.shape)}, "
            f"expected {tuple(points.shape)}"
        )
    failed = ~torch.isfinite(projected).all(dim=-1)
    if failed.any():
        # A projection that returns NaN where it is undefined (geomstats' Hypersphere
        # at the centre) made every statistic NaN without a word.
        raise ProjectionError(
            f"manifold.projection returned NaN or inf for {int(failed.sum())} of "
            f"{len(points)} point(s) (first at index {int(failed.nonzero()[0, 0])})",
            failed=failed)
    distances = torch.linalg.vector_norm((points - projected).detach(), dim=-1)
    values = distances.cpu().numpy()
    return DistanceStats(
        min=float(values.min()),
        # numpy's median averages the two middle values; torch.median does not.
        median=float(np.median(values)),
        mean=float(values.mean()),
        max=float(values.max()),
        distances=distances,
    )
