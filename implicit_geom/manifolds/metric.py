"""The metric an implicit manifold inherits from its ambient Euclidean space.

Geodesics are integrated in ambient coordinates: a curve on M = {F = 0} with
constant speed is a geodesic iff its acceleration is normal, which gives

    x'' = -J^T (J J^T)^{-1} D^2F(x)[x', x'].

geomstats' generic level-set machinery uses the *ambient* geodesic equation
(straight lines) and a chord initial guess for shooting; both fail here. We
integrate the constrained equation with an extrapolation method and land the end
point on M with Newton. ``log``, ``dist`` and ``dist_pairwise`` go through a
pluggable geomstats ``LogSolver`` (:mod:`implicit_geom.manifolds.geodesics`):
by default a global one (graph initial guess, spectral path straightening,
polished by Gauss-Newton shooting whose Jacobian comes from the variational
(Jacobi-field) equations), or that local shooting alone.

This class deliberately does not subclass ``EuclideanMetric``: geomstats'
FrechetMean would then silently switch to the linear mean (off M).
"""

import contextlib

import torch
from geomstats.geometry.riemannian_metric import RiemannianMetric

from ..exceptions import (
    CurvatureError,
    DisconnectedError,
    GeodesicError,
    InvalidPointError,
    SingularJacobianError,
)
from ..numerics.linalg import gram_solve, rowdot, tangent_basis, tangent_projector
from ..numerics.newton import newton_min_norm
from ..numerics.ode import GBSIntegrator, n_macro_steps
from ..numerics.validation import as_point_list, as_points, broadcast_points
from . import ift
from .curves import CurveTraceError
from .ift import needs_grad
from .implicit import _dtype_of


class ImplicitMetric(RiemannianMetric):
    """Induced metric of an :class:`ImplicitManifold`.

    Parameters
    ----------
    space : ImplicitManifold
    rtol : float
        Per-step tolerance of the geodesic integrator.
    log_tol : float
        Shooting stops when the tangential part (at ``y``) of ``exp_x(v) - y``
        is below ``log_tol * (1 + |y|)``.
    log_max_iter : int
        Shooting iteration cap.
    arc_per_step : float
        Initial macro step, as an arc length (the integrator adapts it). Two
        units suit the parallel extrapolation levels (one macro step costs
        about 17 sequential right-hand sides however long it is).
    on_manifold_atol : float
        ``log`` refuses targets with ``|F|`` above this.
    log_solver : {"global", "shooting"}, LogSolver or callable, optional
        Solver behind ``log``/``dist``/``dist_pairwise`` (geomstats' pluggable
        ``log_solver``): ``"global"`` (default,
        :class:`~implicit_geom.manifolds.geodesics.GeodesicLogSolver`: graph
        initial guess, path straightening, shooting polish), ``"shooting"``
        (local shooting from the circular-arc guess only), a solver instance,
        or a callable ``space -> solver``.
    """

    def __init__(self, space, rtol=1e-10, log_tol=1e-9, log_max_iter=30,
                 arc_per_step=2.0, on_manifold_atol=1e-6, log_solver=None):
        super().__init__(space=space)
        self.log_solver = _make_log_solver(space, log_solver)
        self.on_manifold_atol = on_manifold_atol
        self.rtol = rtol
        self.integrator = GBSIntegrator(rtol=rtol, atol=rtol)
        self._integrators = {torch.float64: self.integrator}
        self.log_tol = log_tol
        self.log_max_iter = log_max_iter
        self.arc_per_step = arc_per_step

    # --------------------------------------------------------------- precision
    # Tolerances never go below what the working dtype resolves: a float32
    # manifold integrates, shoots and checks at float32 accuracy.
    # The absolute parts (the integrator's atol, the 1 of log_tol * (1 + |y|),
    # on_manifold_atol) are lengths fit for unit scale: multiplied by the
    # space's tol_scale (1 unless its box is below unit size, see
    # ImplicitManifold.tol_scale).
    def _scale(self):
        return getattr(self._space, "tol_scale", 1.0)

    def _integrator(self, dtype):
        scale = self._scale()
        key = dtype if scale == 1.0 else (dtype, scale)  # (unit scale: self.integrator's key)
        integ = self._integrators.get(key)
        if integ is None:
            rtol = max(self.rtol, 100 * torch.finfo(dtype).eps)
            integ = self._integrators[key] = GBSIntegrator(rtol=rtol, atol=rtol * scale)
        return integ

    def _log_tol(self, dtype):
        return max(self.log_tol, 100 * torch.finfo(dtype).eps)

    def _log_miss_tol(self, dtype, y_norm):
        """Shooting's target: ``log_tol * (length scale + |y|)`` (the length
        scale 1 at unit scale, see :meth:`_scale`)."""
        return self._log_tol(dtype) * (self._scale() + y_norm)

    @staticmethod
    def _shot_hit(miss, residual, tol, atol):
        """Whether shots hit their targets: the miss within ``tol``, and the
        normal part of it bounded by the targets' ``|F|`` and the integrator's
        drift off M (relative: ~rtol |x|, above ``10 atol`` at coordinates
        ~1e6): a large one means the shot hit M elsewhere (another component)."""
        return (miss <= tol) & (residual.norm(dim=-1) <= torch.clamp(tol, min=10 * atol))

    def _on_manifold_atol(self, dtype):
        return max(self.on_manifold_atol * self._scale(), 10 * self._space.tol_for(dtype))

    def _raise_if_off(self, x, what, value=None, noun="base point(s)"):
        """InvalidPointError for flat points ``x`` off M (``|F|`` above the
        on-manifold tolerance): the geometry there is that of another level
        set of F, not M's. ``value``: F at ``x`` where already evaluated.
        Public entries only (one evaluation of F)."""
        space = self._space
        if value is None:
            with torch.no_grad():
                value = space._value(x.detach())
        residual = value.norm(dim=-1)
        atol = self._on_manifold_atol(x.dtype)
        with torch.no_grad():  # large coordinates: |F| at F's rounding is on M (tol_for)
            off = ~space._within(x.detach(), residual.detach(), atol, f_units=True)
        if bool(off.any()):
            raise InvalidPointError(
                f"{what}: {int(off.sum())} {noun} are not on {space.name} "
                f"(|F| up to {float(residual.nan_to_num(torch.inf).max()):.3g} > {atol:g}); "
                "project them first.")

    # ------------------------------------------------------------------- basics
    def metric_matrix(self, base_point=None):
        """Identity in ambient coordinates (tangent vectors are ambient vectors)."""
        space = self._space
        n = space.ambient_dim
        if base_point is None:
            return torch.eye(n, dtype=space.dtype, device=space.device)
        base_point = torch.as_tensor(base_point)
        eye = torch.eye(n, dtype=base_point.dtype if base_point.is_floating_point()
                        else space.dtype, device=base_point.device)
        return eye.expand(*base_point.shape[:-1], n, n)

    def inner_product(self, tangent_vec_a, tangent_vec_b, base_point=None):
        """Euclidean inner product of tangent vectors, shape ``(...,)``."""
        a, b = self._vectors(base_point, tangent_vec_a, tangent_vec_b,
                             names=("tangent_vec_a", "tangent_vec_b"))
        return (a * b).sum(-1)

    def _vectors(self, base_point, *vectors, names):
        """Checked vectors (shape, finiteness, broadcasting with the base point).
        The ambient inner product ignores the base point; a wrong one still raises."""
        n = self._space.ambient_dim
        arrays = [as_points(v, n, name, allow_empty=True) for v, name in zip(vectors, names)]
        if base_point is not None:
            base = as_points(base_point, n, "base_point", allow_empty=True)
            return broadcast_points(*arrays, base, names=(*names, "base_point"))[:-1]
        return broadcast_points(*arrays, names=names)

    # ---------------------------------------------------------------- geodesics
    def _acceleration(self, x, v):
        """Normal acceleration keeping a curve with velocity v on M."""
        space = self._space
        return _normal_response(*space._jacobian_and_second_derivative(x, v))

    def _transport_rhs(self, z):
        """Geodesic plus parallel transport: ``w' = -J^T G^{-1} D^2F[v, w]``, the
        normal rate that keeps ``w`` tangent with no tangential change."""
        space = self._space
        n = space.ambient_dim
        x, v, w = z[:, :n], z[:, n:2 * n], z[:, 2 * n:]
        b = x.shape[0]
        # D^2F[v, v], and D^2F[v, w] by polarisation, in one batched call.
        second = space._second_derivative(x.repeat(3, 1), torch.cat([v, v + w, v - w]))
        vv, plus, minus = second[:b], second[b:2 * b], second[2 * b:]
        jac = space._jacobian(x)
        acc = _normal_response(jac.repeat(2, 1, 1), torch.cat([vv, (plus - minus) / 4]))
        return torch.cat([v, acc[:b], acc[b:]], dim=-1)

    def _rhs(self, z):
        n = self._space.ambient_dim
        x, v = z[:, :n], z[:, n:]
        return torch.cat([v, self._acceleration(x, v)], dim=-1)

    def _flow(self, x, v):
        """Unprojected time-1 geodesic flow of flat batches, returns (x1, v1)."""
        n = self._space.ambient_dim
        steps = n_macro_steps(v.norm(dim=-1).max(), self.arc_per_step)
        z = self._integrator(x.dtype).integrate(self._rhs, torch.cat([x, v], -1), 1.0, steps)
        return z[:, :n], z[:, n:]

    def _land(self, x1, v1):
        """Remove the integrator's O(rtol) drift: Newton onto M, velocity to T M."""
        space = self._space
        res = newton_min_norm(space._value_and_jacobian, x1, space.tol_for(), space.max_iter)
        if not bool(res.converged.all()):
            raise GeodesicError(
                f"the end point of {int((~res.converged).sum())} geodesic(s) could not "
                f"be brought back onto {space.name} (|F| = "
                f"{float(res.residual.nan_to_num(float('inf')).max()):.3g}).")
        _, jac = space._value_and_jacobian(res.x)
        return res.x, tangent_projector(jac, v1)

    def exp(self, tangent_vec, base_point):
        """Riemannian exponential: the geodesic from ``base_point`` at time 1.

        Parameters
        ----------
        tangent_vec : array-like, shape=[..., n]
            Tangent at ``base_point`` (its normal part is removed first).
        base_point : array-like, shape=[..., n]

        Returns
        -------
        end_point : torch.Tensor, shape=[..., n]
            On M to the space's ``tol``. Differentiable in ``tangent_vec`` and
            ``base_point``, not in the trainable parameters of F (the flow's
            dependence on them is not differentiated; dist's is).

        Raises
        ------
        InvalidPointError
            Base points off M (``|F|`` above the tolerance log and dist use).
        """
        space = self._space
        x, v, batch = space._pair(base_point, tangent_vec, ("base_point", "tangent_vec"))
        space._check_regular(x, "exp")  # where a union's pieces meet: no geodesic
        with _local_scale(space, x):
            self._raise_if_off(x, "exp")
            if needs_grad(x, v):  # derivative of the flow, not of the integrator's steps
                x1 = ift.Exp.apply(self, x, v)
            else:
                with torch.no_grad():
                    x1 = self._exp_flat(x, self._project_tangent(x, v))
        return x1.reshape(*batch, space.ambient_dim).to(_dtype_of(tangent_vec, base_point))

    def _project_tangent(self, x, v):
        """``P_x v`` for flat batches."""
        return tangent_projector(self._space._jacobian(x), v)

    def _exp_flat(self, x, v):
        """exp of flat batches with tangent ``v`` (no autograd)."""
        x1, v1 = self._flow(x, v)
        return self._land(x1, v1)[0]

    def _flow_jacobian(self, x, a, basis, eps=None):
        """``d x(1) / d a`` for ``v = basis a`` by central differences, shape (B, n, m).

        Forward-mode AD through the integrator costs 15-25x a plain flow in
        torch (linear solves fall back to decomposed kernels); the perturbed
        copies instead ride in one batched flow with a shared step sequence, so
        the integrator's error cancels in the difference and the Jacobian is
        accurate to ~1e-9, ample for Newton.
        """
        b, n, m = basis.shape
        if eps is None:  # ~ cube root of the unit roundoff: central differences
            eps = max(1e-6, torch.finfo(a.dtype).eps ** (1 / 3))
        h = eps * a.norm(dim=-1).clamp_min(self._scale())  # (B,)
        offsets = basis.transpose(1, 2) * h[:, None, None]  # (B, m, n)
        v = (basis @ a.unsqueeze(-1)).squeeze(-1)[:, None, :]
        starts = torch.cat([v + offsets, v - offsets], dim=1).reshape(-1, n)
        ends, _ = self._flow(x.repeat_interleave(2 * m, 0), starts)
        ends = ends.reshape(b, 2, m, n)
        return ((ends[:, 0] - ends[:, 1]) / (2 * h[:, None, None])).transpose(1, 2)

    def log(self, point, base_point):
        """Riemannian logarithm, by the metric's ``log_solver``.

        The default solver finds the minimising geodesic globally (far pairs
        start from a graph path) and polishes its initial velocity with
        :meth:`_shoot`. Shooting alone (``log_solver="shooting"``) starts from
        a circular-arc guess, which misses far targets: the guess assumes the geodesic is the circular arc through both
        points tangent to M at the base point: the chord's tangent direction,
        with length ``c * beta / sin(beta)`` where ``beta`` is the angle between
        the chord and the tangent space (exact on spheres). Each iteration
        solves the linearised shooting equation in an orthonormal tangent
        basis, halving steps that do not reduce the miss.

        Differentiable in ``point`` and ``base_point`` (implicit-function
        gradients), not in the trainable parameters of F (dist is).

        Raises
        ------
        GeodesicError
            If shooting does not hit ``point`` (off M, beyond the cut locus).
        DisconnectedError
            If ``point`` and ``base_point`` lie on different connected
            components (no geodesic joins them).
        """
        space = self._space
        x, y, batch = space._pair(base_point, point, ("base_point", "point"))
        space._check_regular(torch.cat([x, y]), "log")
        if space.dim != 1:  # (curves first ask their arc-length tables, see _solve_log)
            self._raise_if_apart(x, y, batch)
        try:
            with _local_scale(space, x, y):
                if needs_grad(x, y):  # implicit-function gradient of exp_x(v) = y
                    v = ift.Log.apply(self, x, y)
                else:
                    with torch.no_grad():
                        v = self._solve_log(x, y)
        except DisconnectedError as err:  # from a curve's tables: mask over the batch
            if err.mask is not None and err.mask.numel() == x.shape[0]:
                err.mask = err.mask.reshape(batch)
            raise
        return v.reshape(*batch, space.ambient_dim).to(_dtype_of(point, base_point))

    def _raise_if_apart(self, x, y, batch=None):
        with torch.no_grad():
            apart = self._apart(x, y)
        if apart is not None and bool(apart.any()):
            raise DisconnectedError(
                f"log: {int(apart.sum())} of {apart.numel()} pair(s) lie on different "
                f"connected components of {self._space.name}; no geodesic joins them "
                "(their distance is +inf).",
                mask=apart if batch is None else apart.reshape(batch))

    def _solve_log(self, x, y):
        """The log solve proper (flat batches, no autograd, same component).

        Pluggable: gradients (:class:`~implicit_geom.manifolds.ift.Log`) need
        only its converged result. Curves (dimension 1) use their arc-length
        tables (:mod:`implicit_geom.manifolds.curves`), everything else the
        ``log_solver``.
        """
        if self._space.dim == 1:
            try:
                return self._space._curve_tracer().log(x, y)
            except CurveTraceError:  # e.g. pieces that leave the box: labels, then solve
                self._raise_if_apart(x, y)
        return self.log_solver.log(y, x)

    def _apart(self, x, y):
        """Which pairs of flat points lie on different components (None: not known).

        Only a definite answer counts: pairs with an unknown label (-1) are
        left to the shooting.
        """
        space = self._space
        if space._known_n_components() == 1 or not space.components_known():
            return None
        lx, ly = space._component_labels(x), space._component_labels(y)
        return (lx != ly) & (lx >= 0) & (ly >= 0)

    def _initial_guess(self, jac, chord):
        tangential = tangent_projector(jac, chord)
        c = chord.norm(dim=-1, keepdim=True)
        t = tangential.norm(dim=-1, keepdim=True)
        beta = torch.atan2((chord - tangential).norm(dim=-1, keepdim=True), t)
        arc = c * torch.where(beta > 1e-8, beta / torch.sin(beta), torch.ones_like(beta))
        return tangential * (arc / t.clamp_min(1e-300))

    def _shoot(self, x, y, max_halvings=6, guess=None, max_iter=None, report=False):
        """Gauss-Newton shooting from ``x`` to ``y`` (flat batches), from the
        circular-arc initial guess or from ``guess`` (tangent vectors at x).

        With ``report`` the rows that missed are returned as a mask, ``(v,
        hit)``, instead of raising."""
        space = self._space
        _, jac = space._value_and_jacobian(x)
        value_y, jac_y = space._value_and_jacobian(y)
        self._raise_if_off(y, "log", value_y, "target point(s)")
        atol = self._on_manifold_atol(y.dtype)  # (also bounds the normal miss below)
        basis = tangent_basis(jac)  # (B, n, m)
        if guess is None:
            guess = self._initial_guess(jac, y - x)
        a = (basis.transpose(1, 2) @ guess.unsqueeze(-1)).squeeze(-1)
        tol = self._log_miss_tol(y.dtype, y.norm(dim=-1))

        def miss_of(idx, coef):
            # Only the tangential miss at the target can be shot away: the
            # normal part is the (tiny) distance of the target and of the
            # integrated end point from M.
            x1, _ = self._flow(x[idx], (basis[idx] @ coef.unsqueeze(-1)).squeeze(-1))
            r = x1 - y[idx]
            return r, tangent_projector(jac_y[idx], r, check=False).norm(dim=-1)

        residual, miss = miss_of(slice(None), a)
        for _ in range(self.log_max_iter if max_iter is None else max_iter):
            idx = (~(miss <= tol)).nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            dexp = self._flow_jacobian(x[idx], a[idx], basis[idx])
            step = torch.linalg.lstsq(dexp, -residual[idx].unsqueeze(-1)).solution.squeeze(-1)
            alpha = torch.ones(idx.numel(), dtype=a.dtype, device=a.device)
            pending = torch.ones(idx.numel(), dtype=torch.bool, device=a.device)
            for _ in range(max_halvings + 1):
                sub = pending.nonzero().squeeze(-1)
                trial = a[idx[sub]] + alpha[sub, None] * step[sub]
                r, m = miss_of(idx[sub], trial)
                better = m < miss[idx[sub]]
                acc = idx[sub[better]]
                a[acc], residual[acc], miss[acc] = trial[better], r[better], m[better]
                pending[sub[better]] = False
                alpha[sub[~better]] *= 0.5
                if not pending.any():
                    break
            if pending.all():
                break  # no row can make progress any more
        bad = ~self._shot_hit(miss, residual, tol, atol)
        if report:
            return (basis @ a.unsqueeze(-1)).squeeze(-1), ~bad
        if bool(bad.any()):
            raise GeodesicError(
                f"log: shooting missed {int(bad.sum())} of {bad.numel()} target(s) "
                f"(largest miss {float(miss[bad].nan_to_num(float('inf')).max()):.3g}); "
                "the target may be beyond the cut locus or on another connected "
                "component.")
        return (basis @ a.unsqueeze(-1)).squeeze(-1)

    def squared_dist(self, point_a, point_b):
        """Squared geodesic distance, shape ``(...,)`` (+inf across components).

        Differentiable (``2 log`` is smooth where the distance vanishes, unlike
        the distance itself).
        """
        return self._dist(point_a, point_b, squared=True)

    def dist(self, point_a, point_b):
        """Geodesic distance, shape ``(...,)``; +inf between points on different
        connected components. Differentiable: the gradient in ``point_a`` is
        ``-log_a(b) / d`` (implicit-function gradient of the log solve); when
        the points carry a gradient, also in the trainable parameters of F
        (first variation of the geodesic's length as M moves, the points
        moving with M as their projections do)."""
        return self._dist(point_a, point_b, squared=False)

    def _dist(self, point_a, point_b, squared):
        space = self._space
        a, b, batch = space._pair(point_a, point_b, ("point_a", "point_b"))
        with _local_scale(space, a, b):
            return self._dist_flat(point_a, point_b, a, b, batch, squared)

    def _dist_flat(self, point_a, point_b, a, b, batch, squared):
        space = self._space
        space._check_regular(torch.cat([a, b]), "dist")
        dtype = _dtype_of(point_a, point_b)
        if space.dim == 1 and not needs_grad(a, b):
            # Arc lengths from the curve's tables (+inf across closed curves).
            within = self._curve_dist(a, b)
            if within is not None:
                within = within * within if squared else within
                return within.reshape(batch).to(dtype)
        with torch.no_grad():
            apart = self._apart(a, b)
        if apart is not None and bool(apart.any()):
            rows = (~apart).nonzero().squeeze(-1)
            a_rows, b_rows = a[rows], b[rows]
        else:
            rows, a_rows, b_rows = None, a, b
        if a_rows.shape[0] == 0:
            within = a.new_zeros(0)
        elif needs_grad(a_rows, b_rows):
            v = ift.Log.apply(self, a_rows, b_rows)
            within = (v * v).sum(-1) if squared else torch.linalg.vector_norm(v, dim=-1)
            if ift.trainable_tensors(space):  # M itself moves with theta
                length = torch.linalg.vector_norm(v.detach(), dim=-1)
                var = ift.length_variation(self, a_rows.detach(), v.detach(), length)
                within = within + (2 * length * var if squared else var)
        else:
            with torch.no_grad():
                # The solver's length of the minimising path (no log polish).
                within = self.log_solver.dist(a_rows, b_rows)
            within = within * within if squared else within
        if rows is not None:  # +inf across components (out of place: keeps the graph)
            out = torch.full((a.shape[0],), torch.inf, dtype=a.dtype, device=a.device)
            within = out.index_put((rows,), within)
        return within.reshape(batch).to(dtype)

    def _curve_dist(self, a, b):
        """Arc lengths on a curve (+inf across its connected pieces), or None
        when the curve cannot be tabulated (then: shooting)."""
        try:
            with torch.no_grad():
                return self._space._curve_tracer().dist(a, b)
        except CurveTraceError:
            return None

    def dist_pairwise(self, points, n_jobs=None, **joblib_kwargs):
        """Matrix of geodesic distances between all points, shape ``(N, N)``.

        Every pair is solved once, all of them in batched tensor programs (not
        geomstats' loop over pairs); +inf between different components.

        Parameters
        ----------
        points : array-like, shape=[N, n]
        n_jobs : int, optional
            Processes for the far pairs of the global log solver (see
            :class:`~implicit_geom.manifolds.geodesics.GeodesicLogSolver`;
            ``-1``: one per CPU); default: the solver's own ``n_jobs`` (1).
            Other solvers ignore it.
        **joblib_kwargs
            Ignored (geomstats' signature): there is no joblib loop over pairs.

        Differentiable like :meth:`dist` when ``points`` require a gradient
        (then every pair goes through :meth:`dist`, ``n_jobs`` unused).

        Raises
        ------
        GeodesicError
            If some pair has no converged geodesic.
        """
        del joblib_kwargs
        space = self._space
        pts, _ = space._flat(as_point_list(points, space.ambient_dim))
        space._check_regular(pts, "dist_pairwise")
        dtype = _dtype_of(points)
        n = pts.shape[0]
        if needs_grad(pts):
            # The pairwise solvers run without a graph (the matrix came back
            # silently detached from points that require a gradient): every
            # pair through dist instead, with its implicit-function gradients.
            i, j = torch.triu_indices(n, n, 1, device=pts.device)
            within = self._dist(pts[i], pts[j], squared=False)
            out = pts.new_zeros(n, n).index_put((i, j), within).index_put((j, i), within)
            return out.to(dtype)
        if space.dim == 1:  # arc-length tables of curves
            i, j = torch.triu_indices(n, n, 1, device=pts.device)
            within = self._curve_dist(pts[i], pts[j])
            if within is not None:
                out = torch.zeros(n, n, dtype=pts.dtype, device=pts.device)
                out[i, j] = out[j, i] = within
                return out.to(dtype)
        labels = self._known_labels(pts)
        solver = self.log_solver
        with torch.no_grad(), _local_scale(space, pts):
            if hasattr(solver, "pairwise"):
                # (A custom solver's pairwise need not take n_jobs.)
                jobs = {} if n_jobs is None else {"n_jobs": n_jobs}
                res = solver.pairwise(pts, labels=labels, **jobs)
                if bool(res.failed.any()):
                    raise GeodesicError(
                        f"dist_pairwise: {int(torch.triu(res.failed, 1).sum())} pair(s) have "
                        f"no converged geodesic{getattr(solver, '_unjoined_note', str)()}.")
                out = res.dist
            else:
                out = solver.dist_pairwise(pts)
                if labels is not None:
                    apart = (labels[:, None] != labels[None, :]) & (labels[:, None] >= 0) \
                        & (labels[None, :] >= 0)
                    out = out.masked_fill(apart, torch.inf)
        return out.to(dtype)

    def _known_labels(self, pts):
        """Component labels of flat points on M (-1: unknown) for the pairwise
        solvers, or None where M is connected or its components are not known."""
        space = self._space
        if space._known_n_components() != 1 and space.components_known():
            with torch.no_grad():
                return space._component_labels(pts)
        return None

    def _geodesic_ivp(self, initial_point, initial_tangent_vec):
        """Geodesic ``t -> exp(t v)`` as a callable (geomstats convention)."""
        dtype = _dtype_of(initial_point, initial_tangent_vec)
        base = torch.as_tensor(initial_point, dtype=dtype)
        vec = torch.as_tensor(initial_tangent_vec, dtype=dtype).to(base.device)

        def path(t):
            t = torch.as_tensor(t, dtype=dtype).to(base.device).reshape(-1)
            if vec.ndim == 1 and base.ndim == 1:
                return self.exp(t[:, None] * vec, base)
            b, v = broadcast_points(base, vec, names=("initial_point", "initial_tangent_vec"))
            # The time axis goes before the last: (..., T, n) for any leading batch
            # (indexing v[:, None] mixed it into a second batch axis).
            return self.exp(t[:, None] * v[..., None, :], b[..., None, :])

        return path

    def squared_norm(self, vector, base_point=None):
        """Squared Euclidean norm of a tangent vector."""
        (vector,) = self._vectors(base_point, vector, names=("vector",))
        return (vector * vector).sum(-1)

    # ---------------------------------------------------------------- curvature
    # Extrinsic geometry of M = {F = 0} in flat R^n. With J the Jacobian,
    # G = J J^T, P = I - J^T G^{-1} J the tangent projector and H_r the Hessian
    # of F_r, the second fundamental form is
    #     II(u, v) = -J^T G^{-1} h(u, v),   h_r(u, v) = u^T H_r v   (u, v tangent),
    # the shape operator along a normal nu = J^T mu is A_nu u = -P (sum_r mu_r H_r) u,
    # and the Gauss equation gives the curvature of the induced metric:
    #     <R(X, Y)Z, W> = <II(Y, Z), II(X, W)> - <II(X, Z), II(Y, W)>
    #                   = h(Y, Z)^T G^{-1} h(X, W) - h(X, Z)^T G^{-1} h(Y, W).
    # Everything is invariant under rescaling F (the 1/|grad F|^2 of G^{-1}
    # cancels the scale of H). Tensors are given in ambient coordinates,
    # extended to all of R^n by the tangent projection (geomstats' index
    # conventions; contractions with the identity metric matrix then trace over
    # the tangent space only).
    def _frame(self, x):
        """``(J, G^{-1} (B, k, k), P (B, n, n), H (B, k, n, n))`` at flat points."""
        space = self._space
        jac = space._jacobian(x)
        eye_k = torch.eye(space.codim, dtype=x.dtype, device=x.device)
        gram_inv = gram_solve(jac, eye_k.expand(x.shape[0], -1, -1))
        eye_n = torch.eye(space.ambient_dim, dtype=x.dtype, device=x.device)
        proj = eye_n - jac.transpose(-1, -2) @ gram_inv @ jac
        return jac, gram_inv, proj, space._hessians(x)

    def _flat_args(self, base_point, *vectors, names=None, what=None):
        """Broadcast a base point and vectors to flat (B, n) batches; with
        ``what`` (the public method's name), base points off M raise
        InvalidPointError."""
        space = self._space
        n = space.ambient_dim
        names = names or ("base_point", "tangent_vec_a", "tangent_vec_b", "tangent_vec_c",
                          "tangent_vec_d")
        arrays = [as_points(a, n, name) for a, name in zip((base_point, *vectors), names)]
        arrays = broadcast_points(*arrays, names=names)
        batch = arrays[0].shape[:-1]
        dtype = _dtype_of(base_point, *vectors)
        flat = [a.reshape(-1, n).to(space.dtype) for a in arrays]
        if what is not None:
            self._raise_if_off(flat[0], what)
        return flat, batch, dtype

    def second_fundamental_form(self, tangent_vec_a, tangent_vec_b, base_point):
        """Second fundamental form ``II(a, b)``: a normal vector, shape ``(..., n)``.

        The normal part of the derivative of a tangent field; ``II(v, v)`` is
        the acceleration of the geodesic with velocity ``v``. Arguments are
        projected onto the tangent space first.
        """
        (x, a, b), batch, dtype = self._flat_args(base_point, tangent_vec_a, tangent_vec_b,
                                                  what="second_fundamental_form")
        with torch.no_grad():
            jac, gram_inv, proj, hess = self._frame(x)
            pa, pb = _apply(proj, a), _apply(proj, b)
            h = torch.einsum("bi,bkij,bj->bk", pa, hess, pb)
            out = -(jac.transpose(-1, -2) @ (gram_inv @ h.unsqueeze(-1))).squeeze(-1)
        return out.reshape(*batch, -1).to(dtype)

    def shape_operator(self, tangent_vec, normal_vec, base_point):
        """Shape operator (Weingarten map) ``A_nu(v)``: tangent, shape ``(..., n)``.

        ``<A_nu(u), w> = <II(u, w), nu>``. Only the normal part of ``normal_vec``
        matters; ``tangent_vec`` is projected onto the tangent space.
        """
        (x, v, nu), batch, dtype = self._flat_args(base_point, tangent_vec, normal_vec,
                                                   what="shape_operator")
        with torch.no_grad():
            jac, gram_inv, proj, hess = self._frame(x)
            mu = (gram_inv @ (jac @ nu.unsqueeze(-1))).squeeze(-1)
            weighted = torch.einsum("bk,bkij->bij", mu, hess)
            out = -_apply(proj, _apply(weighted, _apply(proj, v)))
        return out.reshape(*batch, -1).to(dtype)

    def christoffels(self, base_point=None):
        r"""Christoffel symbols of the geodesic spray in ambient coordinates.

        ``Gamma^l_{ij} = (J^T G^{-1})_{lr} (H_r)_{ij}``, contravariant index
        first (geomstats' convention): a curve on M with velocity ``v`` is a
        geodesic iff ``x'' = -Gamma(v, v)``, which is exactly the constrained
        geodesic equation. (Ambient coordinates are redundant, so these are not
        the Koszul symbols of the identity metric matrix, which vanish.)

        Returns
        -------
        christoffels : torch.Tensor, shape=[..., n, n, n]
        """
        base_point = self._require_point(base_point, "christoffels")
        (x,), batch, dtype = self._flat_args(base_point, what="christoffels")
        with torch.no_grad():
            jac, gram_inv, _, hess = self._frame(x)
            out = torch.einsum("bkl,bkr,brij->blij", jac, gram_inv, hess)
        n = self._space.ambient_dim
        return out.reshape(*batch, n, n, n).to(dtype)

    def inner_product_derivative_matrix(self, base_point=None):
        """Not available: in redundant ambient coordinates the metric matrix is
        constant, so its derivative carries no curvature (geomstats would build
        flat Christoffel symbols from it). Use :meth:`christoffels`,
        :meth:`riemann_tensor` and :meth:`curvature`, computed from F.

        Raises
        ------
        CurvatureError
        """
        raise CurvatureError(
            "inner_product_derivative_matrix is not defined for an implicit manifold in "
            "ambient coordinates (the identity metric matrix is constant, and its "
            "derivative would give the flat connection); christoffels, riemann_tensor, "
            "curvature and the sectional/Ricci/scalar curvatures are computed from F.")

    def _require_point(self, base_point, what):
        if base_point is None:
            raise CurvatureError(f"{what} of {self._space.name} depends on the point: "
                                 "pass base_point")
        return base_point

    def _riemann_vector(self, x, a, b, c, frame=None):
        """``R(a, b)c`` at flat points (Gauss equation), tangent, (B, n)."""
        jac, gram_inv, proj, hess = self._frame(x) if frame is None else frame
        pa, pb, pc = _apply(proj, a), _apply(proj, b), _apply(proj, c)
        h_bc = torch.einsum("bi,bkij,bj->bk", pb, hess, pc)
        h_ac = torch.einsum("bi,bkij,bj->bk", pa, hess, pc)
        w_bc = (gram_inv @ h_bc.unsqueeze(-1)).squeeze(-1)
        w_ac = (gram_inv @ h_ac.unsqueeze(-1)).squeeze(-1)
        # sum_rs Ginv_rs [h_r(b, c) P H_s a - h_r(a, c) P H_s b]
        out = torch.einsum("bk,bkij,bj->bi", w_bc, hess, pa) - \
            torch.einsum("bk,bkij,bj->bi", w_ac, hess, pb)
        return _apply(proj, out)

    def curvature(self, tangent_vec_a, tangent_vec_b, tangent_vec_c, base_point=None):
        """Riemann curvature ``R(a, b)c`` (geomstats' sign: ``<R(a, b)b, a> > 0`` on
        spheres), shape ``(..., n)``; arguments projected onto the tangent space."""
        base_point = self._require_point(base_point, "curvature")
        (x, a, b, c), batch, dtype = self._flat_args(base_point, tangent_vec_a,
                                                     tangent_vec_b, tangent_vec_c,
                                                     what="curvature")
        with torch.no_grad():
            out = self._riemann_vector(x, a, b, c)
        return out.reshape(*batch, -1).to(dtype)

    def riemann_tensor(self, base_point=None):
        """``R_{ijk}^l = dx^l(R(e_j, e_k) e_i)`` in ambient coordinates (tangent
        projections of the coordinate vectors), shape ``(..., n, n, n, n)``."""
        base_point = self._require_point(base_point, "riemann_tensor")
        (x,), batch, dtype = self._flat_args(base_point, what="riemann_tensor")
        with torch.no_grad():
            _, gram_inv, proj, hess = self._frame(x)
            hp = proj.unsqueeze(1) @ hess @ proj.unsqueeze(1)  # P H_r P, (B, k, n, n)
            # T[x, y, z, w] = <R(e_x, e_y) e_z, e_w>
            t = torch.einsum("brs,bryz,bsxw->bxyzw", gram_inv, hp, hp) - \
                torch.einsum("brs,brxz,bsyw->bxyzw", gram_inv, hp, hp)
            out = t.permute(0, 3, 1, 2, 4)  # [i, j, k, l] = T[j, k, i, l]
        n = self._space.ambient_dim
        return out.reshape(*batch, n, n, n, n).to(dtype)

    def sectional_curvature(self, tangent_vec_a, tangent_vec_b, base_point=None):
        """Sectional curvature of the plane spanned by ``a`` and ``b``, shape ``(...,)``.

        Raises
        ------
        CurvatureError
            Where ``a`` and ``b`` (projected onto the tangent space) span no
            plane (parallel or zero vectors): the curvature is undefined there.
        """
        base_point = self._require_point(base_point, "sectional_curvature")
        (x, a, b), batch, dtype = self._flat_args(base_point, tangent_vec_a, tangent_vec_b,
                                                  what="sectional_curvature")
        with torch.no_grad():
            frame = self._frame(x)
            proj = frame[2]
            a, b = _apply(proj, a), _apply(proj, b)
            num = (self._riemann_vector(x, a, b, b, frame) * a).sum(-1)
            aa, bb, ab = (a * a).sum(-1), (b * b).sum(-1), (a * b).sum(-1)
            area = aa * bb - ab * ab
            degenerate = ~(area > 1e3 * torch.finfo(x.dtype).eps * aa * bb) | (aa * bb == 0)
            if bool(degenerate.any()):
                raise CurvatureError(
                    f"sectional_curvature: {int(degenerate.sum())} pair(s) of tangent "
                    "vectors span no plane (parallel or zero after projection onto the "
                    "tangent space).")
        return (num / area).reshape(batch).to(dtype)

    def ricci_tensor(self, base_point=None):
        """Ricci tensor ``Ric(e_i, e_k)`` in ambient coordinates, shape ``(..., n, n)``.

        ``Ric = sum_rs G^{-1}_rs (tr(P H_s P) P H_r P - P H_s P H_r P)`` (trace of
        the Gauss equation over the tangent space).
        """
        base_point = self._require_point(base_point, "ricci_tensor")
        (x,), batch, dtype = self._flat_args(base_point, what="ricci_tensor")
        with torch.no_grad():
            out = self._ricci(x)
        n = self._space.ambient_dim
        return out.reshape(*batch, n, n).to(dtype)

    def _ricci(self, x):
        _, gram_inv, proj, hess = self._frame(x)
        hp = proj.unsqueeze(1) @ hess @ proj.unsqueeze(1)
        traces = hp.diagonal(dim1=-2, dim2=-1).sum(-1)  # (B, k)
        return torch.einsum("brs,bs,brij->bij", gram_inv, traces, hp) - \
            torch.einsum("brs,bsij,brjl->bil", gram_inv, hp, hp)

    def scalar_curvature(self, base_point=None):
        """Scalar curvature (trace of the Ricci tensor), shape ``(...,)``; twice
        the Gaussian curvature on a surface."""
        base_point = self._require_point(base_point, "scalar_curvature")
        (x,), batch, dtype = self._flat_args(base_point, what="scalar_curvature")
        with torch.no_grad():
            out = self._ricci(x).diagonal(dim1=-2, dim2=-1).sum(-1)
        return out.reshape(batch).to(dtype)

    def curvature_derivative(self, tangent_vec_a, tangent_vec_b, tangent_vec_c,
                             tangent_vec_d, base_point=None, step=1e-4):
        r"""Covariant derivative of the curvature ``(\nabla_a R)(b, c) d``, shape ``(..., n)``.

        Extending b, c, d by ``q -> P(q) b`` (fields whose covariant derivative
        at the base point vanishes, since ``P dP P = 0``), it is the tangential
        part of the directional derivative along ``a`` of ``q -> R_q(P_q b, P_q c)
        P_q d``, taken by a central difference with ``step * |x|``-scaled
        increments (error ~ step^2; about 1e-8 relative).
        """
        base_point = self._require_point(base_point, "curvature_derivative")
        (x, h, b, c, d), batch, dtype = self._flat_args(
            base_point, tangent_vec_a, tangent_vec_b, tangent_vec_c, tangent_vec_d,
            what="curvature_derivative")
        with torch.no_grad():
            proj = self._frame(x)[2]
            h, b, c, d = (_apply(proj, t) for t in (h, b, c, d))
            eps = step * (1 + x.norm(dim=-1, keepdim=True)) / h.norm(
                dim=-1, keepdim=True).clamp_min(1e-300)
            plus = self._riemann_vector(x + eps * h, b, c, d)
            minus = self._riemann_vector(x - eps * h, b, c, d)
            out = _apply(proj, (plus - minus) / (2 * eps))
        return out.reshape(*batch, -1).to(dtype)

    # ---------------------------------------------------------------- transport
    def parallel_transport(self, tangent_vec, base_point, direction=None, end_point=None):
        """Parallel transport along the geodesic ``t -> exp(t direction)``, t in [0, 1].

        The transport equation (``w' = -J^T G^{-1} D^2F[x', w]``: the rate of
        ``w`` is normal, so its covariant derivative vanishes) is integrated
        together with the geodesic; at the end the point is landed on M and
        the vector projected onto the tangent space there.

        Parameters
        ----------
        tangent_vec : array-like, shape=[..., n]
            At ``base_point`` (projected onto its tangent space first).
        base_point : array-like, shape=[..., n]
        direction : array-like, shape=[..., n], optional
            Initial velocity of the geodesic.
        end_point : array-like, shape=[..., n], optional
            Instead of ``direction``: transport to this point along the
            geodesic ``log`` finds.

        Returns
        -------
        transported : torch.Tensor, shape=[..., n]
            Tangent at ``exp(direction)`` (``end_point``).
        """
        space = self._space
        if direction is None:
            if end_point is None:
                raise ValueError("parallel_transport needs a direction or an end_point")
            direction = self.log(end_point, base_point)
        ends = () if end_point is None else (end_point,)
        (x, v, w, *ends), batch, dtype = self._flat_args(
            base_point, direction, tangent_vec, *ends,
            names=("base_point", "direction", "tangent_vec", "end_point"),
            what="parallel_transport")
        n = space.ambient_dim
        with torch.no_grad(), _local_scale(space, x):
            jac = space._jacobian(x)
            v, w = tangent_projector(jac, v), tangent_projector(jac, w)
            steps = n_macro_steps(v.norm(dim=-1).max(), self.arc_per_step)
            z = self._integrator(x.dtype).integrate(self._transport_rhs,
                                                    torch.cat([x, v, w], -1), 1.0, steps)
            # Given an end point, the vector is made tangent there exactly.
            x1 = ends[0] if ends else self._land(z[:, :n], z[:, n:2 * n])[0]
            w1 = tangent_projector(space._jacobian(x1), z[:, 2 * n:])
        return w1.reshape(*batch, n).to(dtype)

    def parallel_transport_along_curve(self, tangent_vec, curve):
        """Parallel transport along a discrete curve (the piecewise geodesic
        through its points), returning the vector at every point.

        Parameters
        ----------
        tangent_vec : array-like, shape=[..., n]
            Tangent at ``curve[..., 0, :]``.
        curve : array-like, shape=[..., T, n]
            Points on M, consecutive ones joined by their (minimising) geodesic.

        Returns
        -------
        transported : torch.Tensor, shape=[..., T, n]
        """
        space = self._space
        curve = as_points(curve, space.ambient_dim, "curve")
        if curve.ndim < 2 or curve.shape[-2] < 1:
            raise InvalidPointError(f"curve must have shape (..., T, {space.ambient_dim})")
        w = space.to_tangent(tangent_vec, curve[..., 0, :])
        out = [w]
        for t in range(1, curve.shape[-2]):
            w = self.parallel_transport(w, curve[..., t - 1, :], end_point=curve[..., t, :])
            out.append(w)
        return torch.stack(out, dim=-2)


def _local_scale(space, *points):
    """``space.local_scale(*points)`` (the length of a manifold without bounds
    from its curvature there), or nothing for spaces without one."""
    scope = getattr(space, "local_scale", None)
    return contextlib.nullcontext() if scope is None else scope(*points)


def _normal_response(jac, curv):
    """``-J^T G^{-1} curv``: the normal vector whose J-image is ``-curv``, (B, n)."""
    if jac.shape[-2] == 1:  # the common case: a division instead of a solve
        grad = jac[:, 0]
        return -grad * (curv / rowdot(grad, grad))
    gram = jac @ jac.transpose(-1, -2)
    lam, info = torch.linalg.solve_ex(gram, curv.unsqueeze(-1))
    if bool((info != 0).any()):  # an exactly singular J (e.g. a tangential intersection)
        raise SingularJacobianError(
            f"the Jacobian of the submersion is rank deficient at {int((info != 0).sum())} "
            "point(s) (e.g. where the manifolds of an intersection touch instead of "
            "crossing); the normal space is not defined there.")
    return -(jac.transpose(-1, -2) @ lam).squeeze(-1)


def _apply(mat, vec):
    """Batched matrix-vector product ``mat @ vec`` for (B, n, n) and (B, n)."""
    return (mat @ vec.unsqueeze(-1)).squeeze(-1)


def _make_log_solver(space, spec):
    """The log solver named or given by ``spec`` (see :class:`ImplicitMetric`)."""
    from .arithmetic import ProductImplicitManifold, UnionManifold
    from .geodesics import (
        GeodesicLogSolver,
        ProductLogSolver,
        ShootingLogSolver,
        UnionLogSolver,
    )

    if spec is None or spec == "global":
        # A product's geodesics are products of its factors' geodesics.
        if isinstance(space, ProductImplicitManifold):
            return ProductLogSolver(space)
        # A union's are its (disjoint) pieces' geodesics.
        if isinstance(space, UnionManifold):
            return UnionLogSolver(space)
        return GeodesicLogSolver(space)
    if spec == "shooting":
        return ShootingLogSolver(space)
    if isinstance(spec, str):
        raise ValueError(f"unknown log_solver {spec!r}; expected 'global', 'shooting', a "
                         "LogSolver or a callable space -> LogSolver")
    if hasattr(spec, "log"):
        return spec
    return spec(space)
