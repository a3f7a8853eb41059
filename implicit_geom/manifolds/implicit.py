"""Manifolds given implicitly as the zero set of a smooth map, as geomstats spaces."""

import contextlib
import math

import torch
from geomstats.geometry.base import LevelSet
from geomstats.geometry.euclidean import Euclidean
from torch import nn

from ..exceptions import ComponentError, InvalidPointError, ProjectionError, ScaleError
from ..numerics import autodiff
from ..numerics.linalg import gram_solve, tangent_basis, tangent_projector
from ..numerics.newton import (
    ROUNDING_FACTOR,
    NewtonResult,
    floor_from_norm,
    newton_min_norm,
    rounding_floor,
    solve_along_normals,
    tol_factor_of,
)
from ..numerics.validation import DTYPE, as_points, broadcast_points, check_int
from .ift import ClosestPoint, TangentProjection, needs_grad, trainable_tensors


class ImplicitManifold(nn.Module, LevelSet):
    r"""The zero set :math:`M = \{x \in \mathbb{R}^n : F(x) = 0\}` of a submersion.

    Parameters
    ----------
    f : callable or torch.nn.Module
        Maps points of shape ``(..., n)`` to ``(..., k)``, row by row (each
        point's value depends on that point only), with torch operations so that
        ``torch.func`` can differentiate it.
    ambient_dim : int
        ``n``.
    codim : int
        ``k``; the manifold has dimension ``n - k``.
    tol : float
        Target ``|F|`` of every projection (Newton stops below it), floored
        per point at the rounding of F there (see :meth:`tol_for`);
        closest-point projections also locate the foot point to ``10 * tol``.
    max_iter : int
        Newton iteration cap of every projection.
    bounds : tuple of array-like, optional
        ``(low, high)`` corners of a box that contains the manifold; where
        :meth:`random_point` draws (without it, ``[-bound, bound]^n`` with
        ``bound`` its argument) and where the connected components and the
        global log solver's graph are sampled.
    equip : bool
        Equip with the induced metric :class:`ImplicitMetric`.
    name : str, optional
        Shown in ``repr`` and error messages (default: the class name).

    Notes
    -----
    The solvers (Newton, geodesic integration, shooting) run without autograd.
    :meth:`projection`, :meth:`to_tangent` and the metric's ``exp``, ``log``
    and ``dist`` are nevertheless differentiable: when an input (or, for the
    projection, a parameter or buffer of F) requires a gradient they attach
    the implicit-function-theorem derivative of the converged result
    (:mod:`implicit_geom.manifolds.ift`), never the unrolled iterations.
    Parameters that do not require a gradient (a fitted
    :class:`~implicit_geom.learning.NeuralImplicitManifold` outside ``fit``)
    are never touched.

    The manifold is also a ``torch.nn.Module``: an ``f`` that is a module, and
    the parameters of closed forms (centres, radii) are its submodules and
    buffers, so ``.to(device, dtype)``, ``state_dict`` and ``load_state_dict``
    work as in torch. Computations run in the manifold's :attr:`dtype`
    (float64 unless moved) on the device of the input; results come back in
    the dtype of the input. Tolerances never go below what the working dtype
    can resolve (:meth:`tol_for`).
    """

    #: Box draws projected to find the connected components by sampling.
    component_samples = 3000

    #: Length scale (half the widest side of :attr:`bounds`) down to which the
    #: absolute tolerances (``tol``, the on-manifold and integrator tolerances
    #: of the metric) apply as given; below it they shrink in proportion (see
    #: :attr:`tol_scale`).
    ABSOLUTE_LENGTH = 0.1

    def __init__(self, f, ambient_dim, codim=1, *, tol=1e-10, max_iter=50,
                 bounds=None, equip=True, name=None):
        if int(ambient_dim) <= int(codim) or int(codim) < 1:
            raise ValueError(
                f"need 1 <= codim < ambient_dim, got codim={codim}, ambient_dim={ambient_dim}"
            )
        nn.Module.__init__(self)
        self._f = f  # registered as a submodule when it is an nn.Module
        self.ambient_dim = int(ambient_dim)
        self.codim = int(codim)
        self.tol = float(tol)
        self.closest_tol = 10 * float(tol)
        self.max_iter = int(max_iter)
        # Carries the manifold's dtype and device through .to() even when it
        # has no parameters (a plain callable); not part of the state.
        self.register_buffer("_probe", torch.zeros(0, dtype=DTYPE), persistent=False)
        self.register_buffer("_low", None, persistent=False)
        self.register_buffer("_high", None, persistent=False)
        self._call_scale = None  # see local_scale
        self.bounds = bounds
        self._components = self._curves = None
        self.name = name or type(self).__name__
        LevelSet.__init__(self, dim=self.ambient_dim - self.codim, equip=equip)
        if isinstance(f, nn.Module):
            self._adopt_precision(f)

    def _adopt_precision(self, module):
        """Work in the dtype and on the device of a module F's parameters."""
        tensor = next((t for t in (*module.parameters(), *module.buffers())
                       if t.is_floating_point()), None)
        if tensor is not None:
            self._probe = self._probe.to(tensor.device, tensor.dtype)
            if self._low is not None:
                self.bounds = (self._low, self._high)

    def __repr__(self):
        return (f"{self.name}(ambient_dim={self.ambient_dim}, codim={self.codim}, "
                f"dim={self.dim})")

    # ------------------------------------------------------------ torch module
    @property
    def dtype(self):
        """Working dtype of the computations (float64 unless moved with ``.to``)."""
        return self._probe.dtype

    @property
    def device(self):
        """Device of the manifold's parameters and buffers."""
        return self._probe.device

    @property
    def bounds(self):
        """``(low, high)`` corners of a box containing M, or None."""
        return None if self._low is None else (self._low, self._high)

    @bounds.setter
    def bounds(self, value):
        if value is None:
            self._low = self._high = None
            self._tol_scale = 1.0
            return
        low, high = (torch.as_tensor(b, dtype=self.dtype).to(self.device)
                     .expand(self.ambient_dim).clone() for b in value)
        self._low, self._high = low, high
        half = 0.5 * float((high - low).max())
        self._tol_scale = min(1.0, half / self.ABSOLUTE_LENGTH) if half > 0 else 1.0

    @property
    def tol_scale(self):
        """Factor (at most 1) on the absolute tolerances, from the length scale.

        ``tol``, ``closest_tol``, :meth:`belongs`' and :meth:`is_tangent`'s
        default ``atol``, and the metric's on-manifold, integrator and shooting
        tolerances are lengths (``|F|`` of a distance-like F) fit for unit
        scale: on a sphere of radius 1e-3 the absolute ``tol = 1e-10`` is 1e-7
        of the radius, and a default ``atol = 1e-6`` accepted points 0.1% off
        it. Where :attr:`bounds` is smaller than :attr:`ABSOLUTE_LENGTH` (half
        its widest side), they are multiplied by ``half / ABSOLUTE_LENGTH``,
        so the relative accuracy stays that of a box of half-width 0.1. At and
        above that scale it is 1: unit-scale results do not move. Without
        ``bounds`` the public operations (projection, belongs, random_point,
        the metric's exp, log, dist and transport) take the length from M
        itself, its smallest radius of curvature at the points of the call
        (see :meth:`local_scale`), and the factor is that radius over
        :attr:`ABSOLUTE_LENGTH` during the call (1 where the radius is at
        least 0.1: results there do not move either).
        Large coordinates need no factor: Newton's tolerance is floored at the
        rounding of F (:meth:`tol_for`), the other checks are relative there.
        """
        call = getattr(self, "_call_scale", None)
        return self._tol_scale if call is None else min(self._tol_scale, call)

    def _normal_curvature(self, x):
        """Per flat point (B, n), an upper bound of the normal curvature
        ``|II(u, u)|`` over unit tangent vectors u, of the level set of F
        through it: ``|B^T H B|_2 / |grad F|`` for one constraint,
        ``sqrt(sum_j |S_j|_2^2)`` for several, ``S_j = sum_r W_jr B^T H_r B``
        the second fundamental form along the j-th orthonormal normal
        (``J^T = QR``, ``W = R^{-T}``; B an orthonormal tangent basis, H the
        Hessians of F). Shape (B,).

        In an orthonormal normal frame the bound does not depend on how the
        constraints are scaled or mixed; ``|B^T H_r B| / sigma_min(J)`` did:
        the unit circle ``[s (x^2 + y^2 - 1), z]`` had a bound of 2s, and
        s = 1e9 raised ScaleError on it (1e3 already tightened every
        tolerance 256-fold)."""
        jac = self._jacobian(x)
        basis = tangent_basis(jac)
        shape = self._second_forms(x, basis.transpose(1, 2))
        if shape is None:
            # Hessian of each constraint (closed forms, or autograd's double
            # backward: no torch.func start-up).
            eye = torch.eye(self.codim, dtype=x.dtype, device=x.device)
            hess = torch.stack([self._lagrangian_hessian(
                x, eye[i].expand(x.shape[0], -1)) for i in range(self.codim)], 1)
            shape = basis.transpose(1, 2)[:, None] @ hess @ basis[:, None]
        if self.codim == 1:
            norms = torch.linalg.eigvalsh(0.5 * (shape + shape.transpose(-1, -2))).abs()
            sigma = torch.linalg.svdvals(jac)[:, -1].clamp_min(1e-300)
            return norms.amax(-1).square().sum(-1).sqrt() / sigma
        r = torch.linalg.qr(jac.transpose(1, 2)).R  # (B, k, k), J^T = QR
        diag = r.diagonal(dim1=-2, dim2=-1)
        # A rank-deficient J (a singular point): a huge bound, as 1/sigma_min was.
        safe = torch.where(diag < 0, -1.0, 1.0) * diag.abs().clamp_min(1e-300)
        r = r + torch.diag_embed(safe - diag)
        eye = torch.eye(self.codim, dtype=x.dtype, device=x.device).expand_as(r)
        w = torch.linalg.solve_triangular(r.transpose(-1, -2), eye, upper=False)  # R^{-T}
        shape = torch.einsum("bjr,brpq->bjpq", w, shape)
        norms = torch.linalg.eigvalsh(0.5 * (shape + shape.transpose(-1, -2))).abs()
        return norms.amax(-1).square().sum(-1).sqrt()

    def _local_factor(self, x):
        """Per flat point (B, n), ``min(1, rho / ABSOLUTE_LENGTH)`` with rho the
        smallest radius of curvature of F's level set there (1 where flat);
        shape (B,). The length the absolute tolerances lack without bounds."""
        with torch.no_grad():
            kappa = self._normal_curvature(x).nan_to_num(0.0, posinf=0.0)
        return (1.0 / (kappa * self.ABSOLUTE_LENGTH)).clamp(max=1.0)

    def _near_singular(self, x):
        """Per flat point (B, n), whether a singular point of the zero set (F = 0
        and J rank deficient) lies about as near as the point's radius of
        curvature; shape (B,) bool.

        Near one the level sets of F curve on the distance to it (the cone
        ``x^2 + y^2 - z^2`` at 1e-9 from its apex: a radius of 1e-9), which
        is no length of M: M does not end there. Test on F's quadratic
        model along its weakest normal (w the left singular vector of
        sigma_min(J), g = w . F): its critical point ``x + d``,
        ``d = -H_g^+ grad g``, must exist (``H_g d = -grad g`` to 10%), and
        the model's zero set, the quadric ``c + y^T H_g y / 2 = 0`` around
        it (c the critical value), must be a near-cone there: its semi-axes
        ``sqrt(-2 c / lambda)`` (eigenvalues lambda of H_g of the other sign
        than c) at most a tenth of ``|d|``. A cone has c = 0 (no axes); the
        hyperboloid ``x^2 + y^2 - z^2 = e`` far from its waist sqrt(e) is one
        too. A small ellipsoid is its own quadric, semi-axes up to its longest
        one, so never: the earlier test (``|c| <= 0.1 |grad g| |d|``, i.e. the
        normal nearly orthogonal to d) took an elongated one (semi-axes 1e-6,
        1e-6, 1e-4) for singular everywhere and belongs accepted points 1% of
        its width off. ``|x - c| - r`` has no critical point (grad g is
        outside the range of H_g): not singular either."""
        value, jac = self._value_and_jacobian(x)
        u = torch.linalg.svd(jac, full_matrices=False).U[..., -1]  # (B, k)
        g = (u * value).sum(-1)
        grad = (u.unsqueeze(-1) * jac).sum(-2)
        hess = self._lagrangian_hessian(x, u)
        lam, vec = torch.linalg.eigh(0.5 * (hess + hess.transpose(-1, -2)))
        # The pseudo-inverse's cut (as pinv's rtol=1e-8): flat directions have no axis.
        keep = lam.abs() > 1e-8 * lam.abs().amax(-1, keepdim=True)
        inv = torch.where(keep, 1.0 / torch.where(keep, lam, 1.0), 0.0)
        coef = (vec.transpose(-1, -2) @ grad.unsqueeze(-1)).squeeze(-1)
        step = -(vec @ (inv * coef).unsqueeze(-1)).squeeze(-1)
        gnorm = grad.norm(dim=-1)
        model = (hess @ step.unsqueeze(-1)).squeeze(-1) + grad
        crit = g + (grad * step).sum(-1) + 0.5 * (step * (hess @ step.unsqueeze(-1))
                                                  .squeeze(-1)).sum(-1)
        exists = model.norm(dim=-1) <= 0.1 * gnorm
        real = keep & (lam * crit.unsqueeze(-1) < 0)
        axis2 = torch.where(real, -2.0 * crit.unsqueeze(-1) * inv, 0.0).amax(-1)
        cone = axis2 <= 0.01 * step.square().sum(-1)
        return (exists & cone) | ~(gnorm > 0)

    def _point_factors(self, x):
        """:meth:`_local_factor` per flat point (B, n) and, where it is below 1,
        whether a singular point of the zero set explains the curvature
        (:meth:`_near_singular`); two (B,) tensors."""
        factor = self._local_factor(x)
        singular = torch.zeros_like(factor, dtype=torch.bool)
        small = (factor < 1.0).nonzero().squeeze(-1)
        if small.numel():
            with torch.no_grad():
                singular[small] = self._near_singular(x.index_select(0, small))
        return factor, singular

    def _scale_from(self, x):
        """:meth:`_local_factor`'s smallest value over flat points ``x`` (the
        finite rows), rounded down to a power of 2 (the metric caches an
        integrator per factor); 1 at unit scale. Raises ScaleError where
        float64 cannot resolve a point's length at that point's coordinates
        (each point against its own: one point near the origin is not refused
        for the others' coordinates). Near a singular point of the zero set
        (:meth:`_near_singular`) the length is the distance to it, not a
        size of M: the factor there stops at what the coordinates resolve
        instead of raising (the cone x^2 + y^2 - z^2 with one point 1e-9 from
        its apex refused the whole batch, "curves on a length of 1e-09")."""
        x = x[torch.isfinite(x).all(-1)]
        if x.shape[0] == 0:
            return 1.0
        factors, singular = self._point_factors(x)
        if not float(factors.min()) < 1.0:
            return 1.0
        # The coordinates round to eps |x|: a relative accuracy of 1e-8 of the
        # length needs eps |x| ROUNDING_FACTOR below 1e-8 length.
        spacing = torch.finfo(x.dtype).eps * x.abs().amax(-1)
        floor = (spacing / (1e-8 * self.ABSOLUTE_LENGTH)).clamp(max=1.0)
        factors = torch.where(singular, torch.maximum(factors, floor), factors)
        factor = float(factors.min())
        if not factor > 0:  # a NaN curvature tells no length
            return 1.0
        length = factors * self.ABSOLUTE_LENGTH
        bad = spacing > 1e-8 * length
        if bool(bad.any()):
            i = int(torch.where(bad, spacing / length, 0.0).argmax())
            raise ScaleError(
                f"{self.name} curves on a length of {float(length[i]):.3g} (its smallest "
                f"radius of curvature at a point with coordinates up to "
                f"{float(x[i].abs().max()):.3g}, and no singular point of the zero set "
                f"explains it: M is that small there), which {x.dtype} coordinates there "
                f"resolve only to {float(spacing[i]):.2g}; results would be off by more "
                "than 1e-8 of that length. Shift and rescale the data (and the defining "
                "function) to unit size.")
        return 2.0 ** math.floor(math.log2(factor))

    @contextlib.contextmanager
    def local_scale(self, *points):
        """Inside, :attr:`tol_scale` is at most the local factor of ``points``.

        Without :attr:`bounds` the manifold has no length scale of its own:
        the absolute tolerances (``tol`` 1e-10, ``atol`` 1e-6, the
        integrator's) are fit for unit size, and a sphere of radius 1e-6 given
        as a plain callable came out several per mille (projection) to a
        few 1e-6 (exp, transport) of its radius off, and ``belongs`` accepted
        points 0.1% off it. Here the length is M's smallest radius of
        curvature at ``points`` (flat (B, n) tensors on or near M), and the
        tolerances shrink by it as by a box of that half-width (see
        :attr:`tol_scale`); where it is 0.1 or more, nothing changes. With
        ``bounds`` (the scale given) this does nothing. Nested calls keep the
        smallest factor.

        Raises
        ------
        ScaleError
            Where the length is below what the coordinates resolve (a tiny M
            far from the origin): results could not be within 1e-8 of it.
        """
        if self.bounds is not None:
            yield
            return
        with torch.no_grad():
            factor = self._scale_from(torch.cat([p.detach().reshape(-1, self.ambient_dim)
                                                 .to(self.dtype) for p in points]))
        prev = getattr(self, "_call_scale", None)
        self._call_scale = factor if prev is None else min(prev, factor)
        try:
            yield
        finally:
            self._call_scale = prev

    def forward(self, point):
        """``F(point)`` with autograd (through the points and any parameters of F).

        Unlike :meth:`submersion`, this builds a graph: use it to train or to
        differentiate the defining function itself.
        """
        x = as_points(point, self.ambient_dim)
        value = self._value(x.reshape(-1, self.ambient_dim).to(self.dtype))
        return value.reshape(*x.shape[:-1], self.codim).to(x.dtype)

    def tol_for(self, dtype=None):
        """``tol`` floored at what ``dtype`` (default: :attr:`dtype`) resolves.

        A float32 manifold cannot reach ``|F| <= 1e-10``; its solvers stop at
        ``64 eps`` instead of failing.

        This absolute floor is not all: every Newton solve also accepts a point
        whose ``|F|`` is below the rounding of F at that point,
        ``64 eps |J(x)|_F |x|`` (:func:`~implicit_geom.numerics.newton.rounding_floor`),
        computed per point from the Jacobian Newton already has. At large
        coordinates an absolute ``tol`` is unreachable: a circle of radius
        1e4 given as ``|x|^2 - r^2`` has ``|F| ~ 1e-8`` at the float64 points
        closest to it (``|J| |x| = 2e8``). Such a point is accepted as on M:
        within about ``64 eps |x|`` times the condition number of J, i.e. as
        close as the dtype represents. At unit scale the floor is about
        1e-14, below ``tol``, and changes nothing. :meth:`belongs` and the
        metric's on-manifold checks accept the same points.
        """
        dtype = self.dtype if dtype is None else dtype
        return max(self.tol, 64 * torch.finfo(dtype).eps) * self.tol_scale

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.invalidate_caches()  # cached samples live on the old device/dtype
        return out

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """``nn.Module.load_state_dict``; also forgets cached components and
        re-derives a default box from the new parameters."""
        self.invalidate_caches()
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if getattr(self, "_auto_bounds", False):
            self.bounds = self._default_bounds()
        return out

    def _default_bounds(self):
        """Box derived from the parameters (closed forms), or None."""
        return None

    def _fingerprint_params(self):
        """The parameters that define the zero set, by name (numbers, text,
        tensors, lists of them): a checkpoint records them with the state
        dict (:func:`~implicit_geom.manifolds.state._state_fingerprint`)
        and its load refuses a manifold whose parameters differ. Subclasses
        add those that are not tensors of the state dict (expressions,
        wrapped spaces' sizes); a plain F is recorded by its values at probe
        points (:func:`~implicit_geom.learning.checkpoint.manifold_identity`)."""
        return {}

    def invalidate_caches(self):
        """Forget what was computed from F once (sampled components, curve
        tables): call after changing F in place (e.g. training its weights).
        Also counts the calls, so that caches of others watching this
        manifold (a union's overlap check) see edits their tensors' version
        counters miss (through ``.data``)."""
        self._components = self._curves = None
        self._cache_generation = getattr(self, "_cache_generation", 0) + 1

    def _curve_tracer(self):
        """Arc-length tables of a curve (dim 1), traced on demand and cached."""
        from .curves import CurveTracer  # curves.py builds on this module

        if self._curves is None:
            self._curves = CurveTracer(self)
        return self._curves

    @staticmethod
    def from_sympy(exprs, symbols, **kwargs):
        """Implicit manifold ``{exprs = 0}`` (see :func:`implicit_geom.from_sympy`)."""
        from .analytic import from_sympy  # analytic.py builds on this module

        return from_sympy(exprs, symbols, **kwargs)

    # ------------------------------------------------------------------ hooks
    # Subclasses with closed forms override these three; everything else is
    # built on them. All take flat batches (B, n) and return (B, k)-shaped data.
    def _value(self, x):
        # Checked here, where every solver evaluates F: a codim-1 f returning
        # shape (B,) crashed projection/to_tangent/exp in torch's expand.
        return self._check_value(self._f(x), x.shape[0])

    def _value_and_jacobian(self, x):
        return autodiff.jacobian(self._value, x)

    def _jacobian(self, x):
        """``J(x)``, shape (B, k, n) (closed forms may skip computing F)."""
        return self._value_and_jacobian(x)[1]

    def _second_derivative(self, x, v):
        """``D^2F(x)[v, v]``, shape (B, k)."""
        return autodiff.second_directional_derivative(self._value, x, v)

    def _jacobian_and_second_derivative(self, x, v):
        """``J(x)`` and ``D^2F(x)[v, v]`` together (the geodesic acceleration).

        Subclasses whose hooks are closed forms combine them; a plain callable
        gets both from one forward and two backward passes.
        """
        if type(self)._second_derivative is ImplicitManifold._second_derivative and \
                type(self)._value_and_jacobian is ImplicitManifold._value_and_jacobian:
            return autodiff.jacobian_and_second_derivative(self._value, x, v)
        return self._jacobian(x), self._second_derivative(x, v)

    def _lagrangian_hessian(self, x, lam):
        """Hessian of ``lam . F`` at x, shape (B, n, n)."""
        return autodiff.lagrangian_hessian(self._value, x, lam)

    def _hessians(self, x):
        """Hessian of each constraint, shape (B, k, n, n) (curvature needs all k)."""
        return autodiff.hessians(self._value, x)

    def _second_forms(self, x, dirs):
        """``D^2F(x)[d_i, d_j]`` (B, k, m, m) for directions ``dirs`` (B, m, n)
        where the space has them in closed form and cheaper than a Hessian,
        else None."""
        return None

    def _curvature_bound(self):
        """A bound on the normal curvature ``|II(u, u)|`` (unit u) over all of
        M in closed form, or None (then it is sampled where needed)."""
        return None

    # ---------------------------------------------------------------- helpers
    def default_metric(self):
        """Induced (pull-back of the Euclidean) metric."""
        from .metric import ImplicitMetric

        return ImplicitMetric

    def _define_embedding_space(self):
        return Euclidean(self.ambient_dim, equip=False)

    def _flat(self, point, name="point"):
        point = as_points(point, self.ambient_dim, name)
        return point.reshape(-1, self.ambient_dim).to(self.dtype), point.shape[:-1]

    def _check_value(self, value, n_points):
        if value.shape != (n_points, self.codim):
            raise InvalidPointError(
                f"the defining function returned shape {tuple(value.shape)} for "
                f"{n_points} points; expected ({n_points}, {self.codim}). Check "
                "ambient_dim/codim and that f maps (..., n) to (..., k)."
            )
        return value

    def value_and_jacobian(self, point):
        """``F`` and its Jacobian at a batch of points.

        Returns
        -------
        value : torch.Tensor, shape=[..., k]
        jacobian : torch.Tensor, shape=[..., k, n]
        """
        x, batch = self._flat(point)
        dtype = _dtype_of(point)
        with torch.no_grad():
            value, jac = self._value_and_jacobian(x)
        self._check_value(value, x.shape[0])
        return (value.reshape(*batch, self.codim).to(dtype),
                jac.reshape(*batch, self.codim, self.ambient_dim).to(dtype))

    def jacobian(self, point):
        """Jacobian ``J(x)`` of the submersion, shape ``(..., k, n)``."""
        return self.value_and_jacobian(point)[1]

    # ------------------------------------------------------- geomstats LevelSet
    def submersion(self, point):
        """Defining function ``F(x)``, shape ``(..., k)``."""
        x, batch = self._flat(point)
        with torch.no_grad():
            value = self._check_value(self._value(x), x.shape[0])
        return value.reshape(*batch, self.codim).to(_dtype_of(point))

    def tangent_submersion(self, vector, point):
        """``J(x) v``, shape ``(..., k)``."""
        x, v, batch = self._pair(point, vector)
        with torch.no_grad():
            out = self._value_and_jacobian(x)[1] @ v.unsqueeze(-1)
        return out.reshape(*batch, self.codim).to(_dtype_of(point))

    def _check_regular(self, x, what):
        """Raise :class:`SingularJacobianError` where flat points ``x`` are
        not regular points of M (a union's pieces meet there); nothing here."""

    def _pair(self, point, vector, names=("point", "vector")):
        point = as_points(point, self.ambient_dim, names[0])
        vector = as_points(vector, self.ambient_dim, names[1])
        point, vector = broadcast_points(point, vector, names=names)
        batch = point.shape[:-1]
        return (point.reshape(-1, self.ambient_dim).to(self.dtype),
                vector.reshape(-1, self.ambient_dim).to(self.dtype), batch)

    def belongs(self, point, atol=None):
        """Whether ``|F(x)| <= atol``, shape ``(...,)``.

        ``atol`` defaults to ``1e-6`` times :attr:`tol_scale` (1 at unit scale).
        Where ``sigma_min(J)`` is below 0.1 (F, or one of its constraints, in
        small units, e.g. ``|x|^2 - r^2`` on a small sphere) it is multiplied
        by ``sigma_min(J) / 0.1``, as Newton's
        ``tol`` (:data:`~implicit_geom.numerics.newton.JACOBIAN_REFERENCE`).

        Points of the wrong shape (last axis not ``ambient_dim``) do not
        belong: False per batch entry, as geomstats' spaces answer.
        """
        wrong = _wrong_shape(point, self.ambient_dim)
        if wrong is not None:
            return wrong
        default = atol is None
        atol = 1e-6 * self.tol_scale if default else atol
        x, batch = self._flat(point)
        with torch.no_grad():
            residual = self._check_value(self._value(x), x.shape[0]).norm(dim=-1)
            inside = self._within(x, residual, atol, f_units=True)
            if default and self.bounds is None and bool(inside.any()):
                # No box tells the scale: the default atol is relative to M's
                # radius of curvature at each accepted point (local_scale).
                # Without it a sphere of radius 1e-6 accepted points 0.1% off.
                idx = inside.nonzero().squeeze(-1)
                sub = x.index_select(0, idx)
                # Near a singular point of the zero set the radius of curvature
                # is the distance to it, no size of M: the unit-scale atol (the
                # cone's apex + 3e-8 z was refused).
                factor, singular = self._point_factors(sub)
                factor = factor.masked_fill(singular, 1.0)
                if bool((factor < 1).any()):
                    again = self._within(sub, residual.index_select(0, idx), atol * factor,
                                         f_units=True)
                    inside = inside.index_copy(0, idx, again)
        return inside.reshape(batch)

    def _within(self, x, residual, atol, f_units=False):
        """Mask over flat points ``x`` (B, n) with ``|F|`` (``residual``) at most
        ``atol``, or at most F's rounding there (large coordinates, see
        :meth:`tol_for`): the one on-manifold test of :meth:`belongs`, the
        metric's checks and the samplers' emitted points, as Newton accepts them.

        ``f_units``: ``atol`` is multiplied by ``min(1, sigma_min(J) / 0.1)`` at the
        rows it accepts, as Newton's ``tol`` (F in small units: ``|F| <= atol``
        is no distance there). Costs a Jacobian at those rows: the geometry
        API's checks (belongs, the metric's) use it, the samplers' per-sample
        checks of Newton's own output do not."""
        if not f_units:
            inside = residual <= atol
            return inside | self._at_rounding_floor(x, residual, ~inside)
        if x.shape[0] == 0:
            return residual <= atol
        # Every row needs |J|_F: those within atol for the factor, the others
        # for the rounding floor; one evaluation serves both.
        jac = self._jacobian(x)
        jnorm = torch.linalg.matrix_norm(jac)
        return ((residual <= atol * tol_factor_of(jac, jnorm))
                | (residual <= floor_from_norm(x, jnorm)))

    def _at_rounding_floor(self, x, residual, rows):
        """Mask over flat points ``x`` (B, n) of those among ``rows`` whose ``|F|``
        (``residual``) is at most :func:`~implicit_geom.numerics.newton.rounding_floor`
        there: on M as far as the dtype tells (see :meth:`tol_for`). J is
        evaluated at those rows only (none, usually)."""
        out = torch.zeros_like(rows)
        idx = rows.nonzero().squeeze(-1)
        if idx.numel():
            sub = x.index_select(0, idx)
            out[idx] = residual.index_select(0, idx) <= rounding_floor(sub, self._jacobian(sub))
        return out

    def _scale_note(self, x):
        """A sentence for error messages when flat points ``x`` are at a length
        scale where float64 cannot meet ``tol`` (or their coordinates are large,
        where the damped Newton also crawls from far points); else ``""``."""
        x = x[torch.isfinite(x).all(-1)]
        if x.shape[0] == 0:
            return ""
        with torch.no_grad():
            floor = float(rounding_floor(x, self._jacobian(x)).nan_to_num(0.0).max())
        extent = float(x.abs().max())
        if not (floor > 0.1 * self.tol_for() or extent >= 1e3):
            return ""
        return (f" At this length scale (coordinates up to {extent:.3g}) float64 resolves |F| "
                f"only to about {floor:.2g} ({ROUNDING_FACTOR} eps |J| |x|, accepted in place of "
                f"tol={self.tol_for():g}), and the damped Newton crawls from points many "
                "length units off M: rescale the data (e.g. to unit spread, km instead of m) "
                "or the defining function.")

    def _failure_note(self, end):
        """A sentence on why Newton may have failed where it stopped (``end``:
        the failed points' last iterates, flat), for ProjectionError
        messages, or ``""``: intersections name their crossing condition."""
        return ""

    def _failure_suffix(self, end):
        """:meth:`_failure_note` as a message suffix (``""`` when it has none)."""
        note = self._failure_note(end)
        return f" {note}" if note else ""

    def is_tangent(self, vector, base_point, atol=None):
        """Whether ``|J(x) v| <= atol``, shape ``(...,)`` (False for wrong shapes).

        ``atol`` defaults to ``1e-6`` times :attr:`tol_scale` (1 at unit scale).
        """
        wrong = _wrong_shape(vector, self.ambient_dim)
        if wrong is not None:
            return wrong
        atol = 1e-6 * self.tol_scale if atol is None else atol
        return self.tangent_submersion(vector, base_point).norm(dim=-1) <= atol

    def to_tangent(self, vector, base_point):
        """Orthogonal projection of ``vector`` onto ``ker J(base_point)``.

        Raises
        ------
        SingularJacobianError
            Where ``J`` is rank deficient (no tangent space).
        """
        x, v, batch = self._pair(base_point, vector, ("base_point", "vector"))
        if needs_grad(x, v):
            out = TangentProjection.apply(self, x, v)
        else:
            with torch.no_grad():
                out = tangent_projector(self._jacobian(x), v)
        return out.reshape(*batch, self.ambient_dim).to(_dtype_of(vector, base_point))

    def random_tangent_vec(self, base_point, n_samples=1):
        """Gaussian ambient vectors projected onto the tangent space.

        geomstats' convention: one base point ``(n,)`` and ``n_samples > 1``
        give ``(n_samples, n)`` vectors at that point; a batch of base points
        gives one vector per point, and ``n_samples`` must then be 1 or the
        batch size.

        Raises
        ------
        InvalidPointError
            If ``n_samples > 1`` differs from the number of base points.
        """
        base_point = as_points(base_point, self.ambient_dim, "base_point")
        if base_point.ndim > 1 and n_samples > 1 and n_samples != base_point.shape[0]:
            raise InvalidPointError(
                f"random_tangent_vec: {n_samples} samples for {base_point.shape[0]} base "
                "points; pass one base point or n_samples equal to their number.")
        # The sample axis is a batch axis: (n_samples,) alone was a single
        # vector of length n_samples (wrong shape, or silently one vector when
        # n_samples == n).
        shape = ((n_samples, self.ambient_dim) if base_point.ndim == 1 and n_samples > 1
                 else base_point.shape)
        vec = torch.randn(shape, dtype=base_point.dtype, device=base_point.device)
        return self.to_tangent(vec, base_point)

    # ------------------------------------------------------ connected components
    @property
    def n_components(self):
        """Number of connected components of M.

        Closed forms and unions know it by construction; other manifolds find
        it by sampling their box (see :meth:`sampled_components`).

        Raises
        ------
        ComponentError
            When it cannot be determined (no box to sample).
        """
        known = self._known_n_components()
        if known is not None:
            return known
        return self.sampled_components().n_components

    def _known_n_components(self):
        """Number of components known by construction, or None (sample them)."""
        return None

    def component_of(self, point):
        """Label in ``0 .. n_components - 1`` of the component of each point.

        Parameters
        ----------
        point : array-like, shape=[..., n]
            Points on M.

        Returns
        -------
        labels : torch.Tensor of int64, shape=[...]
            ``-1`` where a sampled component map cannot tell (a point farther
            than its linking radius from every sample, e.g. off M or outside
            the sampled box).

        Raises
        ------
        ComponentError
            When the components cannot be determined (no box to sample).
        """
        x, batch = self._flat(point)
        with torch.no_grad():
            labels = self._component_labels(x)
        return labels.reshape(batch)

    def _component_labels(self, x):
        """Labels of flat points (B, n); the default looks up sampled components."""
        if self._known_n_components() == 1:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.sampled_components().labels_of(x)

    def components_known(self):
        """Whether :meth:`component_of` can answer without raising."""
        return self._known_n_components() is not None or self.bounds is not None

    def sampled_components(self, n_samples=None, seed=0):
        """Connected components found by sampling M inside :attr:`bounds` (cached).

        Uniform box points are projected onto M and linked within a radius of
        a few sample spacings; the components of that graph (with at least a
        handful of samples) are the manifold's at that resolution (see
        :mod:`implicit_geom.manifolds.components`).

        Raises
        ------
        ComponentError
            Without :attr:`bounds`, or when no samples land on M in the box.
        """
        from .components import ComponentMap  # components.py builds on this module

        n_samples = self.component_samples if n_samples is None else int(n_samples)
        cached = self._components
        if cached is not None and cached.n_draws == n_samples and cached.seed == seed:
            return cached
        if self.bounds is None:
            raise ComponentError(
                f"the connected components of {self.name} are unknown: it has no box "
                "(bounds) to sample them in; pass bounds=(low, high) when building it.")
        self._components = ComponentMap.sample(self, n_samples, seed=seed)
        return self._components

    def regularize(self, point):
        """Points are kept in ambient coordinates: nothing to regularize."""
        return point

    # ---------------------------------------------------------------- projection
    def solve_projection(self, point, closest=True, max_refine=100, far=False):
        """Project points onto M and report per-point convergence (no exception).

        Minimum-norm Gauss-Newton lands each point on the zero set; with
        ``closest`` it then alternates a tangential correction toward the
        original point and a re-landing until the displacement is normal to M
        (the first-order condition of the closest point).

        Parameters
        ----------
        point : array-like, shape=[..., n]
        closest : bool
            Refine to the closest point (else: the foot of the Newton path).
        max_refine : int
            Cap on tangential refinements.
        far : bool
            Land the points the damped Newton does not land again, with the
            damping capped at ``|J|^2`` (see :func:`newton_min_norm`): points
            several length units off M, whatever its size. Points the first
            landing reaches are unchanged. :meth:`projection` uses it.

        Returns
        -------
        NewtonResult
            Fields shaped like the batch; ``converged`` requires ``|F| <= tol``
            and, with ``closest``, a tangential displacement below ``closest_tol``
            (each floored per point at the rounding of F, resp. of the
            coordinates, there: see :meth:`tol_for`). ``jac`` is ``J`` at the
            returned points where they converged (from the solve, in the
            manifold's dtype); ``value`` is not returned.
        """
        x0, batch = self._flat(point)
        with torch.no_grad():
            res = newton_min_norm(self._value_and_jacobian, x0, self.tol_for(), self.max_iter)
            if far and not bool(res.converged.all()):
                res = self._land_far(x0, res)
            with self._scale_of_landing(res):
                if self.tol_scale < 1.0 and self.bounds is None:
                    # Landed to an absolute tol that is no accuracy at M's
                    # length (local_scale): land again from there to the
                    # tolerance of that length.
                    res = self._land_again(res)
                if closest:
                    res = self._refine_closest(x0, res, max_refine)
        return NewtonResult(
            x=res.x.reshape(*batch, self.ambient_dim).to(_dtype_of(point)),
            converged=res.converged.reshape(batch),
            residual=res.residual.reshape(batch),
            n_iter=res.n_iter.reshape(batch),
            jac=res.jac.reshape(*batch, self.codim, self.ambient_dim),
        )

    def _scale_of_landing(self, res):
        """:meth:`local_scale` of the landed points of ``res`` (a no-op with
        bounds, or when none landed)."""
        if self.bounds is not None or not bool(res.converged.any()):
            return contextlib.nullcontext()
        return self.local_scale(res.x[res.converged])

    def _land_again(self, res):
        """Newton from the converged rows of ``res`` at the current (tighter) tol."""
        good = res.converged.nonzero().squeeze(-1)
        sub = newton_min_norm(self._value_and_jacobian, res.x[good], self.tol_for(),
                              self.max_iter)
        return NewtonResult(x=res.x.index_copy(0, good, sub.x),
                            converged=res.converged.index_copy(0, good, sub.converged),
                            residual=res.residual.index_copy(0, good, sub.residual),
                            n_iter=res.n_iter.index_copy(0, good, res.n_iter[good] + sub.n_iter),
                            jac=res.jac.index_copy(0, good, sub.jac))

    def _land_far(self, x0, res):
        """Land the rows of ``res`` that failed again, from ``x0``, with capped damping."""
        bad = (~res.converged).nonzero().squeeze(-1)
        sub = newton_min_norm(self._value_and_jacobian, x0[bad], self.tol_for(),
                              self.max_iter, capped_damping=True)
        return NewtonResult(x=res.x.index_copy(0, bad, sub.x),
                            converged=res.converged.index_copy(0, bad, sub.converged),
                            residual=res.residual.index_copy(0, bad, sub.residual),
                            n_iter=res.n_iter.index_copy(0, bad, res.n_iter[bad] + sub.n_iter),
                            jac=res.jac.index_copy(0, bad, sub.jac))

    def _refine_closest(self, x0, res, max_refine):
        """Newton on the closest-point (KKT) conditions from the landed points.

        At the closest point y, ``x0 - y = J(y)^T lam`` and ``F(y) = 0``. Each
        iteration takes the least-squares multipliers, a Newton step on the
        KKT system (with the Hessian of ``lam . F``: quadratic convergence,
        unlike alternating tangent/normal corrections whose rate is distance
        times curvature), and re-lands on M with minimum-norm Newton. The
        result's ``jac`` is ``J`` at the closest points, as the last pass
        evaluated it (NaN where a point did not converge).
        """
        y, converged = res.x, res.converged.clone()
        final_jac = torch.full_like(res.jac, math.nan)
        residual, n_iter = res.residual, res.n_iter
        n, k = self.ambient_dim, self.codim
        tol = self.tol_for()
        closest_tol = max(self.closest_tol * self.tol_scale, 10 * tol)
        pending = converged.clone()
        for _ in range(max_refine):
            idx = pending.nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            value, jac = self._value_and_jacobian(y[idx])
            disp = x0[idx] - y[idx]
            lam = gram_solve(jac, (jac @ disp.unsqueeze(-1)).squeeze(-1), check=False)
            tangential = disp - (jac.transpose(-1, -2) @ lam.unsqueeze(-1)).squeeze(-1)
            # The foot point is off the closest point by about |tangential|,
            # which cannot go below the rounding of the coordinates (tol_for).
            done = tangential.norm(dim=-1) <= (
                (ROUNDING_FACTOR * torch.finfo(y.dtype).eps)
                * (y[idx].norm(dim=-1) + disp.norm(dim=-1))).clamp(min=closest_tol)
            pending[idx[done]] = False
            final_jac[idx[done]] = jac[done]
            keep = ~done
            idx, value, jac, lam, tangential = (t[keep] for t in (idx, value, jac, lam, tangential))
            if idx.numel() == 0:
                break
            kkt = torch.zeros(idx.numel(), n + k, n + k, dtype=y.dtype, device=y.device)
            kkt[:, :n, :n] = torch.eye(n, dtype=y.dtype, device=y.device) + \
                self._lagrangian_hessian(y[idx], lam)
            kkt[:, :n, n:] = jac.transpose(-1, -2)
            kkt[:, n:, :n] = jac
            rhs = torch.cat([tangential, -value], dim=-1)
            sol, info = torch.linalg.solve_ex(kkt, rhs.unsqueeze(-1))
            step = sol.squeeze(-1)[:, :n]
            # Fall back to the plain tangential correction where the KKT matrix
            # is singular (a degenerate critical point of the distance).
            step = torch.where((info == 0)[:, None] & torch.isfinite(step), step, tangential)
            sub = self._safeguarded_landing(x0[idx], y[idx], step, tangential, tol)
            y[idx], residual[idx] = sub.x, sub.residual
            n_iter[idx] += sub.n_iter
            converged[idx] &= sub.converged
            pending[idx] &= sub.converged
        converged &= ~pending
        return NewtonResult(x=y, converged=converged, residual=residual, n_iter=n_iter,
                            jac=final_jac)

    def _safeguarded_landing(self, x0, y, step, fallback, tol, max_halvings=8):
        """Re-land ``y + step`` on M where that brings the point closer to ``x0``,
        else ``y`` plus the halved Newton step, then the (halved) ``fallback``.

        The closest point lies within ``|x0 - y|`` of ``x0`` for any ``y`` on M,
        so an iterate that lands farther away is rejected. The KKT Newton step
        is not a descent direction where ``I + lam . D^2F`` is indefinite on
        the tangent space (``x0`` beyond a focal point of M, about a radius of
        curvature away): undamped, it crept uphill forever or ran off to a far
        part of the zero set. ``fallback`` is the tangential displacement, a
        descent direction, so small enough multiples of it always decrease the
        distance.
        """
        trials = [0.5] + [2.0 ** -j for j in range(max_halvings)]
        sub = newton_min_norm(self._value_and_jacobian, y + step, tol, self.max_iter)
        x, residual, n_iter, conv = sub.x.clone(), sub.residual.clone(), sub.n_iter, \
            sub.converged.clone()
        before = torch.linalg.vector_norm(x0 - y, dim=-1)
        for j, factor in enumerate(trials):
            after = torch.linalg.vector_norm(x0 - x, dim=-1)
            bad = (~conv | ~(after <= before * (1 + 1e-9) + 1e-15)).nonzero().squeeze(-1)
            if bad.numel() == 0:
                break
            direction = step if j == 0 else fallback
            retry = newton_min_norm(self._value_and_jacobian, y[bad] + factor * direction[bad],
                                    tol, self.max_iter)
            x[bad], residual[bad], conv[bad] = retry.x, retry.residual, retry.converged
            n_iter = n_iter + torch.zeros_like(n_iter).index_add_(0, bad, retry.n_iter)
        return NewtonResult(x=x, converged=conv, residual=residual, n_iter=n_iter)

    def projection(self, point):
        """Closest point on M (Newton projection), shape ``(..., n)``.

        Differentiable in ``point`` and in any parameter or buffer of F that
        requires a gradient (implicit-function theorem on the closest-point
        conditions; see :mod:`implicit_geom.manifolds.ift`).

        Raises
        ------
        ProjectionError
            If some point cannot be projected (Newton did not reach ``|F| <= tol``
            within ``max_iter``, e.g. far from M or at a critical point of F).
        """
        x, batch = self._flat(point)
        params = trainable_tensors(self) if torch.is_grad_enabled() else []
        if needs_grad(x) or params:
            y = ClosestPoint.apply(self, x, *params)
        else:
            y = self._project_flat(x)
        return y.reshape(*batch, self.ambient_dim).to(_dtype_of(point))

    def _project_flat(self, x):
        """Closest points of a flat batch (no autograd), or ProjectionError."""
        res = self.solve_projection(x, far=True)
        if not bool(res.converged.all()):
            n_bad = int((~res.converged).sum())
            raise ProjectionError(
                f"{n_bad} of {res.converged.numel()} point(s) could not be projected "
                f"onto {self.name} (|F| <= {self.tol_for():g} within {self.max_iter} Newton "
                f"iterations); largest residual {float(res.residual.nan_to_num(math.inf).max()):.3g}."
                + self._scale_note(x[~res.converged])
                + self._failure_suffix(res.x[~res.converged]),
                failed=~res.converged, residual=res.residual, points=res.x,
            )
        self._check_projected(res)
        return res.x

    def _check_projected(self, res):
        """Checks on a projection's closest points ``res.x`` (all converged;
        ``res.jac``, their Jacobian from the solve, may be None): none here,
        intersections check how their pieces cross."""

    def random_point(self, n_samples=1, bound=1.0, max_rounds=20):
        """Points on M: uniform draws in a box, projected (not uniform on M).

        The box is ``bounds`` when set, else ``[-bound, bound]^n``; draws that
        cannot be projected are replaced by fresh ones.

        Raises
        ------
        ProjectionError
            Without ``bounds``, where M does not meet ``[-bound, bound]^n`` and
            the draws collapse onto a patch of it far away (see
            :meth:`_check_draw_box`).
        """
        low, high = self.bounds if self.bounds is not None else (
            torch.full((self.ambient_dim,), -bound, dtype=self.dtype, device=self.device),
            torch.full((self.ambient_dim,), bound, dtype=self.dtype, device=self.device))

        def draw(k):
            return low + (high - low) * torch.rand(k, self.ambient_dim, dtype=low.dtype,
                                                   device=low.device)

        out = self.project_draws(draw, n_samples, max_rounds)
        if self.bounds is None:
            self._check_draw_box(out, low, high, draw, max_rounds)
        return out[0] if n_samples == 1 else out

    #: Fewest landed points whose spread :meth:`_check_draw_box` judges.
    BOX_CHECK_SAMPLES = 8

    def _check_draw_box(self, points, low, high, draw, max_rounds):
        """ProjectionError where the default box of :meth:`random_point` does
        not meet M and its draws collapse onto a patch of M far away: none of
        the landed ``points`` inside the box, their spread below a tenth of the
        box's widest side, and their distance to the box above that side. A
        unit sphere around (1e5, 0, 0) returned only points within 1e-5 of
        (99999, 0, 0), silently. M outside a box it does not enclose but
        faces with a wide patch (a torus around a box in its hole, a plane
        nearby) passes. With fewer than :attr:`BOX_CHECK_SAMPLES` points,
        fresh draws (used only for this check) are projected to judge the
        spread."""
        tiny = 1e-12 * float((high - low).abs().max().clamp_min(1.0))
        if bool(((points >= low - tiny) & (points <= high + tiny)).all(-1).any()):
            return
        if points.shape[0] < self.BOX_CHECK_SAMPLES:
            points = torch.cat([points, self.project_draws(
                draw, self.BOX_CHECK_SAMPLES - points.shape[0], max_rounds)])
            if bool(((points >= low - tiny) & (points <= high + tiny)).all(-1).any()):
                return
        width = float((high - low).max())
        spread = float((points.amax(0) - points.amin(0)).max())
        gap = float(torch.maximum(low - points, points - high).clamp_min(0).norm(dim=-1).min())
        if spread < 0.1 * width and gap > width:
            raise ProjectionError(
                f"{self.name} does not meet the box [{float(low.min()):g}, "
                f"{float(high.max()):g}]^{self.ambient_dim} random_point draws from (no "
                f"bounds): every draw landed at least {gap:.3g} outside it, on a patch "
                f"{spread:.3g} wide (the box is {width:g} wide), so the points would cover "
                "only the part of M nearest the box. Give bounds (or a box with "
                "bound=...) that enclose the manifold.", points=points)

    def project_draws(self, draw, n_samples, max_rounds=20):
        """``n_samples`` points on M from ``draw(k)`` (k ambient points), projected.

        Draws whose Newton landing fails are replaced by fresh ones, up to
        ``max_rounds`` rounds.

        Raises
        ------
        ProjectionError
            If some draws still cannot be projected after ``max_rounds``.
        ValueError
            ``n_samples`` or ``max_rounds`` not a whole number >= 1 (-1 reached
            torch's "negative dimension" error, 0 an empty-point error).
        """
        n_samples = check_int(n_samples, "n_samples")
        max_rounds = check_int(max_rounds, "max_rounds")
        out, missing = None, None
        for _ in range(max_rounds):
            batch = draw(n_samples if missing is None else missing.numel())
            if out is None:
                out = torch.empty_like(batch)
                missing = torch.arange(n_samples, device=batch.device)
            # far: a draw several length units off M (any box at large
            # coordinates) is landed with capped damping instead of being
            # redrawn until max_rounds runs out.
            res = self.solve_projection(batch, closest=False, far=True)
            ok = res.converged & torch.isfinite(res.x).all(-1)
            out[missing[ok]] = res.x[ok]
            missing = missing[~ok]
            if missing.numel() == 0:
                return out
        raise ProjectionError(
            f"{missing.numel()} of {n_samples} draws could not be projected onto "
            f"{self.name} after {max_rounds} rounds; draw from a region (bounds) that "
            "encloses the manifold." + self._scale_note(batch.reshape(-1, self.ambient_dim)
                                                        .to(self.dtype))
            + self._failure_suffix(res.x[~ok]), points=res.x[~ok])

    # ------------------------------------------------------ retraction, transport
    def retraction(self, tangent_vec, base_point):
        """``x + v`` brought back to M along the normal space at ``x``.

        Raises
        ------
        ProjectionError
            If the normal-space Newton solve fails (step too long).
        """
        x, v, batch = self._pair(base_point, tangent_vec, ("base_point", "tangent_vec"))
        with torch.no_grad():
            jac = self._jacobian(x)
            res = solve_along_normals(self._value_and_jacobian, x + v, jac,
                                      self.tol_for(), self.max_iter)
        if not bool(res.converged.all()):
            raise ProjectionError(
                f"retraction failed for {int((~res.converged).sum())} point(s): the "
                "step leaves the region where the normal-space solve converges; use a "
                "shorter tangent vector.", failed=~res.converged, residual=res.residual)
        return res.x.reshape(*batch, self.ambient_dim).to(_dtype_of(tangent_vec, base_point))

    def vector_transport(self, tangent_vec, base_point, end_point):
        """Projection vector transport: ``to_tangent(v, end_point)``."""
        del base_point  # the projection transport only needs the target space
        return self.to_tangent(tangent_vec, end_point)


def _dtype_of(*arrays):
    """Result dtype for inputs ``arrays``: their promoted floating dtype (float64
    for non-tensors and integer tensors), so float32 in gives float32 out."""
    dtypes = [a.dtype for a in arrays if torch.is_tensor(a) and a.is_floating_point()]
    if len(dtypes) < len(arrays):
        dtypes.append(DTYPE)
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


def _wrong_shape(point, ambient_dim):
    """All-False answer shaped like the batch for a point of the wrong shape, else None."""
    try:
        shape = tuple(point.shape) if hasattr(point, "shape") else tuple(
            torch.as_tensor(point).shape)
    except (TypeError, ValueError, RuntimeError):
        return None
    if len(shape) == 0:
        return torch.zeros((), dtype=torch.bool)
    if shape[-1] == ambient_dim:
        return None
    device = point.device if torch.is_tensor(point) else None
    return torch.zeros(shape[:-1], dtype=torch.bool, device=device)
