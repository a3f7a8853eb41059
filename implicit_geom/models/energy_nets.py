"""Energy networks: float64 modules mapping points to scalar energies.

MLPs (:class:`EnergyMLP`), polynomial exponential families
(:class:`PolynomialEnergy`), anchored vMF kernel mixtures
(:class:`AnchoredVMFEnergy`) and weighted sums of them (:class:`SumEnergy`).

An MLP on raw coordinates is biased toward smooth functions: on S^2 and T^2
it needs many steps to carve the narrow peaks of real densities (flood
events along coasts and rivers). Random Fourier features of the ambient
coordinates (:class:`FourierFeatures`, ``EnergyMLP(..., fourier=m)``) give it
high frequencies from the start, on analytic and learned manifolds alike.
"""

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..numerics import mlp


class FourierFeatures(nn.Module):
    """Fixed random Fourier features ``x -> [x, sin(W x), cos(W x)]``.

    The rows of ``W`` have uniformly random directions and lengths spread
    log-uniformly over ``[1, max_frequency]`` (in inverse units of x), so the
    features span scales from the whole space down to ``2 pi / max_frequency``.

    Parameters
    ----------
    dim : int
    n_features : int
        Frequencies (the output has ``dim + 2 n_features`` columns).
    max_frequency : float
    seed : int
    dtype : torch.dtype
    """

    def __init__(self, dim, n_features=64, max_frequency=8.0, seed=0, dtype=torch.float64):
        super().__init__()
        if int(n_features) < 1 or not max_frequency >= 1:
            raise ValueError(f"need n_features >= 1 and max_frequency >= 1, got {n_features}, "
                             f"{max_frequency}")
        gen = torch.Generator().manual_seed(int(seed))
        direction = torch.randn(int(n_features), int(dim), generator=gen, dtype=dtype)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        length = torch.exp(torch.rand(int(n_features), 1, generator=gen, dtype=dtype)
                           * math.log(max_frequency))
        self.register_buffer("frequencies", direction * length)
        self.out_dim = int(dim) + 2 * int(n_features)
        self._cache = OrderedDict()

    #: Inputs of at least this many rows have their features cached.
    CACHE_MIN_ROWS = 4096
    #: Cached inputs kept (least recently used dropped).
    CACHE_SIZE = 4

    def forward(self, x):
        key = self._cache_key(x)
        if key is not None:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[1]
        proj = x @ self.frequencies.T
        out = torch.cat([x, proj.sin(), proj.cos()], dim=-1)
        if key is not None:
            # The entry holds x itself: its storage cannot be freed and reused
            # by other data while the key (address, layout, versions) is kept.
            self._cache[key] = (x, out)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return out

    def _cache_key(self, x):
        """Key of a large fixed input (e.g. a quadrature's nodes, evaluated at
        every step of maximum likelihood: the features, half the cost of a
        step, are computed once), None for anything not to cache.

        Address, layout and in-place version counters of both ``x`` and the
        frequencies: an input edited in place, or new frequencies (loaded
        state, another device), miss the cache.
        """
        if (x.requires_grad or x.dim() != 2 or x.shape[0] < self.CACHE_MIN_ROWS
                or torch.is_inference_mode_enabled() or x.is_inference()):
            # (inference tensors cannot enter a later autograd graph)
            return None
        try:
            return (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, x._version,
                    self.frequencies.data_ptr(), self.frequencies._version)
        except RuntimeError:  # functorch-wrapped and other storage-less tensors
            return None


class EnergyMLP(nn.Module):
    """Multilayer perceptron ``E: R^n -> R`` with smooth activations.

    Smooth activations (SiLU by default) keep ``grad_x E`` continuous, which
    Langevin dynamics needs.

    Parameters
    ----------
    dim : int
        Input dimension ``n``.
    hidden : sequence of int
        Widths of the hidden layers.
    activation : {"silu", "tanh", "softplus", "gelu", "sigmoid"}
    seed : int, optional
        Seed of the weight initialisation (the global torch RNG is untouched).
    dtype : torch.dtype
        Parameter dtype (float64 by default).
    fourier : int
        Random Fourier features fed to the MLP (0: raw coordinates only).
    max_frequency : float
        Highest feature frequency (see :class:`FourierFeatures`).
    """

    def __init__(self, dim, hidden=(64, 64), activation="silu", seed=None,
                 dtype=torch.float64, fourier=0, max_frequency=8.0):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.fourier, self.max_frequency = int(fourier), float(max_frequency)
        self.features = (FourierFeatures(self.dim, self.fourier, self.max_frequency,
                                         0 if seed is None else int(seed), dtype)
                         if self.fourier > 0 else None)
        width = self.dim if self.features is None else self.features.out_dim
        # The library's one MLP builder (exact graph-free Jacobians in samplers).
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.net = mlp.build_mlp(width, 1, self.hidden, activation, dtype, gen)

    def config(self):
        """Constructor arguments, enough to rebuild the architecture."""
        config = {"dim": self.dim, "hidden": list(self.hidden), "activation": self.activation}
        if self.fourier:
            config.update(fourier=self.fourier, max_frequency=self.max_frequency)
        return config

    def forward(self, x):
        """Energies of points ``x`` of shape ``(..., n)``; returns shape ``(...,)``."""
        if self.features is not None:
            x = self.features(x)
        return self.net(x).squeeze(-1)


class PolynomialEnergy(nn.Module):
    """``E(x) = sum_a c_a ((x - center) / scale)^a`` over monomials of degree 1..``degree``.

    The exponential family whose sufficient statistics are the monomials of
    the ambient coordinates: degree 1 is the von Mises-Fisher family on a
    sphere (``exp(kappa mu.x)``), degree 2 the Fisher-Bingham (FB8) family, and
    on S^2 degree ``d`` spans exactly the spherical harmonics of degree <= d.
    The maximum-likelihood problem is concave in the coefficients, so an exact
    (quadrature-normalised) fit has one optimum, and with few parameters it
    suits small data sets where an MLP's fit varies from draw to draw. It
    starts at zero (the uniform density). ``center`` and ``scale`` only
    condition the features: the family does not depend on them.

    Parameters
    ----------
    dim : int
        Ambient dimension ``n``.
    degree : int
        Highest total degree (>= 1); ``C(n + degree, degree) - 1`` coefficients.
    center : sequence of float, optional
        Shift of the coordinates (default the origin).
    scale : float
        Positive scale of the coordinates.
    dtype : torch.dtype
    """

    def __init__(self, dim, degree=1, center=None, scale=1.0, dtype=torch.float64):
        super().__init__()
        if int(dim) < 1 or int(degree) < 1:
            raise ValueError(f"dim and degree must be >= 1, got {dim} and {degree}")
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise ValueError(f"scale must be positive and finite, got {scale}")
        self.dim, self.degree, self.scale = int(dim), int(degree), float(scale)
        center = torch.zeros(self.dim, dtype=dtype) if center is None else torch.as_tensor(
            center, dtype=dtype).detach().clone()
        if center.shape != (self.dim,) or not bool(torch.isfinite(center).all()):
            raise ValueError(f"center must be a finite vector of shape ({self.dim},)")
        self.register_buffer("center", center)
        # Monomials of degree k + 1 are those of degree k times one coordinate
        # whose index is at least the last one used (each monomial once); the
        # product form keeps gradients finite at zero coordinates, unlike pow.
        blocks, last = [], list(range(self.dim))  # last: highest coordinate index used
        for _ in range(1, self.degree):
            pairs = [(j, i) for j, lo in enumerate(last) for i in range(lo, self.dim)]
            blocks.append(pairs)
            last = [i for _, i in pairs]
        for k, pairs in enumerate(blocks):
            self.register_buffer(f"_parent{k}", torch.tensor([j for j, _ in pairs]),
                                 persistent=False)
            self.register_buffer(f"_variable{k}", torch.tensor([i for _, i in pairs]),
                                 persistent=False)
        self._n_blocks = len(blocks)
        self.coef = nn.Parameter(torch.zeros(self.dim + sum(map(len, blocks)), dtype=dtype))

    @property
    def n_features(self):
        """Number of monomials (and coefficients)."""
        return self.coef.shape[0]

    def config(self):
        """Constructor arguments, enough to rebuild the energy."""
        return {"dim": self.dim, "degree": self.degree, "center": self.center.tolist(),
                "scale": self.scale}

    def features(self, x):
        """The monomials of ``(x - center) / scale`` by degree, shape ``(..., n_features)``."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected points of dimension {self.dim}, got shape "
                             f"{tuple(x.shape)}")
        u = block = (x - self.center) / self.scale
        out = [u]
        for k in range(self._n_blocks):
            parent, variable = getattr(self, f"_parent{k}"), getattr(self, f"_variable{k}")
            block = block[..., parent] * u[..., variable]
            out.append(block)
        return torch.cat(out, -1)

    def forward(self, x):
        """Energies of points ``x`` of shape ``(..., n)``; returns shape ``(...,)``."""
        return self.features(x) @ self.coef


def _log_vmf_norm(kappa):
    """``log`` of the von Mises-Fisher normaliser on S^2 for ``exp(kappa (mu.x - 1))``."""
    return torch.log(kappa) - math.log(2 * math.pi) - torch.log(-torch.expm1(-2 * kappa))


#: Largest kernel concentration of :class:`AnchoredVMFEnergy`. ``1 - a.x`` is
#: resolved to ~1e-16 in float64, so beyond 1e12 a kernel's log density at
#: its own anchor carries rounding errors above 1e-4 nats; its width, 1e-6 rad
#: (6 m on the Earth), is below the precision of any data it models.
KAPPA_MAX = 1e12
#: :class:`AnchoredVMFEnergy` sums a point's kernels densely up to this many
#: point-kernel pairs (on the CPU), over the kernels within reach beyond.
DENSE_PAIRS = 1 << 21
#: A kernel whose log density at a point is below ``-KERNEL_TAIL - log(2 pi)``
#: is left out of that point's sum (the sparse path's only approximation).
KERNEL_TAIL = 60.0


class AnchoredVMFEnergy(nn.Module):
    """Energy of a learned von Mises-Fisher kernel mixture times a network, on the unit 2-sphere.

    ``exp(-E(x)) = q(x) exp(-g(x))`` with

    * ``q = (1 - f) (1/N) sum_j vMF(x; a_j, kappa_j) + f / (4 pi)``: one kernel
      per anchor ``a_j`` (the training points, set by :meth:`set_anchors`),
      concentrations ``kappa_j = c s_j / d_j^2`` (at most :data:`KAPPA_MAX`)
      from each anchor's distance ``d_j`` to its k-th nearest other anchor
      (floored at ``min_distance``),
      and a uniform floor ``f``; ``c`` and ``f`` are learned, and with
      ``adapt_kernels`` so is every kernel's own factor ``s_j`` (starting at
      1): the k-nearest-neighbour rule only guesses how sharp the density is
      at each anchor, leave-one-out likelihood on the other training points
      measures it (kernels along a dense river narrow, isolated ones widen);
    * ``g``: an :class:`EnergyMLP` with Fourier features, zero at the start.

    ``Z = int q exp(-g) dA`` is computed exactly for ``g = 0`` (``Z = 1``) and
    to quadrature accuracy otherwise by a rule adapted to ``q``
    (:meth:`log_partition`): per anchor, Gauss-Laguerre nodes in
    ``1 - a_j.x`` scaled by ``1 / kappa_j`` times a trapezoid in azimuth,
    plus a Gauss-Legendre x trapezoid rule for the floor. Training
    on the anchors themselves uses the leave-one-out mixture
    (:meth:`loo_energy`), so ``c`` is fitted by leave-one-out likelihood.

    Parameters
    ----------
    k : int
        Neighbour rank of the adaptive concentrations.
    min_distance : float
        Floor of ``d_j`` (caps the concentration at duplicated points).
    hidden, fourier, max_frequency : network settings
    n_u, n_phi : int
        Nodes per kernel of the adapted rule (the error estimate halves both).
    seed : int
    adapt_kernels : bool
        Learn a concentration factor per kernel (``log s_j``, the parameter
        ``log_kappa_shift``) besides the shared ``c``.
    """

    def __init__(self, k=5, min_distance=1e-4, hidden=(32, 32), fourier=32, max_frequency=8.0,
                 n_u=4, n_phi=4, seed=0, adapt_kernels=False):
        super().__init__()
        self.k, self.min_distance = int(k), float(min_distance)
        self.adapt_kernels = bool(adapt_kernels)
        self.n_u, self.n_phi = int(n_u), int(n_phi)
        self.net = EnergyMLP(3, hidden=hidden, seed=seed, fourier=fourier,
                             max_frequency=max_frequency)
        with torch.no_grad():  # g = 0 at the start: the model starts as the kernel mixture
            self.net.net[-1].weight.zero_()
            self.net.net[-1].bias.zero_()
        self.log_c = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
        self.floor_logit = nn.Parameter(torch.tensor(-4.0, dtype=torch.float64))
        self.register_buffer("anchors", torch.zeros(0, 3, dtype=torch.float64))
        self.register_buffer("log_d", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("phase", torch.zeros(0, dtype=torch.float64))
        self._resize_kernels(0)
        self.seed = int(seed)

    def _resize_kernels(self, n, device=None):
        # One log-factor per anchor, zero (s_j = 1) at the start; frozen
        # unless adapt_kernels (then it is the plain k-NN rule).
        self.log_kappa_shift = nn.Parameter(torch.zeros(n, dtype=torch.float64, device=device),
                                            requires_grad=self.adapt_kernels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The kernel buffers are sized by the points the energy was anchored
        # on: take the saved size before torch copies the values in.
        saved = state_dict.get(prefix + "anchors")
        if saved is not None:
            n, like = saved.shape[0], self.anchors
            self.anchors = like.new_zeros((n, like.shape[-1]))
            self.log_d, self.phase = like.new_zeros(n), like.new_zeros(n)
            self._resize_kernels(n, like.device)
            if prefix + "log_kappa_shift" not in state_dict and not self.adapt_kernels:
                # Saved before per-kernel factors existed: the k-NN rule is a
                # factor of 1 (log 0) for every kernel. (torch loads from a copy.)
                state_dict[prefix + "log_kappa_shift"] = like.new_zeros(n)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self):
        """Constructor arguments."""
        return {"k": self.k, "min_distance": self.min_distance, "hidden": list(self.net.hidden),
                "fourier": self.net.fourier, "max_frequency": self.net.max_frequency,
                "n_u": self.n_u, "n_phi": self.n_phi, "seed": self.seed,
                "adapt_kernels": self.adapt_kernels}

    def set_anchors(self, X, init=True):
        """Use the points ``X`` (on the unit sphere) as kernel centres.

        With ``init``, ``c`` starts at the leave-one-out optimum of a grid
        (the mixture's own bandwidth selection, on the training points only).
        """
        from scipy.spatial import cKDTree

        X = X.detach().to(torch.float64)
        pts = X.cpu().numpy()
        k = min(self.k, X.shape[0] - 1)
        dist = cKDTree(pts).query(pts, k=k + 1)[0][:, k]
        self.anchors = X.clone()
        self.log_d = torch.as_tensor(np.log(np.maximum(dist, self.min_distance)),
                                     dtype=torch.float64, device=X.device)
        gen = torch.Generator().manual_seed(self.seed)
        self.phase = (2 * math.pi * torch.rand(X.shape[0], generator=gen,
                                               dtype=torch.float64)).to(X.device)
        self._resize_kernels(X.shape[0], X.device)
        if init:
            idx = torch.arange(X.shape[0], device=X.device)
            best = None
            with torch.no_grad():
                for log_c in torch.linspace(-3.0, 8.0, 45, dtype=torch.float64):
                    self.log_c.fill_(float(log_c))
                    loss = float(self.loo_energy(X, idx).mean())
                    if best is None or loss < best[0]:
                        best = (loss, float(log_c))
                self.log_c.fill_(best[1])
        return self

    def _kappa(self):
        # Capped at KAPPA_MAX: at repeated points leave-one-out and validation
        # likelihoods grow without bound as kernels narrow, and past ~1e16 the
        # concentration overflows the kernel arithmetic into NaN.
        log_kappa = self.log_c - 2 * self.log_d + self.log_kappa_shift
        return torch.exp(log_kappa.clamp(max=math.log(KAPPA_MAX)))

    def floor(self):
        """Weight ``f`` of the uniform floor."""
        return torch.sigmoid(self.floor_logit)

    def _log_q(self, x, exclude=None, sparse=None):
        """``log q(x)``; ``exclude[i]``: an anchor left out of row ``i``'s mixture.

        ``sparse`` (default: on the CPU when there are more than
        :data:`DENSE_PAIRS` point-kernel pairs) sums each point's kernels
        within reach only (:meth:`_kernel_pairs`), a pair count that grows
        like the points instead of points x kernels.
        """
        kappa = self._kappa()
        log_norm = _log_vmf_norm(kappa)
        n = self.anchors.shape[0] - (exclude is not None)
        if sparse is None:
            sparse = x.device.type == "cpu" and x.shape[0] * self.anchors.shape[0] > DENSE_PAIRS
        if sparse:
            mix = self._sparse_log_mix(x, kappa, log_norm, exclude)
        else:
            logits = (x @ self.anchors.T - 1) * kappa + log_norm
            if exclude is not None:
                logits = logits.clone()
                logits[torch.arange(x.shape[0], device=x.device), exclude] = -math.inf
            mix = torch.logsumexp(logits, -1)
        f = self.floor()
        return torch.logaddexp(torch.log1p(-f) + mix - math.log(n),
                               torch.log(f) - math.log(4 * math.pi))

    def _kernel_pairs(self, x, kappa, log_norm):
        """Indices ``(rows, kernels)`` of the point-kernel pairs that matter, and the broad kernels.

        Kernel ``j`` is left out at points with ``1 - a_j.x > tau_j``, where its
        log density is below ``-KERNEL_TAIL - log(2 pi)``: the sum left out is
        at most ``exp(-KERNEL_TAIL) / (2 pi)`` per steradian however many
        kernels there are. Kernels that reach everywhere (``tau_j >= 2``) are
        returned apart and summed densely; the others are found by k-d trees
        over kernels grouped by reach (within a factor of two), so that each
        query radius fits its group.
        """
        from scipy.spatial import cKDTree

        tau = ((log_norm + math.log(2 * math.pi) + KERNEL_TAIL) / kappa).detach().cpu().numpy()
        broad = np.flatnonzero(tau >= 2.0)
        sharp = np.flatnonzero((tau > 0.0) & (tau < 2.0))  # tau <= 0: nowhere within reach
        xs = x.detach().cpu().numpy()
        xs = xs / np.maximum(np.linalg.norm(xs, axis=-1, keepdims=True), 1e-300)
        rows, cols = [], []
        if sharp.size:
            reach = np.sqrt(2.0 * tau[sharp])  # chord radius of each kernel
            anchors = self.anchors.detach().cpu().numpy()
            queries = cKDTree(xs)
            group = np.floor(np.log2(reach / reach.min())).astype(np.int64)
            for g in np.unique(group):
                members = sharp[group == g]
                radius = reach[group == g]
                found = queries.sparse_distance_matrix(cKDTree(anchors[members]),
                                                       float(radius.max()), output_type="ndarray")
                keep = found["v"] <= radius[found["j"]]
                rows.append(found["i"][keep])
                cols.append(members[found["j"][keep]])
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        cols = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        as_index = lambda a: torch.as_tensor(a, dtype=torch.long).to(x.device)  # noqa: E731
        return as_index(rows), as_index(cols), as_index(broad)

    def _sparse_log_mix(self, x, kappa, log_norm, exclude):
        """``log sum_j vMF(x; a_j, kappa_j)`` over the pairs of :meth:`_kernel_pairs`."""
        rows, cols, broad = self._kernel_pairs(x, kappa, log_norm)
        a = self.anchors
        pair_logits = ((x[rows] * a[cols]).sum(-1) - 1) * kappa[cols] + log_norm[cols]
        dense = (x @ a[broad].T - 1) * kappa[broad] + log_norm[broad]
        if exclude is not None:
            exclude = torch.as_tensor(exclude, device=x.device)
            pair_logits = pair_logits.masked_fill(cols == exclude[rows], -math.inf)
            dense = dense.masked_fill(broad[None] == exclude[:, None], -math.inf)
        # Per-row logsumexp over a ragged set: shift by the (detached) row
        # maximum, add up, shift back.
        top = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        top = top.scatter_reduce(0, rows, pair_logits.detach(), "amax")
        if broad.numel():
            top = torch.maximum(top, dense.detach().amax(-1))
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        total = torch.zeros_like(top).index_add(0, rows, (pair_logits - top[rows]).exp())
        total = total + (dense - top[:, None]).exp().sum(-1)
        # A row with no kernel within reach gives log 0 = -inf: q is the floor.
        return top + total.log()

    def forward(self, x):
        if self.anchors.shape[0] == 0:
            raise RuntimeError("call set_anchors first (ConstrainedEBM.fit does)")
        shape = x.shape[:-1]
        x = x.reshape(-1, 3)
        out = self.net(x) - self._log_q(x)
        return out.reshape(shape)

    def loo_energy(self, x, idx):
        """Energies of anchor points ``x = anchors[idx]`` without their own kernel."""
        return self.net(x) - self._log_q(x, exclude=idx)

    def _nodes(self, n_u, n_phi):
        """Nodes of the adapted rule and the ``q``-mass each stands for.

        Along ``t = 1 - mu.x`` a vMF kernel has the density
        ``kappa exp(-kappa t) / (1 - exp(-2 kappa))`` on ``[0, 2]``, and the
        azimuthal mean of a smooth function is smooth in ``t``: Gauss-Laguerre
        nodes ``t = xi / kappa`` integrate it (the tail beyond ``t = 2`` has
        mass ``exp(-2 kappa)``, negligible once ``2 kappa`` exceeds the largest
        node), Gauss-Legendre on ``[0, 2]`` with the density as weight for
        broad kernels; the trapezoid rule (random phase per kernel) in azimuth.
        """
        kappa = self._kappa()
        dev = kappa.device
        xi, w_lag = (torch.as_tensor(v, dtype=torch.float64, device=dev)
                     for v in np.polynomial.laguerre.laggauss(n_u))
        x, w_leg = (torch.as_tensor(v, dtype=torch.float64, device=dev)
                    for v in np.polynomial.legendre.leggauss(n_u))
        broad = (2 * kappa < 1.5 * float(xi[-1]))[:, None]
        t_leg = (1 + x)[None].expand(kappa.shape[0], n_u)
        dens = kappa[:, None] * torch.exp(-kappa[:, None] * t_leg) / (-torch.expm1(-2 * kappa))[:, None]
        t = torch.where(broad, t_leg, xi[None] / kappa[:, None])
        wt = torch.where(broad, w_leg[None] * dens,
                         (w_lag / 1.0)[None] / (-torch.expm1(-2 * kappa))[:, None])
        # Each kernel carries exactly its mass (1 - f) / N: n_u Legendre nodes
        # integrate the density exp(-kappa t) poorly once kappa is a few units
        # (at n_u = 4, kappa 3-7 lost up to 3.4% of a kernel's mass, and
        # Laguerre nodes past t = 2 count a tail that is not there), so Z of
        # the bare mixture (g = 0) came out below 1 by more than the error
        # estimate said. Normalised, the rule is exact at g = 0 and a ratio
        # estimate of the kernel's mean of exp(-g) otherwise.
        wt = wt / wt.sum(1, keepdim=True)
        w = (1 - t).clamp(-1.0, 1.0)
        phi = self.phase[:, None] + torch.arange(n_phi, dtype=torch.float64,
                                                 device=dev) * (2 * math.pi / n_phi)
        a = self.anchors
        helper = torch.where((a[:, :1].abs() < 0.9), torch.tensor([1.0, 0, 0], dtype=a.dtype,
                                                                    device=dev),
                             torch.tensor([0, 1.0, 0], dtype=a.dtype, device=dev))
        e1 = helper - (helper * a).sum(-1, keepdim=True) * a
        e1 = e1 / e1.norm(dim=-1, keepdim=True)
        e2 = torch.linalg.cross(a, e1)
        rho = torch.sqrt((1 - w.square()).clamp_min(0))  # (N, n_u)
        pts = (w[:, :, None, None] * a[:, None, None, :]
               + rho[:, :, None, None] * (phi.cos()[:, None, :, None] * e1[:, None, None, :]
                                          + phi.sin()[:, None, :, None] * e2[:, None, None, :]))
        f = self.floor()
        mass = ((1 - f) / a.shape[0] * wt[:, :, None] / n_phi).expand(a.shape[0], n_u, n_phi)
        from .normalization import sphere_quadrature

        bg = sphere_quadrature(max(n_u * 8, 8), max(n_phi * 16, 16))
        bg_pts = bg.points.to(dev)
        bg_mass = f * bg.weights.to(dev) / (4 * math.pi)
        return (torch.cat([pts.reshape(-1, 3), bg_pts]),
                torch.cat([mass.reshape(-1), bg_mass]))

    def log_partition(self, coarse=False):
        """``log Z`` by the rule adapted to ``q`` (differentiable); ``coarse`` halves it."""
        n_u, n_phi = (max(self.n_u // 2, 1), max(self.n_phi // 2, 1)) if coarse else \
            (self.n_u, self.n_phi)
        pts, mass = self._nodes(n_u, n_phi)
        return torch.logsumexp(mass.log() - self.net(pts), 0)

    def adapted_quadrature(self):
        """The adapted rule as an area quadrature (weights ``q``-mass / ``q``), without graph."""
        from .normalization import Quadrature

        with torch.no_grad():
            pts, mass = self._nodes(self.n_u, self.n_phi)
            log_q = torch.cat([self._log_q(chunk) for chunk in pts.split(4096)])
            coarse_pts, coarse_mass = self._nodes(max(self.n_u // 2, 1), max(self.n_phi // 2, 1))
            coarse_q = torch.cat([self._log_q(chunk) for chunk in coarse_pts.split(4096)])
        coarse = Quadrature(coarse_pts, (coarse_mass.log() - coarse_q).exp(),
                            method="vMF-mixture-adapted rule")
        return Quadrature(pts, (mass.log() - log_q).exp(), coarse=coarse,
                          method="vMF-mixture-adapted rule")


class SumEnergy(nn.Module):
    """``E(x) = sum_i w_i E_i(x)``: the energy of a product of densities ``prod_i p_i^w_i``.

    Parameters
    ----------
    nets : sequence of torch.nn.Module
        Energies mapping (B, n) to (B,).
    weights : sequence of float, optional
        Exponents ``w_i``; default all 1 (the product, for intersections).
        All ``1/K`` give the geometric mean of K densities (cross-fitted
        ensembles, :func:`~implicit_geom.models.cross_fit_ebm`).
    """

    def __init__(self, nets, weights=None):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        weights = [1.0] * len(self.nets) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.nets) or not all(math.isfinite(w) for w in weights):
            raise ValueError(f"need {len(self.nets)} finite weights, got {weights}")
        self.weights = tuple(weights)

    def forward(self, x):
        return sum(w * net(x) for w, net in zip(self.weights, self.nets))
