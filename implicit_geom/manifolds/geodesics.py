"""Global log and distance solvers for implicit manifolds (geomstats ``LogSolver`` s).

Shooting (``ShootingLogSolver``) finds the geodesic to a target only from an
initial guess close to it; between far-apart points of a surface of varying
curvature it misses. :class:`GeodesicLogSolver` instead

1. takes a *global* initial guess: the shortest path in a k-nearest-neighbour
   graph over a dense sample of M (:class:`SampleGraph`, built once per
   manifold and rebuilt when the manifold changes), or the projected chord for
   pairs closer than ``near_radius``;
2. collects the *candidate* routes of a pair: the near-shortest graph paths
   (through nodes ``z`` with ``d(x, z) + d(z, y)`` within ``candidate_rtol``
   of the graph distance) cross the level sets ``d(x, z) = f (d(x, z) +
   d(z, y))`` in one cluster per distinct route; combinations of clusters,
   joined by graph shortest paths, are the candidates (routes either side of
   a hole or a bump, winding classes, the long way round);
3. refines every candidate to a smooth geodesic by *spectral path
   straightening*: the curve is a polynomial through Legendre-Gauss-Lobatto
   nodes on M, and a batched Riemannian Newton method minimises its energy
   ``int |x'|^2`` with the nodes constrained to M (an exact quadrature, so the
   discrete problem converges spectrally in the number of nodes);
4. checks the result: the Newton decrement, the decay of the curve's Legendre
   coefficients and the curve's distance to M between nodes, raising the
   degree until the length changes by less than ``rtol``;
5. returns the shortest candidate and reports the pairs whose second-best
   distinct geodesic is within ``ambiguity_rtol`` (ambiguous: near the cut
   locus), or that have a continuum of near-minimal routes (antipodes);
6. ``log`` polishes the initial velocity by a few Gauss-Newton shooting steps
   (exp(log(y)) = y to the metric's ``log_tol``).

Everything runs batched over pairs (one tensor program per polynomial degree),
with a per-pair exit from every loop. Near pairs never build the graph.
"""

import itertools
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
from ..numerics.ode import n_macro_steps
from ..numerics.validation import DTYPE, as_point_list, as_points, broadcast_points, check_int
from ..progress import Progress
from ..threads import check_jobs, fork_map, resolve_jobs
from .components import check_links, normal_jacobians, sample_in_box
from .state import _StateWatch


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
        Per pair, the LGL nodes ``(N + 1, n)`` of the geodesic (on M); None
        for geodesics found by shooting (see ``shot``).
    shot : torch.Tensor of bool, shape=[P]
        Found by shooting and certified minimising: ``tangent_vec`` hits the
        target to the metric's ``log_tol``.
    """

    tangent_vec: torch.Tensor
    length: torch.Tensor
    converged: torch.Tensor
    ambiguous: torch.Tensor
    n_candidates: torch.Tensor
    gap: torch.Tensor
    nodes: list
    shot: torch.Tensor = None


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
def _farthest_points(points, n_keep, seed=0):
    """Greedy farthest-point subsample (near-uniform spacing), indices."""
    n_all = points.shape[0]
    if n_all <= n_keep:
        return torch.arange(n_all, device=points.device)
    pts = points.detach().cpu().double().numpy()
    sq = (pts * pts).sum(-1)
    rng = np.random.default_rng(seed)
    keep = np.empty(n_keep, dtype=np.int64)
    keep[0] = int(rng.integers(n_all))
    # Squared gaps (the argmax is the same), each update one matrix-vector
    # product; numpy, not torch: 1e4 tiny steps, where torch's per-call
    # overhead would dominate.
    gap = sq - 2 * pts @ pts[keep[0]] + sq[keep[0]]
    for i in range(1, n_keep):
        nxt = int(gap.argmax())
        keep[i] = nxt
        np.minimum(gap, sq - 2 * pts @ pts[nxt] + sq[nxt], out=gap)
    return torch.as_tensor(keep, device=points.device)


def _copy_labels(table, shape, which, node):
    """Component label of each member ``(which[i], node[i])`` of node sets of
    ``shape`` (K, N), in one graph holding a copy of each set (edges of the
    neighbour ``table`` within a set only)."""
    ids = np.full(shape, -1, dtype=np.int64)
    ids[which, node] = np.arange(which.size)
    nb = table[node]
    dst = np.where(nb >= 0, ids[which[:, None], np.maximum(nb, 0)], -1)
    src = np.broadcast_to(np.arange(which.size)[:, None], dst.shape)
    keep = dst >= 0
    graph = coo_matrix((np.ones(int(keep.sum())), (src[keep], dst[keep])),
                       shape=(which.size, which.size))
    return connected_components(graph, directed=False)[1]


def _count_clusters(table, masks, chunk=128):
    """Number of connected clusters of each node set ``masks`` (K, N) in the
    graph with neighbour ``table`` (N, D): all sets at once, as the
    components of one graph that holds a copy of each set."""
    out = np.zeros(len(masks), dtype=np.int64)
    for start in range(0, len(masks), chunk):
        part = masks[start:start + chunk]
        which, node = np.nonzero(part)
        labels = _copy_labels(table, part.shape, which, node)
        first = np.unique(labels, return_index=True)[1]
        out[start:start + chunk] = np.bincount(which[first], minlength=len(part))
    return out


def _cluster_tops(table, pts, masks, totals, reach):
    """Best node (least ``totals``) of each connected cluster of each node set.

    Parameters
    ----------
    table : numpy.ndarray, shape=[N, D]
        Graph neighbours (-1 padded).
    pts : numpy.ndarray, shape=[N, n]
    masks : numpy.ndarray of bool, shape=[K, N]
    totals : numpy.ndarray, shape=[K, N]
    reach : float
        A set within this distance of its best node is one cluster (no search).

    Returns
    -------
    list of list of int
        Per set, the best node of each cluster (empty for an empty set).
    """
    out = [[] for _ in range(len(masks))]
    which, node = np.nonzero(masks)
    if which.size == 0:
        return out
    tot = totals[which, node]
    order = np.lexsort((tot, which))
    head = order[np.r_[True, which[order][1:] != which[order][:-1]]]
    top = np.full(len(masks), -1, dtype=np.int64)
    top[which[head]] = node[head]
    gap = ((pts[node] - pts[top[which]]) ** 2).sum(-1)
    wide = np.zeros(len(masks), dtype=bool)
    wide[which[gap > reach * reach]] = True
    for k in np.flatnonzero((top >= 0) & ~wide):
        out[k] = [int(top[k])]
    sel = wide[which]
    if not sel.any():
        return out
    which, node, tot = which[sel], node[sel], tot[sel]
    labels = _copy_labels(table, masks.shape, which, node)
    order = np.lexsort((tot, labels))
    head = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
    for k, z in zip(which[head].tolist(), node[head].tolist()):
        out[k].append(z)
    return out


class SampleGraph:
    """k-nearest-neighbour graph over a dense, near-uniform sample of a manifold.

    Box points are projected onto M, thinned by farthest-point sampling and
    linked to their ``n_neighbors`` nearest samples. An edge is kept only if
    its midpoint lies within ``max_sagitta`` times its length of M (a chord of
    a smooth curve on M bends away by about ``kappa l^2 / 8``; an edge that
    bridges a gap between sheets or components does not) and the normals at
    its ends agree (:func:`~.components.check_links`), and, on unions, only
    between points of the same component. A graph that falls apart where M
    does not (few neighbours) has its pieces bridged by such edges
    (:meth:`_join_pieces`). The edges are built on first use
    (the curvature certificate of :class:`GeodesicLogSolver` needs only the
    sample).

    Parameters
    ----------
    space : ImplicitManifold
    n_nodes : int
    n_neighbors : int
    bounds : tuple of torch.Tensor
        Box to sample.
    max_sagitta : float
    seed : int

    Attributes
    ----------
    encloses : bool
        No sample lies within two spacings of a face of the box: M (where it
        meets the box) lies inside it, so the sample covers whole components.
    """

    def __init__(self, space, n_nodes, n_neighbors, bounds, max_sagitta=0.2, seed=0):
        self.space = space
        self.n_neighbors = int(n_neighbors)
        self.max_sagitta = float(max_sagitta)

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
        lo = low.detach().cpu().double().numpy()
        hi = high.detach().cpu().double().numpy()
        margin = 2 * self.spacing
        self.encloses = bool(((pts - lo > margin) & (hi - pts > margin)).all())
        self._matrix = self._labels = self._curvature = self._neighbors = self._jac = None

    @property
    def matrix(self):
        """Symmetric sparse matrix of the checked edges (CSR), built on first use."""
        if self._matrix is None:
            rows, cols, w = self._edges(self.points, self.points, self.n_neighbors + 1,
                                        skip_self=True)
            n = len(self.points)
            matrix = coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
            self._matrix = matrix.maximum(matrix.T).tocsr()
            self.n_components, self._labels = connected_components(self._matrix,
                                                                   directed=False)
            if self.n_components > 1:
                self._join_pieces()
        return self._matrix

    def _join_pieces(self, reach=3.0):
        """Bridge the pieces of the k-NN graph that lie on one piece of M.

        A k-NN graph of a connected M may fall apart (two neighbours per node
        split a circle into arcs); the solver then found no route between
        points of one component ("not joined") or took a detour. Pieces are
        bridged by checked edges (:meth:`_check`) no longer than ``reach``
        graph spacings: between mutually nearest nodes. Edges that fail the
        check never join: separate components of M (a gap under the edge's
        midpoint, or facing normals) stay apart, and so do pieces farther
        apart (a box that cuts M: a chord across it may pass the check).
        """
        n = len(self.points)
        pts = self.points.numpy()
        pairs = self.tree.query_pairs(reach * self.spacing, output_type="ndarray")
        lab = self._labels
        a, b = pairs[:, 0], pairs[:, 1]
        cross = lab[a] != lab[b]
        a, b = a[cross], b[cross]
        flip = lab[a] > lab[b]  # the lower piece first
        a, b = np.where(flip, b, a), np.where(flip, a, b)
        w = np.linalg.norm(pts[a] - pts[b], axis=-1)
        ok = self._check(self.points, a, b, w)
        a, b, w = a[ok], b[ok], w[ok]
        if a.size:
            # Mutually nearest across pieces: b is a's nearest checked node in
            # b's piece and a is b's in a's. The shortest edge of each pair of
            # pieces is one; pieces that meet in several places (the two arcs
            # of a split circle) are bridged at each (one edge per pair of
            # pieces left the circle open, and half its distances went the
            # long way round).
            order = np.argsort(w, kind="stable")
            a, b, w = a[order], b[order], w[order]
            mutual = np.zeros(a.size, dtype=bool)
            mutual[np.unique(a * n + lab[b], return_index=True)[1]] = True
            best_b = np.zeros(a.size, dtype=bool)
            best_b[np.unique(b * n + lab[a], return_index=True)[1]] = True
            a, b, w = a[mutual & best_b], b[mutual & best_b], w[mutual & best_b]
            bridges = coo_matrix((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), shape=(n, n))
            self._matrix = (self._matrix + bridges.tocsr()).tocsr()
            self.n_components, self._labels = connected_components(self._matrix,
                                                                   directed=False)
        self._shortcut()

    def _shortcut(self, stretch=1.05, chunk=512):
        """Checked edges to the ``n_neighbors + 4 (dim + 1)`` nearest samples of
        each node that the graph (its pieces bridged) detours around by more
        than ``stretch``. A k-NN graph that fell apart is a forest of chains:
        bridged, its routes still zigzag (a torus at ``n_neighbors=2`` had
        graph distances twice the geodesic, and pairs straightened onto longer
        geodesics; with the 9 nearest, 1% longer ones)."""
        n = len(self.points)
        k = min(n, self.n_neighbors + 1 + 4 * (self.space.dim + 1))
        dist, idx = self.tree.query(self.points.numpy(), k=k)
        a, b, w = np.repeat(np.arange(n), k - 1), idx[:, 1:].reshape(-1), dist[:, 1:].reshape(-1)
        limit = stretch * float(w.max()) if w.size else 0.0
        far = np.zeros(a.size, dtype=bool)
        for start in range(0, n, chunk):
            rows = slice(start * (k - 1), min(start + chunk, n) * (k - 1))
            reach = dijkstra(self._matrix, indices=np.arange(start, min(start + chunk, n)),
                             limit=limit)
            far[rows] = reach[a[rows] - start, b[rows]] > stretch * w[rows]
        far &= self._labels[a] == self._labels[b]  # detours, not pieces (those are bridged)
        a, b, w = a[far], b[far], w[far]
        ok = self._check(self.points, a, b, w)
        a, b, w = a[ok], b[ok], w[ok]
        if a.size:
            short = coo_matrix((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), shape=(n, n))
            self._matrix = self._matrix.maximum(short.tocsr()).tocsr()

    @property
    def labels(self):
        """Connected component of each node in the graph."""
        self.matrix  # noqa: B018 (builds the edges and labels)
        return self._labels

    def neighbor_table(self):
        """Graph neighbours of each node, (N, max degree), padded with -1 (cached)."""
        if self._neighbors is None:
            csr = self.matrix
            deg = np.diff(csr.indptr)
            table = np.full((csr.shape[0], max(int(deg.max()), 1)), -1, dtype=np.int64)
            slot = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], deg)
            table[np.repeat(np.arange(csr.shape[0]), deg), slot] = csr.indices
            self._neighbors = table
        return self._neighbors

    def curvature(self):
        """Per node, an upper bound of the normal curvature ``|II(u, u)|`` over
        unit tangent vectors u (cached): ``|B^T H B|_2 / |grad F|`` for one
        constraint, ``sqrt(sum_r |B^T H_r B|_2^2) / sigma_min(J)`` for several."""
        if self._curvature is None:
            space = self.space
            out = []
            for start in range(0, len(self.points), 2048):
                x = self.points[start:start + 2048].to(space.device, space.dtype)
                with torch.no_grad():
                    out.append(space._normal_curvature(x).cpu().double())
            self._curvature = torch.cat(out).numpy()
        return self._curvature

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
        # k = 1 gives 1-D arrays: one column per query (np.atleast_2d made one row).
        dist, idx = dist.reshape(len(q), -1), idx.reshape(len(q), -1)
        rows = np.repeat(np.arange(len(q)), idx.shape[1])
        cols, w = idx.reshape(-1), dist.reshape(-1)
        keep = np.isfinite(w) & (w > 0 if skip_self else np.ones_like(w, dtype=bool))
        rows, cols, w = rows[keep], cols[keep], w[keep]
        jac_q = (self._node_jacobians() if queries is self.points
                 else normal_jacobians(self.space, q))
        ok = self._check(q, rows, cols, w, jac_q)
        return rows[ok], cols[ok], w[ok]

    def _node_jacobians(self):
        """Jacobians of F at the nodes (cached)."""
        if self._jac is None:
            self._jac = normal_jacobians(self.space, self.points)
        return self._jac

    def _check(self, queries, rows, cols, w, jac_q=None):
        """Edges from ``queries[rows]`` to nodes ``cols`` (lengths ``w``) that
        follow M (:func:`check_links`) and, on unions, stay in one component.
        ``jac_q``: the queries' Jacobians (default: queries are nodes)."""
        space = self.space
        jac = self._node_jacobians()
        jac_q = jac if jac_q is None else jac_q
        a = queries[rows].to(space.device, space.dtype)
        b = self.points[cols].to(space.device, space.dtype)
        pick = (lambda j, k: j[torch.as_tensor(k, device=j.device)])
        ok = check_links(space, a, b, w, self.max_sagitta, pick(jac_q, rows), pick(jac, cols),
                         chunk=max(len(a), 1))
        comp_a, comp_b = self._component(a), self._component(b)
        if comp_a is not None:
            ok &= (comp_a == comp_b).cpu().numpy()
        return ok

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
        ``n_neighbors`` is at least 2 (ValueError otherwise).
    min_degree, max_degree : int
        Polynomial degrees of paths (raised adaptively in between).
    max_iter : int
        Newton iterations per degree.
    bounds : tuple, optional
        Box sampled by the graph (default: the space's ``bounds``, else the box
        of the query points widened by half its size and grown until it
        encloses the manifold where that takes at most two doublings).
    route_fractions : tuple of float
        Level sets of ``d(x, z) / d(x, y)`` where distinct routes are told
        apart (see :meth:`_candidates`).
    route_separation : float
        Candidate routes of a pair that stay within this many graph spacings
        of each other are solved once.
    max_move : float
        Trust region of path straightening: the largest node move per Newton
        step, in graph spacings.
    prune_rtol : float
        After the first solve, a pair's routes longer than its shortest by more
        than this are dropped (the first solve is accurate to ~1e-4).
    polish : bool
        Finish :meth:`log` with a few Gauss-Newton shooting steps from the
        straightened geodesic's velocity, so that ``exp(log(y)) = y`` to the
        metric's ``log_tol``; rows that do not get there keep the velocity of
        the checked path (``stats["unpolished"]`` counts them).
    polish_iter : int
    shoot : bool, optional
        First shoot every pair from the circular-arc guess (batched
        Gauss-Newton, at most ``shoot_iter`` steps) and keep the geodesics
        that are certified minimising (see the notes); only the others take
        the graph and path straightening. Default: the space's
        ``_shoot_first`` (True unless its geodesic equation is costly, as for
        network-defined manifolds).
    shoot_iter : int
    curvature_margin : float
        Factor on the largest normal curvature sampled on M (a safety margin
        for the curvature between samples) in the injectivity certificate.
    seed : int
    chunk : int
        Pairs per batched tensor program (memory).
    progress : bool
        Show the straightening of candidate geodesics (a bar on a terminal,
        log lines elsewhere) when a call has at least
        :attr:`PROGRESS_MIN_ROUTES` of them (a 200 x 200 matrix on a learned
        surface: tens of seconds); forked workers stay silent.
    n_jobs : int
        Processes for the far pairs' graph routes and refinement (``-1``: one
        per CPU): the pairs are split among this process and ``n_jobs - 1``
        forked children of one thread each (:func:`~implicit_geom.threads.fork_map`;
        on Linux with CUDA not initialised, else the parts run here in turn).
        The distances are the same as with one process, to rounding. Each
        child holds a copy-on-write view of this process, so memory grows
        with what the children write; with ``n_jobs > 1`` run torch on one
        thread (:func:`~implicit_geom.set_threads`), or the cores are
        oversubscribed.

    Notes
    -----
    A shot geodesic of length ``L`` from ``x`` is certified minimising when
    (any of)

    - *near*: the pair is near and ``L <= (1 + near_excess) |x - y|``;
    - *injectivity*: ``L`` is below the injectivity radius at ``x``. A
      geodesic of M is a space curve of curvature ``|II(v, v)| <= kappa``, so
      (Gauss equation) the sectional curvature is at most ``kappa^2`` and
      conjugate points are ``pi / kappa`` apart; a closed geodesic has total
      curvature at least ``2 pi`` (Fenchel), so it is ``2 pi / kappa`` long.
      By Klingenberg's lemma, ``inj(M) >= pi / kappa`` when kappa bounds the
      normal curvature on all of M (a closed form, or a sample whose box
      encloses M); otherwise ``inj(x) >= pi / (2 kappa)`` with kappa the
      bound on the ball ``B(x, L)`` (a geodesic loop at x has one corner);
    - *graph*: the pair's near-shortest graph paths form a single corridor,
      the geodesic runs through it and is no longer than the graph distance
      (plus a quarter of ``candidate_rtol``): path straightening would start
      from that corridor's route and converge to this geodesic.
    """

    #: Candidate routes from which :meth:`_refine` shows progress (fewer are
    #: solved in a few seconds, and a bar per ``dist`` call would be noise).
    PROGRESS_MIN_ROUTES = 256

    def __init__(self, space, rtol=1e-6, near_radius=None, near_excess=0.1,
                 candidate_rtol=0.04, ambiguity_rtol=1e-3, n_graph_nodes=None,
                 n_neighbors=None, min_degree=6, max_degree=160, max_iter=40, bounds=None,
                 route_fractions=(0.25, 0.5, 0.75), route_separation=4.0, prune_rtol=0.01,
                 max_move=2.0, polish=True, polish_iter=4, shoot=None, shoot_iter=6,
                 curvature_margin=1.25, seed=0, chunk=2000, progress=True, n_jobs=1):
        super().__init__(solves_bvp=True)
        self.progress = bool(progress)
        self._space = space
        self.rtol = float(rtol)
        self.near_radius = near_radius
        self.near_excess = float(near_excess)
        self.candidate_rtol = float(candidate_rtol)
        self.ambiguity_rtol = float(ambiguity_rtol)
        m = space.dim
        # (0 silently took the default, 1.5 was truncated.)
        self.n_graph_nodes = ({1: 500, 2: 4000, 3: 12000}.get(m, 20000) if n_graph_nodes is None
                              else check_int(n_graph_nodes, "n_graph_nodes", minimum=2))
        # One neighbour links each node to its nearest only: the graph falls
        # apart into pairs and short chains (88 pieces on a circle of 300 nodes).
        self.n_neighbors = ({1: 4, 2: 24}.get(m, 32) if n_neighbors is None else check_int(
            n_neighbors, "n_neighbors", minimum=2,
            message=f"n_neighbors must be an integer >= 2 (a graph of nearest neighbours "
                    f"alone falls apart), got {n_neighbors!r}"))
        if self.n_graph_nodes <= self.n_neighbors:
            raise ValueError(f"n_graph_nodes ({self.n_graph_nodes}) must exceed n_neighbors "
                             f"({self.n_neighbors}): each node needs that many others")
        self.min_degree, self.max_degree = int(min_degree), int(max_degree)
        self.max_iter = int(max_iter)
        self.bounds = bounds
        self.seed = int(seed)
        self.chunk = int(chunk)
        self.n_jobs = check_jobs(n_jobs)
        self.route_fractions = tuple(float(f) for f in route_fractions)
        self.prune_rtol = float(prune_rtol)
        self.max_move = float(max_move)
        self.route_separation = float(route_separation)
        self.polish, self.polish_iter = bool(polish), int(polish_iter)
        self.shoot = None if shoot is None else bool(shoot)
        self.shoot_iter = int(shoot_iter)
        self.curvature_margin = float(curvature_margin)
        self.nodes_per_spacing = 4.0
        self._graph, self._graph_watch = None, _StateWatch()
        self.stats = {}

    # ------------------------------------------------------------------ graph
    def _box(self, queries):
        """The box to sample and whether it was derived from the queries."""
        space = self._space
        if self.bounds is not None:
            return tuple(torch.as_tensor(b, dtype=DTYPE, device=space.device)
                         .expand(space.ambient_dim) for b in self.bounds), False
        if space.bounds is not None:
            # A space's own box (a learned manifold's training box) is kept:
            # outside it a learned F is untrained and its zero set spurious,
            # and a larger box would spread the sample thin over those sheets.
            return space.bounds, False
        lo, hi = queries.min(0).values, queries.max(0).values
        pad = 0.5 * (hi - lo).clamp_min(1e-3)
        return (lo - pad, hi + pad), True

    def graph(self, queries=None):
        """The cached :class:`SampleGraph`, rebuilt when the manifold changed.

        A box derived from the queries (neither the solver nor the space has
        ``bounds``) is doubled (at most twice) until the sample does not reach
        its faces: a compact M is then sampled whole (routes around its far
        side exist, and the curvature bound is global). Where it still
        reaches them, the first box is kept.
        """
        changed = self._graph_watch.changed(self._space)
        if self._graph is None or changed:
            box, auto = self._box(queries if queries is not None
                                  else self._space.random_point(2))
            first = None
            for attempt in range(3):
                graph = SampleGraph(self._space, self.n_graph_nodes, self.n_neighbors, box,
                                    seed=self.seed)
                graph.box = tuple(b.detach().cpu().double().numpy() for b in box)
                first = graph if first is None else first
                if graph.encloses or not auto:
                    break
                centre, half = 0.5 * (box[0] + box[1]), 0.5 * (box[1] - box[0])
                box = (centre - 2 * half, centre + 2 * half)
            else:
                # M does not close within 4x the box (unbounded, or an
                # untrained F's spurious sheets): a larger box only spreads
                # the same number of nodes thinner; keep the first one.
                graph = first
            self._graph = graph
            self._graph_watch.record()
        return self._graph

    def _near_radius(self, queries):
        if self.near_radius is not None:
            return float(self.near_radius)
        low, high = self._box(queries)[0]
        return 0.05 * float((high - low).norm())

    # --------------------------------------------------------- public interface
    def log(self, point, base_point):
        """Riemannian logarithm ``log_{base_point}(point)``, shape ``(..., n)``.

        The initial velocity of the minimising path is polished by shooting
        (:meth:`ImplicitMetric._shoot`: one or two Gauss-Newton steps from
        there), so that ``exp(log(y)) = y`` to the metric's ``log_tol``
        (geodesics found by shooting already are).

        Raises
        ------
        DisconnectedError
            If some pair lies on different connected components.
        GeodesicError
            If some pair has no converged geodesic.
        """
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        res = self.solve(y, x, op="log")
        self._raise_failures(res, "log", finite=True)
        vec = res.tangent_vec
        metric = getattr(space, "metric", None)
        self.stats["unpolished"] = 0
        if self.polish and hasattr(metric, "_shoot"):
            moving = ((res.length > 0) & ~res.shot).nonzero().squeeze(-1)
            if moving.numel():
                vec = vec.clone()
                with torch.no_grad():
                    shot, hit = metric._shoot(x[moving], y[moving], guess=vec[moving],
                                              max_iter=self.polish_iter, report=True)
                vec[moving[hit]] = shot[hit]
                # Where shooting cannot reach the metric's log_tol (a long
                # geodesic near conjugate points, a rough learned F), the
                # straightened geodesic's velocity stands if exp takes it to
                # the target to sqrt(log_tol); otherwise log has no checked
                # answer (dist, from the path's length, still has one).
                miss = ~hit
                self.stats["unpolished"] = int(miss.sum())
                if bool(miss.any()):
                    rows = moving[miss]
                    end = metric.exp(vec[rows], x[rows])
                    tol = metric._log_tol(x.dtype) ** 0.5 * (metric._scale()
                                                             + y[rows].norm(dim=-1))
                    off = (end - y[rows]).norm(dim=-1)
                    if not bool((off <= tol).all()):
                        raise GeodesicError(
                            f"log: the minimising geodesic of {int((off > tol).sum())} pair(s) "
                            f"was found (length up to {float(res.length[rows].max()):.4g}) but "
                            "its initial velocity could not be refined until exp reaches the "
                            f"target (miss {float(off.max()):.3g}): exp is too sensitive there "
                            "(conjugate points, a rough surface); dist is still defined.")
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
            raise GeodesicError(f"dist_pairwise: {n_bad} pair(s) have no converged "
                                f"geodesic{self._unjoined_note()}.")
        return res.dist

    def geodesic_bvp(self, point, base_point):
        """Minimising geodesic ``t -> gamma(t)``, ``t`` in [0, 1], as a callable.

        The returned points are the geodesic's polynomial at ``t`` projected
        onto M (closest point), or, for geodesics found by shooting,
        ``exp(t v)``; shape ``(n_times, n)`` or ``(P, n_times, n)``.
        """
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        res = self.solve(y, x, op="geodesic")
        self._raise_failures(res, "geodesic", finite=True)

        def path(t):
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
            out = []
            for k, nodes in enumerate(res.nodes):
                if nodes is None:  # a shot geodesic: integrate it
                    out.append(space.metric.exp(t[:, None] * res.tangent_vec[k], x[k]))
                    continue
                rule = _Rule.get(nodes.shape[0] - 1, nodes)
                out.append(space.projection(rule.interp_to(2 * t.cpu().numpy() - 1, nodes)))
            pts = torch.stack(out)
            return pts[0] if len(batch) == 0 else pts.reshape(*batch, len(t), space.ambient_dim)

        return path

    def _unjoined_note(self):
        """Why some pairs of the last solve have no geodesic, if the graph is why."""
        unjoined = self.stats.get("unjoined", 0)
        if not unjoined:
            return ""
        return (f"; {unjoined} pair(s) lie on one connected component of {self._space.name} "
                "by its component labels but are not joined in the geodesic sample graph "
                "(its box cuts M, or too few n_graph_nodes / n_neighbors for a slim part): "
                "no route to straighten")

    def _raise_failures(self, res, what, finite=False):
        bad = ~res.converged
        if bool(bad.any()):
            raise GeodesicError(
                f"{what}: no converged geodesic for {int(bad.sum())} of {bad.numel()} "
                f"pair(s) (path straightening did not meet its checks{self._unjoined_note()}).")
        apart = ~torch.isfinite(res.length)
        if finite and bool(apart.any()):
            raise DisconnectedError(
                f"{what}: {int(apart.sum())} pair(s) lie on different connected components "
                f"of {self._space.name} (not joined in its sample graph): no geodesic joins "
                "them.", mask=apart)

    # ------------------------------------------------------------------ solve
    def solve(self, point, base_point, op="dist"):
        """Geodesics from ``base_point`` to ``point`` (flat batches ``(P, n)``);
        ``op`` names the calling method in errors about the points.

        Returns
        -------
        GeodesicResult
        """
        space = self._space
        x = as_points(base_point, space.ambient_dim, "base_point").reshape(-1, space.ambient_dim)
        y = as_points(point, space.ambient_dim, "point").reshape(-1, space.ambient_dim)
        x, y = broadcast_points(x, y, names=("base_point", "point"))
        # Repeated points (one base point for many targets) are merged where
        # it matters, in the graph search (:meth:`_solve_far`).
        p = x.shape[0]
        idx = torch.arange(p, device=x.device)
        return self._solve_indexed(torch.cat([x, y]), idx, idx + p, op=op)

    def pairwise(self, points, labels=None, n_jobs=None):
        """All pairwise geodesics of ``points`` (N, n), each pair solved once.

        Parameters
        ----------
        points : array-like, shape=[N, n]
        labels : torch.Tensor of int, shape=[N], optional
            Known component labels (-1: unknown); pairs with two different
            known labels are set to ``inf`` without solving.
        n_jobs : int, optional
            Processes for this call (default: the solver's ``n_jobs``).

        Returns
        -------
        PairwiseResult
        """
        space = self._space
        if n_jobs is not None:
            check_jobs(n_jobs)
        pts = as_point_list(points, space.ambient_dim)
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
        res = self._solve_indexed(pts, i, j, n_jobs, op="dist_pairwise")
        length = torch.where(res.converged, res.length, torch.nan)
        dist[i, j] = dist[j, i] = length
        amb[i, j] = amb[j, i] = res.ambiguous
        failed[i, j] = failed[j, i] = ~res.converged
        return PairwiseResult(dist=dist, ambiguous=amb, failed=failed,
                              n_near=self.stats.get("near", 0), n_far=self.stats.get("far", 0))

    def _check_on_manifold(self, queries, op="dist"):
        space = self._space
        value = space.submersion(queries)
        metric = getattr(space, "metric", None)
        if hasattr(metric, "_raise_if_off"):  # the implicit metric's one check
            metric._raise_if_off(queries, op, value, "point(s)")
            return
        atol = 10 * space.tol_for(queries.dtype)
        off = ~(value.norm(dim=-1) <= atol)
        if bool(off.any()):
            raise InvalidPointError(
                f"{int(off.sum())} point(s) are not on {space.name} (|F| up to "
                f"{float(value.norm(dim=-1).max()):.3g}); project them first.")

    def _solve_indexed(self, queries, ia, ib, n_jobs=None, op="dist"):
        """Geodesics from ``queries[ia]`` to ``queries[ib]`` (``op``: the caller, for errors)."""
        space = self._space
        self._check_on_manifold(queries, op)
        p, n = ia.shape[0], space.ambient_dim
        dt = dict(dtype=queries.dtype, device=queries.device)
        out = _Out(p, n, dt)
        self._like = queries
        a, b = queries[ia], queries[ib]
        chord = (b - a).norm(dim=-1)
        same = chord <= 10 * space.tol_for(queries.dtype)
        out.length[same], out.conv[same] = 0.0, True
        for k in same.nonzero().squeeze(-1).tolist():
            out.nodes[k] = torch.stack([a[k], b[k]])
        near = ~same & (chord <= self._near_radius(queries))
        self.stats = {"near": int(near.sum()), "far": 0, "shot": 0, "certified_near": 0,
                      "certified_injectivity": 0, "certified_graph": 0}
        shots = None
        shoot = getattr(space, "_shoot_first", True) if self.shoot is None else self.shoot
        if shoot and hasattr(space, "metric") and bool((~same).any()):
            shots = self._shoot_certify(queries, ia, ib, ~same, near, chord, out)
        todo = near & ~out.conv
        if bool(todo.any()):
            idx = todo.nonzero().squeeze(-1)
            init = torch.stack([a[idx], 0.5 * (a[idx] + b[idx]), b[idx]], 1)
            paths = self._refine(list(init))["routes"]
            for r, k in enumerate(idx.tolist()):
                path = paths[r]
                if path is None or not (path["length"] <= (1 + self.near_excess) * chord[k]):
                    continue  # goes global
                out.store(k, path)
        far = (~out.conv).nonzero().squeeze(-1)
        self.stats["far"] = int(far.numel())
        if far.numel():
            self._solve_far(queries, ia[far], ib[far], far, out, shots, n_jobs)
        return GeodesicResult(tangent_vec=out.vec, length=out.length, converged=out.conv,
                              ambiguous=out.amb, n_candidates=out.n_cand, gap=out.gap,
                              nodes=out.nodes, shot=out.shot)

    # ------------------------------------------------------- shooting first
    def _shoot_certify(self, queries, ia, ib, todo, near, chord, out):
        """Shoot the pairs ``todo`` and store those certified by the near or
        the injectivity rule; return the converged, uncertified shots (for the
        graph certificate) as ``(hit mask, tangent, length)`` over all pairs."""
        idx = todo.nonzero().squeeze(-1)
        # Only pairs that a certificate could accept are worth shooting: near
        # ones, and those whose chord (a lower bound of the length) is below
        # the injectivity radius. Shooting far across a curved surface mostly
        # misses, at the price of many long integrations.
        radius = self._injectivity_radius(queries, ia[idx], chord[idx])
        idx = idx[near[idx] | (chord[idx] * (1 + self.ambiguity_rtol) < radius)]
        p = ia.shape[0]
        hit_all = torch.zeros(p, dtype=torch.bool, device=queries.device)
        vec_all = torch.zeros(p, queries.shape[-1], dtype=queries.dtype, device=queries.device)
        if idx.numel() == 0:
            return hit_all, vec_all
        a, b = queries[ia[idx]], queries[ib[idx]]
        vec, hit = self._shoot_pairs(a, b)
        length = vec.norm(dim=-1)
        self.stats["shot"] = int(hit.sum())
        ok_near = hit & near[idx] & (length <= (1 + self.near_excess) * chord[idx])
        ok_inj = torch.zeros_like(hit)
        rest = (hit & ~ok_near).nonzero().squeeze(-1)
        if rest.numel():
            radius = self._injectivity_radius(queries, ia[idx[rest]], length[rest])
            ok_inj[rest] = length[rest] * (1 + self.ambiguity_rtol) < radius
        good = ok_near | ok_inj
        self.stats["certified_near"] = int(ok_near.sum())
        self.stats["certified_injectivity"] = int(ok_inj.sum())
        out.store_shots(idx[good], vec[good], length[good])
        hit_all[idx] = hit & ~good
        vec_all[idx] = vec
        return hit_all, vec_all

    def _injectivity_radius(self, queries, ia, length):
        """Per pair, a radius below which every geodesic from ``queries[ia]``
        is the unique minimiser (see the class notes); 0 where none is known."""
        space = self._space
        bound = space._curvature_bound()
        if bound is not None:
            return torch.full_like(length, math.pi / bound if bound > 0 else math.inf)
        graph = self.graph(queries)
        kappa = graph.curvature() * self.curvature_margin
        if graph.encloses:
            return torch.full_like(length, math.pi / max(float(kappa.max()), 1e-300))
        # Only the ball B(x, L) matters (a geodesic of length L stays in it),
        # and its part of M must have been sampled: the ball lies in the box,
        # or no sample in the ball comes within half a spacing of a face (M
        # does not leave the box there: where it is cut by a face, the
        # farthest-point sample takes points on the cut, extremes first).
        x = queries[ia].detach().cpu().double().numpy()
        ell = length.detach().cpu().double().numpy()
        src, row = np.unique(x, axis=0, return_inverse=True)
        row = row.reshape(-1)
        dist = np.linalg.norm(graph.points.numpy()[None] - src[:, None], axis=-1)
        order = np.argsort(dist, axis=1)
        sorted_d = np.take_along_axis(dist, order, 1)
        run = np.maximum.accumulate(kappa[order], axis=1)
        pos = np.array([np.searchsorted(sorted_d[r], e, side="right")
                        for r, e in zip(row, ell)])
        k_ball = run[row, np.maximum(pos, 1) - 1]
        low, high = graph.box
        pts = graph.points.numpy()
        margin = 0.5 * graph.spacing
        at_face = ((pts - low <= margin) | (high - pts <= margin)).any(-1)
        face_run = np.maximum.accumulate(at_face[order], axis=1)
        # (Searched a margin beyond the ball: a crossing at its rim has its
        # nearest samples just outside.)
        pos_f = np.array([np.searchsorted(sorted_d[r], e + 2 * graph.spacing, side="right")
                          for r, e in zip(row, ell)])
        reaches_face = (pos_f > 0) & face_run[row, np.maximum(pos_f, 1) - 1]
        inside = ((x - ell[:, None] >= low) & (x + ell[:, None] <= high)).all(-1)
        inside |= ~reaches_face
        radius = np.where(inside, math.pi / (2 * np.maximum(k_ball, 1e-300)), 0.0)
        return torch.as_tensor(radius, dtype=length.dtype, device=length.device)

    def _shoot_pairs(self, x, y):
        """Gauss-Newton shooting from the circular-arc guess, batched.

        A row gives up when a step (and its half) does not reduce its miss:
        far targets of a curved surface are left to the graph instead of
        paying for long, failing iterations. Returns ``(v, hit)``.
        """
        space = self._space
        metric = space.metric
        dtype = x.dtype
        with torch.no_grad():
            _, jac_xy = space._value_and_jacobian(torch.cat([x, y]))
            jac, jac_y = jac_xy[:x.shape[0]], jac_xy[x.shape[0]:]
            basis = tangent_basis(jac)
            guess = metric._initial_guess(jac, y - x)
            coef = (basis.transpose(1, 2) @ guess.unsqueeze(-1)).squeeze(-1)
            tol = metric._log_miss_tol(dtype, y.norm(dim=-1))
            atol = metric._on_manifold_atol(dtype)
            chord = (y - x).norm(dim=-1)

            def miss_of(rows, c):
                ends = _rowwise_safe(lambda xs, vs: metric._flow(xs, vs)[0], x[rows],
                                     (basis[rows] @ c.unsqueeze(-1)).squeeze(-1))
                if ends is None:
                    ends = torch.full_like(x[rows], torch.nan)
                r = ends - y[rows]
                return r, tangent_projector(jac_y[rows], r, check=False).norm(dim=-1)

            everything = torch.arange(x.shape[0], device=x.device)
            resid, miss = miss_of(everything, coef)
            alive = torch.isfinite(miss)
            miss = torch.where(alive, miss, torch.inf)
            # The Jacobian of exp (central differences: 2m flows) is computed
            # once per row and then updated by Broyden's rank-one rule from
            # each step's change of the miss (no flows); it is recomputed only
            # where an updated one fails to give a better step.
            p, n, m = basis.shape
            dexp = torch.full((p, n, m), torch.nan, dtype=dtype, device=x.device)
            fresh = torch.zeros(p, dtype=torch.bool, device=x.device)
            have = torch.zeros_like(fresh)
            for it in range(self.shoot_iter):
                act = (alive & ~(miss <= tol)).nonzero().squeeze(-1)
                if act.numel() == 0:
                    break
                need = act[~have[act]]
                if need.numel():
                    new = _rowwise_safe(metric._flow_jacobian, x[need], coef[need], basis[need])
                    dexp[need] = new if new is not None else torch.nan
                    have[need] = fresh[need] = torch.isfinite(dexp[need]).flatten(1).all(-1)
                    alive[need[~have[need]]] = False
                    act = act[alive[act]]
                    if act.numel() == 0:
                        break
                step = torch.linalg.lstsq(dexp[act], -resid[act].unsqueeze(-1)).solution.squeeze(-1)
                # Steps that would more than double the path, or land far
                # beyond the chord, are cut back (long wild flows are costly).
                cap = 2 * coef[act].norm(dim=-1) + 2 * chord[act]
                size = step.norm(dim=-1)
                step = step * (cap / size.clamp_min(1e-300)).clamp(max=1.0)[:, None]
                improved = torch.zeros(act.numel(), dtype=torch.bool, device=x.device)
                for scale in (1.0, 0.5):
                    sub = (~improved).nonzero().squeeze(-1)
                    if scale < 1.0:  # halving only for steps from a fresh Jacobian
                        sub = sub[fresh[act[sub]]]
                    if sub.numel() == 0:
                        break
                    rows = act[sub]
                    trial = coef[rows] + scale * step[sub]
                    r, mi = miss_of(rows, trial)
                    # Newton converges fast near a solution: after the first
                    # step, a row whose fresh Jacobian does not halve its
                    # miss gives up.
                    need_ratio = torch.where(fresh[rows] & (it > 0), 0.5, 1.0)
                    better = torch.isfinite(mi) & (mi < miss[rows] * need_ratio)
                    good = rows[better]
                    da = trial[better] - coef[good]
                    dr = r[better] - resid[good]
                    upd = (dr - (dexp[good] @ da.unsqueeze(-1)).squeeze(-1))
                    dexp[good] += upd.unsqueeze(-1) * (da / (da * da).sum(-1, keepdim=True)
                                                       .clamp_min(1e-300)).unsqueeze(1)
                    coef[good], resid[good], miss[good] = trial[better], r[better], mi[better]
                    fresh[good] = False
                    improved[sub[better]] = True
                failed = act[~improved]
                # A fresh Jacobian that gives no better step: give up; an
                # updated one: recompute it.
                alive[failed[fresh[failed]]] = False
                have[failed] = False
            hit = metric._shot_hit(miss, resid, tol, atol)
        return (basis @ coef.unsqueeze(-1)).squeeze(-1), hit

    def _flow_samples(self, x, v, fractions):
        """Points ``exp(t v)`` at the given increasing times in (0, 1), (P, T, n)."""
        metric = self._space.metric
        integ = metric._integrator(x.dtype)
        n = x.shape[-1]
        z, t, out = torch.cat([x, v], -1), 0.0, []
        speed = float(v.norm(dim=-1).max())
        with torch.no_grad():
            for f in fractions:
                dt = float(f) - t
                z = integ.integrate(metric._rhs, z, dt, n_macro_steps(speed * dt,
                                                                      metric.arc_per_step))
                out.append(z[:, :n])
                t = float(f)
        return torch.stack(out, 1)

    # ---------------------------------------------------------- global guesses
    def _solve_far(self, queries, ia, ib, where, out, shots, n_jobs=None):
        graph = self.graph(queries)
        n_nodes = len(graph.points)
        ends = torch.cat([ia, ib])
        # One graph node per distinct point (by coordinates).
        q_used, inv = torch.unique(queries[ends], dim=0, return_inverse=True)
        inv = inv.reshape(-1).cpu().numpy()
        ra, rb = inv[:len(ia)], inv[len(ia):]
        matrix = graph.attach(q_used)
        # One Dijkstra per point (pairwise: every point is a source and a target).
        dist, pred = dijkstra(matrix, indices=n_nodes + np.arange(len(q_used)),
                              return_predecessors=True)
        all_pts = torch.cat([graph.points.to(queries), q_used])
        best = dist[ra, n_nodes + rb]
        joined = np.isfinite(best)
        # Not joined in the graph: different components of M, unless the
        # space's own component labels put them on one (a graph too sparse,
        # a solver box that cuts M): then no distance is known, not +inf.
        loose = torch.as_tensor(~joined, device=where.device)
        unjoined = where[loose]
        same = self._same_component(queries[ia[loose]], queries[ib[loose]])
        out.length[unjoined[~same]], out.conv[unjoined[~same]] = math.inf, True
        self.stats["unjoined"] = int(same.sum())
        rows = np.flatnonzero(joined)
        if rows.size == 0:
            return
        tree = (dist, pred, ra, rb)
        ctx = (queries, ia, where, shots, matrix, tree, best, n_nodes, all_pts)
        n_jobs = self._jobs(len(rows), n_jobs)
        if n_jobs == 1:
            self.stats["certified_graph"] = self._far_rows(ctx, rows, out)
            return
        graph.neighbor_table()  # built once, before the fork
        # Interleaved by graph distance, so that every part gets pairs of all
        # lengths (the cost of a pair grows with its length).
        order = rows[np.argsort(best[rows], kind="stable")]
        parts = [(order[j::n_jobs], j) for j in range(n_jobs)]
        targets = [where[torch.as_tensor(part, device=where.device)] for part, _ in parts]

        def work(part_and_index):
            part, j = part_and_index
            shown = self.progress
            self.progress = shown and not j  # one bar: this process's part
            try:
                certified = self._far_rows(ctx, part, out)
            finally:
                self.progress = shown
            # Part 0 runs in this process (fork_map), its results already in `out`.
            return certified, (out.take(targets[j]) if j else None)

        for target, (certified, taken) in zip(targets, fork_map(work, parts)):
            self.stats["certified_graph"] += certified
            if taken is not None:
                out.put(target, taken)

    def _same_component(self, x, y):
        """Pairs of flat points that the space's component labels (known by
        construction, or sampled in its box) put on one component."""
        space = self._space
        same = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if x.shape[0] == 0 or not space.components_known():
            return same  # no labels: the graph is the only evidence
        if space._known_n_components() == 1:
            return ~same
        with torch.no_grad():
            lx, ly = space._component_labels(x), space._component_labels(y)
        return (lx == ly) & (lx >= 0)

    def _jobs(self, n_rows, n_jobs=None):
        """Processes for ``n_rows`` far pairs: ``n_jobs`` (default the
        solver's; ``-1``: every CPU this process may use), at most one per 64
        pairs (a fork costs more than a few pairs)."""
        n_jobs = resolve_jobs(self.n_jobs if n_jobs is None else n_jobs)
        return max(1, min(n_jobs, n_rows // 64))

    def _far_rows(self, ctx, rows, out):
        """Corridors, certificates, candidates and refinement of the far pairs
        ``rows`` (indices into ``ia``); results go into ``out``. Returns the
        number of pairs certified by the graph rule."""
        queries, ia, where, shots, matrix, tree, best, n_nodes, all_pts = ctx
        graph = self._graph
        single, wide, first, limits = self._corridors(tree, best, rows, n_nodes)
        n_certified = 0
        if shots is not None:
            certified = self._certify_graph(tree, best, rows, queries[ia], where, single,
                                            limits, shots, out)
            n_certified = int(certified.sum())
            for r in rows[certified]:
                k = int(where[r])
                if wide[r]:
                    out.gap[k], out.amb[k] = 0.0, True
            keep = ~certified
            rows, single_rows = rows[keep], single[keep]
            first = [f for f, k in zip(first, keep) if k]
            limits = limits[keep]
        else:
            single_rows = single
        if rows.size == 0:
            return n_certified
        cand_pair, cand_route = self._candidates(matrix, tree, best, rows, n_nodes,
                                                 single_rows, first, limits)
        routes = [all_pts[torch.as_tensor(route, device=all_pts.device)] for route in cand_route]
        cand_pair, routes = _distinct_routes(cand_pair, routes,
                                             self.route_separation * graph.spacing)
        found = self._refine(routes, groups=cand_pair)
        counts = np.bincount(cand_pair, minlength=len(where))
        for r in rows:
            k = int(where[r])
            mine = found["by_group"].get(int(r), [])
            out.n_cand[k] = int(counts[r])
            if not mine:
                continue
            mine.sort(key=lambda f: float(f["length"]))
            out.store(k, mine[0])
            if wide[r]:
                out.gap[k], out.amb[k] = 0.0, True
            elif len(mine) > 1:
                g = float(mine[1]["length"] / mine[0]["length"] - 1)
                out.gap[k] = g
                out.amb[k] = g <= self.ambiguity_rtol
        return n_certified

    def _corridors(self, tree, best, rows, n_nodes, block=256):
        """Vectorised first look at the near-shortest graph paths of each pair.

        Returns, per row of ``rows``: whether every level set (see
        :meth:`_candidates`) is one compact cluster at both depths (then the
        pair has a single corridor of near-shortest routes); whether a
        continuum of near-minimal routes exists (antipodes); the graph's
        shortest route; and the loose depth limit.
        """
        dist, pred, ra, rb = tree
        graph = self._graph
        band = 2.5 * graph.spacing
        pts = graph.points.numpy()
        sq = (pts * pts).sum(-1)
        single = np.ones(len(best), dtype=bool)
        wide = np.zeros(len(best), dtype=bool)
        limits = (1 + self.candidate_rtol) * best + band
        first = []
        reach = (10 * graph.spacing) ** 2

        def spread(mask, total):
            """Squared distance from the best masked node to the farthest one."""
            top = np.argmin(np.where(mask, total, np.inf), axis=1)
            d2 = sq[None] - 2 * pts[top] @ pts.T + sq[top][:, None]
            return np.where(mask, d2, 0.0).max(1)

        for start in range(0, len(rows), block):
            r = rows[start:start + block]
            da = dist[ra[r], :n_nodes]
            db = dist[rb[r], :n_nodes]
            with np.errstate(invalid="ignore"):  # inf - inf on unreachable nodes
                total = da + db
                z0 = np.argmin(total, axis=1)
                ha = _backtrack_many(pred, ra[r], z0)
                hb = _backtrack_many(pred, rb[r], z0)
                first += [np.concatenate([ha[q], hb[q][::-1][1:]]) for q in range(len(r))]
                depths = [total <= limits[r, None],
                          total <= (1 + 0.25 * self.candidate_rtol) * best[r, None]
                          + 0.25 * band]
                ok = np.ones(len(r), dtype=bool)
                for f in self.route_fractions:
                    level = np.abs(da - f * total) <= band
                    for near in depths:
                        mask = near & level
                        loose = ~(spread(mask, total) <= reach)
                        if loose.any():  # wide sets: count their clusters exactly
                            loose[loose] = _count_clusters(graph.neighbor_table(),
                                                           mask[loose]) > 1
                        ok &= ~loose
                mid = depths[1] & (np.abs(da - 0.5 * total) <= band)
            s_mid = np.sqrt(spread(mid, total))
            wide[r] = (s_mid > 0.35 * best[r]) & (s_mid > 8 * graph.spacing)
            single[r] = ok
        return single[rows], wide, first, limits[rows]

    def _certify_graph(self, tree, best, rows, base, where, single, limits, shots, out):
        """Store the converged shots of single-corridor pairs that run through
        their corridor and are no longer than the graph distance allows;
        returns the mask of certified rows."""
        dist, _, ra, rb = tree
        hit, vec = shots
        idx_t = where[torch.as_tensor(rows, device=where.device)]
        length = vec[idx_t].norm(dim=-1).cpu().numpy()
        cand = single & hit[idx_t].cpu().numpy()
        cand &= length <= (1 + 0.25 * self.candidate_rtol) * best[rows]
        certified = np.zeros(len(rows), dtype=bool)
        sel = np.flatnonzero(cand)
        if sel.size == 0:
            return certified
        k = idx_t[torch.as_tensor(sel, device=where.device)]
        samples = self._flow_samples(base[torch.as_tensor(rows[sel], device=base.device)],
                                     vec[k], self.route_fractions)
        _, node = self._graph.tree.query(samples.reshape(-1, samples.shape[-1]).cpu().numpy())
        node = node.reshape(len(sel), -1)
        r = rows[sel]
        total = dist[ra[r][:, None], node] + dist[rb[r][:, None], node]
        inside = (total <= limits[sel][:, None]).all(1)
        certified[sel[inside]] = True
        k = k[torch.as_tensor(inside, device=k.device)]
        out.store_shots(k, vec[k], vec[k].norm(dim=-1))
        return certified

    def _candidates(self, matrix, tree, best, rows, n_nodes, single, first, limits):
        """Distinct near-shortest graph routes of each pair.

        The first route is the graph's shortest path. A pair's near-shortest
        paths (``d(x, z) + d(z, y) <= (1 + candidate_rtol) d(x, y)`` plus a few
        spacings) cross the level sets ``d(x, z) = f d(x, y)`` (``f`` in
        ``route_fractions``) in one cluster per distinct way through there
        (routes passing on either side of a hole or bump separate at some
        fraction even where they meet elsewhere). Where some level set has
        several clusters, every near-shortest combination of clusters (one
        node per cluster, joined by graph shortest paths) is a route. Pairs
        whose level sets are all compact (``single``, see :meth:`_corridors`)
        have the first route only.

        Returns
        -------
        pair : numpy.ndarray of int
            Row of ``rows``' pair for each route.
        routes : list of numpy.ndarray of int
            Node indices (graph nodes, then attached queries).
        """
        dist, _, ra, rb = tree
        graph = self._graph
        band = 2.5 * graph.spacing
        out_pair, out_route = list(rows), list(first)
        table, pts = graph.neighbor_table(), graph.points.numpy()
        n_levels = len(self.route_fractions)
        multi = np.flatnonzero(~single)
        # Blocks of pairs of similar length share one search for their legs.
        multi = multi[np.argsort(best[rows[multi]], kind="stable")]
        for start in range(0, multi.size, 64):
            qs = multi[start:start + 64]
            r = rows[qs]
            da = dist[ra[r], :n_nodes]
            db = dist[rb[r], :n_nodes]
            with np.errstate(invalid="ignore"):
                total = da + db
                # Two depths: the loose one reaches routes the graph makes too
                # long; the tight one separates routes whose near-shortest
                # sets merge at the loose depth (when the ridge between them
                # is low, e.g. either way around a thin tube).
                depths = [total <= limits[qs, None],
                          total <= (1 + 0.25 * self.candidate_rtol) * best[r, None]
                          + 0.25 * band]
                # A node on a near-shortest path of length `total` is at
                # fraction da / total along it.
                at = [np.abs(da - f * total) <= band for f in self.route_fractions]
            masks = np.stack([near & level for near in depths for level in at], 1)
            clusters = _cluster_tops(table, pts, masks.reshape(-1, n_nodes),
                                     np.repeat(total, 2 * n_levels, 0), 10 * graph.spacing)
            jobs, budget = [], {}
            for i, q in enumerate(qs):
                for d in range(2):
                    at_depth = clusters[(2 * i + d) * n_levels:(2 * i + d + 1) * n_levels]
                    if all(len(c) <= 1 for c in at_depth):
                        continue
                    combos, need = self._combos(at_depth, rows[q], tree, float(limits[q]))
                    jobs.append((q, combos))
                    for u, b in need.items():
                        budget[u] = max(budget.get(u, 0.0), b)
            hops = {}
            if budget:
                # The legs of the whole block in one multi-source call (scipy
                # validates the graph once per call), each search stopped at
                # the longest leg any route may still afford.
                starts = sorted(budget)
                d, p = dijkstra(matrix, indices=starts, return_predecessors=True,
                                limit=max(budget.values()))
                hops = {u: (d[k], p[k]) for k, u in enumerate(starts)}
            for q, combos in jobs:
                for route in self._assemble(combos, rows[q], tree, hops, float(limits[q]),
                                            first[q]):
                    out_pair.append(rows[q])
                    out_route.append(route)
        return np.asarray(out_pair, dtype=int), out_route

    def _combos(self, clusters, row, tree, limit):
        """Waypoint sequences through one cluster node per level set (or none
        at a level) that may fit within ``limit``, and per leg start the
        length its legs may have (``limit - d(x, u) - d(v, y)``)."""
        dist, _, ra, rb = tree
        sa, sb = ra[row], rb[row]
        # A level may also be left free (no waypoint there): a route that
        # separates from the others at one fraction only must not be forced
        # through another route's cluster at the remaining ones.
        levels = [list(c) + [None] if len(c) > 1 else [None] + list(c) for c in clusters]
        pts = self._graph.points.numpy()
        combos, budget = [], {}
        for combo in itertools.product(*levels):
            waypoints = [z for z in combo if z is not None]
            if not waypoints:
                continue
            # Chords bound the legs from below: skip hopeless combinations
            # before running any Dijkstra.
            legs = list(zip(waypoints[:-1], waypoints[1:]))
            bound = dist[sa, waypoints[0]] + dist[sb, waypoints[-1]] + sum(
                float(np.linalg.norm(pts[u] - pts[v])) for u, v in legs)
            if bound <= limit:
                combos.append(waypoints)
                for u, v in legs:
                    budget[u] = max(budget.get(u, 0.0), limit - dist[sa, u] - dist[sb, v])
        return combos, budget

    def _assemble(self, combos, row, tree, hops, limit, first):
        """The graph routes of waypoint sequences, legs from ``hops`` (Dijkstra
        rows from the leg starts); those longer than ``limit`` are dropped."""
        dist, pred, ra, rb = tree
        sa, sb = ra[row], rb[row]
        seen = {tuple(first)}
        out = []
        for waypoints in combos:
            length = dist[sa, waypoints[0]] + dist[sb, waypoints[-1]]
            parts = [_backtrack_one(pred[sa], waypoints[0])]
            for u, v in zip(waypoints[:-1], waypoints[1:]):
                d, p = hops[u]
                length += d[v]
                if not np.isfinite(d[v]) or length > limit:
                    break
                parts.append(_backtrack_one(p, v)[1:])
            else:
                if length > limit:
                    continue
                parts.append(_backtrack_one(pred[sb], waypoints[-1])[::-1][1:])
                route = np.concatenate(parts)
                if tuple(route) not in seen:
                    seen.add(tuple(route))
                    out.append(route)
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
        n_routes = len(routes)
        with Progress(n_routes, "straightening geodesics",
                      enabled=self.progress and n_routes >= self.PROGRESS_MIN_ROUTES) as bar:
            results = self._refine_rounds(routes, groups, bar)
        by_group = {}
        if groups is not None:
            done = [i for i in range(n_routes) if results[i] is not None]
            if done:
                done = self._prune(results, done, groups, self.ambiguity_rtol * 10)
            for i in done:
                by_group.setdefault(int(groups[i]), []).append(results[i])
        return {"routes": results, "by_group": by_group}

    def _refine_rounds(self, routes, groups, bar):
        """:meth:`_refine`'s rounds of rising degree; ``bar`` counts the routes
        that are settled, failed or pruned."""
        n_routes = len(routes)
        degrees = self._initial_degrees(routes)
        first = self._solve_degrees(
            dict(enumerate(degrees.tolist())),
            lambda idx, rule: _resample_many([routes[i] for i in idx], rule.t))
        alive = [i for i in range(n_routes) if first[i] is not None]
        if groups is not None and alive:
            alive = self._prune(first, alive, groups, self.prune_rtol)
        bar.update(n_routes - len(alive), degree=int(degrees.max()) if n_routes else 0)
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
            # Routes raised to the same degree come from the same degree.
            new = self._solve_degrees(
                degrees, lambda idx, rule: _interp(
                    torch.stack([previous[i]["nodes"] for i in idx]), rule.n))
            nxt_prev = {}
            for i, cur in new.items():
                if cur is None:
                    continue
                old = previous[i]
                rtol = max(self.rtol, 100 * torch.finfo(cur["nodes"].dtype).eps)
                cur["settled"] = (abs(float(cur["length"] - old["length"]))
                                  <= rtol * float(cur["length"]) and cur["resolved"])
                nxt_prev[i] = cur
            bar.update(len(previous) - len(nxt_prev),
                       **({"degree": max(degrees.values())} if degrees else {}))
            previous = nxt_prev
        return results

    def _solve_degrees(self, degrees, init):
        """Straighten route ``i`` at ``degrees[i]`` from ``init(indices, rule)``
        (the stacked initial nodes of those routes), grouped by degree."""
        pending = {}
        for i, d in degrees.items():
            pending.setdefault(d, []).append(i)
        out = {}
        for d in sorted(pending):
            idx = pending[d]
            rule = _Rule.get(d, self._like)
            res = self._straighten(init(idx, rule), rule)
            conv = res["converged"].tolist()
            resolved = res["resolved"].tolist()
            for r, i in enumerate(idx):
                if not conv[r]:
                    out[i] = None
                    continue
                out[i] = {"nodes": res["nodes"][r], "length": res["length"][r],
                          "tangent": res["tangent"][r], "resolved": resolved[r]}
        return out

    def _prune(self, found, alive, groups, rtol):
        """Keep per group the routes within ``rtol`` of its shortest that are
        distinct curves (the same geodesic reached from two seeds counts once)."""
        alive = np.asarray(alive)
        grp = np.asarray(groups)[alive]
        length = torch.stack([found[i]["length"] for i in alive]).cpu().numpy()
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
            tol = np.maximum(1e-4 * length[best[cand]], 1e-6 * self._space.tol_scale)
            keep[cand[sep > tol]] = True
        return [int(i) for i in alive[keep]]

    def _initial_degrees(self, routes):
        """Degree per route: about 3 nodes per radian of turning (measured on
        a scale of a few graph spacings, above the route's zigzag), so that the
        first solve resolves the path; the check raises it if needed."""
        out = np.full(len(routes), self.min_degree, dtype=np.int64)
        idx = [i for i, r in enumerate(routes) if len(r) >= 3]
        for start in range(0, len(idx), 4096):
            part = idx[start:start + 4096]
            pad = _pad_routes([routes[i] for i in part])
            seg = (pad[:, 1:] - pad[:, :-1]).norm(dim=-1)
            length = seg.sum(-1)
            if self._graph is not None:
                spacing = torch.full_like(length, self._graph.spacing)
            else:
                spacing = length / 8
            n_seg = (length / (4 * spacing.clamp_min(1e-300))).clamp(2, 32).floor().long()
            # Resample at n_seg + 1 equal arc-length fractions (padded to 33
            # by repeating the end).
            k = torch.arange(33, device=pad.device)
            frac = (k[None] / n_seg[:, None]).clamp(max=1.0).to(pad.dtype)
            pts = _resample_padded(pad, seg, 2 * frac - 1)
            d = torch.nn.functional.normalize(pts[:, 1:] - pts[:, :-1], dim=-1)
            cos = (d[:, 1:] * d[:, :-1]).sum(-1).clamp(-1, 1)
            valid = k[None, 1:32] < n_seg[:, None]
            turning = torch.where(valid, torch.arccos(cos), torch.zeros_like(cos)).sum(-1)
            deg = (self.min_degree + torch.ceil(3 * turning)).clamp(self.min_degree,
                                                                    self.max_degree)
            deg = torch.where(length > 0, deg, torch.full_like(deg, self.min_degree))
            out[np.asarray(part)] = deg.long().cpu().numpy()
        return out

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
        # Energies resolve to ~eps of the dtype: float32 paths stop earlier.
        dec_rtol = max(1e-13, 10 * torch.finfo(x0.dtype).eps)
        x = x0.clone()
        # Land the interior nodes on M.
        # far: the graph's chords bend off M by a fixed fraction of the path's
        # length, many length units at large coordinates, where the damped
        # Newton alone stalled (every path failed at r = 1e4).
        land = space.solve_projection(x[:, 1:-1].reshape(-1, n), closest=False, far=True)
        x[:, 1:-1] = land.x.reshape(p, k, n)
        ok = land.converged.reshape(p, k).all(-1)
        with torch.no_grad():
            _, jac_all = space._value_and_jacobian(x[:, 1:-1].reshape(-1, n))
        jac_all = jac_all.reshape(p, k, c, n).clone()
        done = torch.zeros(p, dtype=torch.bool, device=x.device)
        have_curv = torch.zeros(p, dtype=torch.bool, device=x.device)
        moved = torch.zeros(p, dtype=x.dtype, device=x.device)
        spacing = (x[:, 1:] - x[:, :-1]).norm(dim=-1).amin(-1)
        shape_all = torch.zeros(p, k, c, m, m, dtype=x.dtype, device=x.device)
        basis_all = torch.zeros(p, k, n, m, dtype=x.dtype, device=x.device)
        stiffness = (rule.diff.t() @ (rule.w[:, None] * rule.diff))[1:-1, 1:-1]
        diag = torch.arange(k, device=x.device)
        max_move = self.max_move * (self._graph.spacing if self._graph is not None else
                                    float((x0[:, -1] - x0[:, 0]).norm(dim=-1).max()) / 4)
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
            # The curvature term changes with the nodes; after small moves the
            # last one, turned into the new tangent bases, keeps Newton's
            # convergence (superlinear) at a third of the cost.
            fresh = ~have_curv[act] | (moved[act] > 1e-2 * spacing[act])
            shape_t = torch.empty(pa * k, c, m, m, dtype=x.dtype, device=x.device)
            fr = fresh.repeat_interleave(k)
            if bool(fr.any()):
                shape_t[fr] = self._shape_operator(y[fr], jac[fr], basis[fr])
            st = ~fr
            if bool(st.any()):
                rot = basis[st].transpose(1, 2) @ basis_all[act].reshape(-1, n, m)[st]
                shape_t[st] = rot[:, None] @ shape_all[act].reshape(-1, c, m, m)[st] \
                    @ rot.transpose(1, 2)[:, None]
            shape_all[act] = shape_t.reshape(pa, k, c, m, m)
            basis_all[act] = basis.reshape(pa, k, n, m)
            have_curv[act] = True
            curv = (lam[:, :, None, None] * shape_t).sum(1)  # (pa k, m, m)
            gc = (basis.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1).reshape(pa, k * m)
            bk = basis.reshape(pa, k, n, m)
            hess = 2 * stiffness[None, :, None, :, None] * torch.einsum("pina,pjnb->piajb", bk, bk)
            hess[:, diag, :, diag, :] -= curv.reshape(pa, k, m, m).transpose(0, 1)
            step = _spd_solve(hess.reshape(pa, k * m, k * m), -gc)
            dec = -(gc * step).sum(-1)  # Newton decrement^2 (>= 0)
            # Converged: the energy is within dec / 2 of the (quadratically
            # approached) minimum; no step needed.
            small = dec <= dec_rtol * energy.clamp_min(1e-300)
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
            # Trust region: no node moves farther than `max_move` per step, so
            # the path deforms continuously (a long jump could carry it across
            # a hole, into another homotopy class).
            reach = dx.norm(dim=-1).amax(-1)
            alpha = (max_move / reach.clamp_min(1e-300)).clamp(max=1.0)
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
                slack = dec_rtol * energy[rows]
                good &= e_new <= energy[rows] - 1e-4 * alpha[rows] * dec[rows] + slack
                xa[rows[good]] = new[good]
                new_jac[rows[good]] = res.jac.reshape(-1, k, c, n)[good]
                accepted[rows[good]] = True
                alpha[rows[~good]] *= 0.5
            idx = act[move]
            moved[idx] = (xa - x[idx]).norm(dim=-1).amax(-1)
            x[idx] = xa
            jac_all[idx] = new_jac
            ok[idx[~accepted]] = False  # no decrease along a descent direction
        converged = ok & done
        out = self._finish(x, rule, converged)
        out["iters"] = torch.full((p,), n_it + 1, device=x.device)
        return out

    def _shape_operator(self, y, jac, basis):
        """``B^T D^2F_i B`` per node and constraint, shape (B, c, m, m): exact
        Hessians where the space has closed forms, else one-sided differences
        of J along the tangent basis (one batched Jacobian evaluation)."""
        space = self._space
        from .implicit import ImplicitManifold

        c, m = jac.shape[1], basis.shape[-1]
        exact = type(space)._lagrangian_hessian is not ImplicitManifold._lagrangian_hessian
        if exact and not getattr(space, "_hessian_by_differences", False):
            eye = torch.eye(c, dtype=y.dtype, device=y.device)
            hess = torch.stack([space._lagrangian_hessian(y, eye[i].expand(y.shape[0], c))
                                for i in range(c)], 1)  # (B, c, n, n)
            return basis.transpose(1, 2)[:, None] @ hess @ basis[:, None]
        eps = max(1e-7, torch.finfo(y.dtype).eps ** 0.5) * (
            space.tol_scale + y.abs().amax(-1, keepdim=True))
        shifted = y.unsqueeze(1) + eps.unsqueeze(1) * basis.transpose(1, 2)
        shifted = shifted.reshape(-1, y.shape[-1])
        with torch.no_grad():
            jac_s = space._jacobian(shifted).reshape(y.shape[0], m, *jac.shape[1:])
        djac = (jac_s - jac.unsqueeze(1)) / eps[:, :, None, None]  # (B, m, c, n)
        out = djac.permute(0, 2, 1, 3) @ basis[:, None]  # (B, c, m, m)
        return 0.5 * (out + out.transpose(-1, -2))

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
        return {"nodes": x, "length": length, "tangent": v0, "converged": converged,
                "resolved": resolved, "tail": tail / scale, "off": off / scale}


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


def _distinct_routes(pair, routes, tol, n_samples=17):
    """Drop routes that stay within ``tol`` of an earlier route of the same pair
    (at matching arc-length fractions): they straighten to the same geodesic."""
    if len(routes) < 2:
        return pair, routes
    t = torch.linspace(-1.0, 1.0, n_samples, dtype=routes[0].dtype, device=routes[0].device)
    samples = _resample_many(routes, t)
    keep = np.ones(len(routes), dtype=bool)
    order = np.argsort(pair, kind="stable")
    bounds = np.flatnonzero(np.r_[True, pair[order][1:] != pair[order][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        if idx.size < 2:
            continue
        sub = samples[torch.as_tensor(idx, device=samples.device)]
        gap = (sub[:, None] - sub[None]).norm(dim=-1).amax(-1).cpu().numpy()
        for a in range(1, idx.size):
            kept = [b for b in range(a) if keep[idx[b]]]
            if kept and gap[a, kept].min() <= tol:
                keep[idx[a]] = False
    sel = np.flatnonzero(keep)
    return pair[sel], [routes[i] for i in sel]


def _backtrack_one(pred_row, node):
    """Graph path from a Dijkstra root to ``node`` (root first), one route."""
    out = [int(node)]
    nxt = pred_row[out[-1]]
    while nxt >= 0:
        out.append(int(nxt))
        nxt = pred_row[nxt]
    return np.array(out[::-1])


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


def _pad_routes(routes):
    """Polylines (L_i, n) stacked as (R, max L_i, n), each padded with its end."""
    size = max(len(r) for r in routes)
    return torch.stack([r if len(r) == size else
                        torch.cat([r, r[-1:].expand(size - len(r), -1)]) for r in routes])


def _resample_padded(pad, seg, t):
    """Points at arc-length fractions ``(t + 1) / 2`` (R, T) along padded
    polylines ``pad`` (R, L, n) with segment lengths ``seg`` (R, L - 1)."""
    cum = torch.cat([seg.new_zeros(seg.shape[0], 1), seg.cumsum(-1)], -1)
    s = (0.5 * (t + 1) * cum[:, -1:]).contiguous()
    j = torch.searchsorted(cum.contiguous(), s).clamp(1, pad.shape[1] - 1)
    seg_j = seg.gather(1, j - 1)
    frac = ((s - cum.gather(1, j - 1)) / seg_j.clamp_min(1e-300)).clamp(0, 1)[..., None]
    idx = (j - 1)[..., None].expand(-1, -1, pad.shape[-1])
    lo, hi = pad.gather(1, idx), pad.gather(1, idx + 1)
    out = lo + frac * (hi - lo)
    out[:, 0], out[:, -1] = pad[:, 0], pad[:, -1]
    # A route of zero length: every point is its start.
    return torch.where((cum[:, -1] > 0)[:, None, None], out, pad[:, :1].expand_as(out))


def _resample_many(routes, t):
    """Points at arc-length fractions ``(t + 1) / 2`` along each polyline, (R, T, n)."""
    out = []
    for start in range(0, len(routes), 4096):
        pad = _pad_routes(routes[start:start + 4096])
        seg = (pad[:, 1:] - pad[:, :-1]).norm(dim=-1)
        out.append(_resample_padded(pad, seg, t.expand(pad.shape[0], -1)))
    return torch.cat(out)


def _rowwise_safe(fn, *rows):
    """``fn(*rows)`` for row-wise batched work that may raise
    :class:`GeodesicError` (an integration that blows up on some row): the
    batch is split until the failing rows are isolated; their output is NaN."""
    try:
        return fn(*rows)
    except GeodesicError:
        size = rows[0].shape[0]
        if size == 1:
            return None
    half = size // 2
    parts = [_rowwise_safe(fn, *(r[:half] for r in rows)),
             _rowwise_safe(fn, *(r[half:] for r in rows))]
    like = next((p for p in parts if p is not None), None)
    if like is None:
        return None
    fill = [p if p is not None else torch.full((n,) + tuple(like.shape[1:]), torch.nan,
                                               dtype=like.dtype, device=like.device)
            for p, n in zip(parts, (half, size - half))]
    return torch.cat(fill)


class _Out:
    """Per-pair outputs of a solve, filled in place."""

    def __init__(self, p, n, dt):
        self.vec = torch.zeros(p, n, **dt)
        self.length = torch.full((p,), torch.nan, **dt)
        self.conv = torch.zeros(p, dtype=torch.bool, device=dt["device"])
        self.amb = torch.zeros_like(self.conv)
        self.shot = torch.zeros_like(self.conv)
        self.n_cand = torch.ones(p, dtype=torch.long, device=dt["device"])
        self.gap = torch.full((p,), math.inf, **dt)
        self.nodes = [None] * p

    def store(self, k, path):
        self.vec[k], self.length[k], self.conv[k] = path["tangent"], path["length"], True
        self.nodes[k] = path["nodes"]

    def store_shots(self, idx, vec, length):
        self.vec[idx], self.length[idx] = vec, length
        self.conv[idx] = self.shot[idx] = True

    _FIELDS = ("vec", "length", "conv", "amb", "shot", "n_cand", "gap")

    def take(self, idx):
        """The outputs of pairs ``idx`` (to send from a worker process)."""
        taken = {name: getattr(self, name)[idx].cpu() for name in self._FIELDS}
        # The paths' nodes in one tensor (not one per path: pickling a path,
        # a view of its whole batch, would copy the batch along, and
        # thousands of small tensors pickle slowly), with each path's length
        # in nodes (0: no path).
        nodes = [self.nodes[k] for k in idx.tolist()]
        taken["sizes"] = [0 if x is None else x.shape[0] for x in nodes]
        kept = [x for x in nodes if x is not None]
        taken["nodes"] = torch.cat(kept).cpu() if kept else None
        return taken

    def put(self, idx, taken):
        """Write outputs :meth:`take` returned back at pairs ``idx``."""
        for name in self._FIELDS:
            field = getattr(self, name)
            field[idx] = taken[name].to(field.device)
        sizes = taken["sizes"]
        paths = iter(torch.split(taken["nodes"].to(self.vec.device), [s for s in sizes if s])
                     if taken["nodes"] is not None else ())
        for k, size in zip(idx.tolist(), sizes):
            self.nodes[k] = next(paths) if size else None


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


def _own_pairwise(space, points, n_jobs=None, labels=None, tables=False):
    """A component space's own distance matrix on ``points``: ``(dist, ambiguous,
    failed, n_near, n_far)`` from its solver's ``pairwise``, or from its metric's
    ``dist_pairwise`` (nothing ambiguous or failed) for custom solvers and, with
    ``tables``, for curves (exact arc-length tables)."""
    solver = space.metric.log_solver
    if hasattr(solver, "pairwise") and not (tables and space.dim == 1):
        kwargs = {} if n_jobs is None else {"n_jobs": n_jobs}
        if labels is not None:
            kwargs["labels"] = labels
        res = solver.pairwise(points, **kwargs)
        return res.dist, res.ambiguous, res.failed, res.n_near, res.n_far
    d = space.metric.dist_pairwise(points)
    none = torch.zeros_like(d, dtype=torch.bool)
    return d, none, none, 0, 0


def _checked_dist(res, where):
    """``res.dist``, or GeodesicError if some pair failed (``where``: which solve)."""
    if bool(res.failed.any()):
        raise GeodesicError(f"dist_pairwise: {int(torch.triu(res.failed, 1).sum())} pair(s) "
                            f"have no converged geodesic {where}.")
    return res.dist


class ProductLogSolver(LogSolver):
    """Log and distance on a product ``M1 x M2 x ...`` factor by factor.

    Geodesics of a product metric are products of factor geodesics, so the
    log is the concatenation of the factors' logs and the distance
    ``sqrt(sum_i d_i^2)``; each factor uses its own metric's solver (its own
    sample graph in its own, lower, dimension).
    """

    def __init__(self, space):
        super().__init__(solves_bvp=True)
        self._space = space

    def _split(self, x):
        return [x[..., sl] for sl in self._space._slices]

    def log(self, point, base_point):
        """Concatenated factor logs, shape ``(..., n)``."""
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        parts = [c.metric.log(yp, xp) for c, xp, yp in
                 zip(space.components, self._split(x), self._split(y))]
        return torch.cat(parts, -1).reshape(*batch, space.ambient_dim)

    def dist(self, point_a, point_b):
        """``sqrt(sum_i d_i^2)``, shape ``(...,)``."""
        space = self._space
        a, b, batch = space._pair(point_a, point_b, ("point_a", "point_b"))
        sq = sum(c.metric.dist(pa, pb) ** 2 for c, pa, pb in
                 zip(space.components, self._split(a), self._split(b)))
        return sq.sqrt().reshape(batch)

    def pairwise(self, points, labels=None, n_jobs=None):
        """Factor distance matrices combined; a pair is ambiguous or failed if
        it is in some factor. ``n_jobs`` goes to the factors' solvers.

        Returns
        -------
        PairwiseResult
        """
        del labels  # a product is connected iff its factors are: the factors decide
        space = self._space
        pts = as_point_list(points, space.ambient_dim)
        sq, amb, failed, n_near, n_far = 0.0, None, None, 0, 0
        for c, part in zip(space.components, self._split(pts)):
            d, a, f, near, far = _own_pairwise(c, part, n_jobs)
            n_near, n_far = n_near + near, n_far + far
            sq = sq + d * d
            amb = a if amb is None else amb | a
            failed = f if failed is None else failed | f
        return PairwiseResult(dist=torch.sqrt(sq), ambiguous=amb, failed=failed,
                              n_near=n_near, n_far=n_far)

    def dist_pairwise(self, points):
        """Matrix of product distances (see :meth:`pairwise`)."""
        return _checked_dist(self.pairwise(points), "in some factor")

    def geodesic_bvp(self, point, base_point):
        """Product of the factors' minimising geodesics, ``t`` in [0, 1]."""
        space = self._space
        paths = [c.metric.geodesic(initial_point=xp, end_point=yp) for c, xp, yp in
                 zip(space.components, self._split(torch.as_tensor(base_point)),
                     self._split(torch.as_tensor(point)))]

        def path(t):
            return torch.cat([p(t) for p in paths], -1)

        return path


class UnionLogSolver(LogSolver):
    """Log and distance on a union ``M1 ∪ M2 ∪ ...`` piece by piece.

    The pieces are disjoint, so a geodesic of the union is a geodesic of the
    piece holding both end points; each piece's own metric answers, with its
    own box, sample graph and curvature bound. (One sample graph over the
    union's box spreads its nodes by area: a small piece beside a large one got
    a handful of disconnected nodes, and pairs on it came out +inf apart, or
    "on different components" from log.) Pairs on different pieces are +inf
    apart; their log raises :class:`DisconnectedError`.
    """

    def __init__(self, space):
        super().__init__(solves_bvp=True)
        self._space = space

    def _pieces(self, x, y, what):
        """Piece of each pair (flat), or DisconnectedError where they differ."""
        with torch.no_grad():
            px, py = self._space.component_index(x), self._space.component_index(y)
        if what is not None and bool((px != py).any()):
            apart = px != py
            raise DisconnectedError(
                f"{what}: {int(apart.sum())} of {apart.numel()} pair(s) lie on different "
                f"pieces of {self._space.name}; no geodesic joins them (their distance is "
                "+inf).", mask=apart)
        return px, py

    def _by_piece(self, piece):
        for i, c in enumerate(self._space.components):
            rows = (piece == i).nonzero().squeeze(-1)
            if rows.numel():
                yield c, rows

    def log(self, point, base_point):
        """The log on the pieces of the base points, shape ``(..., n)``."""
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        try:
            px, _ = self._pieces(x, y, "log")
        except DisconnectedError as err:
            err.mask = err.mask.reshape(batch)
            raise
        out = torch.zeros_like(x)
        for c, rows in self._by_piece(px):
            out[rows] = c.metric.log(y[rows], x[rows]).to(out)
        return out.reshape(*batch, space.ambient_dim)

    def dist(self, point_a, point_b):
        """Distances on the pieces, ``inf`` across pieces, shape ``(...,)``."""
        space = self._space
        a, b, batch = space._pair(point_a, point_b, ("point_a", "point_b"))
        pa, pb = self._pieces(a, b, None)
        out = torch.full((a.shape[0],), math.inf, dtype=a.dtype, device=a.device)
        for c, rows in self._by_piece(torch.where(pa == pb, pa, -1)):
            out[rows] = c.metric.dist(a[rows], b[rows]).to(out)
        return out.reshape(batch)

    def pairwise(self, points, labels=None, n_jobs=None):
        """Each piece's distance matrix on its points, ``inf`` across pieces.

        Returns
        -------
        PairwiseResult
        """
        del labels  # pieces first; within a piece, its own components
        space = self._space
        pts = as_point_list(points, space.ambient_dim).to(space.dtype)
        n = pts.shape[0]
        dist = torch.full((n, n), math.inf, dtype=pts.dtype, device=pts.device)
        dist.fill_diagonal_(0.0)
        amb = torch.zeros(n, n, dtype=torch.bool, device=pts.device)
        failed = torch.zeros_like(amb)
        n_near = n_far = 0
        with torch.no_grad():
            piece = space.component_index(pts)
        for c, rows in self._by_piece(piece):
            part = pts[rows]
            inner = None if c.dim == 1 else c.metric._known_labels(part)
            d, a, f, near, far = _own_pairwise(c, part, n_jobs, inner, tables=True)
            n_near, n_far = n_near + near, n_far + far
            block = (rows[:, None], rows[None, :])
            dist[block], amb[block], failed[block] = d.to(dist), a, f
        return PairwiseResult(dist=dist, ambiguous=amb, failed=failed,
                              n_near=n_near, n_far=n_far)

    def dist_pairwise(self, points):
        """Matrix of distances (see :meth:`pairwise`)."""
        return _checked_dist(self.pairwise(points), "on their piece")

    def geodesic_bvp(self, point, base_point):
        """The pieces' minimising geodesics, ``t`` in [0, 1]."""
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        px, _ = self._pieces(x, y, "geodesic")
        paths = [(rows, c.metric.geodesic(initial_point=x[rows], end_point=y[rows]))
                 for c, rows in self._by_piece(px)]
        n = space.ambient_dim

        def path(t):
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
            out = x.new_zeros(x.shape[0], t.shape[0], n)
            for rows, piece_path in paths:
                out[rows] = piece_path(t).reshape(rows.numel(), t.shape[0], n).to(out)
            return out[0] if len(batch) == 0 else out.reshape(*batch, t.shape[0], n)

        return path
