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
shooting polish), or local Gauss-Newton shooting whose Jacobian comes from the
variational (Jacobi-field) equations.

This class deliberately does not subclass ``EuclideanMetric``: geomstats'
FrechetMean would then silently switch to the linear mean (off M).
"""

import torch
from geomstats.geometry.riemannian_metric import RiemannianMetric

from ..exceptions import DisconnectedError, GeodesicError, InvalidPointError
from ..numerics.linalg import tangent_basis, tangent_projector
from ..numerics.newton import newton_min_norm
from ..numerics.ode import GBSIntegrator, n_macro_steps
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
        Initial macro step, as an arc length (the integrator adapts it).
    on_manifold_atol : float
        ``log`` refuses targets with ``|F|`` above this.
    log_solver : {"global", "shooting"}, LogSolver or callable, optional
        Solver behind ``log``/``dist``/``dist_pairwise``: ``"global"``
        (default, :class:`~implicit_geom.manifolds.geodesics.GeodesicLogSolver`),
        ``"shooting"`` (local shooting only), a solver instance, or a callable
        ``space -> solver``.
    """

    def __init__(self, space, rtol=1e-10, log_tol=1e-9, log_max_iter=30,
                 arc_per_step=1.0, on_manifold_atol=1e-6, log_solver=None):
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
    def _integrator(self, dtype):
        integ = self._integrators.get(dtype)
        if integ is None:
            rtol = max(self.rtol, 100 * torch.finfo(dtype).eps)
            integ = self._integrators[dtype] = GBSIntegrator(rtol=rtol, atol=rtol)
        return integ

    def _log_tol(self, dtype):
        return max(self.log_tol, 100 * torch.finfo(dtype).eps)

    def _on_manifold_atol(self, dtype):
        return max(self.on_manifold_atol, 10 * self._space.tol_for(dtype))

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
        return (tangent_vec_a * tangent_vec_b).sum(-1)

    # ---------------------------------------------------------------- geodesics
    def _acceleration(self, x, v):
        """Normal acceleration keeping a curve with velocity v on M."""
        space = self._space
        jac = space._jacobian(x)
        curv = space._second_derivative(x, v)
        if space.codim == 1:  # the common case: a division instead of a solve
            grad = jac[:, 0]
            return -grad * (curv / (grad * grad).sum(-1, keepdim=True))
        gram = jac @ jac.transpose(-1, -2)
        lam = torch.linalg.solve(gram, curv.unsqueeze(-1))
        return -(jac.transpose(-1, -2) @ lam).squeeze(-1)

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
            On M to the space's ``tol``.
        """
        space = self._space
        x, v, batch = space._pair(base_point, tangent_vec, ("base_point", "tangent_vec"))
        with torch.no_grad():
            _, jac = space._value_and_jacobian(x)
            v = tangent_projector(jac, v)
            x1, v1 = self._flow(x, v)
            x1, _ = self._land(x1, v1)
        return x1.reshape(*batch, space.ambient_dim).to(_dtype_of(tangent_vec, base_point))

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
        h = eps * a.norm(dim=-1).clamp_min(1.0)  # (B,)
        offsets = basis.transpose(1, 2) * h[:, None, None]  # (B, m, n)
        v = (basis @ a.unsqueeze(-1)).squeeze(-1)[:, None, :]
        starts = torch.cat([v + offsets, v - offsets], dim=1).reshape(-1, n)
        ends, _ = self._flow(x.repeat_interleave(2 * m, 0), starts)
        ends = ends.reshape(b, 2, m, n)
        return ((ends[:, 0] - ends[:, 1]) / (2 * h[:, None, None])).transpose(1, 2)

    def log(self, point, base_point):
        """Riemannian logarithm, by the metric's ``log_solver``.

        The default solver finds the minimising geodesic globally and polishes
        its initial velocity with :meth:`_shoot`. Shooting alone
        (``log_solver="shooting"``) starts from a circular-arc guess: the geodesic is the circular arc through both
        points tangent to M at the base point: the chord's tangent direction,
        with length ``c * beta / sin(beta)`` where ``beta`` is the angle between
        the chord and the tangent space (exact on spheres). Each iteration
        solves the linearised shooting equation in an orthonormal tangent
        basis, halving steps that do not reduce the miss.

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
        with torch.no_grad():
            apart = self._apart(x, y)
            if apart is not None and bool(apart.any()):
                raise DisconnectedError(
                    f"log: {int(apart.sum())} of {apart.numel()} pair(s) lie on different "
                    f"connected components of {space.name}; no geodesic joins them "
                    "(their distance is +inf).", mask=apart.reshape(batch))
            v = self.log_solver.log(y, x)
        return v.reshape(*batch, space.ambient_dim).to(_dtype_of(point, base_point))

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
        atol = self._on_manifold_atol(y.dtype)
        off = ~(value_y.norm(dim=-1) <= atol)
        if bool(off.any()):
            raise InvalidPointError(
                f"log: {int(off.sum())} target point(s) are not on {space.name} "
                f"(|F| up to {float(value_y.norm(dim=-1).max()):.3g} > "
                f"{atol:g}); project them first.")
        basis = tangent_basis(jac)  # (B, n, m)
        if guess is None:
            guess = self._initial_guess(jac, y - x)
        a = (basis.transpose(1, 2) @ guess.unsqueeze(-1)).squeeze(-1)
        tol = self._log_tol(y.dtype) * (1 + y.norm(dim=-1))

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
        # The normal part of the miss is bounded by the targets' |F|: a large
        # one means the shot hit M elsewhere (another component, say).
        bad = ~(miss <= tol) | ~(residual.norm(dim=-1) <= 10 * atol)
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
        """Squared geodesic distance, shape ``(...,)`` (+inf across components)."""
        return self.dist(point_a, point_b) ** 2

    def dist(self, point_a, point_b):
        """Geodesic distance, shape ``(...,)``; +inf between points on different
        connected components."""
        space = self._space
        a, b, batch = space._pair(point_a, point_b, ("point_a", "point_b"))
        dtype = _dtype_of(point_a, point_b)
        with torch.no_grad():
            apart = self._apart(a, b)
        out = torch.full((a.shape[0],), torch.inf, dtype=a.dtype, device=a.device)
        rows = (slice(None) if apart is None else (~apart).nonzero().squeeze(-1))
        if apart is None or rows.numel():
            with torch.no_grad():
                out[rows] = self.log_solver.dist(a[rows], b[rows])
        return out.reshape(batch).to(dtype)

    def dist_pairwise(self, points, n_jobs=1, **joblib_kwargs):
        """Matrix of geodesic distances between all points, shape ``(N, N)``.

        Every pair is solved once, all of them in batched tensor programs (not
        geomstats' loop over pairs); +inf between different components.

        Parameters
        ----------
        points : array-like, shape=[N, n]
        n_jobs, **joblib_kwargs
            Ignored (geomstats' signature); the work is batched instead.

        Raises
        ------
        GeodesicError
            If some pair has no converged geodesic.
        """
        del n_jobs, joblib_kwargs
        space = self._space
        pts, _ = space._flat(points)
        dtype = _dtype_of(points)
        labels = None
        if space._known_n_components() != 1 and space.components_known():
            with torch.no_grad():
                labels = space._component_labels(pts)
        solver = self.log_solver
        with torch.no_grad():
            if hasattr(solver, "pairwise"):
                res = solver.pairwise(pts, labels=labels)
                if bool(res.failed.any()):
                    raise GeodesicError(
                        f"dist_pairwise: {int(torch.triu(res.failed, 1).sum())} pair(s) have "
                        "no converged geodesic.")
                out = res.dist
            else:
                out = solver.dist_pairwise(pts)
                if labels is not None:
                    apart = (labels[:, None] != labels[None, :]) & (labels[:, None] >= 0) \
                        & (labels[None, :] >= 0)
                    out = out.masked_fill(apart, torch.inf)
        return out.to(dtype)

    def _geodesic_ivp(self, initial_point, initial_tangent_vec):
        """Geodesic ``t -> exp(t v)`` as a callable (geomstats convention)."""
        dtype = _dtype_of(initial_point, initial_tangent_vec)
        base = torch.as_tensor(initial_point, dtype=dtype)
        vec = torch.as_tensor(initial_tangent_vec, dtype=dtype).to(base.device)

        def path(t):
            t = torch.as_tensor(t, dtype=dtype).to(base.device).reshape(-1)
            if vec.ndim == 1 and base.ndim == 1:
                return self.exp(t[:, None] * vec, base)
            b, v = torch.broadcast_tensors(base, vec)
            out = self.exp(t[None, :, None] * v[:, None, :], b[:, None, :])
            return out

        return path

    def squared_norm(self, vector, base_point=None):
        """Squared Euclidean norm of a tangent vector."""
        return (vector * vector).sum(-1)


def _make_log_solver(space, spec):
    """The log solver named or given by ``spec`` (see :class:`ImplicitMetric`)."""
    from .arithmetic import ProductImplicitManifold
    from .geodesics import GeodesicLogSolver, ProductLogSolver, ShootingLogSolver

    if spec is None or spec == "global":
        # A product's geodesics are products of its factors' geodesics.
        if isinstance(space, ProductImplicitManifold):
            return ProductLogSolver(space)
        return GeodesicLogSolver(space)
    if spec == "shooting":
        return ShootingLogSolver(space)
    if isinstance(spec, str):
        raise ValueError(f"unknown log_solver {spec!r}; expected 'global', 'shooting', a "
                         "LogSolver or a callable space -> LogSolver")
    if hasattr(spec, "log"):
        return spec
    return spec(space)
