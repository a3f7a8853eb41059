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
        return torch.arange(n_all, device=points.device)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n_all, (1,), generator=gen, device="cpu"))
    keep = torch.empty(n_keep, dtype=torch.long, device=points.device)
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
        a = q[rows].to(space.device, space.dtype)
        b = self.points[cols].to(space.device, space.dtype)
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
    seed : int
    chunk : int
        Pairs per batched tensor program (memory).
    """

    def __init__(self, space, rtol=1e-6, near_radius=None, near_excess=0.1,
                 candidate_rtol=0.04, ambiguity_rtol=1e-3, n_graph_nodes=None,
                 n_neighbors=None, min_degree=6, max_degree=160, max_iter=40, bounds=None,
                 route_fractions=(0.25, 0.5, 0.75), route_separation=4.0, prune_rtol=0.01,
                 max_move=2.0, polish=True, polish_iter=4, seed=0,
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
        self.n_neighbors = int(n_neighbors or {1: 4, 2: 24}.get(m, 32))
        self.min_degree, self.max_degree = int(min_degree), int(max_degree)
        self.max_iter = int(max_iter)
        self.bounds = bounds
        self.seed = int(seed)
        self.chunk = int(chunk)
        self.route_fractions = tuple(float(f) for f in route_fractions)
        self.prune_rtol = float(prune_rtol)
        self.max_move = float(max_move)
        self.route_separation = float(route_separation)
        self.polish, self.polish_iter = bool(polish), int(polish_iter)
        self.nodes_per_spacing = 4.0
        self._graph, self._graph_key = None, None
        self.stats = {}

    # ------------------------------------------------------------------ graph
    def _box(self, queries):
        space = self._space
        if self.bounds is not None:
            return tuple(torch.as_tensor(b, dtype=DTYPE, device=space.device)
                         .expand(space.ambient_dim) for b in self.bounds)
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
        self.stats["unpolished"] = 0
        if self.polish and hasattr(metric, "_shoot"):
            moving = (res.length > 0).nonzero().squeeze(-1)
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
                    tol = metric._log_tol(x.dtype) ** 0.5 * (1 + y[rows].norm(dim=-1))
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
        self.stats = {"near": int(near.sum()), "far": 0}
        if bool(near.any()):
            idx = near.nonzero().squeeze(-1)
            init = [torch.stack([a[k], 0.5 * (a[k] + b[k]), b[k]]) for k in idx.tolist()]
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
        if rows.size == 0:
            return
        cand_pair, cand_route, wide = self._candidates(
            matrix, (dist_a, pred_a, src_row), (dist_b, pred_b, tgt_row), best, rows, n_nodes)
        routes = [all_pts[torch.as_tensor(route, device=all_pts.device)] for route in cand_route]
        cand_pair, routes = _distinct_routes(cand_pair, routes,
                                             self.route_separation * graph.spacing)
        found = self._refine(routes, groups=cand_pair)
        counts = np.bincount(cand_pair, minlength=len(where))
        for r in rows:
            k = int(where[r])
            mine = found["by_group"].get(int(r), [])
            n_cand[k] = int(counts[r])
            if not mine:
                continue
            mine.sort(key=lambda f: float(f["length"]))
            self._store(k, mine[0], out_v, out_len, conv, nodes)
            if wide[r]:
                gap[k], amb[k] = 0.0, True
            elif len(mine) > 1:
                g = float(mine[1]["length"] / mine[0]["length"] - 1)
                gap[k] = g
                amb[k] = g <= self.ambiguity_rtol

    def _candidates(self, matrix, tree_a, tree_b, best, rows, n_nodes, block=256):
        """Distinct near-shortest graph routes of each pair.

        The first route is the graph's shortest path. A pair's near-shortest
        paths (``d(x, z) + d(z, y) <= (1 + candidate_rtol) d(x, y)`` plus a few
        spacings) cross the level sets ``d(x, z) = f d(x, y)`` (``f`` in
        ``route_fractions``) in one cluster per distinct way through there
        (routes passing on either side of a hole or bump separate at some
        fraction even where they meet elsewhere). Where some level set has
        several clusters, every near-shortest combination of clusters (one
        node per cluster, joined by graph shortest paths) is a route.

        Returns
        -------
        pair : numpy.ndarray of int
            Row of ``rows``' pair for each route.
        routes : list of numpy.ndarray of int
            Node indices (graph nodes, then queries at ``n_nodes + i``).
        wide : numpy.ndarray of bool
            Per pair (indexed like ``best``): a continuum of near-minimal routes.
        """
        dist_a, pred_a, src_row = tree_a
        dist_b, pred_b, tgt_row = tree_b
        graph = self._graph
        band = 2.5 * graph.spacing
        out_pair, out_route = [], []
        wide = np.zeros(len(best), dtype=bool)
        for start in range(0, len(rows), block):
            r = rows[start:start + block]
            da = dist_a[src_row[r], :n_nodes]
            db = dist_b[tgt_row[r], :n_nodes]
            total = da + db
            z0 = np.argmin(total, axis=1)
            ha = _backtrack_many(pred_a, src_row[r], z0)
            hb = _backtrack_many(pred_b, tgt_row[r], z0)
            for q in range(len(r)):
                out_pair.append(r[q])
                out_route.append(np.concatenate([ha[q], hb[q][::-1][1:]]))
            with np.errstate(invalid="ignore"):  # inf - inf on unreachable nodes
                limit = (1 + self.candidate_rtol) * best[r, None] + band
                # Two depths: the loose one reaches routes the graph makes too
                # long; the tight one separates routes whose near-shortest
                # sets merge at the loose depth (when the ridge between them
                # is low, e.g. either way around a thin tube).
                depths = [total <= limit,
                          total <= (1 + 0.25 * self.candidate_rtol) * best[r, None]
                          + 0.25 * band]
                # A node on a near-shortest path of length `total` is at
                # fraction da / total along it.
                at = [np.abs(da - f * total) <= band for f in self.route_fractions]
                # A continuum of near-minimal routes (antipodes of a sphere):
                # the tight near-midpoints spread far around the best one.
                mid = depths[1] & (np.abs(da - 0.5 * total) <= band)
            pts = graph.points.numpy()
            top = np.argmin(np.where(mid, total, np.inf), axis=1)
            spread = np.where(mid, np.linalg.norm(pts[None] - pts[top][:, None], axis=-1),
                              0.0).max(1)
            wide[r] = (spread > 0.35 * best[r]) & (spread > 8 * graph.spacing)
            first_routes = out_route[-len(r):]
            for q in range(len(r)):
                for near in depths:
                    clusters = [self._clusters(matrix, near[q] & level[q], total[q])
                                for level in at]
                    if all(len(c) <= 1 for c in clusters):
                        continue
                    for route in self._combine(clusters, r[q], (dist_a, pred_a, src_row),
                                               (dist_b, pred_b, tgt_row), matrix,
                                               float(limit[q, 0]), first_routes[q]):
                        out_pair.append(r[q])
                        out_route.append(route)
        return np.asarray(out_pair, dtype=int), out_route, wide

    def _clusters(self, matrix, mask, total):
        """Best node of each connected cluster of the masked graph nodes."""
        members = np.flatnonzero(mask)
        if members.size <= 1:
            return [int(m) for m in members]
        top = members[np.argmin(total[members])]
        pts = self._graph.points.numpy()
        # Within a few spacings of its best node a set is one cluster (the
        # common case): no graph search needed.
        if np.linalg.norm(pts[members] - pts[top], axis=-1).max() <= 10 * self._graph.spacing:
            return [int(top)]
        n_comp, labels = connected_components(matrix[members][:, members], directed=False)
        return [int(members[labels == c][np.argmin(total[members[labels == c]])])
                for c in range(n_comp)]

    def _combine(self, clusters, row, tree_a, tree_b, matrix, limit, first):
        """Routes through one cluster node per level set, within ``limit``."""
        dist_a, pred_a, src_row = tree_a
        dist_b, pred_b, tgt_row = tree_b
        sa, sb = src_row[row], tgt_row[row]
        # A level may also be left free (no waypoint there): a route that
        # separates from the others at one fraction only must not be forced
        # through another route's cluster at the remaining ones.
        levels = [list(c) + [None] if len(c) > 1 else [None] + list(c) for c in clusters]
        seen = {tuple(first)}
        out = []

        import itertools

        pts = self._graph.points.numpy()
        combos = []
        for combo in itertools.product(*levels):
            waypoints = [z for z in combo if z is not None]
            if not waypoints:
                continue
            # Chords bound the legs from below: skip hopeless combinations
            # before running any Dijkstra.
            bound = dist_a[sa, waypoints[0]] + dist_b[sb, waypoints[-1]] + sum(
                float(np.linalg.norm(pts[u] - pts[v])) for u, v in
                zip(waypoints[:-1], waypoints[1:]))
            if bound <= limit:
                combos.append(waypoints)
        starts = sorted({u for w in combos for u in w[:-1]})
        hops = {}
        if starts:
            # One multi-source call: scipy validates the graph once per call.
            d, p = dijkstra(matrix, indices=starts, return_predecessors=True, limit=limit)
            hops = {u: (d[i], p[i]) for i, u in enumerate(starts)}
        for waypoints in combos:
            length = dist_a[sa, waypoints[0]] + dist_b[sb, waypoints[-1]]
            parts = [_backtrack_one(pred_a[sa], waypoints[0])]
            for u, v in zip(waypoints[:-1], waypoints[1:]):
                d, p = hops[u]
                length += d[v]
                if not np.isfinite(d[v]) or length > limit:
                    break
                parts.append(_backtrack_one(p, v)[1:])
            else:
                if length > limit:
                    continue
                parts.append(_backtrack_one(pred_b[sb], waypoints[-1])[::-1][1:])
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
                rtol = max(self.rtol, 100 * torch.finfo(cur["nodes"].dtype).eps)
                cur["settled"] = (abs(float(cur["length"] - old["length"]))
                                  <= rtol * float(cur["length"]) and cur["resolved"])
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
        """Degree for a route: about 3 nodes per radian of turning (measured
        on a scale of a few graph spacings, above the route's zigzag), so that
        the first solve resolves the path; the check raises it if needed."""
        seg = (route[1:] - route[:-1]).norm(dim=-1)
        length = float(seg.sum())
        if length <= 0 or len(route) < 3:
            return self.min_degree
        spacing = self._graph.spacing if self._graph is not None else length / 8
        n_seg = int(min(32, max(2, length / (4 * spacing))))
        t = torch.linspace(-1.0, 1.0, n_seg + 1, dtype=route.dtype, device=route.device)
        pts = _resample(route, t)
        d = torch.nn.functional.normalize(pts[1:] - pts[:-1], dim=-1)
        turning = float(torch.arccos((d[1:] * d[:-1]).sum(-1).clamp(-1, 1)).sum())
        return int(min(max(self.min_degree, self.min_degree + math.ceil(3 * turning)),
                       self.max_degree))

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
        land = space.solve_projection(x[:, 1:-1].reshape(-1, n), closest=False)
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
        if type(space)._lagrangian_hessian is not ImplicitManifold._lagrangian_hessian:
            eye = torch.eye(c, dtype=y.dtype, device=y.device)
            hess = torch.stack([space._lagrangian_hessian(y, eye[i].expand(y.shape[0], c))
                                for i in range(c)], 1)  # (B, c, n, n)
            return basis.transpose(1, 2)[:, None] @ hess @ basis[:, None]
        eps = max(1e-7, torch.finfo(y.dtype).eps ** 0.5) * (1 + y.abs().amax(-1, keepdim=True))
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
    samples = torch.stack([_resample(r, t) for r in routes])
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

    def pairwise(self, points, labels=None):
        """Factor distance matrices combined; a pair is ambiguous or failed if
        it is in some factor.

        Returns
        -------
        PairwiseResult
        """
        del labels  # a product is connected iff its factors are: the factors decide
        space = self._space
        pts = as_points(points, space.ambient_dim, "points").reshape(-1, space.ambient_dim)
        sq, amb, failed, n_near, n_far = 0.0, None, None, 0, 0
        for c, part in zip(space.components, self._split(pts)):
            solver = c.metric.log_solver
            if hasattr(solver, "pairwise"):
                res = solver.pairwise(part)
                d, a, f = res.dist, res.ambiguous, res.failed
                n_near, n_far = n_near + res.n_near, n_far + res.n_far
            else:
                d = c.metric.dist_pairwise(part)
                a = f = torch.zeros_like(d, dtype=torch.bool)
            sq = sq + d * d
            amb = a if amb is None else amb | a
            failed = f if failed is None else failed | f
        return PairwiseResult(dist=torch.sqrt(sq), ambiguous=amb, failed=failed,
                              n_near=n_near, n_far=n_far)

    def dist_pairwise(self, points):
        """Matrix of product distances (see :meth:`pairwise`)."""
        res = self.pairwise(points)
        if bool(res.failed.any()):
            raise GeodesicError(
                f"dist_pairwise: {int(torch.triu(res.failed, 1).sum())} pair(s) have no "
                "converged geodesic in some factor.")
        return res.dist

    def geodesic_bvp(self, point, base_point):
        """Product of the factors' minimising geodesics, ``t`` in [0, 1]."""
        space = self._space
        paths = [c.metric.geodesic(initial_point=xp, end_point=yp) for c, xp, yp in
                 zip(space.components, self._split(torch.as_tensor(base_point)),
                     self._split(torch.as_tensor(point)))]

        def path(t):
            return torch.cat([p(t) for p in paths], -1)

        return path
