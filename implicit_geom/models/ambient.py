"""Unconstrained (ambient) energy-based model: the baseline that ignores M.

Chains run plain Langevin dynamics in a box around the data (clamped to it,
as in the paper's reference code); the density lives on that box of R^d (zero
outside it), so it is compared with the manifold models through samples (W,
distance to M), not likelihoods. In dimension <= 3 ``log Z`` is a grid sum over
the box, which also allows exact maximum-likelihood training
(``method="mle"``: the pushforward baseline's latent EBM, given the same
training ours gets where its ``log Z`` is computable).
"""

import math

import torch

from ..exceptions import NotFittedError
from ..learning.distributed import context
from ..numerics.validation import as_points, check_int, padded_box
from ..sampling.ambient import BoxLangevin
from .ebm import EnergyModel
from .energy_nets import EnergyMLP
from .normalization import box_quadrature, log_partition

__all__ = ["AmbientEBM"]


class AmbientEBM(EnergyModel):
    """Energy-based model on R^d trained by PCD with box-clamped Langevin chains.

    Parameters
    ----------
    dim : int
    energy_net : torch.nn.Module, optional
        Default :class:`EnergyMLP` with two hidden layers of 64.
    pad : float
        The chain box is the data's bounding box padded by ``pad`` times its
        extent on each side. The density lives on the box: points outside it
        have log density ``-inf``.
    hidden : sequence of int
        Hidden widths of the default energy network.
    method : {"pcd", "mle"}
        ``"pcd"``: persistent contrastive divergence with box-clamped Langevin
        chains (the paper's baseline); ``"mle"``: exact maximum likelihood,
        loss ``mean E(data) + log Z`` with ``log Z`` a midpoint-grid sum over
        the box (``dim <= 3``; no chains in training: :meth:`sample` then
        starts from uniform noise in the box).
    quadrature_resolution : int, optional
        Grid points per axis of the box rule of ``"mle"`` training, shifted by
        a random offset every step (default 512, 64, 16 for dimension 1, 2,
        3); validation uses twice as many, fixed, :meth:`log_partition` four
        times as many.
    **kwargs
        PCD settings of :class:`~implicit_geom.models.ebm.EnergyModel`.
    """

    def __init__(self, dim, energy_net=None, *, pad=0.1, hidden=(64, 64), method="pcd",
                 quadrature_resolution=None, **kwargs):
        self._dim = check_int(dim, "dim")
        if method not in ("pcd", "mle"):
            raise ValueError(f"method must be 'pcd' or 'mle', got {method!r}")
        if method == "mle" and self._dim > 3:
            raise ValueError(f"method='mle' needs a grid log Z: dimension <= 3, got {self._dim}")
        if not 0 <= pad < math.inf:
            raise ValueError(f"pad must be finite and >= 0, got {pad}")
        if quadrature_resolution is None:
            quadrature_resolution = {1: 512, 2: 64}.get(self._dim, 16)
        self.quadrature_resolution = check_int(quadrature_resolution, "quadrature_resolution",
                                               minimum=2)
        if energy_net is None:
            energy_net = EnergyMLP(self._dim, hidden=hidden, seed=kwargs.get("seed", 0))
        self.pad = float(pad)
        self.method = method
        self.box_ = None
        self._gen = None
        self._rules = {}  # box rules by resolution (training, validation), built per fit
        super().__init__(energy_net, **kwargs)

    @property
    def dim(self):
        return self._dim

    def _prepare(self, X):
        self.box_ = padded_box(X, self.pad, min_width=1e-3)
        self._gen = torch.Generator().manual_seed(context().seed(self.seed))  # per rank
        self._rules = {}

    def _box_rule(self, resolution):
        # Built once per fit and resolution (training, validation, log Z,
        # sampling), on the energy's device and dtype.
        if self.dim > 3:
            raise NotImplementedError("a grid log Z needs dimension <= 3")
        if resolution not in self._rules:
            like = self._param()
            self._rules[resolution] = box_quadrature(*(b.cpu() for b in self.box_),
                                                     resolution).to(like.device, like.dtype)
        return self._rules[resolution]

    @property
    def _fine_resolution(self):
        """Points per axis of :meth:`log_partition`'s default grid, which
        :meth:`_grid_draws` draws from: four times the training rule's."""
        return 4 * self.quadrature_resolution

    @property
    def _validation_resolution(self):
        """Points per axis of the validation grid (and of :meth:`log_partition_error`'s
        coarse rule): twice the training rule's."""
        return 2 * self.quadrature_resolution

    def _uses_pcd(self):
        return self.method == "pcd"

    def _direct_loss(self, X):
        # The negative log-likelihood of the batch, log Z by the training grid
        # shifted by a random offset each step (wrapped around the box): an
        # unbiased estimate of Z, so an energy cannot hide mass between fixed
        # nodes (Fourier energies on a fixed 64-point grid did, by a factor e^300).
        rule = self._box_rule(self.quadrature_resolution)
        lo, hi = (b.to(rule.points) for b in self.box_)
        width = (hi - lo) / self.quadrature_resolution
        shift = (torch.rand(self.dim, generator=self._gen, dtype=lo.dtype).to(lo.device) - 0.5)
        points = lo + torch.remainder(rule.points - lo + shift * width, hi - lo)
        terms = -self.energy_net(points) + rule.weights.log()
        return self.energy_net(X).mean() + torch.logsumexp(terms, dim=0)

    def _forget_fit(self):
        super()._forget_fit()
        self.box_ = None

    def _init_chains(self, n):
        lo, hi = self.box_
        u = torch.rand(n, self.dim, generator=self._gen, dtype=lo.dtype).to(lo.device)
        return lo + (hi - lo) * u

    def _advance(self, x, n_steps):
        return BoxLangevin.from_step(self._energy_fn, *self.box_, self.step_size,
                                     self._gen).run(x, n_steps)

    def sample(self, n_samples, n_steps=200, step_size=None, seed=None, init=None,
               adjusted=None):
        """Samples advanced by ``n_steps`` Langevin steps, shape (n, d).

        ``adjusted``: Metropolis-adjusted steps (MALA, exact for the density
        on the box) or the unadjusted, box-clamped ones of PCD training
        (biased by the step); default adjusted after ``method="mle"`` (as
        :class:`~implicit_geom.models.ConstrainedEBM` samples its maximum-likelihood
        fits with MALA), unadjusted after PCD.

        Chains start from the replay buffer, or from ``init`` (shape (n, d)).
        After ``method="mle"``, which keeps no buffer, they start from exact
        draws of the density on the grid of :meth:`log_partition` (a cell
        by its probability, then uniformly in it): chains from noise in the
        box left most samples in its empty margin after 200 steps.
        """
        if not self.is_fitted:
            raise NotFittedError("call fit first: the chains' box comes from the data")
        if init is None:
            n_samples = check_int(n_samples, "n_samples")  # 2.5 drew 2
        gen = torch.Generator().manual_seed(self.seed + 1 if seed is None else int(seed))
        like = self._param()
        if init is None:
            x0 = (self.buffer_[torch.randint(self.buffer_.shape[0], (n_samples,), generator=gen)
                               .to(self.buffer_.device)] if self.buffer_ is not None
                  else self._grid_draws(n_samples, gen))
        else:
            x0 = as_points(init, self.dim, "init").reshape(-1, self.dim).to(like)
        if adjusted is None:
            adjusted = self.method == "mle"
        return BoxLangevin.from_step(self._energy_fn, *self.box_,
                                     self.step_size if step_size is None else step_size,
                                     gen, adjusted=adjusted).run(x0, n_steps)

    def _grid_draws(self, n, gen):
        """``n`` draws of the density discretised on the :meth:`log_partition` grid."""
        resolution = self._fine_resolution  # (_box_rule refuses dimension > 3)
        lo, hi = self.box_
        rule = self._box_rule(resolution)
        with torch.no_grad():
            logits = (-self.energy_net(rule.points) + rule.weights.log()).cpu().double()
        cells = torch.multinomial(torch.softmax(logits, 0), n, replacement=True, generator=gen)
        width = (hi - lo).cpu() / resolution
        jitter = (torch.rand(n, self.dim, generator=gen, dtype=width.dtype) - 0.5) * width
        return (rule.points.cpu()[cells] + jitter.to(rule.points.dtype)).to(lo)

    def log_partition(self, resolution=None):
        """``log Z`` over the chain box by a midpoint grid (``dim <= 3``).

        The default grid has four times the training rule's points per axis
        (``quadrature_resolution``); :meth:`log_partition_error` says how far
        it agrees with the validation grid (twice the training rule's).
        """
        if not self.is_fitted:
            raise NotFittedError("call fit first: the chains' box comes from the data")
        if resolution is None:
            resolution = self._fine_resolution
        with torch.no_grad():
            return float(log_partition(self.energy_net, self._box_rule(resolution)))

    def log_partition_error(self):
        """Estimated error of :meth:`log_partition`: its difference from the rule of half
        the resolution, over 3 (Richardson, the midpoint rule being of order 2)."""
        fine = self.log_partition()
        return abs(fine - self.log_partition(self._validation_resolution)) / 3.0

    def _validation_loss(self, X_val):
        # The exact held-out NLL over the chain box (grid log Z, dim <= 3);
        # a validation point outside the box has density 0: +inf.
        with torch.no_grad():
            return float(-self._outside(X_val, -self.energy_net(X_val)).mean()
                         + log_partition(self.energy_net,
                                         self._box_rule(self._validation_resolution)))

    def _outside(self, x, log_density):
        # The density lives on the box: -inf outside it (a finite score there
        # was a density the model does not have).
        lo, hi = self.box_
        x = x.to(lo)
        inside = ((x >= lo) & (x <= hi)).all(-1)
        return log_density.masked_fill(~inside.to(log_density.device), -math.inf)

    def log_prob(self, x, normalized=False):
        """``-E(x)`` inside the box, ``-inf`` outside it; minus ``log Z`` over the box when
        ``normalized``."""
        if not self.is_fitted:
            raise NotFittedError("call fit first: the density's box comes from the data")
        x = as_points(x, self.dim, "x")
        out = self._outside(x, -self.energy(x))
        return out - self.log_partition() if normalized else out

    def score_samples(self, X):
        """Normalised log density at points ``X``, shape (n,) (sklearn's convention)."""
        return self.log_prob(as_points(X, self.dim, "X").reshape(-1, self.dim), normalized=True)
