"""Global log and distance solvers for implicit manifolds (geomstats ``LogSolver`` s).

Shooting (``ShootingLogSolver``) finds the geodesic to a target only from an
initial guess close to it; between far-apart points of a surface of varying
curvature it misses. :class:`GeodesicLogSolver` instead

1. takes a *global* initial guess: the shortest path in a k-nearest-neighbour
   graph over a dense sample of M (:class:`SampleGraph`, built once per
   manifold and rebuilt when the manifold changes), or the projected chord for
   pairs closer than ``near_radius``;
2. collects the *candidate* routes of a pair: graph nodes ``z`` with
   ``d(x, z) + d(z, y)`` within ``candidate_rtol`` of the graph distance and
   ``d(x, z) ~ d(z, y)`` are near-midpoints of near-shortest paths; their
   clusters are distinct routes (several clusters: the pair is near the cut
   locus);
3. refines every candidate to a smooth geodesic by *spectral path
   straightening*: the curve is a polynomial through Legendre-Gauss-Lobatto
   nodes on M, and a batched Riemannian Newton method minimises its energy
   ``int |x'|^2`` with the nodes constrained to M (an exact quadrature, so the
   discrete problem converges spectrally in the number of nodes);
4. checks the result: the Newton decrement, the decay of the curve's Legendre
   coefficients (raising the degree until the length changes by less than
   ``rtol``), and the curve's distance to M between nodes;
5. returns the shortest candidate and reports the pairs whose second-best
   distinct geodesic is within ``ambiguity_rtol`` (ambiguous: near the cut
   locus).

Everything runs batched over pairs, with a per-pair exit from every loop.
"""

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from geomstats.numerics.geodesic import LogSolver
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from ..exceptions import DisconnectedError, GeodesicError, InvalidPointError
from ..numerics.linalg import normal_space_solve, tangent_basis, tangent_projector
from ..numerics.newton import solve_along_normals
from ..numerics.validation import DTYPE, as_points


_DEBUG = False
_LOG = []

# --------------------------------------------------------------------------- LGL rules
@lru_cache(maxsize=64)
def _lgl_numpy(n):
    """Legendre-Gauss-Lobatto nodes, weights, differentiation matrix (degree n)."""
    from numpy.polynomial import legendre

    p_n = legendre.Legendre.basis(n)
    t = np.concatenate([[-1.0], np.sort(p_n.deriv().roots().real), [1.0]])
    p = p_n(t)
    w = 2.0 / (n * (n + 1) * p**2)
    diff = np.zeros((n + 1, n + 1))
    for i in range(n + 1):
        for j in range(n + 1):
            if i != j:
                diff[i, j] = p[i] / (p[j] * (t[i] - t[j]))
    diff[0, 0] = -n * (n + 1) / 4.0
    diff[n, n] = n * (n + 1) / 4.0
    # Legendre coefficients of the interpolant: c = inv(V) X, V[i, k] = P_k(t_i).
    vander = legendre.legvander(t, n)
    return t, w, diff, np.linalg.inv(vander)


@lru_cache(maxsize=256)
def _lgl_to_lgl(n_from, n_to):
    return _interp_matrix(_lgl_numpy(n_from)[0], _lgl_numpy(n_to)[0])


@lru_cache(maxsize=64)
def _lgl_to_samples(n_from, n_samples=33):
    return _interp_matrix(_lgl_numpy(n_from)[0], np.linspace(-1.0, 1.0, n_samples))


def _interp(nodes, degree):
    """Values at the LGL nodes of ``degree`` of the polynomial through ``nodes`` (LGL)."""
    mat = _lgl_to_lgl(nodes.shape[-2] - 1, int(degree))
    return torch.as_tensor(mat, dtype=nodes.dtype, device=nodes.device) @ nodes


def _curve_samples(curves, n_samples=33):
    """Each curve (LGL nodes, any degrees) at ``n_samples`` equispaced parameters."""
    out = [None] * len(curves)
    by_degree = {}
    for i, c in enumerate(curves):
        by_degree.setdefault(c.shape[0] - 1, []).append(i)
    for d, idx in by_degree.items():
        stack = torch.stack([curves[i] for i in idx])
        mat = torch.as_tensor(_lgl_to_samples(d, n_samples), dtype=stack.dtype,
                              device=stack.device)
        vals = mat @ stack
        for r, i in enumerate(idx):
            out[i] = vals[r]
    return torch.stack(out)


def _barycentric_weights(t):
    diff = t[:, None] - t[None, :]
    np.fill_diagonal(diff, 1.0)
    return 1.0 / diff.prod(1)


def _interp_matrix(t_from, t_to):
    """Matrix evaluating the polynomial through values at ``t_from`` at ``t_to``."""
    lam = _barycentric_weights(t_from)
    diff = t_to[:, None] - t_from[None, :]
    exact = np.isclose(diff, 0.0, atol=1e-15)
    diff[exact] = 1.0
    mat = lam[None, :] / diff
    mat /= mat.sum(1, keepdims=True)
    rows = exact.any(1)
    mat[rows] = exact[rows].astype(float)
    return mat


class _Rule:
    """LGL rule of degree n as tensors of a given dtype and device."""

    _cache = {}

    @classmethod
    def get(cls, n, like):
        """The (cached) rule of degree ``n`` on ``like``'s dtype and device."""
        key = (int(n), like.dtype, like.device)
        rule = cls._cache.get(key)
        if rule is None:
            rule = cls._cache[key] = cls(int(n), like)
        return rule

    def __init__(self, n, like):
        t, w, diff, to_legendre = _lgl_numpy(n)
        kw = dict(dtype=like.dtype, device=like.device)
        self.n, self.t_np = n, t
        self.t = torch.as_tensor(t, **kw)
        self.w = torch.as_tensor(w, **kw)
        self.diff = torch.as_tensor(diff, **kw)
        self.to_legendre = torch.as_tensor(to_legendre, **kw)
        mid = 0.5 * (t[1:] + t[:-1])
        self.to_mid = torch.as_tensor(_interp_matrix(t, mid), **kw)

    def energy(self, x):
        """``int_{-1}^{1} |x'|^2 dt`` of the interpolant, per path; and ``D x``."""
        vel = self.diff @ x
        return (self.w[:, None] * vel * vel).sum((-1, -2)), vel

    def interp_to(self, other_t, x):
        mat = torch.as_tensor(_interp_matrix(self.t_np, np.asarray(other_t)), dtype=x.dtype,
                              device=x.device)
        return mat @ x


# ------------------------------------------------------------------------- results
@dataclass
class GeodesicResult:
    """Minimising geodesics between pairs of points (flat batch of P pairs).

    Attributes
    ----------
    tangent_vec : torch.Tensor, shape=[P, n]
        ``log_{base}(point)``: initial velocity of the geodesic on [0, 1].
    length : torch.Tensor, shape=[P]
        Geodesic distance; ``inf`` between different connected components.
    converged : torch.Tensor of bool, shape=[P]
        The geodesic passed every check (see :class:`GeodesicLogSolver`).
    ambiguous : torch.Tensor of bool, shape=[P]
        Another, distinct geodesic is at most ``ambiguity_rtol`` longer: the
        pair lies (numerically) on the cut locus and the minimiser is not unique.
    n_candidates : torch.Tensor of int, shape=[P]
        Routes refined (1 for near pairs).
    gap : torch.Tensor, shape=[P]
        Relative excess length of the second-best distinct geodesic found
        (``inf`` when only one was found).
    nodes : list of torch.Tensor
        Per pair, the LGL nodes ``(N + 1, n)`` of the geodesic (on M).
    """

    tangent_vec: torch.Tensor
    length: torch.Tensor
    converged: torch.Tensor
    ambiguous: torch.Tensor
    n_candidates: torch.Tensor
    gap: torch.Tensor
    nodes: list


@dataclass
class PairwiseResult:
    """Output of :meth:`GeodesicLogSolver.pairwise`.

    Attributes
    ----------
    dist : torch.Tensor, shape=[N, N]
        Symmetric distance matrix (``inf`` across components, NaN where failed).
    ambiguous : torch.Tensor of bool, shape=[N, N]
    failed : torch.Tensor of bool, shape=[N, N]
    n_near, n_far : int
        Pairs solved from the chord guess, and from the graph guess.
    """

    dist: torch.Tensor
    ambiguous: torch.Tensor
    failed: torch.Tensor
    n_near: int
    n_far: int


# --------------------------------------------------------------------- sample graph
def _state_fingerprint(space):
    """Hash of what defines the zero set: parameters, buffers, scalar settings
    (radii, tolerances, bounds) of the space and of its components."""
    digest = hashlib.sha1()
    seen = set()

    def tensor(val):
        digest.update(val.detach().cpu().contiguous().numpy().tobytes())

    def visit(obj, depth=0):
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        digest.update(type(obj).__name__.encode())
        if isinstance(obj, torch.nn.Module):
            for key, val in obj.state_dict().items():
                digest.update(key.encode())
                tensor(val)
        for key, val in sorted(getattr(obj, "__dict__", {}).items()):
            if isinstance(val, (bool, int, float, str)):
                digest.update(f"{key}={val!r}".encode())
            elif torch.is_tensor(val):
                digest.update(key.encode())
                tensor(val)
            elif isinstance(val, torch.nn.Module):
                visit(val, depth + 1)
            elif isinstance(val, (list, tuple)):
                for item in val:
                    if torch.is_tensor(item):
                        tensor(item)
                    elif isinstance(item, torch.nn.Module):
                        visit(item, depth + 1)
            elif callable(val) and key in ("_f", "f"):
                # A plain callable: its identity (a closure's captured values
                # are not visible; rebuild the manifold after changing them).
                digest.update(f"{key}@{id(val)}".encode())
        for child in getattr(obj, "_modules", {}).values():
            if child is not None:
                visit(child, depth + 1)

    visit(space)
    return digest.hexdigest()


def _farthest_points(points, n_keep, seed=0):
    """Greedy farthest-point subsample (near-uniform spacing), indices."""
    n_all = points.shape[0]
    if n_all <= n_keep:
        return torch.arange(n_all)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n_all, (1,), generator=gen))
    keep = torch.empty(n_keep, dtype=torch.long)
    keep[0] = first
    gap = (points - points[first]).norm(dim=-1)
    for i in range(1, n_keep):
        nxt = int(gap.argmax())
        keep[i] = nxt
        gap = torch.minimum(gap, (points - points[nxt]).norm(dim=-1))
    return keep


class SampleGraph:
    """k-nearest-neighbour graph over a dense, near-uniform sample of a manifold.

    Box points are projected onto M, thinned by farthest-point sampling and
    linked to their ``n_neighbors`` nearest samples. An edge is kept only if
    its midpoint lies within ``max_sagitta`` times its length of M (a chord of
    a smooth curve on M bends away by about ``kappa l^2 / 8``; an edge that
    bridges a gap between sheets or components does not), and, on unions, only
    between points of the same component.

    Parameters
    ----------
    space : ImplicitManifold
    n_nodes : int
    n_neighbors : int
    bounds : tuple of torch.Tensor
        Box to sample.
    max_sagitta : float
    seed : int
    """

    def __init__(self, space, n_nodes, n_neighbors, bounds, max_sagitta=0.2, seed=0):
        self.space = space
        self.n_neighbors = int(n_neighbors)
        self.max_sagitta = float(max_sagitta)
        from .components import sample_in_box

        low, high = bounds
        gen = torch.Generator().manual_seed(int(seed))
        draws = []
        for _ in range(8):
            x, _ = sample_in_box(space, 4 * int(n_nodes), low, high, gen)
            draws.append(x.detach().cpu().to(DTYPE))
            if sum(len(d) for d in draws) >= 3 * n_nodes:
                break
        cloud = torch.cat(draws)
        if len(cloud) < 2 * space.dim + 2:
            raise GeodesicError(
                f"only {len(cloud)} box points could be projected onto {space.name}; the "
                "graph for global geodesics needs a box (bounds) that encloses the manifold.")
        self.points = cloud[_farthest_points(cloud, int(n_nodes), seed)]
        pts = self.points.numpy()
        self.tree = cKDTree(pts)
        nn_dist = self.tree.query(pts, k=2)[0][:, 1]
        self.spacing = float(np.median(nn_dist))
        rows, cols, w = self._edges(self.points, self.points, self.n_neighbors + 1, skip_self=True)
        n = len(pts)
        self.matrix = coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
        self.matrix = self.matrix.maximum(self.matrix.T)
        self.n_components, self.labels = connected_components(self.matrix, directed=False)

    def _component(self, x):
        """Labels of components known by construction (unions), else None."""
        known = self.space._known_n_components()
        if known is None or known == 1:
            return None
        return self.space._component_labels(x)

    def _edges(self, queries, nodes_pts, k, skip_self=False):
        """Checked edges from each query to its k nearest graph nodes."""
        q = queries.detach().cpu()
        dist, idx = self.tree.query(q.numpy(), k=min(k, len(self.points)))
        dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
        rows = np.repeat(np.arange(len(q)), idx.shape[1])
        cols, w = idx.reshape(-1), dist.reshape(-1)
        keep = np.isfinite(w) & (w > 0 if skip_self else np.ones_like(w, dtype=bool))
        rows, cols, w = rows[keep], cols[keep], w[keep]
        space = self.space
        a, b = q[rows].to(space.device, space.dtype), self.points[cols].to(space.device, space.dtype)
        with torch.no_grad():
            value, jac = space._value_and_jacobian(0.5 * (a + b))
        # First-order distance of the midpoint to M: |F| / sigma_min(J) (exact
        # for a hyperplane; we only need its order of magnitude).
        sigma = torch.linalg.svdvals(jac)[:, -1].clamp_min(1e-300)
        off = (value.norm(dim=-1) / sigma).cpu().double().numpy()
        ok = off <= self.max_sagitta * w
        comp_a, comp_b = self._component(a), self._component(b)
        if comp_a is not None:
            ok &= (comp_a == comp_b).cpu().numpy()
        return rows[ok], cols[ok], w[ok]

    def attach(self, queries):
        """Graph with the query points appended as nodes ``n, n + 1, ...``.

        Returns
        -------
        matrix : scipy.sparse.csr_matrix
        """
        n = len(self.points)
        rows, cols, w = self._edges(queries, self.points, self.n_neighbors)
        extra = coo_matrix((w, (rows + n, cols)), shape=(n + len(queries), n + len(queries)))
        base = self.matrix.tocoo()
        full = coo_matrix((np.concatenate([base.data, extra.data, extra.data]),
                           (np.concatenate([base.row, extra.row, extra.col]),
                            np.concatenate([base.col, extra.col, extra.row]))),
                          shape=extra.shape)
        return full.tocsr()


# ------------------------------------------------------------------------ the solver
class GeodesicLogSolver(LogSolver):
    """Global, batched log / dist of an :class:`ImplicitManifold` (see module doc).

    Parameters
    ----------
    space : ImplicitManifold
    rtol : float
        Relative accuracy of lengths: the degree of a path is raised until its
        length changes by less than this.
    near_radius : float, optional
        Pairs closer (chord) than this start from the projected chord, and
        keep that geodesic if it is at most ``near_excess`` longer than the
        chord (then no other path can be much shorter); default 5% of the box
        diagonal.
    near_excess : float
    candidate_rtol : float
        Routes whose graph length is within this of the shortest one are all
        refined; larger than the graph's length error, so that the minimiser's
        route is among them.
    ambiguity_rtol : float
        A pair is ambiguous when a distinct geodesic is within this of the
        shortest.
    n_graph_nodes, n_neighbors : int, optional
        Size of the sample graph; defaults grow with the intrinsic dimension.
    min_degree, max_degree : int
        Polynomial degrees of paths (raised adaptively in between).
    max_iter : int
        Newton iterations per degree.
    bounds : tuple, optional
        Box sampled by the graph (default: the space's ``bounds``, else the box
        of the query points widened by half its size).
    max_seeds_per_route, seed_separation : int, float
        A route's cluster of near-midpoints longer than ``seed_separation``
        graph spacings is seeded from up to ``max_seeds_per_route`` nodes
        spread along it (nearly degenerate geodesics lie side by side there).
    prune_rtol : float
        After the first solve, a pair's routes longer than its shortest by more
        than this are dropped (the first solve is accurate to ~1e-4).
    seed : int
    chunk : int
        Pairs per batched tensor program (memory).
    """

    def __init__(self, space, rtol=1e-6, near_radius=None, near_excess=0.1,
                 candidate_rtol=0.08, ambiguity_rtol=1e-3, n_graph_nodes=None,
                 n_neighbors=None, min_degree=6, max_degree=96, max_iter=40, bounds=None,
                 max_seeds_per_route=4, seed_separation=6.0, prune_rtol=0.01, seed=0,
                 chunk=2000):
        super().__init__(solves_bvp=True)
        self._space = space
        self.rtol = float(rtol)
        self.near_radius = near_radius
        self.near_excess = float(near_excess)
        self.candidate_rtol = float(candidate_rtol)
        self.ambiguity_rtol = float(ambiguity_rtol)
        m = space.dim
        self.n_graph_nodes = int(n_graph_nodes or {1: 500, 2: 4000, 3: 12000}.get(m, 20000))
        self.n_neighbors = int(n_neighbors or {1: 4, 2: 10, 3: 16}.get(m, 24))
        self.min_degree, self.max_degree = int(min_degree), int(max_degree)
        self.max_iter = int(max_iter)
        self.bounds = bounds
        self.seed = int(seed)
        self.chunk = int(chunk)
        self.max_seeds_per_route = int(max_seeds_per_route)
        self.seed_separation = float(seed_separation)
        self.prune_rtol = float(prune_rtol)
        self.nodes_per_spacing = 4.0
        self._graph, self._graph_key = None, None
        self.stats = {}

    # ------------------------------------------------------------------ graph
    def _box(self, queries):
        space = self._space
        if self.bounds is not None:
            return tuple(torch.as_tensor(b, dtype=DTYPE).expand(space.ambient_dim)
                         for b in self.bounds)
        if space.bounds is not None:
            return space.bounds
        lo, hi = queries.min(0).values, queries.max(0).values
        pad = 0.5 * (hi - lo).clamp_min(1e-3)
        return lo - pad, hi + pad

    def graph(self, queries=None):
        """The cached :class:`SampleGraph`, rebuilt when the manifold changed."""
        key = _state_fingerprint(self._space)
        if self._graph is None or key != self._graph_key:
            box = self._box(queries if queries is not None else self._space.random_point(2))
            self._graph = SampleGraph(self._space, self.n_graph_nodes, self.n_neighbors,
                                      box, seed=self.seed)
            self._graph_key = key
        return self._graph

    def _near_radius(self, queries):
        if self.near_radius is not None:
            return float(self.near_radius)
        low, high = self._box(queries)
        return 0.05 * float((high - low).norm())

    # --------------------------------------------------------- public interface
    def log(self, point, base_point):
        """Riemannian logarithm ``log_{base_point}(point)``, shape ``(..., n)``.

        The initial velocity of the minimising path is polished by shooting
        (:meth:`ImplicitMetric._shoot`: one or two Gauss-Newton steps from
        there), so that ``exp(log(y)) = y`` to the metric's ``log_tol``.

        Raises
        ------
        DisconnectedError
            If some pair lies on different connected components.
        GeodesicError
            If some pair has no converged geodesic.
        """
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        res = self.solve(y, x)
        self._raise_failures(res, "log", finite=True)
        vec = res.tangent_vec
        metric = getattr(space, "metric", None)
        if hasattr(metric, "_shoot"):
            moving = res.length > 0
            if bool(moving.any()):
                vec = vec.clone()
                with torch.no_grad():
                    vec[moving] = metric._shoot(x[moving], y[moving], guess=vec[moving])
        return vec.reshape(*batch, space.ambient_dim)

    def dist(self, point_a, point_b):
        """Geodesic distance, shape ``(...,)`` (``inf`` across components)."""
        space = self._space
        x, y, batch = space._pair(point_a, point_b, ("point_a", "point_b"))
        res = self.solve(y, x)
        self._raise_failures(res, "dist")
        return res.length.reshape(batch)

    def dist_pairwise(self, points):
        """Symmetric matrix of geodesic distances, shape ``(N, N)``.

        Raises
        ------
        GeodesicError
            If some pair failed (use :meth:`pairwise` for a per-pair report).
        """
        res = self.pairwise(points)
        if bool(res.failed.any()):
            n_bad = int(torch.triu(res.failed, 1).sum())
            raise GeodesicError(f"dist_pairwise: {n_bad} pair(s) have no converged geodesic.")
        return res.dist

    def geodesic_bvp(self, point, base_point):
        """Minimising geodesic ``t -> gamma(t)``, ``t`` in [0, 1], as a callable.

        The returned points are the geodesic's polynomial at ``t`` projected
        onto M (closest point), shape ``(n_times, n)`` or ``(P, n_times, n)``.
        """
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        res = self.solve(y, x)
        self._raise_failures(res, "geodesic", finite=True)

        def path(t):
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
            out = []
            for nodes in res.nodes:
                rule = _Rule.get(nodes.shape[0] - 1, nodes)
                out.append(rule.interp_to(2 * t.cpu().numpy() - 1, nodes))
            pts = space.projection(torch.stack(out))
            return pts[0] if len(batch) == 0 else pts.reshape(*batch, len(t), space.ambient_dim)

        return path

    def _raise_failures(self, res, what, finite=False):
        bad = ~res.converged
        if bool(bad.any()):
            raise GeodesicError(
                f"{what}: no converged geodesic for {int(bad.sum())} of {bad.numel()} "
                "pair(s) (path straightening did not meet its checks).")
        apart = ~torch.isfinite(res.length)
        if finite and bool(apart.any()):
            raise DisconnectedError(
                f"{what}: {int(apart.sum())} pair(s) lie on different connected components "
                f"of {self._space.name} (not joined in its sample graph): no geodesic joins "
                "them.", mask=apart)

    # ------------------------------------------------------------------ solve
    def solve(self, point, base_point):
        """Geodesics from ``base_point`` to ``point`` (flat batches ``(P, n)``).

        Returns
        -------
        GeodesicResult
        """
        space = self._space
        x = as_points(base_point, space.ambient_dim, "base_point").reshape(-1, space.ambient_dim)
        y = as_points(point, space.ambient_dim, "point").reshape(-1, space.ambient_dim)
        x, y = torch.broadcast_tensors(x, y)
        queries, inverse = torch.unique(torch.cat([x, y]), dim=0, return_inverse=True)
        p = x.shape[0]
        return self._solve_indexed(queries, inverse[:p], inverse[p:])

    def pairwise(self, points, labels=None):
        """All pairwise geodesics of ``points`` (N, n), each pair solved once.

        Parameters
        ----------
        points : array-like, shape=[N, n]
        labels : torch.Tensor of int, shape=[N], optional
            Known component labels (-1: unknown); pairs with two different
            known labels are set to ``inf`` without solving.

        Returns
        -------
        PairwiseResult
        """
        space = self._space
        pts = as_points(points, space.ambient_dim, "points").reshape(-1, space.ambient_dim)
        n = pts.shape[0]
        i, j = torch.triu_indices(n, n, 1, device=pts.device)
        dist = torch.zeros(n, n, dtype=pts.dtype, device=pts.device)
        amb = torch.zeros(n, n, dtype=torch.bool, device=pts.device)
        failed = torch.zeros_like(amb)
        if labels is not None:
            li, lj = labels[i], labels[j]
            apart = (li != lj) & (li >= 0) & (lj >= 0)
            dist[i[apart], j[apart]] = dist[j[apart], i[apart]] = math.inf
            i, j = i[~apart], j[~apart]
        self.stats = {"near": 0, "far": 0}
        if i.numel() == 0:
            return PairwiseResult(dist=dist, ambiguous=amb, failed=failed, n_near=0, n_far=0)
        res = self._solve_indexed(pts, i, j)
        length = torch.where(res.converged, res.length, torch.nan)
        dist[i, j] = dist[j, i] = length
        amb[i, j] = amb[j, i] = res.ambiguous
        failed[i, j] = failed[j, i] = ~res.converged
        return PairwiseResult(dist=dist, ambiguous=amb, failed=failed,
                              n_near=self.stats.get("near", 0), n_far=self.stats.get("far", 0))

    def _check_on_manifold(self, queries):
        space = self._space
        value = space.submersion(queries)
        metric = getattr(space, "metric", None)
        atol = (metric._on_manifold_atol(queries.dtype) if hasattr(metric, "_on_manifold_atol")
                else 10 * space.tol_for(queries.dtype))
        off = ~(value.norm(dim=-1) <= atol)
        if bool(off.any()):
            raise InvalidPointError(
                f"{int(off.sum())} point(s) are not on {space.name} (|F| up to "
                f"{float(value.norm(dim=-1).max()):.3g}); project them first.")

    def _solve_indexed(self, queries, ia, ib):
        """Geodesics from ``queries[ia]`` to ``queries[ib]``."""
        space = self._space
        self._check_on_manifold(queries)
        p, n = ia.shape[0], space.ambient_dim
        dt = dict(dtype=queries.dtype, device=queries.device)
        out_v = torch.zeros(p, n, **dt)
        out_len = torch.full((p,), torch.nan, **dt)
        conv = torch.zeros(p, dtype=torch.bool, device=queries.device)
        amb = torch.zeros_like(conv)
        n_cand = torch.ones(p, dtype=torch.long, device=queries.device)
        gap = torch.full((p,), math.inf, **dt)
        nodes = [None] * p
        self._like = queries
        a, b = queries[ia], queries[ib]
        chord = (b - a).norm(dim=-1)
        same = chord <= 10 * space.tol_for(queries.dtype)
        out_len[same], conv[same] = 0.0, True
        for k in same.nonzero().squeeze(-1).tolist():
            nodes[k] = torch.stack([a[k], b[k]])
        todo = ~conv
        near = todo & (chord <= self._near_radius(queries))
        self.stats = {"near": int(near.sum()), "far": 0, "far_from_near": 0}
        if bool(near.any()):
            idx = near.nonzero().squeeze(-1)
            t = torch.linspace(0.0, 1.0, 3, **dt)
            init = [torch.stack([a[k], 0.5 * (a[k] + b[k]), b[k]]) for k in idx.tolist()]
            del t
            paths = self._refine(init)["routes"]
            for r, k in enumerate(idx.tolist()):
                path = paths[r]
                if path is None or not (path["length"] <= (1 + self.near_excess) * chord[k]):
                    continue  # goes global
                self._store(k, path, out_v, out_len, conv, nodes)
        far = (~conv).nonzero().squeeze(-1)
        self.stats["far"] = int(far.numel())
        if far.numel():
            self._solve_far(queries, ia[far], ib[far], far, out_v, out_len, conv, amb,
                            n_cand, gap, nodes)
        return GeodesicResult(tangent_vec=out_v, length=out_len, converged=conv, ambiguous=amb,
                              n_candidates=n_cand, gap=gap, nodes=nodes)

    def _store(self, k, path, out_v, out_len, conv, nodes):
        out_v[k], out_len[k], conv[k] = path["tangent"], path["length"], True
        nodes[k] = path["nodes"]

    # ---------------------------------------------------------- global guesses
    def _solve_far(self, queries, ia, ib, where, out_v, out_len, conv, amb, n_cand, gap, nodes):
        graph = self.graph(queries)
        n_nodes = len(graph.points)
        matrix = graph.attach(queries)
        ia_np, ib_np = ia.cpu().numpy(), ib.cpu().numpy()
        sources, src_row = np.unique(ia_np, return_inverse=True)
        targets, tgt_row = np.unique(ib_np, return_inverse=True)
        dist_a, pred_a = dijkstra(matrix, indices=n_nodes + sources, return_predecessors=True)
        dist_b, pred_b = dijkstra(matrix, indices=n_nodes + targets, return_predecessors=True)
        all_pts = torch.cat([graph.points.to(queries), queries])
        best = dist_a[src_row, n_nodes + ib_np]
        joined = np.isfinite(best)
        # Not joined in the graph: different components of M.
        apart = where[torch.as_tensor(~joined, device=where.device)]
        out_len[apart], conv[apart] = math.inf, True
        rows = np.flatnonzero(joined)
        mids = self._midpoints(matrix, dist_a, dist_b, src_row, tgt_row, best, rows, n_nodes)
        cand_pair = np.concatenate([np.full(len(m), r) for r, m in zip(rows, mids)]) \
            if len(rows) else np.zeros(0, dtype=int)
        cand_mid = np.concatenate(mids) if len(rows) else np.zeros(0, dtype=int)
        if cand_pair.size == 0:
            return
        half_a = _backtrack_many(pred_a, src_row[cand_pair], cand_mid)
        half_b = _backtrack_many(pred_b, tgt_row[cand_pair], cand_mid)
        routes = [all_pts[np.concatenate([ra, rb[::-1][1:]])] for ra, rb in zip(half_a, half_b)]
        found = self._refine(routes, groups=cand_pair)
        for r in rows:
            k = int(where[r])
            mine = [f for f in found["by_group"].get(r, [])]
            n_cand[k] = int((cand_pair == r).sum())
            if not mine:
                continue
            mine.sort(key=lambda f: f["length"])
            self._store(k, mine[0], out_v, out_len, conv, nodes)
            if len(mine) > 1:
                g = float(mine[1]["length"] / mine[0]["length"] - 1)
                gap[k] = g
                amb[k] = g <= self.ambiguity_rtol

    def _midpoints(self, matrix, dist_a, dist_b, src_row, tgt_row, best, rows, n_nodes,
                   block=512):
        """Per pair, graph nodes standing for its distinct near-shortest routes.

        Near-midpoints: ``d(x, z) + d(z, y) <= (1 + candidate_rtol) d(x, y)``
        and ``|d(x, z) - d(z, y)|`` within a few graph spacings. Their
        clusters in the graph are the routes; a long cluster (several
        geodesics side by side) gets seeds spread along it.
        """
        graph = self._graph
        band = 2.5 * graph.spacing
        sep = self.seed_separation * graph.spacing
        pts = graph.points.numpy()
        out = []
        for start in range(0, len(rows), block):
            r = rows[start:start + block]
            da = dist_a[src_row[r], :n_nodes]
            db = dist_b[tgt_row[r], :n_nodes]
            total = da + db
            sel = (total <= (1 + self.candidate_rtol) * best[r, None]) & (np.abs(da - db) <= band)
            first = np.argmin(np.where(sel, total, np.inf), axis=1)
            none = ~sel.any(1)
            first[none] = np.argmin(total[none], axis=1) if none.any() else first[none]
            # Compact bands (all within `sep` of the best node) are one route.
            spread = np.where(sel, np.linalg.norm(pts[None] - pts[first][:, None], axis=-1), 0.0)
            for q in range(len(r)):
                if spread[q].max() <= sep:
                    out.append(np.array([first[q]]))
                    continue
                members = np.flatnonzero(sel[q])
                n_comp, labels = connected_components(matrix[members][:, members], directed=False)
                seeds = []
                for c in range(n_comp):
                    group = members[labels == c]
                    top = int(group[np.argmin(total[q, group])])
                    seeds.append(top)
                    gp = np.linalg.norm(pts[group] - pts[top], axis=-1)
                    for _ in range(self.max_seeds_per_route - 1):
                        far = int(np.argmax(gp))
                        if gp[far] < sep:
                            break
                        seeds.append(int(group[far]))
                        gp = np.minimum(gp, np.linalg.norm(pts[group] - pts[group[far]], axis=-1))
                out.append(np.array(seeds))
        return out

    # -------------------------------------------------------------- refinement
    def _refine(self, routes, groups=None):
        """Straighten polylines on M into geodesics.

        Every route is solved at its initial degree; with ``groups`` (the pair
        of each route) only the routes within ``prune_rtol`` of their pair's
        shortest, and distinct from it, go on. Those are re-solved at rising
        degrees until the length changes by less than ``rtol`` and the curve
        is resolved.

        Returns
        -------
        dict
            ``"routes"``: per route a dict (nodes, length, tangent) or None;
            ``"by_group"``: per group the settled, distinct geodesics.
        """
        like = routes[0]
        n_routes = len(routes)
        first = self._solve_degrees(
            {i: self._initial_degree(r) for i, r in enumerate(routes)},
            lambda i, rule: _resample(routes[i], rule.t))
        alive = [i for i in range(n_routes) if first[i] is not None]
        if groups is not None and alive:
            alive = self._prune(first, alive, groups, self.prune_rtol)
        results = [None] * n_routes
        previous = {i: first[i] for i in alive}
        while previous:
            degrees = {}
            for i, cur in previous.items():
                if cur.get("settled"):
                    results[i] = cur
                    continue
                nxt = int(math.ceil(1.5 * (cur["nodes"].shape[0] - 1)))
                if nxt <= self.max_degree:
                    degrees[i] = nxt
            new = self._solve_degrees(
                degrees, lambda i, rule: _interp(previous[i]["nodes"], rule.n))
            nxt_prev = {}
            for i, cur in new.items():
                if cur is None:
                    continue
                old = previous[i]
                cur["settled"] = (abs(float(cur["length"] - old["length"]))
                                  <= self.rtol * float(cur["length"]) and cur["resolved"])
                nxt_prev[i] = cur
            previous = nxt_prev
        by_group = {}
        if groups is not None:
            done = [i for i in range(n_routes) if results[i] is not None]
            if done:
                done = self._prune(results, done, groups, self.ambiguity_rtol * 10)
            for i in done:
                by_group.setdefault(int(groups[i]), []).append(results[i])
        return {"routes": results, "by_group": by_group}

    def _solve_degrees(self, degrees, init):
        """Straighten route ``i`` at ``degrees[i]`` from ``init(i, rule)``, grouped by degree."""
        pending = {}
        for i, d in degrees.items():
            pending.setdefault(d, []).append(i)
        out = {}
        for d in sorted(pending):
            idx = pending[d]
            rule = _Rule.get(d, self._like)
            res = self._straighten(torch.stack([init(i, rule) for i in idx]), rule)
            if _DEBUG:
                print("degree", d, "paths", len(idx), "iters", int(res["iters"].max()),
                      "conv", int(res["converged"].sum()), "resolved", int(res["resolved"].sum()))
            for r, i in enumerate(idx):
                if not bool(res["converged"][r]):
                    out[i] = None
                    continue
                out[i] = {"nodes": res["nodes"][r], "length": res["length"][r],
                          "tangent": res["tangent"][r], "resolved": bool(res["resolved"][r])}
        return out

    def _prune(self, found, alive, groups, rtol):
        """Keep per group the routes within ``rtol`` of its shortest that are
        distinct curves (the same geodesic reached from two seeds counts once)."""
        alive = np.asarray(alive)
        grp = np.asarray(groups)[alive]
        length = np.array([float(found[i]["length"]) for i in alive])
        order = np.lexsort((length, grp))
        alive, grp, length = alive[order], grp[order], length[order]
        head = np.r_[True, grp[1:] != grp[:-1]]
        best = np.maximum.accumulate(np.where(head, np.arange(len(grp)), 0))
        near = length <= length[best] * (1 + rtol)
        keep = head.copy()
        cand = np.flatnonzero(near & ~head)
        if cand.size:
            samples = _curve_samples([found[i]["nodes"] for i in alive[np.r_[best[cand], cand]]])
            sa, sb = samples[:cand.size], samples[cand.size:]
            sep = (sa - sb).norm(dim=-1).amax(-1).cpu().numpy()
            tol = np.maximum(1e-4 * length[best[cand]], 1e-6)
            keep[cand[sep > tol]] = True
        return [int(i) for i in alive[keep]]

    def _initial_degree(self, route):
        seg = (route[1:] - route[:-1]).norm(dim=-1).sum()
        if self._graph is not None:
            per = float(seg) / (self.nodes_per_spacing * self._graph.spacing)
        else:
            per = 0.0
        return int(min(max(self.min_degree, math.ceil(per)), self.max_degree))

    def _straighten(self, x0, rule):
        """Batched Riemannian Newton for the LGL path energy (chunks of pairs)."""
        outs = []
        for start in range(0, x0.shape[0], self.chunk):
            outs.append(self._straighten_chunk(x0[start:start + self.chunk], rule))
        return {key: torch.cat([o[key] for o in outs]) for key in outs[0]}

    def _straighten_chunk(self, x0, rule):
        """Riemannian Newton on the interior nodes of a batch of paths.

        Each iteration solves for tangent steps with the exact Hessian of the
        LGL energy on M (the stiffness term and the curvature term
        ``-B^T (lam . D^2F) B`` of every node, block diagonal), re-lands the
        moved nodes on M along their normals and backtracks until the energy
        decreases. A path stops when its Newton decrement (twice the predicted
        energy decrease) is below ``1e-13`` of its energy.
        """
        space = self._space
        p, n_pts, n = x0.shape
        k, m, c = n_pts - 2, space.dim, space.codim
        tol, iters = space.tol_for(x0.dtype), space.max_iter
        x = x0.clone()
        # Land the interior nodes on M.
        land = space.solve_projection(x[:, 1:-1].reshape(-1, n), closest=False)
        x[:, 1:-1] = land.x.reshape(p, k, n)
        ok = land.converged.reshape(p, k).all(-1)
        with torch.no_grad():
            _, jac_all = space._value_and_jacobian(x[:, 1:-1].reshape(-1, n))
        jac_all = jac_all.reshape(p, k, c, n).clone()
        done = torch.zeros(p, dtype=torch.bool, device=x.device)
        stiffness = (rule.diff.t() @ (rule.w[:, None] * rule.diff))[1:-1, 1:-1]
        diag = torch.arange(k, device=x.device)
        n_it = 0
        for _ in range(self.max_iter):
            act = (ok & ~done).nonzero().squeeze(-1)
            if act.numel() == 0:
                break
            n_it += 1
            xa = x[act]
            pa = xa.shape[0]
            energy, vel = rule.energy(xa)
            grad = 2 * (rule.diff.t() @ (rule.w[:, None] * vel))[:, 1:-1]  # (pa, k, n)
            y = xa[:, 1:-1].reshape(-1, n)
            jac = jac_all[act].reshape(-1, c, n)
            basis = tangent_basis(jac)  # (pa k, n, m)
            g = grad.reshape(-1, n)
            lam = normal_space_solve(jac, g, check=False)
            curv = self._curvature(y, jac, basis, lam)  # (pa k, m, m)
            gc = (basis.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1).reshape(pa, k * m)
            bk = basis.reshape(pa, k, n, m)
            hess = 2 * stiffness[None, :, None, :, None] * torch.einsum("pina,pjnb->piajb", bk, bk)
            hess[:, diag, :, diag, :] -= curv.reshape(pa, k, m, m).transpose(0, 1)
            step = _spd_solve(hess.reshape(pa, k * m, k * m), -gc)
            dec = -(gc * step).sum(-1)  # Newton decrement^2 (>= 0)
            # Converged: the energy is within dec / 2 of the (quadratically
            # approached) minimum; no step needed.
            small = dec <= 1e-13 * energy.clamp_min(1e-300)
            done[act[small]] = True
            move = (~small).nonzero().squeeze(-1)
            if move.numel() == 0:
                continue
            xa, energy, dec = xa[move], energy[move], dec[move]
            dx = (basis @ step.reshape(-1, m, 1)).squeeze(-1).reshape(pa, k, n)[move]
            jac_r = jac.reshape(pa, k, c, n)[move]
            # Backtracking on the energy, with the nodes re-landed on M along
            # their normals.
            pm = move.numel()
            alpha = torch.ones(pm, dtype=x.dtype, device=x.device)
            accepted = torch.zeros(pm, dtype=torch.bool, device=x.device)
            new_jac = jac_r.clone()
            for _ in range(12):
                rows = (~accepted).nonzero().squeeze(-1)
                if rows.numel() == 0:
                    break
                trial = xa[rows, 1:-1] + alpha[rows, None, None] * dx[rows]
                res = solve_along_normals(space._value_and_jacobian, trial.reshape(-1, n),
                                          jac_r[rows].reshape(-1, c, n), tol, iters)
                good = res.converged.reshape(-1, k).all(-1)
                new = xa[rows].clone()
                new[:, 1:-1] = res.x.reshape(-1, k, n)
                e_new, _ = rule.energy(new)
                slack = 1e-13 * energy[rows]
                good &= e_new <= energy[rows] - 1e-4 * alpha[rows] * dec[rows] + slack
                xa[rows[good]] = new[good]
                new_jac[rows[good]] = res.jac.reshape(-1, k, c, n)[good]
                accepted[rows[good]] = True
                alpha[rows[~good]] *= 0.5
            idx = act[move]
            x[idx] = xa
            jac_all[idx] = new_jac
            ok[idx[~accepted]] = False  # no decrease along a descent direction
        converged = ok & done
        out = self._finish(x, rule, converged)
        out["iters"] = torch.full((p,), n_it + 1)
        return out

    def _curvature(self, y, jac, basis, lam):
        """``B^T (lam . D^2F) B`` per node: exact Hessian where the space has one,
        else one-sided differences of J along the tangent basis."""
        space = self._space
        from .implicit import ImplicitManifold

        if type(space)._lagrangian_hessian is not ImplicitManifold._lagrangian_hessian:
            hess = space._lagrangian_hessian(y, lam)
            return basis.transpose(1, 2) @ hess @ basis
        m = basis.shape[-1]
        eps = 1e-7 * (1 + y.abs().amax(-1, keepdim=True))
        shifted = (y.unsqueeze(1) + eps.unsqueeze(1) * basis.transpose(1, 2)).reshape(-1, y.shape[-1])
        with torch.no_grad():
            jac_s = space._jacobian(shifted).reshape(y.shape[0], m, *jac.shape[1:])
        djac = (jac_s - jac.unsqueeze(1)) / eps[:, :, None, None]  # (B, m, c, n)
        hb = (lam[:, None, :, None] * djac).sum(2)  # (B, m, n): rows (D^2(lam F)) b_a
        out = hb @ basis  # (B, m, m)
        return 0.5 * (out + out.transpose(1, 2))

    def _finish(self, x, rule, converged):
        """Length, initial velocity and resolution checks of converged paths."""
        space = self._space
        p, n_pts, n = x.shape
        energy, vel = rule.energy(x)
        length = torch.sqrt(2 * energy.clamp_min(0))
        # Initial velocity on [0, 1] (dt/ds = 2), tangent at the base point,
        # scaled to the length (the path has constant speed up to rtol).
        v0 = 2 * vel[:, 0]
        with torch.no_grad():
            _, jac0 = space._value_and_jacobian(x[:, 0])
        v0 = tangent_projector(jac0, v0, check=False)
        v0 = v0 * (length / v0.norm(dim=-1).clamp_min(1e-300))[:, None]
        # Resolution: the curve between nodes stays on M, and the top Legendre
        # coefficients are small.
        mids = (rule.to_mid @ x).reshape(-1, n)
        with torch.no_grad():
            value, jac = space._value_and_jacobian(mids)
        sigma = torch.linalg.svdvals(jac)[:, -1].clamp_min(1e-300)
        off = (value.norm(dim=-1) / sigma).reshape(p, -1).amax(-1)
        coef = (rule.to_legendre @ x).norm(dim=-1)  # (p, N + 1)
        tail = coef[:, -2:].amax(-1)
        scale = length.clamp_min(1e-300)
        resolved = (off <= 1e-3 * scale) & (tail <= 1e-3 * scale)
        speed = (vel.norm(dim=-1) * 2)
        return {"nodes": x, "length": length, "tangent": v0, "converged": converged,
                "resolved": resolved, "tail": tail / scale, "off": off / scale, "speed_spread": speed.std(-1) / scale}


def _spd_solve(hess, rhs):
    """Solve ``H u = rhs`` with a shift where H is not positive definite."""
    eye = torch.eye(hess.shape[-1], dtype=hess.dtype, device=hess.device)
    scale = hess.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-300)
    shift = torch.zeros_like(scale)
    for _ in range(30):
        chol, info = torch.linalg.cholesky_ex(hess + shift[:, None, None] * eye)
        bad = info != 0
        if not bool(bad.any()):
            break
        shift = torch.where(bad, torch.where(shift > 0, 4 * shift, 1e-6 * scale), shift)
    return torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)


def _backtrack_many(pred, rows, nodes):
    """Graph paths from the Dijkstra roots of ``pred[rows]`` to ``nodes`` (root first)."""
    cur = np.asarray(nodes).copy()
    steps = [cur.copy()]
    active = pred[rows, cur] >= 0
    while active.any():
        cur = np.where(active, pred[rows, np.where(active, cur, 0)], cur)
        steps.append(cur.copy())
        active &= pred[rows, cur] >= 0
    steps = np.stack(steps, 1)  # (R, hops); finished rows repeat their root
    out = []
    for r in range(len(rows)):
        path = steps[r]
        end = np.flatnonzero(pred[rows[r], path] < 0)
        out.append(path[:end[0] + 1][::-1] if end.size else path[::-1])
    return out


def _resample(route, t):
    """Points at arc-length fractions ``(t + 1) / 2`` along a polyline (route)."""
    seg = (route[1:] - route[:-1]).norm(dim=-1)
    cum = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    if float(cum[-1]) <= 0:
        return route[:1].expand(len(t), -1).clone()
    s = 0.5 * (t + 1) * cum[-1]
    j = torch.searchsorted(cum, s.contiguous()).clamp(1, len(route) - 1)
    frac = ((s - cum[j - 1]) / seg[j - 1].clamp_min(1e-300)).clamp(0, 1)[:, None]
    out = route[j - 1] + frac * (route[j] - route[j - 1])
    out[0], out[-1] = route[0], route[-1]
    return out


class ShootingLogSolver(LogSolver):
    """Local log: damped Gauss-Newton shooting from the circular-arc guess.

    The metric's shooting (:meth:`ImplicitMetric._shoot`) on all pairs at once.
    Exact to the metric's ``log_tol`` where it converges, but only for targets
    close enough to the base point that the arc guess lies in the basin of the
    minimising geodesic: between far points of a curved surface it misses (a
    :class:`GeodesicError`) or returns a longer geodesic. Kept for comparison
    and for short-range work where its per-pair cost is lower.
    """

    def __init__(self, space):
        super().__init__(solves_bvp=False)
        self._space = space

    def log(self, point, base_point):
        """``log_{base_point}(point)`` by shooting, shape ``(..., n)``."""
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        with torch.no_grad():
            vec = space.metric._shoot(x, y)
        return vec.reshape(*batch, space.ambient_dim)

    def dist(self, point_a, point_b):
        """``|log_{point_a}(point_b)|``, shape ``(...,)``."""
        return self.log(point_b, point_a).norm(dim=-1)

    def dist_pairwise(self, points):
        """All pairwise distances, every pair shot in one batch."""
        space = self._space
        pts = as_points(points, space.ambient_dim, "points").reshape(-1, space.ambient_dim)
        n = pts.shape[0]
        i, j = torch.triu_indices(n, n, 1, device=pts.device)
        out = torch.zeros(n, n, dtype=pts.dtype, device=pts.device)
        if i.numel():
            d = self.dist(pts[i], pts[j])
            out[i, j] = out[j, i] = d
        return out
