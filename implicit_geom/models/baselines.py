"""Density baselines on manifolds: kernel density estimates and von Mises-Fisher mixtures.

Every estimator here gives a normalised log density with respect to the
manifold's volume, like :class:`~implicit_geom.models.ConstrainedEBM`, so
held-out likelihoods compare directly. They get the same care as our model:
bandwidths and component counts are chosen on a validation split
(``fit(X, X_val)``), never on test data.

* :class:`ManifoldKDE`: the Gaussian kernel ``exp(-kappa |x - y|^2 / 2)``
  restricted to M and normalised on M for every data point. On a sphere this
  is the von Mises-Fisher kernel, on a union of spheres its normaliser is still
  closed-form (each sphere's share), on a torus of revolution the kernel is
  the product of von Mises kernels in the two angles; elsewhere (learned
  manifolds) the normalisers come from the manifold's quadrature. With
  ``adaptive=True`` each point's concentration is ``c / d_k^2`` (``d_k`` its
  distance to the k-th nearest other point) and a uniform floor of weight
  ``floor`` is mixed in (spheres and unions of spheres).
* :class:`VonMisesFisherMixture`: K von Mises-Fisher components on a circle or
  2-sphere (or product von Mises components in the angles of a torus), fitted
  by expectation-maximisation.
"""

import math

import numpy as np
import torch
from scipy.special import logsumexp

from ..datasets import torus_embed, vmf_draws
from ..exceptions import EmptyDataError, NotFittedError
from ..learning.estimator import EstimatorMixin
from ..manifolds.analytic import ImplicitSphere, ImplicitTorus, as_implicit
from ..manifolds.arithmetic import UnionManifold
from ..numerics.validation import DTYPE, as_point_list, as_points, check_int
from .closest import closest_points
from .normalization import _sphere_params, manifold_quadrature

__all__ = ["ManifoldKDE", "VonMisesFisherMixture", "log_sphere_kernel_mass"]

#: Concentrations searched by default (log-spaced, in inverse squared length units).
KAPPA_GRID = tuple(float(k) for k in np.exp(np.linspace(0.0, np.log(1e6), 49)))


def _numpy(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def _log_sinhc_mass(a):
    """``log int_{S^2} exp(a (u.e - 1)) du = log(2 pi (1 - exp(-2a)) / a)``, stable, a >= 0."""
    a = np.asarray(a, dtype=np.float64)
    small = a < 1e-8
    safe = np.where(small, 1.0, a)
    return np.where(small, math.log(4 * math.pi),
                    math.log(2 * math.pi) + np.log(-np.expm1(-2 * safe)) - np.log(safe))


def _log_i0_mass(a):
    """``log int_{S^1} exp(a (u.e - 1)) du = log(2 pi I0e(a))``."""
    from scipy.special import i0e

    return math.log(2 * math.pi) + np.log(i0e(np.asarray(a, dtype=np.float64)))


def log_sphere_kernel_mass(kappa, y, radius, center, paired=False):
    """``log int_S exp(-kappa |x - y|^2 / 2) dvol(x)`` over a circle or 2-sphere S, any ``y``.

    With ``rho = |y - c|``: ``exp(-kappa (rho - r)^2 / 2) r^{m} int exp(kappa r rho (u.e - 1)) du``.

    Parameters
    ----------
    kappa : array_like, shape (K,) or scalar
    y : numpy.ndarray, shape (N, n)
    radius : float
    center : array_like, shape (n,)
    paired : bool
        ``kappa`` has shape (N,): one concentration per point.

    Returns
    -------
    numpy.ndarray, shape (N, K) (``(N, 1)`` when ``paired``)
    """
    kappa = np.atleast_1d(np.asarray(kappa, dtype=np.float64))
    kappa = kappa[:, None] if paired else kappa[None]
    y = np.asarray(y, dtype=np.float64)
    rho = np.linalg.norm(y - np.asarray(center, dtype=np.float64), axis=-1)
    m = y.shape[-1] - 1
    a = kappa * radius * rho[:, None]
    mass = _log_i0_mass(a) if m == 1 else _log_sinhc_mass(a)
    return -0.5 * kappa * (rho[:, None] - radius) ** 2 + m * math.log(radius) + mass


def _kind(manifold):
    """"spheres" (a sphere or a union of spheres), "torus" or "quadrature"."""
    comps = manifold.components if isinstance(manifold, UnionManifold) else [manifold]
    if all(_sphere_params(c) is not None and c.dim in (1, 2) and c.ambient_dim == c.dim + 1
           for c in comps):
        return "spheres"
    if isinstance(manifold, ImplicitTorus):
        return "torus"
    return "quadrature"


def _spheres(manifold):
    if isinstance(manifold, UnionManifold):  # overlapping spheres: volumes counted twice
        manifold.check_pieces_disjoint()
    comps = manifold.components if isinstance(manifold, UnionManifold) else [manifold]
    return [(float(_sphere_params(c)[1]), _numpy(_sphere_params(c)[2])) for c in comps]


def _torus_angles(x, R):
    phi = np.arctan2(x[:, 1], x[:, 0])
    theta = np.arctan2(x[:, 2], np.hypot(x[:, 0], x[:, 1]) - R)
    return phi, theta


def _check(X, manifold, name="X"):
    # float64 before projecting: a float32 tensor would be projected, hence
    # scored, in float32 (as_points keeps a float tensor's dtype). The
    # baselines see points as the constrained EBM does (closest points on M,
    # refused beyond the default max_distance): kernels in ambient distances
    # would otherwise score points off M by another number.
    X = as_point_list(X, manifold.ambient_dim, name).to(DTYPE)
    if X.shape[0] < 2:
        raise EmptyDataError(f"{name} needs at least 2 points, got {X.shape[0]}")
    return _numpy(closest_points(manifold, X, name))


def _query(X, manifold):
    """Query points of ``score_samples``: flat, checked, on M."""
    n = manifold.ambient_dim
    return _numpy(closest_points(manifold, as_points(X, n, "X", dtype=DTYPE).reshape(-1, n), "X"))


class ManifoldKDE(EstimatorMixin):
    """Kernel density estimate on a manifold, every kernel normalised on M.

    Parameters
    ----------
    manifold : ImplicitManifold or geomstats LevelSet
    kappa : float, optional
        Concentration (``1 / bandwidth^2``); default: chosen on ``X_val`` from
        ``kappas`` (then ``fit`` needs ``X_val``).
    kappas : sequence of float
        Candidates for the validation search (``c`` for the adaptive kernel).
    adaptive : bool
        Per-point concentrations ``c / d_k^2`` plus a uniform floor, ``k``,
        ``c`` and ``floor`` chosen on validation (spheres and unions of spheres).
    ks : sequence of int
        Neighbour ranks tried by the adaptive kernel.
    floors : sequence of float
        Uniform weights tried by the adaptive kernel.
    min_distance : float
        Floor of the neighbour distances (duplicated points have ``d_k = 0``),
        which caps the adaptive concentrations.
    quadrature_resolution : int
        Rule for the normalisers on manifolds without a closed form.
    chunk_size : int
        Query points per block (bounds memory).

    Attributes
    ----------
    kappa_ : float
        The chosen concentration (``c`` of the adaptive kernel).
    params_ : dict
        Everything chosen on validation.
    validation_nll_ : float
    """

    def __init__(self, manifold, kappa=None, kappas=KAPPA_GRID, adaptive=False, ks=(3, 5, 10, 20),
                 floors=(0.0, 0.01, 0.05), min_distance=1e-4, quadrature_resolution=256,
                 chunk_size=2048):
        self.manifold = as_implicit(manifold)
        self.kind = _kind(self.manifold)
        if adaptive and self.kind != "spheres":
            raise NotImplementedError("the adaptive kernel needs a sphere or a union of spheres")
        self.kappa = None if kappa is None else float(kappa)
        self.kappas = tuple(float(k) for k in kappas)
        # A negative or non-finite concentration gives NaN or no kernel at all.
        if not self.kappas or not all(0 <= k < math.inf for k in
                                      self.kappas + ((self.kappa,) if kappa is not None else ())):
            raise ValueError(f"kappa and kappas must be finite and >= 0 (kappas non-empty), got "
                             f"kappa={kappa}, kappas={kappas}")
        self.adaptive = bool(adaptive)
        self.ks, self.floors = tuple(int(k) for k in ks), tuple(float(f) for f in floors)
        self.min_distance = float(min_distance)
        self.quadrature_resolution = int(quadrature_resolution)
        self.chunk_size = int(chunk_size)
        self.params_ = None

    # ------------------------------------------------------------ kernels
    def _log_norm(self, anchors, kappa, paired=False):
        """``log`` normaliser of each anchor's kernel, shape (N, K) for concentrations (K,).

        ``paired``: one concentration per anchor, shape (N,) -> (N,) (spheres).
        """
        kappa = np.atleast_1d(kappa)
        if paired:
            parts = [log_sphere_kernel_mass(kappa, anchors, r, c, paired=True)[:, 0]
                     for r, c in _spheres(self.manifold)]
            return np.logaddexp.reduce(np.stack(parts), axis=0)
        if self.kind == "spheres":
            parts = [log_sphere_kernel_mass(kappa, anchors, r, c) for r, c in _spheres(self.manifold)]
            return np.logaddexp.reduce(np.stack(parts), axis=0)
        if self.kind == "torus":
            from scipy.special import i0e

            return np.broadcast_to(2 * (math.log(2 * math.pi) + np.log(i0e(kappa)))[None],
                                   (anchors.shape[0], kappa.size))
        rule = manifold_quadrature(self.manifold, self.quadrature_resolution)
        pts, logw = _numpy(rule.points), np.log(_numpy(rule.weights))
        out = np.empty((anchors.shape[0], kappa.size))
        for s in range(0, anchors.shape[0], 256):
            d2 = ((anchors[s:s + 256, None, :] - pts[None]) ** 2).sum(-1)
            out[s:s + 256] = logsumexp(logw[None, None] - 0.5 * kappa[:, None, None] * d2[None],
                                       axis=-1).T
        return out

    def _log_kernel(self, x, anchors, kappa):
        """Unnormalised log kernels, shape (Q, N) (kappa scalar or per anchor (N,))."""
        if self.kind == "torus":
            R = float(self.manifold.major_radius)
            phi_x, th_x = _torus_angles(x, R)
            phi_a, th_a = _torus_angles(anchors, R)
            return kappa * (np.cos(phi_x[:, None] - phi_a[None]) - 1
                            + np.cos(th_x[:, None] - th_a[None]) - 1)
        d2 = (x * x).sum(-1)[:, None] + (anchors * anchors).sum(-1)[None] - 2 * x @ anchors.T
        return -0.5 * kappa * np.maximum(d2, 0.0)

    def _area_correction(self, x):
        """``log`` of the torus area element (the angle kernels are densities in angles)."""
        if self.kind != "torus":
            return 0.0
        R, r = float(self.manifold.major_radius), float(self.manifold.minor_radius)
        _, theta = _torus_angles(x, R)
        return -np.log(r * (R + r * np.cos(theta)))

    def _log_density(self, x, anchors, kappa, log_norm, floor=0.0, exclude_self=False):
        out = np.empty(x.shape[0])
        n = anchors.shape[0]
        for s in range(0, x.shape[0], self.chunk_size):
            logk = self._log_kernel(x[s:s + self.chunk_size], anchors, kappa) - log_norm[None]
            if exclude_self:  # leave-one-out: x are the anchors themselves
                idx = np.arange(s, min(s + self.chunk_size, x.shape[0]))
                logk[idx - s, idx] = -np.inf
            out[s:s + self.chunk_size] = logsumexp(logk, axis=1) - math.log(
                n - 1 if exclude_self else n)
        out = out + self._area_correction(x)
        if floor > 0:
            out = np.logaddexp(math.log1p(-floor) + out, math.log(floor) - math.log(self._volume()))
        return out

    def _volumes(self):
        """Length or area of each sphere of the manifold, shape (S,)."""
        return np.array([2 * math.pi * r if c.size == 2 else 4 * math.pi * r * r
                         for r, c in _spheres(self.manifold)])

    def _volume(self):
        return float(self._volumes().sum())

    # ---------------------------------------------------------------- API
    def fit(self, X, X_val=None):
        """Store the data; choose the bandwidth (and adaptive settings) on ``X_val``.

        Returns
        -------
        self
        """
        # A fit that fails (bad X_val...) leaves the previous fit whole, not
        # new anchors under the old bandwidth.
        fitted = {name: self.__dict__[name] for name in ("anchors_", "params_", "validation_nll_")
                  if name in self.__dict__}
        try:
            return self._fit(X, X_val)
        except BaseException:
            for name in ("anchors_", "params_", "validation_nll_"):
                self.__dict__.pop(name, None)
            self.__dict__.update(fitted)
            raise

    def _fit(self, X, X_val):
        X = _check(X, self.manifold)
        if X_val is None and (self.kappa is None or self.adaptive):
            raise ValueError("choosing the bandwidth needs validation points: fit(X, X_val)")
        self.anchors_ = X
        if not self.adaptive:
            if self.kappa is not None:
                self.params_ = {"kappa": self.kappa}
                self.validation_nll_ = (float(self.nll(X_val)) if X_val is not None else None)
                return self
            V = _check(X_val, self.manifold, "X_val")
            norms = self._log_norm(X, np.array(self.kappas))
            scores = [-self._log_density(V, X, k, norms[:, i]).mean()
                      for i, k in enumerate(self.kappas)]
            best = int(np.nanargmin(scores))
            self.params_ = {"kappa": self.kappas[best]}
            self.validation_nll_ = float(scores[best])
            return self
        from scipy.spatial import cKDTree

        V = _check(X_val, self.manifold, "X_val")
        dist = cKDTree(X).query(X, k=max(self.ks) + 1)[0]
        best = (math.inf, None)
        for k in self.ks:
            if k >= X.shape[0]:
                continue
            # Duplicated points have d_k = 0: the floor caps kappa (as in AnchoredVMFEnergy).
            d = np.maximum(dist[:, k], self.min_distance)
            for c in self.kappas[: len(self.kappas) // 2 + 1]:
                kappa = c / d**2
                norm = self._log_norm(X, kappa, paired=True)
                base = self._log_density(V, X, kappa, norm)
                for floor in self.floors:
                    val = base if floor == 0 else np.logaddexp(
                        math.log1p(-floor) + base, math.log(floor) - math.log(self._volume()))
                    score = -val.mean()
                    if score < best[0]:
                        best = (score, {"k": k, "c": c, "floor": floor})
        self.params_ = best[1]
        self.validation_nll_ = float(best[0])
        return self

    @property
    def is_fitted(self):
        """Whether :meth:`fit` has run."""
        return self.params_ is not None

    @property
    def kappa_(self):
        return self.params_["kappa"] if not self.adaptive else self.params_["c"]

    def score_samples(self, X):
        """Log density w.r.t. the volume of M at the closest points of ``X`` on M, shape (n,)."""
        if self.params_ is None:
            raise NotFittedError(f"call fit first: {type(self).__name__} has no kernels yet")
        x = _query(X, self.manifold)
        if not self.adaptive:
            kappa = self.params_["kappa"]
            norm = self._log_norm(self.anchors_, kappa)[:, 0]
            return torch.as_tensor(self._log_density(x, self.anchors_, kappa, norm), dtype=DTYPE)
        kappa = self._adaptive_kappas()
        norm = self._log_norm(self.anchors_, kappa, paired=True)
        return torch.as_tensor(self._log_density(x, self.anchors_, kappa, norm,
                                                 self.params_["floor"]), dtype=DTYPE)

    def _adaptive_kappas(self):
        """Per-anchor concentrations ``c / d_k^2`` of the fitted adaptive kernel, shape (N,)."""
        from scipy.spatial import cKDTree

        p = self.params_
        d = cKDTree(self.anchors_).query(self.anchors_, k=p["k"] + 1)[0][:, p["k"]]
        return p["c"] / np.maximum(d, self.min_distance) ** 2

    def sample(self, n_samples, seed=0, **kwargs):
        """Exact draws from the fitted estimate, shape ``(n_samples, n)``, on M.

        A kernel is picked uniformly, then drawn from exactly: on a sphere of
        radius ``r`` and centre ``c`` the kernel ``exp(-kappa |x - a|^2 / 2)``
        is a von Mises-Fisher law with mean ``(a - c) / |a - c|`` and
        concentration ``kappa r |a - c|`` (on a union, a sphere is picked by
        the kernel's mass on it); on the torus, von Mises angles. The adaptive
        kernel's uniform floor is drawn with its weight.

        Parameters
        ----------
        n_samples : int
        seed : int
        **kwargs
            Ignored: MCMC settings (``n_steps``...) that a
            :class:`~implicit_geom.models.DensityMixture` passes to every
            component; these draws need none.

        Raises
        ------
        NotImplementedError
            On a manifold whose kernels are normalised by quadrature (no
            exact sampler; a constrained sampler on ``score_samples`` would
            only be approximate).
        """
        del kwargs
        if self.params_ is None:
            raise NotFittedError(f"call fit first: {type(self).__name__} has no kernels yet")
        n = check_int(n_samples, "n_samples")  # 2.5 drew 2
        if self.kind == "quadrature":
            raise NotImplementedError(
                f"exact sampling of a kernel estimate needs a sphere, a union of spheres or a "
                f"torus; {self.manifold!r} has quadrature-normalised kernels")
        rng = np.random.default_rng(int(seed))
        anchors = self.anchors_
        kappa = (self._adaptive_kappas() if self.adaptive
                 else np.full(anchors.shape[0], float(self.params_["kappa"])))
        pick = rng.integers(anchors.shape[0], size=n)
        a, k = anchors[pick], kappa[pick]
        if self.kind == "torus":
            R, r = float(self.manifold.major_radius), float(self.manifold.minor_radius)
            phi, theta = _torus_angles(a, R)
            return torus_embed(rng.vonmises(phi, k), rng.vonmises(theta, k), R, r)
        spheres = _spheres(self.manifold)
        # Each drawn kernel's mass on each sphere picks the sphere it lands on.
        log_mass = np.stack([log_sphere_kernel_mass(k, a, rad, c, paired=True)[:, 0]
                             for rad, c in spheres], 1)
        prob = np.exp(log_mass - logsumexp(log_mass, axis=1, keepdims=True))
        which = (rng.random(n)[:, None] > np.cumsum(prob, axis=1)).sum(1)
        which = np.minimum(which, len(spheres) - 1)
        floor = self.params_["floor"] if self.adaptive else 0.0
        uniform = rng.random(n) < floor
        if uniform.any():  # the floor: uniform on the union, each sphere by its volume
            vol = self._volumes()
            which[uniform] = rng.choice(len(spheres), size=int(uniform.sum()), p=vol / vol.sum())
        out = np.empty_like(a)
        for s, (rad, c) in enumerate(spheres):
            rows = which == s
            if not rows.any():
                continue
            rel = a[rows] - c
            rho = np.linalg.norm(rel, axis=1)
            mean = np.where(rho[:, None] > 0, rel / np.where(rho > 0, rho, 1.0)[:, None],
                            np.eye(c.size)[0])
            conc = np.where(uniform[rows], 0.0, k[rows] * rad * rho)
            out[rows] = c + rad * vmf_draws(mean, conc, rng)
        return torch.as_tensor(out, dtype=DTYPE)


class VonMisesFisherMixture(EstimatorMixin):
    """Mixture of von Mises-Fisher distributions fitted by EM.

    On a circle or 2-sphere (any radius and centre) the components are von
    Mises-Fisher in the direction from the centre; on a torus of revolution
    they are products of von Mises distributions in the two angles (the
    density w.r.t. area divides by the area element ``r (R + r cos theta)``).
    Concentrations use Banerjee et al.'s (2005) approximation
    ``kappa = rbar (p - rbar^2) / (1 - rbar^2)``, capped at ``kappa_max`` (a
    component on a cluster of identical points would otherwise diverge).

    Parameters
    ----------
    manifold : ImplicitSphere (dim 1 or 2), geomstats Hypersphere or ImplicitTorus
    n_components : int or sequence of int
        A sequence is searched on validation (``fit(X, X_val)``).
    n_iter : int
        EM iterations.
    kappa_max : float
    n_init : int
        Restarts from different random initial means (the best training
        likelihood is kept).
    seed : int

    Attributes
    ----------
    n_components_ : int
    weights_, means_, kappas_ : numpy.ndarray
    validation_nll_ : float or None
    """

    def __init__(self, manifold, n_components=(5, 10, 20, 50, 100, 200), n_iter=200,
                 kappa_max=1e6, n_init=1, tol=1e-8, seed=0):
        self.manifold = as_implicit(manifold)
        params = _sphere_params(self.manifold)
        if isinstance(self.manifold, ImplicitTorus):
            self.kind = "torus"
        elif params is not None and params[0] in (1, 2) and self.manifold.ambient_dim == params[0] + 1:
            self.kind = "sphere"
            self.radius, self.center = float(params[1]), _numpy(params[2])
        else:
            raise NotImplementedError("VonMisesFisherMixture needs a circle, a 2-sphere or a torus")
        self.n_components = n_components
        self.n_iter, self.kappa_max, self.n_init = int(n_iter), float(kappa_max), int(n_init)
        counts = [n_components] if np.isscalar(n_components) else list(n_components)
        # (Otherwise EM failed with a math domain, unbound-variable or None error.)
        if not counts or min(int(k) for k in counts) < 1 or min(self.n_iter, self.n_init) < 1:
            raise ValueError(f"need n_components (each) >= 1, n_iter >= 1 and n_init >= 1, got "
                             f"{n_components}, {n_iter}, {n_init}")
        self.tol, self.seed = float(tol), int(seed)

    # The data as unit vectors: one block per sphere factor (one for S^1/S^2, two circles for T^2).
    def _blocks(self, X):
        if self.kind == "sphere":
            u = (X - self.center) / self.radius
            return [u / np.linalg.norm(u, axis=1, keepdims=True)]
        phi, theta = _torus_angles(X, float(self.manifold.major_radius))
        return [np.stack([np.cos(phi), np.sin(phi)], 1), np.stack([np.cos(theta), np.sin(theta)], 1)]

    def _log_base(self, X):
        """``log`` of the volume change from the unit factors to M (radius, torus area)."""
        if self.kind == "sphere":
            return -(X.shape[1] - 1) * math.log(self.radius)
        R, r = float(self.manifold.major_radius), float(self.manifold.minor_radius)
        _, theta = _torus_angles(X, R)
        return -np.log(r * (R + r * np.cos(theta)))

    @staticmethod
    def _log_c(kappa, p):
        """``log`` normaliser of exp(kappa (mu.u - 1)) on S^{p-1}."""
        return -(_log_i0_mass(kappa) if p == 2 else _log_sinhc_mass(kappa))

    def _component_logpdf(self, blocks, means, kappas):
        out = 0.0
        for u, mu, kappa in zip(blocks, means, kappas):
            out = out + (u @ mu.T - 1) * kappa[None] + self._log_c(kappa, u.shape[1])[None]
        return out

    def _em(self, blocks, K, rng):
        n = blocks[0].shape[0]
        start = rng.choice(n, size=K, replace=n < K)
        means = [u[start].copy() for u in blocks]
        kappas = [np.full(K, 10.0) for _ in blocks]
        log_w = np.full(K, -math.log(K))
        prev = -np.inf
        for _ in range(self.n_iter):
            lp = self._component_logpdf(blocks, means, kappas) + log_w[None]
            ll = logsumexp(lp, axis=1)
            resp = np.exp(lp - ll[:, None])
            nk = resp.sum(0) + 1e-12
            log_w = np.log(nk / n)
            for j, u in enumerate(blocks):
                s = resp.T @ u
                norm = np.linalg.norm(s, axis=1)
                means[j] = s / np.maximum(norm, 1e-300)[:, None]
                rbar = np.clip(norm / nk, 1e-9, 1 - 1e-12)
                p = u.shape[1]
                kappas[j] = np.clip(rbar * (p - rbar**2) / (1 - rbar**2), 1e-6, self.kappa_max)
            total = float(ll.mean())
            if abs(total - prev) < self.tol:
                break
            prev = total
        return log_w, means, kappas, total

    def _fit_k(self, X, K):
        blocks = self._blocks(X)
        best = None
        for i in range(self.n_init):
            fit = self._em(blocks, K, np.random.default_rng(self.seed + i))
            if best is None or fit[3] > best[3]:
                best = fit
        return best[:3]

    def fit(self, X, X_val=None):
        """EM on ``X``; with a sequence of component counts, the best on ``X_val``.

        Returns
        -------
        self
        """
        X = _check(X, self.manifold)
        counts = ([int(self.n_components)] if np.isscalar(self.n_components)
                  else [int(k) for k in self.n_components])
        counts = [k for k in counts if k <= X.shape[0] // 2] or [1]
        if len(counts) > 1 and X_val is None:
            raise ValueError("choosing the number of components needs validation points")
        best = (math.inf, None, None)
        V = None if X_val is None else _check(X_val, self.manifold, "X_val")
        for K in counts:
            params = self._fit_k(X, K)
            score = -float(self._logpdf(V, params).mean()) if V is not None else 0.0
            if score < best[0] or best[1] is None:
                best = (score, K, params)
        self.validation_nll_ = best[0] if V is not None else None
        self.n_components_ = best[1]
        self.log_weights_, self.means_, self.kappas_ = best[2]
        return self

    def _logpdf(self, X, params):
        log_w, means, kappas = params
        return logsumexp(self._component_logpdf(self._blocks(X), means, kappas) + log_w[None],
                         axis=1) + self._log_base(X)

    @property
    def is_fitted(self):
        """Whether :meth:`fit` has run."""
        return getattr(self, "means_", None) is not None

    def score_samples(self, X):
        """Log density w.r.t. the volume of M at the closest points of ``X`` on M, shape (n,)."""
        if not self.is_fitted:
            raise NotFittedError(f"call fit first: {type(self).__name__} has no components yet")
        x = _query(X, self.manifold)
        return torch.as_tensor(self._logpdf(x, (self.log_weights_, self.means_, self.kappas_)),
                               dtype=DTYPE)

    def sample(self, n_samples, seed=0, **kwargs):
        """Exact draws from the fitted mixture, shape ``(n_samples, n)``, on M: a
        component by its weight, then von Mises-Fisher draws on its unit
        factor(s) (the circle or sphere; the torus's two angle circles).

        ``**kwargs`` are ignored (MCMC settings a
        :class:`~implicit_geom.models.DensityMixture` passes to every component).
        """
        del kwargs
        if not self.is_fitted:
            raise NotFittedError(f"call fit first: {type(self).__name__} has no components yet")
        n = check_int(n_samples, "n_samples")  # 2.5 drew 2
        rng = np.random.default_rng(int(seed))
        w = np.exp(self.log_weights_ - logsumexp(self.log_weights_))
        comp = rng.choice(w.size, size=n, p=w / w.sum())
        units = [vmf_draws(mu[comp], kappa[comp], rng)
                 for mu, kappa in zip(self.means_, self.kappas_)]
        if self.kind == "sphere":
            return torch.as_tensor(self.center + self.radius * units[0], dtype=DTYPE)
        return torus_embed(np.arctan2(units[0][:, 1], units[0][:, 0]),
                           np.arctan2(units[1][:, 1], units[1][:, 0]),
                           float(self.manifold.major_radius), float(self.manifold.minor_radius))
