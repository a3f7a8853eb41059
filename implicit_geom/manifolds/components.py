"""Connected components of an implicit manifold found by sampling it.

The zero set is sampled by projecting uniform box points onto it; samples
closer than a radius of a few typical sample spacings are linked, and the
connected components of that graph are those of the manifold at that
resolution. This works in any ambient dimension and codimension; it is how a
learned manifold knows its components (analytic spaces and unions know them
by construction). :func:`implicit_geom.learning.count_components` adds the
data-facing diagnostics (spurious and open pieces) on top of this.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..exceptions import ComponentError


def sample_in_box(manifold, n_samples, low, high, generator=None, closest=False, inside=True):
    """Project uniform box points onto the manifold; keep converged ones inside the box
    (all converged ones if not ``inside``).

    Parameters
    ----------
    manifold : ImplicitManifold
    n_samples : int
    low, high : torch.Tensor, shape=[n]
    generator : torch.Generator, optional
        A CPU generator (the draws are moved to the box's device).
    closest : bool
        Refine each landing point to the closest point of the box point (see
        :meth:`ImplicitManifold.solve_projection`); the Newton foot otherwise.

    Returns
    -------
    points : torch.Tensor, shape=[m, n]
    n_failed : int
    """
    # Drawn on the CPU with a CPU generator, then moved: the same samples on
    # every device.
    u = torch.rand(n_samples, low.shape[-1], dtype=low.dtype, generator=generator,
                   device="cpu").to(low.device)
    # far: box points many length units off M (a box at large coordinates)
    # are landed with capped damping (see ImplicitManifold.solve_projection).
    res = manifold.solve_projection(low + (high - low) * u, closest=closest, far=True)
    keep = res.converged & torch.isfinite(res.x).all(-1)
    if inside:
        keep &= ((res.x >= low) & (res.x <= high)).all(-1)
    return res.x[keep], int((~keep).sum())


def chord_offsets(manifold, a, b, chunk=65536):
    """First-order distance to M of the midpoints of the chords ``a - b`` (flat
    batches on M): ``|F| / sigma_min(J)``, exact for a hyperplane (only its
    order of magnitude matters). A chord of a smooth piece of M bends away
    from it by about ``kappa l^2 / 8``; a chord across a gap between two
    pieces has its midpoint in the gap. Returns a float64 numpy array."""
    out = []
    for start in range(0, a.shape[0], chunk):
        mid = 0.5 * (a[start:start + chunk] + b[start:start + chunk])
        with torch.no_grad():
            value, jac = manifold._value_and_jacobian(mid.to(manifold.device, manifold.dtype))
        sigma = torch.linalg.svdvals(jac)[:, -1].clamp_min(1e-300)
        out.append((value.norm(dim=-1) / sigma).cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def normal_jacobians(manifold, x, chunk=65536):
    """Jacobians of F at flat points ``x`` (B, n) on M, in the manifold's dtype
    and device, for :func:`check_links`."""
    out = []
    for start in range(0, x.shape[0], chunk):
        with torch.no_grad():
            out.append(manifold._jacobian(x[start:start + chunk].to(manifold.device,
                                                                      manifold.dtype)))
    return torch.cat(out) if out else torch.zeros(0, manifold.codim, manifold.ambient_dim,
                                                  dtype=manifold.dtype, device=manifold.device)


def check_links(manifold, a, b, lengths, max_sagitta=0.2, jac_a=None, jac_b=None,
                chunk=65536):
    """Links ``a - b`` (flat batches on M, lengths ``lengths``) that follow M:
    their midpoint lies within ``max_sagitta`` times their length of M
    (:func:`chord_offsets`), and the normals of M at their ends point the same
    way, ``det(J_a J_b^T) > 0``.

    The midpoint alone let long links between two close sheets through: its
    offset is judged against the link's length, and a slanted link across a
    gap of 0.01 between concentric circles has its midpoint within 0.005 of
    the inner one (two components counted as one). Two sheets with no zero of
    F between them face each other with opposite normals (F keeps one sign in
    the gap), while along one sheet the normals of a link that passes the
    midpoint check turn by less than 90 degrees (87 at ``max_sagitta = 0.2``
    on a circle). ``jac_a``, ``jac_b``: the ends' Jacobians if known.
    Returns a numpy bool array."""
    ok = chord_offsets(manifold, a, b, chunk=chunk) <= max_sagitta * np.asarray(lengths)
    jac_a = normal_jacobians(manifold, a, chunk) if jac_a is None else jac_a
    jac_b = normal_jacobians(manifold, b, chunk) if jac_b is None else jac_b
    turn = torch.linalg.det(jac_a @ jac_b.transpose(-1, -2)) if len(ok) else jac_a[:, 0, 0]
    return ok & (turn > 0).cpu().numpy()


def link_components(points, diagonal, radius_factor=3.0, radius_fraction=0.03,
                    manifold=None, max_sagitta=0.2):
    """Components of the neighbourhood graph of samples on a manifold.

    Parameters
    ----------
    points : torch.Tensor, shape=[m, n]
    diagonal : float
        Length of the box diagonal.
    radius_factor : float
        Linking radius as a multiple of the 90% quantile of nearest-neighbour
        distances among the samples.
    radius_fraction : float
        Lower bound of the linking radius as a fraction of the box diagonal:
        projected box points are not uniform on M, and this bridges the
        sampling gaps that would otherwise split one component into many.
    manifold : ImplicitManifold, optional
        When given, a link is kept only if its midpoint lies within
        ``max_sagitta`` times its length of M and the normals at its ends
        agree (:func:`check_links`): the radius is wider than gaps between
        pieces of M (two circles 0.1 apart in a box of diagonal 6.7 were one
        component), and a link across a gap has its midpoint off M or faces
        the other sheet.
    max_sagitta : float

    Returns
    -------
    labels : numpy.ndarray of int, shape=[m]
    radius : float
    """
    pts = points.detach().cpu().double().numpy()
    tree = cKDTree(pts)
    nn_dist = tree.query(pts, k=2)[0][:, 1]
    radius = max(float(radius_factor * np.quantile(nn_dist, 0.9)),
                 radius_fraction * float(diagonal))
    graph = tree.sparse_distance_matrix(tree, radius, output_type="coo_matrix")
    if manifold is not None:
        upper = graph.row < graph.col  # each link once (the graph is symmetric)
        i, j, w = graph.row[upper], graph.col[upper], graph.data[upper]
        i_t, j_t = (torch.as_tensor(k, device=points.device) for k in (i, j))
        jac = normal_jacobians(manifold, points)
        dev = jac.device
        ok = check_links(manifold, points[i_t], points[j_t], w, max_sagitta,
                         jac[i_t.to(dev)], jac[j_t.to(dev)])
        graph = coo_matrix((w[ok], (i[ok], j[ok])), shape=graph.shape)
    _, labels = connected_components(graph, directed=False)
    return labels, radius


@dataclass
class ComponentMap:
    """Components of a manifold at a sampling resolution, with a label lookup.

    Attributes
    ----------
    points : torch.Tensor, shape=[m, n]
        Samples on M that belong to counted components.
    labels : torch.Tensor of int64, shape=[m]
        Their component, ``0 .. n_components - 1``, largest component first.
    radius : float
        Linking radius: a point on M lies within it of a sample of its own
        component.
    n_components : int
    sizes : list of int
        Samples per component, largest first.
    n_small : int
        Graph components below ``min_size`` samples (isolated samples, not counted).
    n_failed : int
        Box draws whose projection failed or left the box.
    all_points, all_labels
        Every sample and its raw graph label (for diagnostics).
    n_draws, seed : int
        The sampling these came from.
    """

    points: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    radius: float
    n_components: int
    sizes: list
    n_small: int
    n_failed: int
    all_points: torch.Tensor = field(repr=False)
    all_labels: np.ndarray = field(repr=False)
    n_draws: int = 0
    seed: int = 0

    @classmethod
    def sample(cls, manifold, n_samples=3000, bounds=None, radius_factor=3.0,
               radius_fraction=0.03, min_size=None, seed=0):
        """Sample the components of ``manifold`` in ``bounds`` (default its box).

        Parameters
        ----------
        manifold : ImplicitManifold
        n_samples : int
            Box points drawn and projected.
        bounds : tuple of array-like, optional
        radius_factor, radius_fraction : float
            See :func:`link_components`.
        min_size : int, optional
            Smallest counted component; default ``max(3, n_samples // 200)``.
        seed : int

        Raises
        ------
        ComponentError
            No box, or fewer than 2 samples landed on M inside it.
        """
        bounds = bounds if bounds is not None else manifold.bounds
        if bounds is None:
            raise ComponentError(f"sampling the components of {manifold.name} needs a box: "
                                 "pass bounds")
        n = manifold.ambient_dim
        low, high = (torch.as_tensor(b, device=manifold.device).to(manifold.dtype).expand(n)
                     for b in bounds)
        generator = torch.Generator().manual_seed(int(seed))
        points, n_failed = sample_in_box(manifold, int(n_samples), low, high, generator)
        if points.shape[0] < 2:
            raise ComponentError(
                f"only {points.shape[0]} of {n_samples} box points could be projected onto "
                f"{manifold.name} inside the box; is the zero set inside it?"
                + manifold._scale_note(torch.stack([low, high])))
        diagonal = float(torch.linalg.vector_norm(high - low))
        raw, radius = link_components(points, diagonal, radius_factor, radius_fraction,
                                      manifold=manifold)
        counts = np.bincount(raw)
        min_size = max(3, int(n_samples) // 200) if min_size is None else int(min_size)
        big = np.flatnonzero(counts >= min_size)
        if big.size == 0:
            # Points did land on M, so it has a component: a map with none would
            # report n_components == 0 and label lookups would index an empty set.
            raise ComponentError(
                f"only {points.shape[0]} of {n_samples} box points could be projected onto "
                f"{manifold.name} inside the box, no component reaching {min_size} samples; "
                "draw more (n_samples) or pass a box tighter around the zero set."
                + manifold._scale_note(torch.stack([low, high])))
        big = big[np.argsort(-counts[big], kind="stable")]  # largest first
        relabel = np.full(counts.size, -1)
        relabel[big] = np.arange(big.size)
        new = relabel[raw]
        keep = torch.as_tensor(new >= 0, device=points.device)
        return cls(
            points=points[keep],
            labels=torch.as_tensor(new, device=points.device)[keep],
            radius=radius,
            n_components=int(big.size),
            sizes=[int(c) for c in counts[big]],
            n_small=int((counts < min_size).sum()),
            n_failed=n_failed,
            all_points=points,
            all_labels=raw,
            n_draws=int(n_samples),
            seed=int(seed),
        )

    def labels_of(self, x, chunk=4096):
        """Component of each point of ``x`` (B, n): that of the nearest sample,
        or -1 farther than the linking radius from every sample."""
        ref = self.points.to(x)
        out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        for start in range(0, x.shape[0], chunk):
            part = x[start:start + chunk]
            dist, idx = torch.cdist(part, ref).min(-1)
            lab = self.labels.to(x.device)[idx]
            out[start:start + chunk] = torch.where(dist <= self.radius, lab, -1)
        return out
