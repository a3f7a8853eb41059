"""Analytic implicit manifolds: sphere, torus, sympy expressions, geomstats spaces.

The defining functions are scaled so that ``|grad F| = 1`` on M where possible;
then ``|F|`` approximates the distance to M near M, which makes tolerances on
``|F|`` mean the same thing across spaces.
"""

import torch
from geomstats.geometry.base import LevelSet

from ..numerics.linalg import rowdot
from .implicit import ImplicitManifold


class ImplicitSphere(ImplicitManifold):
    r"""Sphere :math:`\{|x - c| = r\}` in :math:`\mathbb{R}^{d+1}` with closed-form derivatives.

    Parameters
    ----------
    dim : int
        Dimension ``d`` of the sphere.
    radius : float
    center : array-like, shape=[d + 1], optional
    """

    def __init__(self, dim=2, radius=1.0, center=None, **kwargs):
        n = dim + 1
        if not float(radius) > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        center = (torch.zeros(n, dtype=torch.float64) if center is None
                  else torch.as_tensor(center, dtype=torch.float64))
        if center.shape != (n,):
            raise ValueError(f"center must have shape ({n},), got {tuple(center.shape)}")
        auto = "bounds" not in kwargs
        kwargs.setdefault("bounds", (center - 1.5 * radius, center + 1.5 * radius))
        kwargs.setdefault("name", f"ImplicitSphere(dim={dim}, radius={radius:g})")
        super().__init__(None, ambient_dim=n, codim=1, **kwargs)
        # Buffers: they move with .to(device, dtype) and are the state_dict.
        self.register_buffer("center", center.clone())
        self.register_buffer("radius", torch.tensor(float(radius), dtype=torch.float64))
        self._auto_bounds = auto

    def _default_bounds(self):
        return (self.center - 1.5 * self.radius, self.center + 1.5 * self.radius)

    def _fingerprint_params(self):
        # Buffers (in the state dict too): named here so that a refused load says them.
        return {"radius": self.radius, "center": self.center}

    def _value(self, x):
        y = x - self.center.to(x.dtype)
        r = self.radius.to(x.dtype)
        return ((y * y).sum(-1, keepdim=True) - r * r) / (2 * r)

    def _value_and_jacobian(self, x):
        return self._value(x), self._jacobian(x)

    def _jacobian(self, x):
        return ((x - self.center.to(x.dtype)) / self.radius.to(x.dtype)).unsqueeze(-2)

    def _second_derivative(self, x, v):
        return rowdot(v, v) / self.radius.to(x.dtype)

    def _lagrangian_hessian(self, x, lam):
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        return (lam[:, 0] / self.radius.to(x.dtype))[:, None, None] * eye

    def _hessians(self, x):
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        return (eye / self.radius.to(x.dtype)).expand(x.shape[0], 1, *eye.shape)

    def _curvature_bound(self):
        return 1.0 / float(self.radius)

    def _known_n_components(self):
        return 1


class ImplicitTorus(ImplicitManifold):
    r"""Torus of revolution in :math:`\mathbb{R}^3` with major radius R, tube radius r.

    :math:`F(x) = ((\sqrt{x_1^2 + x_2^2} - R)^2 + x_3^2 - r^2) / (2r)`.
    """

    def __init__(self, major_radius=2.0, minor_radius=1.0, **kwargs):
        if not 0 < minor_radius < major_radius:
            raise ValueError("need 0 < minor_radius < major_radius")
        auto = "bounds" not in kwargs
        kwargs.setdefault("bounds", _torus_box(major_radius, minor_radius))
        kwargs.setdefault(
            "name", f"ImplicitTorus(R={major_radius:g}, r={minor_radius:g})")
        super().__init__(None, ambient_dim=3, codim=1, **kwargs)
        self.register_buffer("major_radius", torch.tensor(float(major_radius),
                                                          dtype=torch.float64))
        self.register_buffer("minor_radius", torch.tensor(float(minor_radius),
                                                          dtype=torch.float64))
        self._auto_bounds = auto

    def _default_bounds(self):
        return _torus_box(float(self.major_radius), float(self.minor_radius))

    def _fingerprint_params(self):
        return {"major_radius": self.major_radius, "minor_radius": self.minor_radius}

    def _value(self, x):
        rho = torch.sqrt(x[..., 0] ** 2 + x[..., 1] ** 2)
        big, r = self.major_radius.to(x.dtype), self.minor_radius.to(x.dtype)
        return (((rho - big) ** 2 + x[..., 2] ** 2 - r * r) / (2 * r))[..., None]

    def _curvature_bound(self):
        # Principal curvatures 1/r and cos(theta) / (R + r cos(theta)).
        big, r = float(self.major_radius), float(self.minor_radius)
        return max(1.0 / r, 1.0 / (big - r))

    def _known_n_components(self):
        return 1


def _torus_box(major, minor):
    extent = major + 1.5 * minor
    return ([-extent, -extent, -1.5 * minor], [extent, extent, 1.5 * minor])


class SympyImplicitManifold(ImplicitManifold):
    """Zero set of sympy expressions, with exact symbolic first and second derivatives.

    Build with :meth:`ImplicitManifold.from_sympy`.
    """

    def __init__(self, exprs, symbols, **kwargs):
        import sympy

        symbols = _coordinates(symbols)
        # Strings are parsed with the coordinates as locals, so "x**2 + y**2 - 1"
        # means the given x, y even when they carry assumptions (real=True).
        names = {str(s): s for s in symbols}
        exprs = [_parse(e, names) for e in (exprs if isinstance(exprs, (list, tuple))
                                             else [exprs])]
        if not exprs:
            raise ValueError("from_sympy needs at least one expression")
        free = set().union(*(e.free_symbols for e in exprs))
        unknown = free - set(symbols)
        if unknown:
            raise ValueError(f"expressions use symbols {sorted(map(str, unknown))} that "
                             f"are not among the coordinates {list(map(str, symbols))}")
        jac = sympy.Matrix(exprs).jacobian(symbols)
        hess = [sympy.hessian(e, symbols) for e in exprs]
        self.exprs = exprs
        self.symbols = symbols
        try:
            self._F = _compile(exprs, symbols)
            self._J = _compile(list(jac), symbols)
            self._H = _compile([h for H in hess for h in H], symbols)
            # Evaluated once here so that a function torch lacks (besselj, Max,
            # floor's derivative) fails now, by name, not inside a solver.
            probe = torch.full((2, len(symbols)), 0.5, dtype=torch.float64)
            for fn in (self._F, self._J, self._H):
                fn(probe)
        except Exception as err:
            raise ValueError(
                f"cannot evaluate {', '.join(map(str, exprs))} (or its first two "
                f"derivatives) in torch: {type(err).__name__}: {err}".splitlines()[0]
                + " -- use smooth elementary functions (sin, exp, log, sqrt, ...)"
            ) from err
        kwargs.setdefault("name", f"SympyImplicitManifold({', '.join(map(str, exprs))} = 0)")
        super().__init__(None, ambient_dim=len(symbols), codim=len(exprs), **kwargs)

    def _fingerprint_params(self):
        # The expressions define F; the compiled functions are closures the
        # state walk cannot read.
        return {"exprs": [str(e) for e in self.exprs], "symbols": [str(s) for s in self.symbols]}

    def _value(self, x):
        return self._F(x)

    def _value_and_jacobian(self, x):
        jac = self._J(x).reshape(*x.shape[:-1], self.codim, self.ambient_dim)
        return self._F(x), jac

    def _hessians(self, x):
        n = self.ambient_dim
        return self._H(x).reshape(*x.shape[:-1], self.codim, n, n)

    def _second_derivative(self, x, v):
        return torch.einsum("...i,...kij,...j->...k", v, self._hessians(x), v)

    def _lagrangian_hessian(self, x, lam):
        return torch.einsum("...k,...kij->...ij", lam, self._hessians(x))


_TORCH_FUNCS = {
    name: getattr(torch, name)
    for name in ("sin", "cos", "tan", "exp", "log", "sqrt", "tanh", "sinh", "cosh",
                 "arcsin", "arccos", "arctan", "abs", "sign", "atan2")
}
_TORCH_FUNCS.update(asin=torch.asin, acos=torch.acos, atan=torch.atan, Abs=torch.abs,
                    pi=torch.pi, E=torch.e)


def _coordinates(symbols):
    """The ambient coordinates as distinct sympy Symbols (a string such as
    ``"x y z"`` is read as ``sympy.symbols`` reads it)."""
    import sympy

    if isinstance(symbols, str):
        symbols = sympy.symbols(symbols)
    symbols = [sympy.Symbol(s) if isinstance(s, str) else s
               for s in (symbols if isinstance(symbols, (list, tuple)) else [symbols])]
    bad = [s for s in symbols if not isinstance(s, sympy.Symbol)]
    if bad:
        raise ValueError(f"coordinates must be sympy Symbols (or names); got {bad}")
    if not symbols:
        raise ValueError("from_sympy needs at least one coordinate symbol")
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"coordinates {list(map(str, symbols))} repeat a symbol")
    return symbols


def _parse(expr, names):
    import sympy

    try:
        return sympy.sympify(expr, locals=dict(names))
    except (sympy.SympifyError, SyntaxError, TypeError) as err:
        raise ValueError(f"cannot read {expr!r} as a sympy expression: "
                         f"{str(err).splitlines()[0]}") from err


def _compile(exprs, symbols):
    """Lambdify expressions to a torch function ``(B, n) -> (B, len(exprs))``."""
    import sympy

    fn = sympy.lambdify(symbols, exprs, modules=[_TORCH_FUNCS, "math"])

    def evaluate(x):
        cols = fn(*x.unbind(-1))
        # Constant entries come back as Python numbers: broadcast them.
        cols = [c if torch.is_tensor(c) else torch.full(x.shape[:-1], float(c),
                                                        dtype=x.dtype, device=x.device)
                for c in cols]
        return torch.stack(cols, dim=-1)

    return evaluate


def from_sympy(exprs, symbols, **kwargs):
    """Implicit manifold ``{exprs = 0}`` in the coordinates ``symbols``.

    Parameters
    ----------
    exprs : sympy expression or list of them
        The k constraints.
    symbols : list of sympy.Symbol, or str
        The n ambient coordinates, in order (names or a string such as
        ``"x y z"`` are turned into symbols; expressions given as strings
        are parsed with them).
    **kwargs
        Passed to :class:`ImplicitManifold` (``tol``, ``max_iter``, ``bounds``...).

    Examples
    --------
    >>> import sympy
    >>> x, y, z = sympy.symbols("x y z")
    >>> sphere = from_sympy([(x**2 + y**2 + z**2 - 1) / 2], [x, y, z])
    """
    return SympyImplicitManifold(exprs, symbols, **kwargs)



class GeomstatsLevelSet(ImplicitManifold):
    """A geomstats :class:`LevelSet` (e.g. ``Hypersphere``, ``SpecialOrthogonal``)
    seen as an implicit manifold in flattened ambient coordinates.

    Matrix-valued submersions with symmetric values (``X^T X - I``) contribute
    their upper triangle only, so the constraints stay independent.
    """

    def __init__(self, space, **kwargs):
        if not isinstance(space, LevelSet):
            raise TypeError(
                f"{type(space).__name__} is not a geomstats LevelSet; wrap a geomstats "
                "space defined by a submersion (Hypersphere, SpecialOrthogonal, ...) or "
                "give its defining function to ImplicitManifold directly.")
        self.space = space
        self.point_shape = tuple(space.shape)
        n = int(torch.tensor(self.point_shape).prod())
        probe = torch.as_tensor(space.random_point(), dtype=torch.float64)
        sub = torch.as_tensor(space.submersion(probe))
        self._symmetric = sub.ndim == 2 and sub.shape[0] == sub.shape[1]
        if self._symmetric:
            rows, cols = torch.triu_indices(sub.shape[0], sub.shape[1])
            self._triu = (rows, cols)
            k = rows.numel()
        else:
            k = max(sub.numel(), 1)
        kwargs.setdefault("name", f"GeomstatsLevelSet({type(space).__name__})")
        kwargs.setdefault("bounds", (-1.5 * torch.ones(n), 1.5 * torch.ones(n)))
        super().__init__(None, ambient_dim=n, codim=k, **kwargs)
        if self.dim != space.dim:
            raise ValueError(
                f"could not derive independent constraints for {type(space).__name__}: "
                f"got dimension {self.dim}, expected {space.dim}")

    def _fingerprint_params(self):
        # The wrapped space is no module: its class and sizes (Hypersphere(2)
        # and Hyperboloid(2) share ambient dimension 3 and dimension 2).
        sizes = {key: val for key, val in sorted(vars(self.space).items())
                 if not key.startswith("_") and _plain(val)}
        return {"space": type(self.space).__qualname__, **{f"space.{k}": v
                                                          for k, v in sizes.items()}}

    def _orthogonal(self):
        """Whether the submersion is ``X^T X - I`` on square matrices (zero set O(n))."""
        shape = self.point_shape
        if not (self._symmetric and len(shape) == 2 and shape[0] == shape[1]):
            return False
        eye = torch.eye(shape[0], dtype=torch.float64)
        return bool(torch.allclose(torch.as_tensor(self.space.submersion(eye)).double(),
                                   torch.zeros_like(eye), atol=1e-12))

    def _known_n_components(self):
        name = type(self.space).__name__
        if name == "Hypersphere":
            return 1
        if self._orthogonal():  # X^T X = I is O(n): det +1 and det -1
            return 2
        return None

    def _component_labels(self, x):
        if self._orthogonal():
            det = torch.linalg.det(x.reshape(-1, *self.point_shape))
            return (det < 0).long()
        return super()._component_labels(x)

    def _value(self, x):
        pts = x.reshape(*x.shape[:-1], *self.point_shape)
        sub = self.space.submersion(pts)
        if self._symmetric:
            return sub[..., self._triu[0], self._triu[1]]
        return sub.reshape(*x.shape[:-1], self.codim)


def _plain(val):
    """Numbers, text and tuples of them: the sizes a geomstats space keeps."""
    if isinstance(val, (tuple, list)):
        return all(_plain(v) for v in val)
    return isinstance(val, (bool, int, float, str))


def as_implicit(space):
    """Return ``space`` as an :class:`ImplicitManifold`.

    Accepts implicit manifolds (returned as they are), geomstats LevelSets
    (``Hypersphere``, ``SpecialOrthogonal``, ...) and geomstats
    ``ProductManifold`` of such factors (flattened coordinates).
    """
    if isinstance(space, ImplicitManifold):
        return space
    from geomstats.geometry.product_manifold import ProductManifold

    if isinstance(space, ProductManifold):
        from .arithmetic import ProductImplicitManifold

        return ProductImplicitManifold(*space.factors)
    return GeomstatsLevelSet(space)
