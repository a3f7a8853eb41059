"""Unconstrained (ambient) energy-based model: the baseline that ignores M.

Chains run plain Langevin dynamics in a box around the data (clamped to it,
as in the paper's reference code); the density lives on R^d, so it is compared
with the manifold models through samples (W, distance to M), not likelihoods.
"""

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
        extent on each side.
    hidden : sequence of int
        Hidden widths of the default energy network.
    **kwargs
        PCD settings of :class:`~implicit_geom.models.ebm.EnergyModel`.
    """

    def __init__(self, dim, energy_net=None, *, pad=0.1, hidden=(64, 64), **kwargs):
        self._dim = int(dim)
        if energy_net is None:
            energy_net = EnergyMLP(self._dim, hidden=hidden, seed=kwargs.get("seed", 0))
        self.pad = float(pad)
        self.box_ = None
        self._gen = None
        super().__init__(energy_net, **kwargs)

    @property
    def dim(self):
        return self._dim

    def _prepare(self, X):
        self.box_ = padded_box(X, self.pad, min_width=1e-3)
        self._gen = torch.Generator().manual_seed(context().seed(self.seed))  # per rank

    def _init_chains(self, n):
        lo, hi = self.box_
        u = torch.rand(n, self.dim, generator=self._gen, dtype=lo.dtype).to(lo.device)
        return lo + (hi - lo) * u

    def _advance(self, x, n_steps):
        return BoxLangevin.from_step(self._energy_fn, *self.box_, self.step_size,
                                     self._gen).run(x, n_steps)

    def sample(self, n_samples, n_steps=200, step_size=None, seed=None, init=None):
        """Samples advanced by ``n_steps`` Langevin steps, shape (n, d).

        Chains start from the replay buffer, or from ``init`` (shape (n, d),
        e.g. uniform noise in :attr:`box_`).
        """
        if not self.is_fitted:
            raise NotFittedError("call fit first: the chains' box comes from the data")
        if init is None:
            n_samples = check_int(n_samples, "n_samples")  # 2.5 drew 2
        gen = torch.Generator().manual_seed(self.seed + 1 if seed is None else int(seed))
        if init is None:
            idx = torch.randint(self.buffer_.shape[0], (n_samples,), generator=gen)
            x0 = self.buffer_[idx.to(self.buffer_.device)]
        else:
            x0 = as_points(init, self.dim, "init").reshape(-1, self.dim).to(self.buffer_)
        return BoxLangevin.from_step(self._energy_fn, *self.box_,
                                     self.step_size if step_size is None else step_size,
                                     gen).run(x0, n_steps)

    def log_partition(self, resolution=256):
        """``log Z`` over the chain box by a midpoint grid (``dim <= 3``)."""
        if not self.is_fitted:
            raise NotFittedError("call fit first: the chains' box comes from the data")
        rule = box_quadrature(*(b.cpu() for b in self.box_), resolution).to(self._param().device)
        with torch.no_grad():
            return float(log_partition(self.energy_net, rule))

    def _validation_loss(self, X_val):
        # The exact held-out NLL over the chain box (grid log Z, dim <= 3).
        if self.dim > 3:
            raise NotImplementedError("validation needs a grid log Z: dimension <= 3")
        rule = box_quadrature(*(b.cpu() for b in self.box_), 128).to(self._param().device)
        with torch.no_grad():
            return float(self.energy_net(X_val).mean() + log_partition(self.energy_net, rule))

    def log_prob(self, x, normalized=False):
        """``-E(x)``, minus ``log Z`` over the box when ``normalized``."""
        x = as_points(x, self.dim, "x")
        out = -self.energy(x)
        return out - self.log_partition() if normalized else out

    def score_samples(self, X):
        """Normalised log density at points ``X``, shape (n,) (sklearn's convention)."""
        return self.log_prob(as_points(X, self.dim, "X").reshape(-1, self.dim), normalized=True)
