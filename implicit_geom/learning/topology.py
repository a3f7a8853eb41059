"""Connected components of a (learned) implicit manifold inside a box, with the
diagnostics a fit needs: pieces far from the data (spurious) and pieces that
leave the box (open).

The sampling and linking are geometry (:mod:`implicit_geom.manifolds.components`,
which is also how every manifold answers ``n_components``); this module adds
the comparison with the training data.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..exceptions import ComponentError, NotFittedError
from ..manifolds.components import ComponentMap, sample_in_box
from ..numerics.validation import as_points

__all__ = ["ComponentReport", "count_components", "sample_in_box"]


@dataclass
class ComponentReport:
    """Components of a sampled manifold.

    Attributes
    ----------
    n_components : int
        Components with at least ``min_size`` sample points.
    sizes : list of int
        Sample points per counted component, largest first.
    n_spurious : int
        Counted components farther than ``spurious_distance`` from every data
        point (0 when no data were given).
    n_small : int
        Components below ``min_size`` (isolated samples, not counted).
    n_open : int
        Counted components that reach the faces of the box (within half a
        linking radius): pieces that are not closed inside the box, e.g. a
        curve that leaves it instead of closing up.
    radius : float
        Linking radius of the neighbourhood graph.
    points : torch.Tensor, shape=[m, n]
        The samples on the manifold.
    labels : numpy.ndarray of int, shape=[m]
        Component label of each sample.
    n_failed : int
        Box draws whose projection did not converge or left the box.
    """

    n_components: int
    sizes: list
    n_spurious: int
    n_small: int
    n_open: int
    radius: float
    points: torch.Tensor = field(repr=False)
    labels: np.ndarray = field(repr=False)
    n_failed: int = 0


def count_components(manifold, data=None, n_samples=3000, radius_factor=3.0,
                     radius_fraction=0.03, min_size=None, spurious_distance=None,
                     bounds=None, seed=0):
    """Count the connected components of a manifold within a box.

    Parameters
    ----------
    manifold : ImplicitManifold
        Needs ``bounds`` unless ``bounds`` is given.
    data : array-like, shape=[N, n], optional
        Data the manifold was learned from; components far from all of it are
        reported as spurious.
    n_samples, radius_factor, radius_fraction, min_size
        Sampling and linking, see
        :meth:`implicit_geom.manifolds.ComponentMap.sample`.
    spurious_distance : float, optional
        Default: 3 linking radii.
    bounds : tuple of array-like, optional
        ``(low, high)``; default ``manifold.bounds``.
    seed : int

    Returns
    -------
    ComponentReport

    Raises
    ------
    NotFittedError
        An unfitted learned manifold (it has no box, and no zero set of the data).
    ComponentError
        No box, or fewer than 2 samples landed on the manifold in the box.
    """
    bounds = bounds if bounds is not None else manifold.bounds
    if bounds is None:
        if not getattr(manifold, "is_fitted", True):
            raise NotFittedError(f"call fit first: an unfitted {type(manifold).__name__} has "
                                 "no box to count its components in")
        raise ComponentError(f"count_components needs a box: {manifold.name} has none, "
                             "pass bounds=(low, high)")
    n = manifold.ambient_dim
    found = ComponentMap.sample(manifold, n_samples, bounds, radius_factor, radius_fraction,
                                min_size, seed)
    points, labels, radius = found.all_points, found.all_labels, found.radius
    counts = np.bincount(labels)
    min_size = max(3, n_samples // 200) if min_size is None else int(min_size)
    big = np.flatnonzero(counts >= min_size)
    low, high = (torch.as_tensor(b).to(points).expand(n) for b in bounds)
    to_face = torch.minimum(points - low, high - points).amin(-1).cpu().numpy()
    n_open = sum(int(to_face[labels == c].min() <= 0.5 * radius) for c in big)
    pts = points.detach().cpu().numpy()
    n_spurious = 0
    if data is not None:
        data = as_points(data, n, "data").reshape(-1, n).detach().cpu().numpy()
        far = (3.0 * radius) if spurious_distance is None else float(spurious_distance)
        gap = cKDTree(data).query(pts)[0]
        n_spurious = sum(int(gap[labels == c].min() > far) for c in big)
    return ComponentReport(
        n_components=int(big.size),
        sizes=sorted((int(c) for c in counts[big]), reverse=True),
        n_spurious=n_spurious,
        n_small=int((counts < min_size).sum()),
        n_open=n_open,
        radius=radius,
        points=points,
        labels=labels,
        n_failed=found.n_failed,
    )
