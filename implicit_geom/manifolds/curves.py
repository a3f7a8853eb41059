"""Exact distances on implicit curves (1-dimensional manifolds) by arc length.

On a curve the geodesics are the curve itself, traversed at constant speed:
``dist(a, b)`` is the arc length between them (the shorter of the two arcs
on a closed curve) and ``log_a(b)`` is that length times the unit tangent at
``a``, pointing along the shorter arc. Shooting answers the same, but pays a
geodesic integration per pair and per Gauss-Newton iteration; here each
connected curve is traced once, by integrating the unit tangent field
``x' = T(x)`` (``T`` spans ker J, oriented by ``det [J; T] > 0``), into a
table of nodes with their arc length, tangent and curvature vector. Points are
then located on it by Newton's method on the quintic Hermite interpolant of
the table (exact positions, first and second derivatives at the nodes: error
O(h^6), checked at build time against F), so a distance costs a few small
tensor operations instead of geodesic integrations.

A table covers the connected curve through the point it was traced from: a
closed curve (the trace returns to its start) or an open one (traced both
ways until it leaves the manifold's box). A point that is not on any traced
curve starts a new table; two points on different closed curves lie on
different connected components. Pieces of open curves may join outside the
box, so for them (and for points outside the box, or curves that cannot be
tabulated) a :class:`CurveTraceError` hands the pair to shooting.
"""

import torch

from ..exceptions import GeodesicError
from ..numerics.linalg import tangent_basis
from ..numerics.newton import newton_min_norm
from ..numerics.ode import GBSIntegrator


class CurveTraceError(GeodesicError):
    """A curve could not be tabulated (no box to stop an open curve, a trace
    that left M, an interpolant that misses M); callers fall back to shooting."""


def unit_tangent(space, x):
    """Oriented unit tangent of a curve at flat points ``x`` (B, n): the
    generalised cross product of the rows of J, normalised (``det [J; T] > 0``,
    so the orientation is continuous along the curve)."""
    jac = space._jacobian(x)
    n = jac.shape[-1]
    if n == 2:
        t = torch.stack([-jac[:, 0, 1], jac[:, 0, 0]], -1)
    elif n == 3:
        t = torch.linalg.cross(jac[:, 0], jac[:, 1])
    else:
        t = tangent_basis(jac)[..., 0]
        sign = torch.linalg.det(torch.cat([jac, t.unsqueeze(-2)], dim=-2)).sign()
        t = t * torch.where(sign == 0, 1.0, sign).unsqueeze(-1)
    return t / torch.linalg.vector_norm(t, dim=-1, keepdim=True)


# Quintic Hermite basis in powers of t (rows: 1, t, ..., t^5; columns: the data
# p0, m0, a0, p1, m1, a1 — positions, unit tangents, curvature vectors).
_HERMITE = [[1, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [0, 0, 0.5, 0, 0, 0],
            [-10, -6, -1.5, 10, -4, 0.5],
            [15, 8, 1.5, -15, 7, -1],
            [-6, -3, -0.5, 6, -3, 0.5]]


def _powers(t):
    """(3, B, 6): the monomials 1, t, ..., t^5 and their first and second derivatives."""
    k = torch.arange(6, dtype=t.dtype, device=t.device)
    tp = t.unsqueeze(-1) ** k
    zero = torch.zeros_like(tp[:, :1])
    return torch.stack([tp, torch.cat([zero, tp[:, :5] * k[1:]], -1),
                        torch.cat([zero, zero, tp[:, :4] * (k[2:] * k[1:5])], -1)])


class CurveTable:
    """Arc-length table of one connected implicit curve.

    Attributes
    ----------
    s : torch.Tensor, shape=[N]
        Arc length at the nodes (increasing from 0).
    points, tangents, curvatures : torch.Tensor, shape=[N, n]
        Node positions, unit tangents and curvature vectors ``x''(s)``.
    length : float
        Length of the curve (closed) or of the traced piece (open).
    closed : bool
    """

    def __init__(self, s, points, tangents, curvatures, closed):
        self.s, self.points, self.tangents, self.curvatures = s, points, tangents, curvatures
        self.closed = bool(closed)
        self.length = float(s[-1] - s[0])
        # Each segment's interpolant in powers of t = (s - s_i) / h_i: (S, 6, n).
        h = (s[1:] - s[:-1]).unsqueeze(-1)
        data = torch.stack([points[:-1], h * tangents[:-1], h * h * curvatures[:-1],
                            points[1:], h * tangents[1:], h * h * curvatures[1:]], 1)
        coef = torch.tensor(_HERMITE, dtype=s.dtype, device=s.device)
        self._coef = coef @ data
        self._h = h.squeeze(-1)

    def _locate_segment(self, s):
        seg = torch.searchsorted(self.s, s.contiguous(), right=True) - 1
        return seg.clamp(0, len(self.s) - 2)

    def evaluate(self, s):
        """Position, first and second derivative at arc lengths ``s`` (B,)."""
        if self.closed:
            s = self.s[0] + torch.remainder(s - self.s[0], self.length)
        seg = self._locate_segment(s)
        h = self._h[seg]
        t = ((s - self.s[seg]) / h).clamp(-0.5, 1.5)
        out = (_powers(t).unsqueeze(-2) @ self._coef[seg]).squeeze(-2)  # (3, B, n)
        return out[0], out[1] / h.unsqueeze(-1), out[2] / (h * h).unsqueeze(-1)

    def locate(self, x, iters=4):
        """Arc length of points ``x`` (B, n) on the curve and their distance to it.

        Newton's method on ``|H(s) - x|^2`` from the nearest node.
        """
        nearest = torch.cdist(x, self.points).argmin(-1)
        s = self.s[nearest] + (self.tangents[nearest] * (x - self.points[nearest])).sum(-1)
        for _ in range(iters):
            pos, d1, d2 = self.evaluate(s)
            r = pos - x
            grad = (d1 * r).sum(-1)
            hess = (d1 * d1).sum(-1) + (d2 * r).sum(-1)
            s = s - grad / torch.where(hess > 0.5, hess, torch.ones_like(hess))
        pos, _, _ = self.evaluate(s)
        if self.closed:
            s = self.s[0] + torch.remainder(s - self.s[0], self.length)
        return s, (pos - x).norm(dim=-1)

    def signed_arc(self, s_from, s_to):
        """Signed arc length of the shortest way from ``s_from`` to ``s_to``."""
        delta = s_to - s_from
        if self.closed:
            delta = torch.remainder(delta + self.length / 2, self.length) - self.length / 2
        return delta


class CurveTracer:
    """Traces connected curves of a 1-dimensional implicit manifold into tables.

    Parameters
    ----------
    space : ImplicitManifold
        With ``dim == 1``.
    rtol : float
        Integrator tolerance of the trace.
    step : float, optional
        Largest node spacing (arc length); default 1/40 of the box diagonal
        (or 0.05 without a box). Spacing also shrinks with the curvature.
    check_tol : float
        Largest allowed ``|F| / |grad F|`` at segment midpoints of the
        interpolant (plus twice that of the segment's nodes, which Newton
        lands at ``|F| <= tol``); a table that misses it is retraced with half
        the spacing.
    max_nodes : int
        Node cap of one trace (2000 without a box; then a curve that goes
        farther than 50 steps from its start is not tabulated either).
    turn : float
        Largest turning angle of the tangent between nodes (radians): the
        spacing shrinks where the curve bends.
    bounds : pair of torch.Tensor, optional
        The box that stops open curves; default the manifold's ``bounds``.
    """

    def __init__(self, space, rtol=1e-12, step=None, check_tol=1e-10, max_nodes=None,
                 turn=0.1, bounds=None):
        if space.dim != 1:
            raise ValueError("curve tables are for 1-dimensional manifolds")
        self.space = space
        self.bounds = space.bounds if bounds is None else tuple(bounds)
        # Floored at what the manifold's dtype resolves: on a curve moved to
        # float32 the 1e-12 integration and 1e-10 midpoint checks never passed.
        self._floor = 64 * torch.finfo(space.dtype).eps
        rtol, check_tol = max(rtol, self._floor), max(check_tol, self._floor)
        # Absolute parts are lengths fit for unit scale (see
        # ImplicitManifold.tol_scale; 1 there).
        scale = getattr(space, "tol_scale", 1.0)
        check_tol = check_tol * scale
        self.integrator = GBSIntegrator(rtol=rtol, atol=rtol * scale)
        if step is None:
            step = 0.05 if self.bounds is None else float(
                torch.linalg.vector_norm(self.bounds[1] - self.bounds[0])) / 40
        self.step = float(step)
        self.check_tol = float(check_tol)
        if max_nodes is None:
            max_nodes = 2000 if self.bounds is None else 20000
        self.max_nodes = int(max_nodes)
        self.turn = float(turn)
        self.tables = []

    # -- tracing -------------------------------------------------------------
    def _rhs(self, z):
        return unit_tangent(self.space, z)

    def _advance(self, x, h):
        """``x`` moved by arc length ``h`` (B,) along the oriented tangent, landed on M."""
        space = self.space
        # The signed arc length per unit time rides along as a constant last
        # column: the right-hand side stays row-wise (the integrator stacks rows).
        def rhs(z):
            return torch.cat([self._rhs(z[:, :-1]) * z[:, -1:], torch.zeros_like(z[:, -1:])], -1)

        z = self.integrator.integrate(rhs, torch.cat([x, h.unsqueeze(-1)], -1), 1.0, 1)[:, :-1]
        res = newton_min_norm(space._value_and_jacobian, z, space.tol_for(), space.max_iter)
        if not bool(res.converged.all()):
            raise CurveTraceError(f"tracing the curve of {space.name} left the manifold")
        return res.x

    def _curvature(self, x, tangent):
        metric = self.space.metric
        return metric._acceleration(x, tangent)

    def _inside(self, x, p0=None):
        bounds = self.bounds
        if bounds is None:  # no box: stay within 50 steps of the start
            if p0 is not None and float((x - p0).norm()) > 50 * self.step:
                raise CurveTraceError(
                    f"the curve of {self.space.name} wanders off with no box to stop it")
            return True
        low, high = bounds
        pad = 0.05 * (high - low)
        return bool(((x >= low - pad) & (x <= high + pad)).all())

    def _trace_one_way(self, p0, direction, step):
        """Nodes from ``p0`` along ``direction`` (+1/-1) until the curve closes
        (returns ``closed=True`` and the closing arc) or leaves the box."""
        space = self.space
        pts, s = [p0], [0.0]
        x = p0
        travelled = 0.0
        tangent = unit_tangent(space, x.unsqueeze(0))[0] * direction
        kappa = float(self._curvature(x.unsqueeze(0), tangent.unsqueeze(0)).norm())
        first, retries, cap = tangent, 0, step
        for _ in range(self.max_nodes):
            h = min(step, self.turn / max(kappa, 1e-12), cap)
            ahead = float((tangent * (p0 - x)).sum())
            gap = float((p0 - x).norm())
            if travelled > 2 * h and gap < 2 * h and 0 < ahead <= h * 1.01:
                # (Not ``travelled > 2 * step``: a closed curve shorter than
                # that was traced lap after lap into one table.)
                closing_turn = float((first - tangent).norm())
                if closing_turn <= 2 * self.turn and ahead >= 0.9 * gap:
                    # The start is within one step ahead: close on it exactly.
                    arc = self._closing_arc(x, p0, direction, ahead)
                    return torch.stack(pts), _tensor(s, p0), True, arc
                if closing_turn > 2 * self.turn and float((first * tangent).sum()) > -0.5 \
                        and retries < 30:
                    # The start lies round a bend just ahead (at the tip of a
                    # slim ellipse): approach it in shorter steps. (Tangents
                    # that face each other: the far side of a thin part passes
                    # by the start; step on.)
                    kappa = max(kappa, closing_turn / gap)
                    cap = self.turn / kappa
                    retries += 1
                    continue
            ahead_x = self._advance(x.unsqueeze(0), _tensor([direction * h], x))[0]
            new = unit_tangent(space, ahead_x.unsqueeze(0))[0] * direction
            # Turning rate over the step: the curvature estimate for the next one.
            kappa = float((new - tangent).norm()) / h
            if kappa * h > 2 * self.turn:
                # The curvature grew within the step (the far tip of a slim
                # ellipse): retry it shorter (at least halved), from the same
                # node. Accepting it left segments the refinement could not repair.
                if retries >= 30 or h < 1e-5 * self.step:
                    # A turn that no step is short enough for (the tangent
                    # flips at a crossing: without this the trace crept up to
                    # it and through, a table of a lemniscate that passed).
                    raise CurveTraceError(
                        f"the tangent of the curve of {space.name} jumps near "
                        f"{x.tolist()}: a singular point (grad F = 0) or a corner?")
                retries += 1
                cap = self.turn / kappa  # and grow back gradually: fewer rejections
                continue
            x, tangent, retries, cap = ahead_x, new, 0, 2 * cap
            travelled += h
            pts.append(x)
            s.append(travelled)
            if not self._inside(x, p0):
                return torch.stack(pts), _tensor(s, p0), False, None
        raise CurveTraceError(f"tracing the curve of {space.name} did not close or leave its "
                              f"box within {self.max_nodes} nodes")

    def _closing_arc(self, x, p0, direction, guess):
        """Arc length from ``x`` to ``p0`` (just ahead) by Newton on the arc."""
        h = guess
        t0 = unit_tangent(self.space, p0.unsqueeze(0))[0] * direction
        for _ in range(8):
            end = self._advance(x.unsqueeze(0), _tensor([direction * h], x))[0]
            corr = float((t0 * (p0 - end)).sum())
            h += corr
            if abs(corr) <= 1e-14 * (1 + abs(h)):
                break
        return h

    def trace(self, p0):
        """Table of the connected curve through ``p0`` (n,).

        Segments whose interpolant strays from M by more than ``check_tol``
        (relative to ``|grad F|``) get a node at their middle, traced from
        their start (all such segments at once), until every one passes.
        """
        if not self._inside(p0):
            raise CurveTraceError(f"a point lies outside the box of {self.space.name}; its "
                                  "curve is not tabulated")
        # Traced in the curve's dtype: a float64 start reached a float32
        # network's Jacobian ("mat1 and mat2 must have the same dtype").
        # (.to, not as_tensor, which moved p0 onto torch's default device.)
        p0 = p0.to(device=self.space.device, dtype=self.space.dtype)
        with torch.no_grad():
            table = self._build(p0, self.step)
            # 12 rounds: a 300:1 ellipse's segments (box diagonal / 40 long)
            # need 8 halvings near its tips.
            for _ in range(12):
                bad = self._misses(table)
                if bad.numel() == 0:
                    self.tables.append(table)
                    return table
                table = self._refine(table, bad)
        raise CurveTraceError(f"could not tabulate the curve of {self.space.name} to "
                              f"{self.check_tol:g}")

    def _build(self, p0, step):
        fwd, s_fwd, closed, arc = self._trace_one_way(p0, 1.0, step)
        if closed:
            pts = torch.cat([fwd, p0.unsqueeze(0)])
            s = torch.cat([s_fwd, s_fwd[-1:] + arc]).to(p0)
        else:
            back, s_back, _, _ = self._trace_one_way(p0, -1.0, step)
            pts = torch.cat([back.flip(0), fwd[1:]])
            s = torch.cat([-s_back.flip(0), s_fwd[1:]]).to(p0)
            s = s - s[0]
        return self._table(s, pts, closed)

    def _table(self, s, pts, closed):
        tangents = unit_tangent(self.space, pts)
        return CurveTable(s, pts, tangents, self._curvature(pts, tangents), closed)

    def _misses(self, table):
        """Segments whose interpolant's midpoint is off M by more than check_tol."""
        mid = table.s[:-1] + 0.5 * (table.s[1:] - table.s[:-1])
        pos, _, _ = table.evaluate(mid)
        off = _off(self.space, pos)
        # Or about as close as the nodes themselves: Newton lands them at
        # |F| <= tol, which is farther than check_tol from M where |grad F| is
        # small (the tip of a slim ellipse), and no refinement could pass.
        nodes = _off(self.space, table.points)
        # Capped: near a singular point (|grad F| -> 0) the nodes' own |F| /
        # |grad F| grows without bound, and a lemniscate's table passed.
        floor = (2 * torch.maximum(nodes[:-1], nodes[1:])).clamp(max=100 * self.check_tol)
        return (~(off <= self.check_tol + floor)).nonzero().squeeze(-1)

    def _refine(self, table, bad):
        """Insert the traced midpoints of segments ``bad``."""
        h = (table.s[bad + 1] - table.s[bad]) / 2
        mids = self._advance(table.points[bad], h)
        s = torch.cat([table.s, table.s[bad] + h])
        pts = torch.cat([table.points, mids])
        order = s.argsort()
        return self._table(s[order], pts[order], table.closed)

    # -- queries -------------------------------------------------------------
    def locate(self, x, tol=1e-8):
        """Table index (-1: none) and arc length of flat points ``x`` (B, n),
        tracing new tables for points on curves not seen yet."""
        # A float32 curve's points lie ~1e-6 off its tables: with 1e-8 each
        # traced a new table, and one closed curve read as disconnected.
        tol = max(tol, self._floor)
        index = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        s = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        checked = 0  # tables already tried for the unplaced points
        for _ in range(x.shape[0] + 1):  # at most one new table per point
            for k in range(checked, len(self.tables)):
                rows = (index < 0).nonzero().squeeze(-1)
                if rows.numel() == 0:
                    break
                s_k, miss = self.tables[k].locate(x[rows])
                hit = miss <= tol * (1 + x[rows].norm(dim=-1))
                index[rows[hit]] = k
                s[rows[hit]] = s_k[hit]
            checked = len(self.tables)
            rows = (index < 0).nonzero().squeeze(-1)
            if rows.numel() == 0:
                return index, s
            self.trace(x[rows[0]])
        raise CurveTraceError("could not place the points on traced curves")

    def _check_apart(self, i, j):
        """Points on different tables are on different components only if the
        tables are closed curves: an open curve may leave the box and return."""
        for a, b in zip(i.tolist(), j.tolist()):
            if not (self.tables[a].closed and self.tables[b].closed):
                raise CurveTraceError("points on different open pieces of the curve in the "
                                      "box: they may connect outside it")

    def dist(self, x, y):
        """Arc-length distances of flat batches; +inf across connected curves."""
        index, s = self.locate(torch.cat([x, y]))
        b = x.shape[0]
        same = index[:b] == index[b:]
        self._check_apart(index[:b][~same], index[b:][~same])
        out = torch.full((b,), torch.inf, dtype=x.dtype, device=x.device)
        for k in index[:b][same].unique().tolist():
            rows = (same & (index[:b] == k)).nonzero().squeeze(-1)
            out[rows] = self.tables[k].signed_arc(s[rows], s[b + rows]).abs()
        return out

    def log(self, x, y):
        """log_x(y) for flat batches on the curve; raises where x and y lie on
        different connected curves (see :class:`DisconnectedError`)."""
        from ..exceptions import DisconnectedError

        both = torch.cat([x, y])
        index, s = self.locate(both)
        b = x.shape[0]
        apart = index[:b] != index[b:]
        self._check_apart(index[:b][apart], index[b:][apart])
        if bool(apart.any()):
            raise DisconnectedError(
                f"log: {int(apart.sum())} of {apart.numel()} pair(s) lie on different "
                f"connected components (closed curves) of {self.space.name}; no geodesic "
                "joins them (their distance is +inf).", mask=apart)
        delta = torch.empty(b, dtype=x.dtype, device=x.device)
        for k in index[:b].unique().tolist():
            rows = (index[:b] == k).nonzero().squeeze(-1)
            delta[rows] = self.tables[k].signed_arc(s[rows], s[b + rows])
        return unit_tangent(self.space, x) * delta.unsqueeze(-1)


def _off(space, x):
    """``|F| / |grad F|`` at flat points ``x``: about their distance to M."""
    value, jac = space._value_and_jacobian(x)
    return value.norm(dim=-1) / jac.flatten(-2).norm(dim=-1)


def _tensor(values, like):
    return torch.tensor(values, dtype=like.dtype, device=like.device)
