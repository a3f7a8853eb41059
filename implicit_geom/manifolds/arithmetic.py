"""Manifold arithmetic (Ross et al. 2023, Sec. 5): intersections and unions.

An intersection stacks the constraints (codimensions add). A union is the set
of points on either component; its paper form for codimension 1 is the product
``F1 * F2``, whose gradient vanishes where the components meet. We keep the
product as :meth:`UnionManifold.product_submersion` but compute geometry with
the *active component* of each point (the one with the smaller ``|F_i|``), which
is a valid local defining function everywhere except where components meet;
there the tangent space is not defined and a :class:`SingularJacobianError` is
raised instead of a silently wrong answer.
"""

import math
import warnings

import torch
from torch import nn

from ..exceptions import ComponentError, ConditioningWarning, SingularJacobianError
from ..numerics.linalg import SINGULAR_RTOL
from ..numerics.newton import NewtonResult
from ..numerics.validation import as_points
from .analytic import as_implicit
from .components import sample_in_box
from .implicit import ImplicitManifold
from .state import _StateWatch


class IntersectionManifold(ImplicitManifold):
    """Intersection of implicit manifolds in the same ambient space.

    Accuracy depends on the angle at which the pieces cross: with the rows of
    each piece's Jacobian orthonormalised and stacked into ``N``, the
    crossing condition number is ``kappa = 1 / sigma_min(N)`` (``1 / sin``
    of the angle between two hypersurfaces). A projected point with
    ``|F| <= tol`` lies within about ``kappa`` times its pieces' own accuracy
    of the intersection, and the geodesic solver's normal solves lose about
    ``kappa**2 * eps`` (measured on two unit spheres, centres ``2 - gap``
    apart, against their circle of radius ``sqrt(1 - (1 - gap/2)**2)``:
    radius errors of projected points 2e-10, 7e-10, 6e-9, 7e-8 at kappa 2.3,
    7, 71, 707 with ``tol`` 1e-10; relative exp errors on the quarter circle
    3e-8, 2e-6, 1e-4, 4e-3 at kappa 7e3, 7e4, 7e5, 7e6; measured before
    Newton's tolerance shrank with ``sigma_min(J)`` below 0.1, which tightens
    the shallow crossings: upper bounds now).
    :meth:`projection`, :meth:`to_tangent` and the metric's exp, log, dist
    warn (:class:`ConditioningWarning`) where ``kappa > 10`` (the foot points
    miss the ``10 * tol`` of a closest point) and raise
    :class:`SingularJacobianError` where ``kappa > eps**-0.25`` (8e3 in
    float64: less than half the working digits survive the normal solves).
    Below that, a crossing this shallow can already make Newton fail (from
    about 5e3 on two unit spheres): the :class:`ProjectionError` then reports
    the crossing condition number where Newton stopped.
    """

    #: Crossing condition number above which a ConditioningWarning is issued.
    warn_condition = 10.0

    def __init__(self, *components, **kwargs):
        comps = [as_implicit(c) for c in components]
        if len(comps) < 2:
            raise ValueError("an intersection needs at least two manifolds")
        n = comps[0].ambient_dim
        if any(c.ambient_dim != n for c in comps):
            raise ValueError("components live in different ambient dimensions: "
                             f"{[c.ambient_dim for c in comps]}")
        codim = sum(c.codim for c in comps)
        kwargs.setdefault("tol", min(c.tol for c in comps))
        kwargs.setdefault("bounds", _common_bounds(comps, max))
        kwargs.setdefault("name", " ∩ ".join(c.name for c in comps))
        super().__init__(None, ambient_dim=n, codim=codim, **kwargs)
        self.components = nn.ModuleList(comps)  # the intersected manifolds
        # In the pieces' dtype (float32 pieces made a float64 intersection).
        self._adopt_precision(self.components)

    def _value(self, x):
        return torch.cat([c._value(x) for c in self.components], dim=-1)

    def _value_and_jacobian(self, x):
        parts = [c._value_and_jacobian(x) for c in self.components]
        return (torch.cat([p[0] for p in parts], -1), torch.cat([p[1] for p in parts], -2))

    def _second_derivative(self, x, v):
        return torch.cat([c._second_derivative(x, v) for c in self.components], dim=-1)

    def _lagrangian_hessian(self, x, lam):
        sizes = [c.codim for c in self.components]
        return sum(c._lagrangian_hessian(x, part)
                   for c, part in zip(self.components, lam.split(sizes, dim=-1)))

    def _hessians(self, x):
        return torch.cat([c._hessians(x) for c in self.components], dim=1)

    def crossing_condition(self, point):
        """Crossing condition number ``kappa`` at each point, shape ``(...,)``
        (see the class docstring; inf where a piece or the stack is singular)."""
        x, batch = self._flat(point)
        with torch.no_grad():
            kappa = self._crossing_condition(self._value_and_jacobian(x)[1])
        return kappa.reshape(batch)

    def _crossing_condition(self, jac):
        """:meth:`crossing_condition` from the stacked Jacobians ``(B, k, n)``."""
        rows = []
        singular = torch.zeros(jac.shape[0], dtype=torch.bool, device=jac.device)
        for part in jac.split([c.codim for c in self.components], dim=-2):
            _, sv, vh = torch.linalg.svd(part, full_matrices=False)
            singular |= ~(sv[..., -1] > SINGULAR_RTOL * sv[..., 0])
            rows.append(vh)  # orthonormal basis of the piece's normal space
        sigma = torch.linalg.svdvals(torch.cat(rows, dim=-2))[..., -1]
        return torch.where(singular | ~(sigma > 0), torch.inf, 1 / sigma)

    def _check_regular(self, x, what, jac=None):
        """Raise where the pieces meet too tangentially for the working dtype,
        warn where they meet at a small angle (see the class docstring).
        ``jac``, the Jacobian at ``x`` where the caller has it, is used as
        given instead of being evaluated again."""
        if jac is None:
            kappa = self.crossing_condition(x)
        else:
            with torch.no_grad():
                kappa = self._crossing_condition(jac)
        if not kappa.numel():
            return
        worst = float(kappa.max())
        limit = torch.finfo(self.dtype).eps ** -0.25
        if worst > limit:
            raise SingularJacobianError(
                f"{what}: the pieces of the intersection {self.name} meet nearly "
                f"tangentially at {int((kappa > limit).sum())} point(s) (crossing "
                f"condition number {worst:.3g} > {limit:.3g} for {self.dtype}): the "
                "normal space is too ill-determined for an accurate answer.")
        if worst > self.warn_condition:
            warnings.warn(
                f"{what}: the pieces of the intersection {self.name} meet at a small angle "
                f"(crossing condition number {worst:.3g}): points are located to about "
                f"{worst:.3g} times the pieces' own tolerance, geodesics to a relative "
                f"{worst ** 2 * torch.finfo(self.dtype).eps:.1g}.",
                ConditioningWarning, stacklevel=3)

    def to_tangent(self, vector, base_point):
        """Tangent projection, checked for a near-tangential crossing."""
        self._check_regular(self._flat(base_point)[0], "to_tangent")
        return super().to_tangent(vector, base_point)

    def _check_projected(self, res):
        # The Jacobian at the closest points comes from the solve.
        self._check_regular(res.x, "projection", jac=res.jac)

    def _failure_note(self, end):
        """Why a projection may have failed: the crossing condition number at
        ``end``, where Newton stopped (computed only on failure; below the
        raise threshold a near-tangential crossing makes Newton fail before
        :meth:`_check_regular` can name it). Projections, :meth:`random_point`
        and the samplers' starts append it to their ProjectionError."""
        with torch.no_grad():
            end = end[torch.isfinite(end).all(-1)]
            kappa = self.crossing_condition(end) if end.shape[0] else end.new_empty(0)
        if not kappa.numel():
            return "(Newton diverged: no crossing condition number to report)."
        worst = float(kappa.max())
        if worst == math.inf:
            return ("The pieces' normals are parallel where Newton stopped (crossing "
                    "condition number inf): a tangential contact or a critical point of "
                    "the constraints, the likely cause.")
        if worst > self.warn_condition:
            return (f"The pieces cross nearly tangentially where Newton stopped (crossing "
                    f"condition number up to {worst:.3g}; above {self.warn_condition:g} "
                    "projections lose about that factor of accuracy, above "
                    f"{torch.finfo(self.dtype).eps ** -0.25:.3g} they are refused in "
                    f"{self.dtype}): the likely cause.")
        return (f"The pieces cross cleanly where Newton stopped (crossing condition number "
                f"up to {worst:.3g}): not the cause.")


def _common_bounds(comps, pick):
    """Box enclosing (``max``: intersecting, union) all components that have one."""
    boxes = [c.bounds for c in comps if c.bounds is not None]
    if not boxes:
        return None
    lows = torch.stack([b[0] for b in boxes])
    highs = torch.stack([b[1] for b in boxes])
    if pick is max:  # intersection lies in every box
        return lows.amax(0), highs.amin(0)
    return lows.amin(0), highs.amax(0)


class UnionManifold(ImplicitManifold):
    """Union of implicit manifolds of equal dimension.

    Parameters
    ----------
    *components : ImplicitManifold or geomstats LevelSet
    meet_tol : float
        Points where two components have ``|F_i| <= meet_tol`` are treated as
        lying where components meet (no tangent space).

    The pieces must meet at most on a null set (crossing curves, touching
    spheres); pieces that share a part of positive measure raise
    :class:`ComponentError` when the components, a quadrature or a mixture
    of the union are first needed (:meth:`check_pieces_disjoint`).
    """

    def __init__(self, *components, meet_tol=1e-8, **kwargs):
        comps = [as_implicit(c) for c in components]
        if len(comps) < 2:
            raise ValueError("a union needs at least two manifolds")
        n, k = comps[0].ambient_dim, comps[0].codim
        if any(c.ambient_dim != n or c.codim != k for c in comps):
            raise ValueError("union components must share ambient dimension and codimension")
        self.meet_tol = meet_tol
        kwargs.setdefault("tol", min(c.tol for c in comps))
        kwargs.setdefault("bounds", _common_bounds(comps, min))
        kwargs.setdefault("name", " ∪ ".join(c.name for c in comps))
        super().__init__(None, ambient_dim=n, codim=k, **kwargs)
        self.components = nn.ModuleList(comps)  # the pieces of the union
        self._adopt_precision(self.components)  # in the pieces' dtype, as intersections
        self._disjoint_watch = _StateWatch()  # pieces' state last checked (check_pieces_disjoint)

    # The active component of each point defines M locally.
    def _stack(self, x):
        return torch.stack([c._value(x) for c in self.components])  # (C, B, k)

    def component_index(self, x):
        """Index of the component with the smallest ``|F_i|``, shape (B,)."""
        return self._stack(x).norm(dim=-1).argmin(0)

    def _select(self, stacked, idx):
        gather = idx.reshape(1, -1, *([1] * (stacked.ndim - 2))).expand(1, *stacked.shape[1:])
        return stacked.gather(0, gather)[0]

    def _value(self, x):
        stacked = self._stack(x)
        return self._select(stacked, stacked.norm(dim=-1).argmin(0))

    def _value_and_jacobian(self, x):
        parts = [c._value_and_jacobian(x) for c in self.components]
        values = torch.stack([p[0] for p in parts])
        idx = values.norm(dim=-1).argmin(0)
        jac = self._select(torch.stack([p[1] for p in parts]), idx)
        return self._select(values, idx), jac

    def _second_derivative(self, x, v):
        idx = self.component_index(x)
        return self._select(torch.stack([c._second_derivative(x, v)
                                         for c in self.components]), idx)

    def _lagrangian_hessian(self, x, lam):
        idx = self.component_index(x)
        return self._select(torch.stack([c._lagrangian_hessian(x, lam)
                                         for c in self.components]), idx)

    def _hessians(self, x):
        idx = self.component_index(x)
        return self._select(torch.stack([c._hessians(x) for c in self.components]), idx)

    # Components: the union of the pieces' components, numbered piece by piece
    # (the pieces are taken to be disjoint; where they meet the union is not a
    # manifold, and geometry there raises SingularJacobianError).
    def check_pieces_disjoint(self, n_samples=128, seed=0):
        """Raise :class:`ComponentError` if two pieces share a part of positive measure.

        The union counts its pieces separately (components, quadrature and
        volume, :class:`~implicit_geom.models.UnionEBM`'s mixture), which is
        right when they meet at most on a null set (circles crossing at
        points: geometry there raises SingularJacobianError) and double counts
        a shared part (``union(S, S)``). Each piece is sampled (seeded box
        draws projected onto it, as :meth:`random_point`); a point whose
        first-order distance ``|F_j| / sigma_min(J_j)`` to another piece is
        within the pieces' projection tolerances lies on both. Two such points of a piece
        (about 1.5% of its samples) raise; failing that, the piece is sampled
        again around its 8 samples nearest the other piece (boxes of half,
        then a quarter of the sample spacing), and two hits spread over more
        than an eighth of the spacing raise. Measured detection (a unit
        sphere and a surface sharing a cap with it, 10 seeds): caps of 0.5%
        of the sphere and more always, 0.1% in 8 of 10 (without the second
        pass: 2% in 6 of 10, 1% never); crossing, touching and nearly
        touching pieces gave no false alarm in 20 seeds. Smaller shared
        parts, or ones far from the 8 nearest samples (pieces that also
        cross elsewhere), can pass unnoticed. Run once before the union's components, quadrature
        or mixture are used; a piece that cannot be sampled is not checked
        from its side. The pass is cached against the pieces' state
        (parameters, buffers and bounds, settings), watched cheaply through
        the tensors' identities and in-place version counters and hashed
        only when those moved, so a piece refitted, loaded, moved or re-boxed
        is checked again. Edits through ``.data`` bypass the version
        counters: call the piece's ``invalidate_caches()`` after them.
        """
        if not self._disjoint_watch.changed(self.components, int(n_samples), int(seed)):
            return
        pieces = list(self.components)
        samples = [self._piece_samples(c, n_samples, seed + i) for i, c in enumerate(pieces)]
        for i, (pts, diam) in enumerate(samples):
            if pts is None:
                continue
            # Sample spacing on piece i (dim-dimensional, in a box of diagonal diam).
            spacing = diam / pts.shape[0] ** (1 / max(self.dim, 1))
            for j, other in enumerate(pieces):
                if j == i:
                    continue
                hits, dist = self._on_other(pieces[i], other, pts, diam)
                n_hit, near, found = int(hits.sum()), pts, [pts[hits]]
                # A shared part smaller than the sample spacing may hold no
                # sample: sample again around the samples nearest piece j, in
                # boxes of half the spacing, then a quarter. Hits found there
                # count only if spread over more than spacing / 8: pieces that
                # touch (tangent) give hits clustered at the contact.
                for level in range(1, 3):
                    if n_hit >= 2:
                        break
                    near, dist = self._refine(pieces[i], near, dist, spacing / 2 ** level,
                                              seed + 1000 * (j + 1) + level)
                    if near is None:
                        break
                    hits, dist = self._on_other(pieces[i], other, near, diam)
                    found.append(near[hits])
                    every = torch.cat(found)
                    if every.shape[0] >= 2 and float(torch.pdist(every).max()) > spacing / 8:
                        n_hit = every.shape[0]
                if n_hit >= 2:
                    raise ComponentError(
                        f"pieces {i} ({pieces[i].name}) and {j} ({other.name}) of the union "
                        f"{self.name} share a part of positive measure ({n_hit} sampled "
                        f"points of piece {i} lie on piece {j}): the "
                        "union would count it twice (components, volume, densities); "
                        "use one piece for the shared part.")
        self._disjoint_watch.record()

    @staticmethod
    def _on_other(piece, other, pts, diam):
        """Which points of ``piece`` lie on ``other`` (to both tolerances), and
        their first-order distance ``|F_j| / sigma_min(J_j)`` to it."""
        with torch.no_grad():  # how far points projected to tol may be from piece
            own = piece.tol_for() / torch.linalg.svdvals(
                piece._value_and_jacobian(pts)[1])[..., -1]
            value, jac = other._value_and_jacobian(pts.to(other.dtype))
            sigma = torch.linalg.svdvals(jac)[..., -1].to(own)
            # Critical points of F_j (sigma 0) are no hit.
            dist = value.norm(dim=-1).to(own) / sigma
            tol = other.tol_for() / sigma
            hits = ((sigma > 0) & torch.isfinite(own)
                    & (dist <= 4 * (own + tol) + 1e-10 * diam))
        return hits, torch.where(sigma > 0, dist, torch.inf)

    @staticmethod
    def _refine(piece, pts, dist, half, seed, n_centres=8, per_centre=16):
        """Points of ``piece`` projected from boxes of half-width ``half``
        around the ``n_centres`` points nearest the other piece (None if none)."""
        finite = torch.isfinite(dist)
        if not bool(finite.any()):
            return None, None
        order = torch.where(finite, dist, torch.inf).argsort()[:min(n_centres, int(finite.sum()))]
        centres = pts[order]
        # Drawn on the CPU with a CPU generator, then moved (as sample_in_box):
        # the same samples on every device.
        u = torch.rand(centres.shape[0], per_centre, pts.shape[-1], dtype=pts.dtype,
                       generator=torch.Generator().manual_seed(int(seed)),
                       device="cpu").to(pts.device)
        with torch.no_grad():
            res = piece.solve_projection((centres[:, None] + half * (2 * u - 1)).flatten(0, 1),
                                         closest=False, far=True)
        keep = res.converged & torch.isfinite(res.x).all(-1)
        return (res.x[keep], None) if bool(keep.any()) else (None, None)

    def _piece_samples(self, piece, n_samples, seed):
        """Seeded points on ``piece`` (box draws projected; None if none land)
        and the diagonal of the box drawn from."""
        box = piece.bounds if piece.bounds is not None else self.bounds
        n = self.ambient_dim
        if box is None:
            box = (-torch.ones(n, dtype=piece.dtype, device=piece.device),
                   torch.ones(n, dtype=piece.dtype, device=piece.device))
        low, high = (b.to(device=piece.device, dtype=piece.dtype) for b in box)
        with torch.no_grad():
            points, _ = sample_in_box(piece, n_samples, low, high,
                                      torch.Generator().manual_seed(int(seed)), inside=False)
        return (points if points.shape[0] else None), float((high - low).norm())

    def invalidate_caches(self):
        super().invalidate_caches()
        if hasattr(self, "_disjoint_watch"):
            self._disjoint_watch.forget()

    def _known_n_components(self):
        counts = [c._known_n_components() for c in self.components]
        if None in counts:
            return None
        self.check_pieces_disjoint()
        return sum(counts)

    @property
    def n_components(self):
        """Sum of the pieces' numbers of components.

        Raises
        ------
        ComponentError
            Pieces that share a part of positive measure (see
            :meth:`check_pieces_disjoint`).
        """
        self.check_pieces_disjoint()
        return sum(c.n_components for c in self.components)

    def components_known(self):
        return all(c.components_known() for c in self.components)

    def _component_labels(self, x):
        self.check_pieces_disjoint()
        piece = self.component_index(x)
        labels = torch.full_like(piece, -1)
        offset = 0
        for i, c in enumerate(self.components):
            rows = (piece == i).nonzero().squeeze(-1)
            if rows.numel():
                inner = c._component_labels(x[rows])
                labels[rows] = torch.where(inner >= 0, inner + offset, -1)
            offset += c.n_components
        return labels

    def piece_of(self, point):
        """Index of the union piece each point lies on (the smallest ``|F_i|``)."""
        x, batch = self._flat(point)
        with torch.no_grad():
            return self.component_index(x).reshape(batch)

    def product_submersion(self, point):
        """The paper's union function ``prod_i F_i`` (codimension 1 only)."""
        if self.codim != 1:
            raise ValueError("the product form of a union needs codimension 1")
        x, batch = self._flat(point)
        with torch.no_grad():
            out = self._stack(x).prod(0)
        return out.reshape(*batch, 1)

    def on_meeting_set(self, point):
        """Whether a point lies (to ``meet_tol``) on two components at once."""
        x, batch = self._flat(point)
        with torch.no_grad():
            near = (self._stack(x).norm(dim=-1) <= self.meet_tol).sum(0) >= 2
        return near.reshape(batch)

    def _check_not_meeting(self, point, what):
        meet = self.on_meeting_set(point)
        if bool(meet.any()):
            raise SingularJacobianError(
                f"{what}: {int(meet.sum())} point(s) lie where components of the union "
                "meet; the union is not a manifold there (no tangent space).")

    def _check_regular(self, x, what):
        self._check_not_meeting(x, what)

    def to_tangent(self, vector, base_point):
        """Tangent projection on the component of ``base_point``."""
        self._check_not_meeting(base_point, "to_tangent")
        return super().to_tangent(vector, base_point)

    def solve_projection(self, point, closest=True, max_refine=100, far=False):
        """Project onto every component and keep the nearest successful result."""
        results = [c.solve_projection(point, closest, max_refine, far=far)
                   for c in self.components]
        x0 = as_points(point, self.ambient_dim)
        dist = torch.stack([torch.where(r.converged, (r.x - x0).norm(dim=-1), torch.inf)
                            for r in results])
        best = dist.argmin(0)

        def pick(attr):
            stacked = torch.stack([getattr(r, attr) for r in results])
            index = best.reshape(1, *best.shape, *([1] * (stacked.ndim - 1 - best.ndim)))
            return stacked.gather(0, index.expand(1, *stacked.shape[1:]))[0]

        return NewtonResult(x=pick("x"), converged=pick("converged"),
                            residual=pick("residual"), n_iter=pick("n_iter"))

class ProductImplicitManifold(ImplicitManifold):
    """Cartesian product ``M1 x M2 x ...`` in concatenated ambient coordinates.

    The constraints act on disjoint coordinate blocks, so the Jacobian is
    block diagonal. This is how geomstats' ``ProductManifold`` (of implicit or
    LevelSet factors) becomes a space our samplers and models accept; points
    of a geomstats product in "matrix" form are flattened row by row.
    """

    def __init__(self, *components, **kwargs):
        comps = [as_implicit(c) for c in components]
        if len(comps) < 2:
            raise ValueError("a product needs at least two manifolds")
        sizes = [c.ambient_dim for c in comps]
        self._slices = [slice(sum(sizes[:i]), sum(sizes[:i + 1])) for i in range(len(sizes))]
        if all(c.bounds is not None for c in comps):
            kwargs.setdefault("bounds", (torch.cat([c.bounds[0] for c in comps]),
                                         torch.cat([c.bounds[1] for c in comps])))
        kwargs.setdefault("tol", min(c.tol for c in comps))
        kwargs.setdefault("name", " x ".join(c.name for c in comps))
        super().__init__(None, ambient_dim=sum(sizes), codim=sum(c.codim for c in comps),
                         **kwargs)
        self.components = nn.ModuleList(comps)  # the factors

    def _parts(self, x):
        return [x[..., sl] for sl in self._slices]

    def _check_draw_box(self, points, low, high, draw, max_rounds):
        """Each bounds-less factor's own check on its coordinates: over all of
        them the spread of the other factors hid a factor collapsed onto a far
        patch (a unit sphere around (1e5, 0, 0) times a circle sampled the
        sphere within 1e-5 of one point, silently)."""
        for c, sl in zip(self.components, self._slices):
            if c.bounds is None:
                c._check_draw_box(points[:, sl], low[sl], high[sl],
                                  lambda k, sl=sl: draw(k)[:, sl], max_rounds)

    def _value(self, x):
        return torch.cat([c._value(p) for c, p in zip(self.components, self._parts(x))], -1)

    def _value_and_jacobian(self, x):
        values, jac = [], x.new_zeros(x.shape[0], self.codim, self.ambient_dim)
        row = 0
        for c, sl, p in zip(self.components, self._slices, self._parts(x)):
            v, j = c._value_and_jacobian(p)
            values.append(v)
            jac[:, row:row + c.codim, sl] = j
            row += c.codim
        return torch.cat(values, -1), jac

    def _second_derivative(self, x, v):
        return torch.cat([c._second_derivative(p, q) for c, p, q in
                          zip(self.components, self._parts(x), self._parts(v))], -1)

    # Components of a product: one per tuple of factor components.
    def _known_n_components(self):
        counts = [c._known_n_components() for c in self.components]
        return None if None in counts else math.prod(counts)

    @property
    def n_components(self):
        """Product of the factors' numbers of components."""
        return math.prod(c.n_components for c in self.components)

    def components_known(self):
        return all(c.components_known() for c in self.components)

    def _component_labels(self, x):
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        unknown = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for c, p in zip(self.components, self._parts(x)):
            inner = c._component_labels(p)
            unknown |= inner < 0
            labels = labels * c.n_components + inner.clamp_min(0)  # mixed radix
        return torch.where(unknown, -1, labels)

    def _lagrangian_hessian(self, x, lam):
        hess = x.new_zeros(x.shape[0], self.ambient_dim, self.ambient_dim)
        for c, sl, p, l in zip(self.components, self._slices, self._parts(x),
                               lam.split([c.codim for c in self.components], -1)):
            hess[:, sl, sl] = c._lagrangian_hessian(p, l)
        return hess

    def _hessians(self, x):
        hess = x.new_zeros(x.shape[0], self.codim, self.ambient_dim, self.ambient_dim)
        row = 0
        for c, sl, p in zip(self.components, self._slices, self._parts(x)):
            hess[:, row:row + c.codim, sl, sl] = c._hessians(p)
            row += c.codim
        return hess


def product(*manifolds, **kwargs):
    """Cartesian product of implicit manifolds (see :class:`ProductImplicitManifold`)."""
    return ProductImplicitManifold(*manifolds, **kwargs)


def intersection(*manifolds, **kwargs):
    """Intersection ``M1 ∩ M2 ∩ ...``: stacked constraints, codimensions add.

    Raises :class:`SingularJacobianError` in geometry calls where the components
    do not meet transversally.
    """
    return IntersectionManifold(*manifolds, **kwargs)


def union(*manifolds, **kwargs):
    """Union ``M1 ∪ M2 ∪ ...`` of manifolds of equal dimension (see :class:`UnionManifold`)."""
    return UnionManifold(*manifolds, **kwargs)

