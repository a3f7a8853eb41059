"""Normalising constants of densities on manifolds, with checked errors.

``Z = int_M exp(-E(x)) dvol(x)`` with the induced (Riemannian) volume of M, the
Hausdorff measure. Every manifold the library makes gets a rule:

* **closed forms / exact rules** on analytic spaces: circles and 2-spheres
  (Gauss-Legendre x trapezoid, spectrally accurate), tori of revolution (area
  element ``r (R + r cos theta)``) and their unions;
* **learned curves** (dimension 1, any codimension): each connected component
  is traced into an arc-length table until it closes or leaves the box
  (:class:`~implicit_geom.manifolds.curves.CurveTracer`, shared with the
  curves' exact distances), and nodes uniform in arc length get trapezoid
  weights (spectrally accurate on closed curves);
* **learned surfaces** in R^3: a marching-tetrahedra mesh of ``F = 0`` whose
  vertices are projected onto M, refined by midpoint subdivision with every
  new vertex projected (the mesh converges to M), vertex weights one third of
  the adjacent triangle areas;
* **higher dimensions**: :func:`ais_log_partition`, annealed importance
  sampling along constrained MALA chains from the uniform law on each
  component, whose volume comes from a tube-volume estimate (randomised
  quasi-Monte Carlo); both carry standard errors.

A :class:`Quadrature` labels every node with its connected component, so the
mass of each piece (``component_log_partitions``) is as available as the total,
and keeps a rule at half the resolution: :func:`log_partition_error` reports the
difference (Richardson-scaled for the algebraic rules) as the error of ``log Z``.
:func:`log_partition` is differentiable in the energy's parameters, which
direct maximum likelihood needs.
"""

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..exceptions import InvalidPointError, NormalizationError, QuadratureCoverageError
from ..manifolds.analytic import GeomstatsLevelSet, ImplicitSphere, ImplicitTorus, as_implicit
from ..manifolds.arithmetic import UnionManifold
from ..numerics.validation import DTYPE, as_points, check_int

__all__ = [
    "Quadrature",
    "LogPartition",
    "circle_quadrature",
    "sphere_quadrature",
    "torus_quadrature",
    "box_quadrature",
    "traced_curve_quadrature",
    "surface_mesh_quadrature",
    "manifold_quadrature",
    "has_quadrature",
    "log_partition",
    "component_log_partitions",
    "log_partition_error",
    "monte_carlo_log_partition",
    "tube_volumes",
    "ais_log_partition",
]


class Quadrature:
    """Nodes on a manifold with volume weights: ``int_M f dvol ~ sum_i w_i f(x_i)``.

    Parameters
    ----------
    points : torch.Tensor, shape (N, n)
    weights : torch.Tensor, shape (N,)
        Positive; they sum to the volume of M (within the rule's box).
    labels : torch.Tensor of int, shape (N,), optional
        Connected component of each node, ``0..C-1`` (default: one component).
    coarse : Quadrature, optional
        The same construction at about half the resolution, for error estimates.
    order : int, optional
        Algebraic order of the error in the node spacing (2 for the traced
        curves and meshes); None for spectrally accurate rules.
    method : str
        How the rule was built (reported with log Z).
    n_open : int
        Components that reach the box instead of closing inside it (the rule
        then integrates over their part inside the box).
    min_error : float
        Floor of the error estimate of ``log Z`` (the accuracy of the nodes
        themselves, e.g. of a traced curve's arc length).
    coverage_radius : float, optional
        Every point of the part of M the rule integrates lies within this
        distance of a node (about the node spacing); a point of M farther from
        every node is one the rule does not cover (:meth:`check_covered`).
        None: not known (no check).
    """

    def __init__(self, points, weights, labels=None, coarse=None, order=None, method="",
                 n_open=0, min_error=0.0, coverage_radius=None):
        self.points = points
        self.weights = weights
        if labels is None:
            labels = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
        self.labels = labels.to(torch.long)
        self.coarse = coarse
        self.order = order
        self.method = method
        self.n_open = int(n_open)
        self.min_error = float(min_error)
        self.coverage_radius = None if coverage_radius is None else float(coverage_radius)
        self._tree = None

    def __repr__(self):
        return (f"Quadrature({self.method or 'rule'}: {self.points.shape[0]} nodes, "
                f"{self.n_components} component(s), volume {self.volume:.6g})")

    @property
    def volume(self):
        """Total volume (length, area) of the manifold, ``sum(weights)``."""
        return float(self.weights.sum())

    @property
    def n_components(self):
        """Number of connected components the nodes are labelled with."""
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    def component_volumes(self):
        """Volume of each component, shape (C,)."""
        return torch.zeros(self.n_components, dtype=self.weights.dtype,
                           device=self.weights.device).index_add_(0, self.labels, self.weights)

    def to(self, device=None, dtype=None):
        """The same rule on another device and/or with nodes and weights in another dtype
        (that of the energy they meet)."""
        return Quadrature(self.points.to(device=device, dtype=dtype),
                          self.weights.to(device=device, dtype=dtype),
                          self.labels.to(device),
                          None if self.coarse is None else self.coarse.to(device, dtype),
                          self.order, self.method, self.n_open, self.min_error,
                          self.coverage_radius)

    def node_distance(self, x):
        """Distance of each point to its nearest node, shape (N,) (KD-tree, CPU)."""
        from scipy.spatial import cKDTree

        if self._tree is None:
            self._tree = cKDTree(self.points.detach().cpu().numpy())
        x = torch.as_tensor(x)
        dist, _ = self._tree.query(x.detach().cpu().reshape(-1, self.points.shape[1]).numpy())
        return torch.as_tensor(dist, dtype=self.points.dtype, device=x.device)

    def uncovered(self, x):
        """Mask of the points farther than ``coverage_radius`` from every node.

        Meant for points on M (project first): a point off M is also as far
        from the nodes as it is from M. All False where the radius is unknown.
        """
        x = torch.as_tensor(x)
        if self.coverage_radius is None:
            return torch.zeros(x.reshape(-1, self.points.shape[1]).shape[0], dtype=torch.bool,
                               device=x.device)
        return self.node_distance(x) > self.coverage_radius

    def check_covered(self, x, what="points"):
        """Raise :class:`QuadratureCoverageError` unless every point of M in ``x`` has a node nearby.

        Parameters
        ----------
        x : torch.Tensor, shape (N, n)
            Points on M.
        what : str
            What the points are (for the message).
        """
        bad = self.uncovered(x)
        if bool(bad.any()):
            far = float(self.node_distance(x).max())
            raise QuadratureCoverageError(
                f"{int(bad.sum())} of {bad.numel()} {what} lie where the {self.method or 'rule'} "
                f"has no nodes (up to {far:.3g} from the nearest, coverage radius "
                f"{self.coverage_radius:.3g}): the rule misses that part of the manifold, or "
                "the points are outside its box; a density normalised by it says nothing "
                "there (refine the rule or widen its box)", uncovered=bad)

    def peak_excess(self, energy, x, k=8):
        """How far the density at ``x`` rises above the rule's nodes around it (nats).

        ``-E(x) - max -E(node)`` over the ``k`` nodes nearest each point. A
        density the nodes resolve varies little between neighbouring nodes,
        so this is about 0 or negative; a peak narrower than the node spacing
        shows as a large positive excess at the points it sits on. The
        fine-minus-coarse error cannot see such a peak (the coarse nodes are a
        subset of the fine ones), and maximum likelihood makes them where the
        data are: ``log Z`` misses their mass while ``E(data)`` counts it.

        Parameters
        ----------
        energy : callable
            ``(N, n) -> (N,)``.
        x : torch.Tensor, shape (N, n)
            Points on (or within the data's distance of) M, e.g. the data.
        k : int
            Neighbouring nodes compared with each point.

        Returns
        -------
        torch.Tensor, shape (N,)
        """
        from scipy.spatial import cKDTree

        x = torch.as_tensor(x).reshape(-1, self.points.shape[1])
        if x.shape[0] == 0:
            return x.new_zeros(0)
        if getattr(self, "_tree", None) is None:
            self._tree = cKDTree(self.points.detach().cpu().numpy())
        k = min(int(k), self.points.shape[0])
        _, idx = self._tree.query(x.detach().cpu().numpy(), k=k)
        idx = torch.as_tensor(idx, device=self.points.device).reshape(x.shape[0], k)
        with torch.no_grad():
            at_x = -energy(x.to(self.points)).reshape(-1)
            at_nodes = -energy(self.points[idx.reshape(-1)]).reshape(x.shape[0], k)
        return at_x - at_nodes.max(1).values

    def __add__(self, other):
        """Concatenation: the rule of a union of pieces that overlap on a null set.

        Component labels of ``other`` follow those of ``self``.
        """
        coarse = (self.coarse + other.coarse
                  if self.coarse is not None and other.coarse is not None else None)
        radii = [r for r in (self.coverage_radius, other.coverage_radius) if r is not None]
        radius = max(radii) if len(radii) == 2 else None
        orders = [o for o in (self.order, other.order) if o is not None]
        methods = [m for m in (self.method, other.method) if m]
        return Quadrature(torch.cat([self.points, other.points]),
                          torch.cat([self.weights, other.weights]),
                          torch.cat([self.labels, other.labels + self.n_components]),
                          coarse, min(orders) if orders else None,
                          " + ".join(dict.fromkeys(methods)), self.n_open + other.n_open,
                          max(self.min_error, other.min_error), radius)


@dataclass
class LogPartition:
    """A value of ``log Z`` with its error and the mass of each component.

    Attributes
    ----------
    value : float
        ``log Z``.
    error : float
        Estimated absolute error of ``value`` (quadrature: fine minus coarse
        rule, Richardson-scaled; estimators: one standard error).
    component_log_z : torch.Tensor, shape (C,)
        ``log Z_c`` of each connected component (``logsumexp`` is ``value``).
    method : str
    """

    value: float
    error: float
    component_log_z: torch.Tensor = field(repr=False)
    method: str = ""

    @property
    def component_mass(self):
        """Probability mass of each component, ``Z_c / Z``, shape (C,)."""
        return (self.component_log_z - self.value).exp()


def _check_resolution(value, name):
    return check_int(value, name, minimum=2)


# --------------------------------------------------------------- exact rules
def circle_quadrature(n=512, radius=1.0, center=(0.0, 0.0)):
    """Trapezoid rule on the circle ``|x - c| = r`` in R^2 (exact for trig. polynomials)."""
    n = _check_resolution(n, "n")
    center = torch.as_tensor(center, dtype=DTYPE)
    angle = torch.arange(n, dtype=DTYPE) * (2 * math.pi / n)
    points = center + radius * torch.stack([angle.cos(), angle.sin()], -1)
    return Quadrature(points, torch.full((n,), 2 * math.pi * radius / n, dtype=DTYPE),
                      method="trapezoid (circle)", coverage_radius=2 * math.pi * radius / n)


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
    # Gauss-Legendre gaps in colatitude (and the polar caps) are below pi / n_lat.
    return Quadrature(points.reshape(-1, 3), weights.reshape(-1).clone(),
                      method="Gauss-Legendre x trapezoid (sphere)",
                      coverage_radius=radius * (2 * math.pi / n_lon + math.pi / n_lat))


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
    return Quadrature(points.reshape(-1, 3), weights.reshape(-1), method="trapezoid (torus)",
                      coverage_radius=2 * math.pi * ((R + r) / n_phi + r / n_theta))


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
    return Quadrature(points, torch.full((points.shape[0],), float(width.prod()), dtype=DTYPE),
                      order=2, method="midpoint (box)",
                      coverage_radius=float(torch.linalg.vector_norm(width)))


def _sphere_params(manifold):
    """(dim, radius, center) of a round sphere manifold, or None."""
    if isinstance(manifold, ImplicitSphere):
        return manifold.dim, manifold.radius, manifold.center
    if isinstance(manifold, GeomstatsLevelSet) and type(manifold.space).__name__ == "Hypersphere":
        return manifold.dim, 1.0, torch.zeros(manifold.ambient_dim, dtype=DTYPE)
    return None


def _exact_rule(manifold, resolution):
    """The closed-form rule of an analytic manifold at ``resolution``, or None."""
    params = _sphere_params(manifold)
    if params is not None and params[0] == 1 and manifold.ambient_dim == 2:
        return circle_quadrature(resolution, params[1], params[2])
    if params is not None and params[0] == 2 and manifold.ambient_dim == 3:
        return sphere_quadrature(max(resolution // 2, 2), resolution, params[1], params[2])
    if isinstance(manifold, ImplicitTorus):
        return torus_quadrature(manifold.major_radius, manifold.minor_radius,
                                resolution, max(resolution // 2, 2))
    return None


# ------------------------------------------------------------ traced curves
def _box_arc(table, low, high):
    """Arc-length interval ``[s_a, s_b]`` of an open traced curve inside the box.

    The tracer runs on past the box (a 5% margin and up to a step beyond):
    from the first to the last table node inside the box, each end is moved
    by bisection to where the interpolant crosses the box.
    """
    low, high = low.to(table.points), high.to(table.points)

    def inside(x):
        return ((x >= low) & (x <= high)).all(-1)

    idx = inside(table.points).nonzero().squeeze(-1)
    first, last = int(idx[0]), int(idx[-1])
    # Bracket each crossing between a node outside and one inside (none at an
    # end of the table that lies inside the box).
    ins = table.s[[first, last]].clone()
    outs = table.s[[max(first - 1, 0), min(last + 1, table.s.numel() - 1)]].clone()
    for _ in range(60):
        mid = 0.5 * (ins + outs)
        ok = inside(table.evaluate(mid)[0])
        ins, outs = torch.where(ok, mid, ins), torch.where(ok, outs, mid)
    return float(ins[0]), float(ins[1])


def _arc_rule(table, step, low=None, high=None):
    """Nodes uniform in arc length on a traced curve, with their weights.

    Closed curves: the trapezoid rule in the arc-length parameter, spectrally
    accurate for smooth periodic integrands (an even node count, so the rule
    on every other node is the half-resolution one). Open pieces: the
    trapezoid rule on their arc inside the box ``[low, high]``. Positions come
    from the table's quintic Hermite interpolant (within ``check_tol`` of M).
    """
    if table.closed:
        start, length = float(table.s[0]), table.length
    else:
        start, end = _box_arc(table, low, high)
        length = end - start
    n = max(int(math.ceil(length / step)), 8)
    n += n % 2
    if table.closed:
        s = start + length * torch.arange(n, dtype=table.s.dtype) / n
        weights = torch.full((n,), length / n, dtype=table.s.dtype)
    else:
        s = start + length * torch.arange(n + 1, dtype=table.s.dtype) / n
        weights = torch.full((n + 1,), length / n, dtype=table.s.dtype)
        weights[[0, -1]] /= 2
    points = table.evaluate(s.to(table.s.device))[0]
    return points, weights.to(points.device)


def _coarse_arc_rule(points, weights, closed):
    # Every other node: the weights double, the end weights of an open piece
    # too (h/2 of the fine spacing h is H/2 of the coarse spacing H = 2h).
    return points[::2], 2 * weights[::2]


def _cover(manifold, low, high, n_cover, seed):
    from ..manifolds.components import sample_in_box  # box draws projected onto M

    gen = torch.Generator().manual_seed(int(seed))
    points, _ = sample_in_box(manifold, int(n_cover), low.cpu(), high.cpu(), generator=gen)
    if points.shape[0] == 0:
        raise NormalizationError(
            f"none of {n_cover} box draws could be projected onto {manifold.name} inside "
            "the box; is the manifold inside it?")
    return points.to(low.device)


def _box(manifold, bounds):
    if bounds is None:
        bounds = manifold.bounds
    if bounds is None:
        raise NormalizationError(
            f"{manifold.name} has no box: pass bounds=(low, high) enclosing the manifold")
    low, high = (torch.as_tensor(b, dtype=DTYPE).reshape(-1).expand(manifold.ambient_dim)
                 for b in bounds)
    if not bool((high > low).all()):
        raise ValueError(f"bounds must satisfy low < high, got {bounds}")
    return low, high


def traced_curve_quadrature(manifold, bounds=None, step=None, n_cover=4000, seed=0):
    """Quadrature on a curve (1-manifold in R^n) by tracing each connected component.

    Box draws projected onto M find every component inside the box; from one
    of them at a time the curve is traced into an arc-length table
    (:class:`~implicit_geom.manifolds.curves.CurveTracer`: the unit tangent
    field integrated with Newton landing, a quintic Hermite interpolant checked
    against F) until it closes or leaves the box both ways. Nodes uniform in
    arc length get trapezoid weights: spectrally accurate on closed curves.
    Cover points farther than ``0.75 step`` from every node seed the next
    component, so each is traced once and none is missed. The rule on every
    other node estimates the error.

    Parameters
    ----------
    manifold : ImplicitManifold
        Of dimension 1.
    bounds : pair of array_like, optional
        Box; default ``manifold.bounds``.
    step : float, optional
        Node spacing; default 1/512 of the box diagonal.
    n_cover : int
        Box draws that find the components.
    seed : int

    Returns
    -------
    Quadrature
        One label per traced component; ``n_open`` counts those that leave the box.

    Raises
    ------
    NormalizationError
        A curve that cannot be traced (it leaves M, or does not close within
        the tracer's node cap).
    """
    from ..manifolds.curves import CurveTraceError, CurveTracer

    manifold = as_implicit(manifold)
    if manifold.dim != 1:
        raise ValueError(f"traced_curve_quadrature needs a curve, {manifold!r} has dim "
                         f"{manifold.dim}")
    low, high = _box(manifold, bounds)
    step = float(torch.linalg.vector_norm(high - low)) / 512 if step is None else float(step)
    if not step > 0:
        raise ValueError(f"step must be positive, got {step}")
    tracer = CurveTracer(manifold, bounds=(low, high))
    curves = []
    with torch.no_grad():
        remaining = _cover(manifold, low, high, n_cover, seed)
        for _ in range(64):
            if remaining.shape[0] == 0:
                break
            try:
                table = tracer.trace(remaining[0])
            except CurveTraceError as err:
                raise NormalizationError(f"cannot trace a component of {manifold.name}: "
                                         f"{err}") from err
            points, weights = _arc_rule(table, step, low, high)
            curves.append((points, weights, table.closed))
            remaining = remaining[~_near(remaining, points, 0.75 * step)]
        else:
            raise NormalizationError("curve tracing did not cover every component in 64 rounds")

    def rule(coarse):
        pts, wts, lab = [], [], []
        for c, (points, weights, closed) in enumerate(curves):
            if coarse:
                points, weights = _coarse_arc_rule(points, weights, closed)
            pts.append(points)
            wts.append(weights)
            lab.append(torch.full((points.shape[0],), c, dtype=torch.long,
                                  device=points.device))
        return torch.cat(pts), torch.cat(wts), torch.cat(lab)

    n_open = sum(not closed for _, _, closed in curves)
    order = 2 if n_open else None
    # The tables' arc lengths are integrated to ~1e-10 relative: the floor of the error
    # (in float64; the tracer's tolerances are floored at 64 eps of the curve's dtype).
    # Nodes are at most ``step`` apart along each traced curve.
    min_error = max(1e-9, 6400 * torch.finfo(manifold.dtype).eps)
    coarse = Quadrature(*rule(True), order=order, method="traced curves", n_open=n_open,
                        min_error=min_error, coverage_radius=2 * step)
    return Quadrature(*rule(False), coarse=coarse, order=order, method="traced curves",
                      n_open=n_open, min_error=min_error, coverage_radius=step)


def _near(points, nodes, radius):
    """Whether each point lies within ``radius`` of some node (KD-tree)."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(nodes.detach().cpu().numpy()).query(points.detach().cpu().numpy())
    return torch.as_tensor(dist <= radius, device=points.device)


# ------------------------------------------------------------ surface meshes
def _tet_cases():
    """Triangles (as pairs of tet-vertex indices on sign-changing edges) per sign pattern."""
    cases = {}
    for pattern in range(16):
        pos = [a for a in range(4) if pattern >> a & 1]
        neg = [a for a in range(4) if not pattern >> a & 1]
        if len(pos) in (0, 4):
            continue
        if len(pos) in (1, 3):
            odd = pos[0] if len(pos) == 1 else neg[0]
            cases[pattern] = [[(odd, b) for b in range(4) if b != odd]]
        else:
            (p1, p2), (n1, n2) = pos, neg
            cases[pattern] = [[(p1, n1), (p1, n2), (p2, n2)], [(p1, n1), (p2, n2), (p2, n1)]]
    return cases


_TET_CASES = _tet_cases()
# Kuhn (Freudenthal) split of the unit cube into 6 tetrahedra sharing the main
# diagonal: conforming across neighbouring cubes, so the mesh has no cracks.
_KUHN = [[(0, 0, 0),
          tuple(int(a == p[0]) for a in range(3)),
          tuple(int(a in p[:2]) for a in range(3)),
          (1, 1, 1)] for p in itertools.permutations(range(3))]


def _marching_tetrahedra(values, low, spacing):
    """Triangles of the piecewise-linear zero set of grid values (g0, g1, g2).

    Returns vertex positions (V, 3) and triangles (T, 3) of vertex ids (numpy),
    each triangle ordered so that its normal points to the side where the
    values are positive (the direction of grad F).
    """
    g = np.array(values.shape)
    flat = values.reshape(-1)
    pos = values > 0
    # Cubes whose corners change sign.
    corners = np.stack([pos[i:g[0] - 1 + i, j:g[1] - 1 + j, k:g[2] - 1 + k]
                        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    mixed = corners.any(0) & ~corners.all(0)
    origin = np.argwhere(mixed)  # (C, 3)
    strides = np.array([g[1] * g[2], g[2], 1])
    edges = []
    for tet in _KUHN:
        gid = np.stack([(origin + np.array(v)) @ strides for v in tet], 1)  # (C, 4)
        pattern = (flat[gid] > 0).astype(np.int64) @ (1 << np.arange(4))
        for case, tris in _TET_CASES.items():
            sel = gid[pattern == case]
            for tri in tris:
                edges.append(np.stack([np.stack([sel[:, a], sel[:, b]], -1) for a, b in tri], 1))
    if not edges or sum(e.shape[0] for e in edges) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    edges = np.concatenate(edges)  # (T, 3, 2) grid ids of each triangle vertex's edge
    a, b = np.minimum(edges[..., 0], edges[..., 1]), np.maximum(edges[..., 0], edges[..., 1])
    keys, inverse = np.unique(a * flat.size + b, return_inverse=True)
    ea, eb = keys // flat.size, keys % flat.size
    fa, fb = flat[ea], flat[eb]
    t = (fa / (fa - fb))[:, None]
    xa = low + np.stack(np.unravel_index(ea, tuple(g)), 1) * spacing
    xb = low + np.stack(np.unravel_index(eb, tuple(g)), 1) * spacing
    verts, tris = xa + t * (xb - xa), inverse.reshape(-1, 3)
    # Orient each triangle towards the positive ends of the edges it cuts, so
    # that a projected triangle whose normal turns against grad F is a fold.
    up = np.where((fb > fa)[:, None], xb - xa, xa - xb)[tris].sum(1)  # (T, 3)
    p = verts[tris]
    flip = (np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]) * up).sum(-1) < 0
    tris[flip] = tris[flip][:, ::-1]
    return verts, tris


def _project_vertices(manifold, x):
    res = manifold.solve_projection(x, closest=False)
    if not bool(res.converged.all()):
        raise NormalizationError(
            f"{int((~res.converged).sum())} of {x.shape[0]} mesh vertices could not be projected "
            f"onto {manifold.name}")
    return res.x


def _mesh_rule(vertices, triangles, labels, n_open, coverage_radius):
    a, b, c = (vertices[triangles[:, j]] for j in range(3))
    area = 0.5 * torch.linalg.vector_norm(torch.linalg.cross(b - a, c - a), dim=-1)
    weights = torch.zeros(vertices.shape[0], dtype=vertices.dtype, device=vertices.device)
    weights.index_add_(0, triangles.reshape(-1), (area / 3).repeat_interleave(3))
    used = weights > 0
    return Quadrature(vertices[used], weights[used], labels[used], order=2,
                      method="projected surface mesh", n_open=n_open,
                      coverage_radius=coverage_radius)


def _subdivide(manifold, vertices, triangles, labels):
    """Split every triangle in four at its edge midpoints, projected onto M.

    A midpoint gets the component label of the edge it splits.
    """
    tri = triangles
    pairs = torch.stack([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]], 1)  # (T, 3, 2)
    lo, hi = pairs.min(-1).values, pairs.max(-1).values
    n = vertices.shape[0]
    keys, inverse = torch.unique(lo * n + hi, return_inverse=True)
    mid = 0.5 * (vertices[keys // n] + vertices[keys % n])
    mid = _project_vertices(manifold, mid)
    m = inverse + n  # (T, 3): midpoints of edges 01, 12, 20
    new = torch.cat([
        torch.stack([tri[:, 0], m[:, 0], m[:, 2]], -1),
        torch.stack([tri[:, 1], m[:, 1], m[:, 0]], -1),
        torch.stack([tri[:, 2], m[:, 2], m[:, 1]], -1),
        torch.stack([m[:, 0], m[:, 1], m[:, 2]], -1)])
    return torch.cat([vertices, mid]), new, torch.cat([labels, labels[keys // n]])


def surface_mesh_quadrature(manifold, bounds=None, grid=32, n_refine=2, *, n_cover=4000,
                            max_grid=None, seed=0):
    """Quadrature on a surface ``{F = 0}`` in R^3 from a projected, refined mesh.

    ``F`` on a ``grid^3`` lattice over the box gives a marching-tetrahedra
    mesh of its piecewise-linear zero set; its vertices are projected onto M
    (Newton). Each of ``n_refine`` midpoint subdivisions splits every
    triangle in four and projects the new vertices, so the inscribed mesh
    converges to M and its area with O(h^2) error. Node weights are one third
    of the adjacent triangles' areas; components are those of the mesh graph.
    The rule one subdivision coarser estimates the error.

    Refinement cannot add what the lattice missed (a piece of M thinner than
    a lattice cell, a fold between lattice points): ``n_cover`` box draws
    projected onto M check that every point of M in the box has a node within
    the rule's ``coverage_radius`` (a refined cell's diagonal). Where some
    have none, the lattice is doubled (with one subdivision fewer, down to
    one) up to ``max_grid``; a rule that still misses part of M raises. So
    does a mesh that folds over itself (a lattice that cuts M into closed
    pieces whose projections overlap, counting that area twice): triangles,
    oriented towards ``F > 0`` by the lattice values, that turn against
    ``grad F`` once projected refine the lattice in the same way.

    Parameters
    ----------
    manifold : ImplicitManifold
        A hypersurface of R^3 (``F`` scalar, changing sign across M).
    bounds : pair of array_like, optional
        Default ``manifold.bounds``.
    grid : int
        Lattice points per axis.
    n_refine : int
        Subdivisions (>= 1).
    n_cover : int
        Box draws projected onto M that check the coverage (0: no check).
    max_grid : int, optional
        Finest lattice tried; default ``4 * grid``.
    seed : int
        Seed of the cover draws.

    Returns
    -------
    Quadrature

    Raises
    ------
    QuadratureCoverageError
        Points of M in the box without a node nearby on the finest lattice.
    NormalizationError
        No sign change of F in the box, vertices that cannot be projected, or
        a mesh that still folds over itself on the finest lattice.
    """
    manifold = as_implicit(manifold)
    if manifold.ambient_dim != 3 or manifold.codim != 1:
        raise ValueError(f"surface_mesh_quadrature needs a surface in R^3, got {manifold!r}")
    grid = _check_resolution(grid, "grid")
    if int(n_refine) < 1:
        raise ValueError(f"n_refine must be >= 1, got {n_refine}")
    max_grid = 4 * grid if max_grid is None else _check_resolution(max_grid, "max_grid")
    low, high = _box(manifold, bounds)
    cover = _cover(manifold, low, high, n_cover, seed) if n_cover > 0 else None
    n_refine = int(n_refine)
    while True:
        rule, folded = _surface_mesh(manifold, low, high, grid, n_refine)
        # Degenerate slivers of a sound mesh flip with ~1e-19 of area; a fold
        # counts its area twice, an error the fine-coarse estimate cannot see.
        folded = folded > 1e-6 * rule.volume
        if not folded and (cover is None or not bool(rule.uncovered(cover).any())):
            return rule
        if 2 * grid - 1 > max_grid:
            if cover is not None:
                rule.check_covered(cover, f"projected box draws (on a {grid}^3 lattice)")
            raise NormalizationError(
                f"the projected mesh of {manifold.name} folds over itself (triangles turned "
                f"against grad F on a {grid}^3 lattice): the lattice cuts M into "
                "pieces whose projections overlap, so their areas count twice; raise {grid} "
                "or {max_grid}", params=("grid", "max_grid"))
        grid, n_refine = 2 * grid - 1, max(n_refine - 1, 1)  # the old lattice points stay


def _count_folded(manifold, vertices, triangles):
    """Area of the projected triangles whose normal (oriented towards F > 0) points
    against grad F.

    A lattice too coarse for M (a tube thinner than a cell) cuts it into
    closed pieces; projected onto M their caps fold back over their
    neighbours, and the area counts twice there although every point of M
    has a node nearby (the coverage check cannot see it).
    """
    a, b, c = (vertices[triangles[:, j]] for j in range(3))
    normal = torch.linalg.cross(b - a, c - a)
    grad = torch.cat([manifold._jacobian(chunk.to(manifold.dtype))[:, 0]
                      for chunk in ((a + b + c) / 3).split(65536)])
    folded = (normal * grad).sum(-1) < 0
    return float(0.5 * torch.linalg.vector_norm(normal[folded], dim=-1).sum())


def _surface_mesh(manifold, low, high, grid, n_refine):
    """The projected, refined marching-tetrahedra rule on one lattice (no coverage
    check), and its number of folded triangles (:func:`_count_folded`)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    spacing = (high - low) / (grid - 1)
    axes = [low[j] + spacing[j] * torch.arange(grid, dtype=DTYPE) for j in range(3)]
    lattice = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        # (F in the surface's dtype: its raw hook takes no other.)
        values = torch.cat([manifold._value(chunk.to(manifold.dtype))[:, 0]
                            for chunk in lattice.split(65536)]).reshape(grid, grid, grid)
        verts, tris = _marching_tetrahedra(values.cpu().numpy(), low.numpy(), spacing.numpy())
        if tris.shape[0] == 0:
            raise NormalizationError(f"F does not change sign in the box: no surface of "
                                     f"{manifold.name} found on the {grid}^3 lattice")
        # Faces of the box the mesh reaches: components there are not closed.
        on_face = torch.as_tensor(((verts - low.numpy()) < 0.5 * spacing.numpy()).any(1)
                                  | ((high.numpy() - verts) < 0.5 * spacing.numpy()).any(1))
        vertices = _project_vertices(manifold, torch.as_tensor(verts, dtype=DTYPE))
        triangles = torch.as_tensor(tris, dtype=torch.long)
        e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
        graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(verts),) * 2)
        n_comp, comp = connected_components(graph, directed=False)
        n_open = len(np.unique(comp[on_face.numpy()])) if bool(on_face.any()) else 0
        labels = torch.as_tensor(comp, dtype=torch.long)
        # A point of M inside a projected triangle is within the triangle's
        # longest edge of a vertex, and an edge is at most a cell's diagonal,
        # halved by each subdivision.
        cell = float(torch.linalg.vector_norm(spacing))
        rules = []
        for k in range(n_refine):
            rules.append(_mesh_rule(vertices, triangles, labels, n_open, cell / 2**k))
            vertices, triangles, labels = _subdivide(manifold, vertices, triangles, labels)
        fine = _mesh_rule(vertices, triangles, labels, n_open, cell / 2**n_refine)
        folded = _count_folded(manifold, vertices, triangles)
    fine.coarse = rules[-1]
    _relabel(fine)
    return fine, folded


def _relabel(rule):
    """Make a rule's component labels (and its coarse rule's) consecutive, same mapping."""
    uniq, inverse = torch.unique(rule.labels, return_inverse=True)
    rule.labels = inverse
    if rule.coarse is not None:
        rule.coarse.labels = torch.searchsorted(uniq, rule.coarse.labels)


# ------------------------------------------------------------------ dispatch
def has_quadrature(manifold, bounds=None):
    """Whether :func:`manifold_quadrature` can build a rule for ``manifold``.

    True for analytic circles, 2-spheres and tori, for any curve and any
    surface in R^3 given a box (``bounds`` or ``manifold.bounds``), and for
    unions of those.
    """
    manifold = as_implicit(manifold)
    if isinstance(manifold, UnionManifold):
        return all(has_quadrature(c, bounds) for c in manifold.components)
    if _exact_rule(manifold, 4) is not None:
        return True
    if bounds is None and manifold.bounds is None:
        return False
    return manifold.dim == 1 or (manifold.dim == 2 and manifold.ambient_dim == 3
                                 and manifold.codim == 1)


def manifold_quadrature(manifold, resolution=128, bounds=None):
    """Quadrature rule with the induced volume, labelled by connected component.

    Parameters
    ----------
    manifold : ImplicitManifold
        Analytic circle, 2-sphere or torus (exact rules), any curve (traced),
        any surface in R^3 (projected mesh), or a union of those.
    resolution : int
        Exact rules: nodes along the longest angular direction (the other
        direction gets half as many). Curves: the node spacing is the box
        diagonal over ``4 * resolution``. Surfaces: a ``resolution / 8``
        lattice per axis, refined twice (about 35 000 nodes on a sphere at
        128, area error ~1e-4).
    bounds : pair of array_like, optional
        Box for learned manifolds (default ``manifold.bounds``).

    Returns
    -------
    Quadrature
        With a half-resolution ``coarse`` rule for :func:`log_partition_error`.

    Raises
    ------
    NotImplementedError
        Manifolds of dimension >= 3 (or surfaces outside R^3): use
        :func:`ais_log_partition`.
    """
    resolution = _check_resolution(resolution, "resolution")
    manifold = as_implicit(manifold)
    if isinstance(manifold, UnionManifold):
        manifold.check_pieces_disjoint()  # a shared part would be integrated twice
        rules = [manifold_quadrature(c, resolution, bounds) for c in manifold.components]
        out = rules[0]
        for rule in rules[1:]:
            out = out + rule
        return out
    exact = _exact_rule(manifold, resolution)
    if exact is not None:
        exact.coarse = _exact_rule(manifold, max(resolution // 2, 2))
        return exact
    if manifold.dim == 1:
        low, high = _box(manifold, bounds)
        step = float(torch.linalg.vector_norm(high - low)) / (4 * resolution)
        return traced_curve_quadrature(manifold, (low, high), step=step)
    if manifold.dim == 2 and manifold.ambient_dim == 3:
        return surface_mesh_quadrature(manifold, bounds, grid=max(resolution // 8, 8))
    raise NotImplementedError(
        f"no quadrature for {manifold!r} (dimension {manifold.dim}); use ais_log_partition "
        "(annealed importance sampling along constrained chains)")


# ------------------------------------------------------------------- log Z
def _log_terms(energy, quadrature, chunk_size):
    terms = []
    for start in range(0, quadrature.points.shape[0], chunk_size):
        x = quadrature.points[start:start + chunk_size]
        w = quadrature.weights[start:start + chunk_size]
        terms.append(-energy(x).reshape(-1) + torch.log(w))
    return torch.cat(terms)


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
    return torch.logsumexp(_log_terms(energy, quadrature, chunk_size), dim=0)


def component_log_partitions(energy, quadrature, chunk_size=65536):
    """``log Z_c`` of each connected component of the rule, shape (C,) (differentiable)."""
    terms = _log_terms(energy, quadrature, chunk_size)
    labels = quadrature.labels.to(terms.device)
    n = quadrature.n_components
    peak = torch.full((n,), -math.inf, dtype=terms.dtype, device=terms.device)
    peak = peak.scatter_reduce(0, labels, terms.detach(), reduce="amax")
    sums = torch.zeros(n, dtype=terms.dtype, device=terms.device).index_add(
        0, labels, (terms - peak[labels]).exp())
    return sums.log() + peak


def log_partition_error(energy, quadrature):
    """Estimated absolute error of ``log_partition(energy, quadrature)``.

    The difference from the rule's half-resolution ``coarse`` rule, divided by
    ``2^order - 1`` (Richardson) for rules with an algebraic order; unscaled
    (an upper bound) for spectrally accurate rules; at least the rule's
    ``min_error``. NaN without a coarse rule.
    """
    if quadrature.coarse is None:
        return math.nan
    with torch.no_grad():
        fine = float(log_partition(energy, quadrature))
        coarse = float(log_partition(energy, quadrature.coarse))
    scale = 1.0 if quadrature.order is None else 2.0 ** quadrature.order - 1.0
    return max(abs(fine - coarse) / scale, quadrature.min_error)


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


# ------------------------------------------------ higher dimensions: AIS
def tube_volumes(manifold, bounds, label, n_components, eps, n_points=2**16, n_rep=4, seed=0):
    """Volume of each component of M from the volume of its tube, with a standard error.

    The tube ``{x : d(x, M) < eps}`` of a k-codimensional M has volume
    ``vol(M) V_k eps^k (1 + c eps^2 + O(eps^4))`` (Weyl's tube formula;
    ``V_k`` the volume of the unit k-ball). Scrambled Sobol points in the box
    give the tube fractions at ``eps`` and ``eps / 2`` (closest-point
    distances, each foot point labelled by ``label``); Richardson
    extrapolation removes the ``eps^2`` term. ``n_rep`` independent scrambles
    give the standard error. ``eps`` must be below the reach of M and M must
    lie ``eps`` inside the box.

    Returns
    -------
    volumes, stderr : torch.Tensor, shape (n_components,)
    """
    from scipy.stats import qmc

    low, high = _box(manifold, bounds)
    n, k = manifold.ambient_dim, manifold.codim
    unit_ball = math.pi ** (k / 2) / math.gamma(k / 2 + 1)
    box_volume = float((high - low).prod())
    m = max(int(math.ceil(math.log2(n_points))), 4)
    estimates = []
    for rep in range(int(n_rep)):
        u = torch.as_tensor(qmc.Sobol(n, scramble=True, seed=int(seed) + rep).random_base2(m),
                            dtype=DTYPE)
        # The points meet F in the manifold's dtype and on its device (a
        # float32 network manifold met float64 points: a dtype-mismatch crash).
        x = (low + (high - low) * u).to(manifold.device, manifold.dtype)
        with torch.no_grad():
            value, jac = manifold._value_and_jacobian(x)
            # First-order distance |J^+ F| screens out points far from M.
            gram = jac @ jac.transpose(-1, -2)
            approx = torch.sqrt((value.unsqueeze(-2) @ torch.linalg.solve(
                gram, value.unsqueeze(-1))).reshape(-1).clamp_min(0))
            near = (approx < 3 * eps).nonzero().squeeze(-1)
            res = manifold.solve_projection(x[near], closest=True)
        ok = res.converged
        dist = torch.linalg.vector_norm(res.x - x[near], dim=-1)
        lab = label(res.x)
        per = []
        for radius in (eps, eps / 2):
            inside = ok & (dist < radius)
            counts = torch.bincount(lab[inside], minlength=n_components).to(DTYPE).cpu()
            per.append(counts / u.shape[0] * box_volume / (unit_ball * radius**k))
        estimates.append((4 * per[1] - per[0]) / 3)
    estimates = torch.stack(estimates)
    stderr = estimates.std(0, correction=1) / math.sqrt(len(estimates)) if len(estimates) > 1 \
        else torch.full((n_components,), math.nan, dtype=DTYPE)
    return estimates.mean(0), stderr


def ais_log_partition(manifold, energy, bounds=None, *, n_chains=256, n_temps=100,
                      n_mcmc=2, n_burn=200, step_size=0.3, eps=None, n_points=2**16,
                      n_rep=8, n_cover=4000, seed=0):
    """``log Z`` and its standard error by annealed importance sampling on M.

    For each connected component ``c`` (:class:`~implicit_geom.manifolds.components.ComponentMap`:
    projected box draws linked within a few sample spacings):
    ``Z_c = vol(c) E_uniform(c)[exp(-E)]``.
    ``vol(c)`` comes from :func:`tube_volumes`; the expectation from AIS with
    the geometric path ``exp(-beta E)``, ``beta = (t / T)^4``: chains start at
    cover points of ``c``, equilibrate under the uniform law (``n_burn``
    constrained MALA steps with zero energy), and at each temperature take
    ``n_mcmc`` constrained MALA steps (exactly invariant for that temperature);
    the importance weights give the estimate and, by the delta method, its
    standard error. Chains never leave their component, so each piece's mass
    comes with its own error.

    Parameters
    ----------
    manifold : ImplicitManifold
    energy : callable
        ``(B, n) -> (B,)``, in any dtype: the chains run in the manifold's,
        and the energy is evaluated through
        :class:`~implicit_geom.sampling.ConstrainedTarget` (which casts).
    bounds : pair of array_like, optional
        Box enclosing M (default ``manifold.bounds``).
    n_chains, n_temps, n_mcmc, n_burn : int
    step_size : float
        MALA step at every temperature.
    eps : float, optional
        Tube radius; default 2% of the box diagonal.
    n_points, n_rep : int
        Sobol points per replicate and replicates of the tube estimate.
    n_cover : int
        Box draws that find the components.
    seed : int

    Returns
    -------
    LogPartition
        ``error`` is one standard error (tube volume and AIS combined).
    """
    from ..sampling import ConstrainedMALA, ConstrainedTarget

    manifold = as_implicit(manifold)
    # The energy as the samplers see it: points cast to its dtype, E back to
    # the chains' (a float64 network on a float32 manifold crashed here).
    target = ConstrainedTarget(manifold, energy)
    low, high = _box(manifold, bounds)
    eps = 0.02 * float(torch.linalg.vector_norm(high - low)) if eps is None else float(eps)
    from ..manifolds.components import ComponentMap

    with torch.no_grad():
        cmap = ComponentMap.sample(manifold, int(n_cover), bounds=(low, high), seed=int(seed))
    cover, labels = cmap.points, cmap.labels
    n_comp = cmap.n_components

    def label(x):
        return cmap.labels_of(x).clamp_min(0)

    volumes, vol_err = tube_volumes(manifold, (low, high), label, n_comp, eps, n_points, n_rep,
                                    seed)
    gen = torch.Generator().manual_seed(int(seed))
    betas = (torch.arange(n_temps + 1, dtype=DTYPE) / n_temps) ** 4
    log_z, errors = [], []
    for c in range(n_comp):
        members = (labels == c).nonzero().squeeze(-1)
        x = cover[members[torch.randint(members.numel(), (int(n_chains),), generator=gen)]]
        uniform = ConstrainedMALA(manifold, None, step_size=step_size, seed=int(seed) + 7 * c)
        x = uniform.run(x, int(n_burn))[0] if n_burn > 0 else x
        # Accumulated in float64 (float32 chains' energies too), on the chains'
        # device (a CPU accumulator met a GPU energy).
        log_w = torch.zeros(x.shape[0], dtype=DTYPE, device=x.device)
        for t in range(1, n_temps + 1):
            e = target.energy(x)
            log_w = log_w - float(betas[t] - betas[t - 1]) * e
            beta = float(betas[t])
            sampler = ConstrainedMALA(manifold, lambda y, b=beta: b * target.evaluate(y),
                                      step_size=step_size, seed=int(seed) + 1000 * c + t)
            x = sampler.run(x, int(n_mcmc))[0]
        log_mean = torch.logsumexp(log_w, 0) - math.log(log_w.numel())
        w = (log_w - log_w.max()).exp()
        rel_var = float((w.square().mean() / w.mean().square() - 1) / w.numel())
        log_z.append(float(log_mean) + math.log(float(volumes[c])))
        errors.append(math.sqrt(max(rel_var, 0.0) + float(vol_err[c] / volumes[c]) ** 2))
    comp = torch.tensor(log_z, dtype=DTYPE)
    total = float(torch.logsumexp(comp, 0))
    share = (comp - total).exp()
    error = float(torch.sqrt((share.square() * torch.tensor(errors, dtype=DTYPE).square()).sum()))
    return LogPartition(total, error, comp, method="annealed importance sampling + tube volume")
