"""Pushforward EBM baseline (Ross et al. 2023, Sec. 6): an autoencoder, then an
energy-based model on its latent codes.

Samples are decoded latent samples; they lie on the decoder's image, a
manifold with the topology of (a subset of) the latent space R^m, which is the
limitation the paper's constrained EBM removes. The density of the decoded
distribution with respect to the volume of the decoder image is
``p(x) = p_Z(z) / sqrt(det(J^T J))`` at ``z = enc(x)``, ``J`` the decoder's
Jacobian (the change-of-volume term).

The latent EBM runs on standardised codes ``u = (z - shift) / scale`` so that
one Langevin step size suits every data set whatever scale the encoder picks;
the affine map only adds ``sum(log scale)`` to the log density.
"""

import torch
from torch import nn

from ..exceptions import NotFittedError
from ..learning.distributed import make_trainer
from ..learning.estimator import EstimatorMixin
from ..numerics import autodiff
from ..numerics.mlp import build_mlp
from ..numerics.validation import DTYPE, as_points
from .ambient import AmbientEBM
from .normalization import _check_resolution
from .ebm import _check_data

__all__ = ["Autoencoder", "PushforwardEBM"]


class Autoencoder(nn.Module, EstimatorMixin):
    """MLP encoder ``R^n -> R^m`` and decoder ``R^m -> R^n`` (SiLU).

    Parameters
    ----------
    ambient_dim, latent_dim : int
    hidden : sequence of int
        Hidden widths of both networks (mirrored in the decoder).
    seed : int
    """

    def __init__(self, ambient_dim, latent_dim, hidden=(64, 64), seed=0):
        super().__init__()
        if not 1 <= int(latent_dim) < int(ambient_dim):
            raise ValueError(f"need 1 <= latent_dim < ambient_dim, got {latent_dim}, {ambient_dim}")
        gen = torch.Generator().manual_seed(int(seed))
        self.ambient_dim, self.latent_dim = int(ambient_dim), int(latent_dim)
        self.encoder = build_mlp(self.ambient_dim, self.latent_dim, tuple(hidden), "silu",
                                 DTYPE, gen)
        self.decoder = build_mlp(self.latent_dim, self.ambient_dim, tuple(reversed(hidden)),
                                 "silu", DTYPE, gen)
        self._trained = False
        self._initial_state = None  # the weights before the first fit

    def forward(self, x):
        """Reconstruction ``dec(enc(x))``."""
        return self.decoder(self.encoder(x))

    def fit(self, X, n_iter=2000, lr=3e-3, batch_size=256, seed=0, progress=False):
        """Minimise the mean squared reconstruction error with Adam.

        One random batch (drawn with replacement) per step, the learning rate
        decaying to zero along a cosine (:class:`~implicit_geom.learning.Trainer`, or its distributed subclass under torchrun).

        Returns
        -------
        list of float
            Loss per iteration.
        """
        # Every fit starts afresh: a refit trains from the first fit's start.
        if self._initial_state is None:
            self._initial_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        else:
            self.load_state_dict(self._initial_state)
        gen = torch.Generator().manual_seed(int(seed))
        # Data-parallel under torchrun (learning.distributed), like every model.
        trainer = make_trainer(self.parameters(), lr=lr, total_epochs=int(n_iter), lr_floor=0.0,
                               progress=progress, desc="Autoencoder")

        def loss_fn(batch):
            return (self(batch) - batch).square().sum(-1).mean(), {}

        self._trained = False  # until this fit has run through (a failed one leaves it unfitted)
        trainer.run(loss_fn, X, int(n_iter), int(batch_size), generator=gen,
                    sampling="replacement")
        self._trained = True
        return trainer.history["loss"]

    @property
    def is_fitted(self):
        """Whether :meth:`fit` has run."""
        return self._trained


class PushforwardEBM(EstimatorMixin):
    """Autoencoder plus latent EBM (the paper's pushforward baseline).

    Parameters
    ----------
    ambient_dim : int
    latent_dim : int
        Manifold dimension ``m``.
    hidden : sequence of int
        Autoencoder hidden widths.
    energy_hidden : sequence of int, optional
        Hidden widths of the latent energy network (default: the
        :class:`~implicit_geom.models.ambient.AmbientEBM` default).
    ae_iter, ae_lr, ae_batch_size : int, float, int
        Autoencoder training.
    latent_pad : float
        The latent chain box is the codes' bounding box padded by this
        fraction of its extent per side (the reference code uses 0.5; 0.1,
        the default, matches the constrained model's noise box and keeps chains
        off the decoder's extrapolated region). The latent density lives on
        the box: a point whose code falls outside it has log density ``-inf``.
    autoencoder : Autoencoder, optional
        A fitted autoencoder to use as it is (not trained by :meth:`fit`):
        models that differ only in their latent EBM then share one decoder
        image, so their densities are on the same manifold (e.g. for a
        :class:`~implicit_geom.models.DensityMixture` of them).
    seed : int
    progress : bool
    **ebm_kwargs
        Passed to the latent :class:`~implicit_geom.models.ambient.AmbientEBM`
        (``method`` (``"pcd"`` or exact ``"mle"``), ``beta``, ``lr``, ``n_iter``,
        ``n_mcmc_steps``, ``step_size``...).

    Attributes
    ----------
    autoencoder : Autoencoder
    latent_ebm : AmbientEBM
    history_ : dict
        ``"ae_loss"`` and the latent EBM's history.
    """

    def __init__(self, ambient_dim, latent_dim, *, hidden=(64, 64), energy_hidden=None,
                 ae_iter=2000, ae_lr=3e-3, ae_batch_size=256, latent_pad=0.1, autoencoder=None,
                 seed=0, progress=False, **ebm_kwargs):
        self.ambient_dim, self.latent_dim = int(ambient_dim), int(latent_dim)
        if autoencoder is None:
            self.autoencoder = Autoencoder(ambient_dim, latent_dim, hidden, seed)
            self._train_autoencoder = True
        else:
            if not isinstance(autoencoder, Autoencoder) or not autoencoder.is_fitted:
                raise NotFittedError("autoencoder must be a fitted Autoencoder (or None)")
            if (autoencoder.ambient_dim, autoencoder.latent_dim) != (self.ambient_dim,
                                                                     self.latent_dim):
                raise ValueError(f"the autoencoder maps R^{autoencoder.ambient_dim} to "
                                 f"R^{autoencoder.latent_dim}, not R^{self.ambient_dim} to "
                                 f"R^{self.latent_dim}")
            self.autoencoder = autoencoder
            self._train_autoencoder = False
        self.ae_iter, self.ae_lr, self.ae_batch_size = int(ae_iter), float(ae_lr), int(ae_batch_size)
        self.seed, self.progress = int(seed), bool(progress)
        if energy_hidden is not None:
            ebm_kwargs["hidden"] = tuple(energy_hidden)
        self.latent_ebm = AmbientEBM(latent_dim, pad=latent_pad, seed=seed, progress=progress,
                                     **ebm_kwargs)
        self.history_ = None
        self.latent_shift_ = self.latent_scale_ = None

    @property
    def is_fitted(self):
        """Whether :meth:`fit` has run."""
        return self.history_ is not None

    def fit(self, X, X_val=None):
        """Train the autoencoder, then the latent EBM on the codes. Returns self.

        With validation points, the latent EBM keeps the weights of its best
        exact latent NLL on their codes (early stopping per its ``patience``).
        """
        like = next(self.autoencoder.parameters())  # float32 data trained in float64
        X = _check_data(X, self.ambient_dim).to(device=like.device, dtype=like.dtype)
        self.history_ = None  # until this fit has run through (a failed one leaves it unfitted)
        ae_loss = (self.autoencoder.fit(X, self.ae_iter, self.ae_lr, self.ae_batch_size,
                                        self.seed, self.progress)
                   if self._train_autoencoder else [])
        with torch.no_grad():
            codes = self.autoencoder.encoder(X)
        self.latent_shift_ = codes.mean(0)
        self.latent_scale_ = codes.std(0).clamp_min(1e-12)
        val = None
        if X_val is not None:
            with torch.no_grad():
                val = (self.autoencoder.encoder(_check_data(X_val, self.ambient_dim, "X_val")
                                                .to(X)) - self.latent_shift_) / self.latent_scale_
        self.latent_ebm.fit((codes - self.latent_shift_) / self.latent_scale_, val)
        self.history_ = {"ae_loss": ae_loss, **self.latent_ebm.history_}
        return self

    def _points(self, x, dim, name):
        # Checked and in the networks' dtype and device: float32 input is
        # computed in the networks' float64, not rejected by a matmul.
        like = next(self.autoencoder.parameters())
        return as_points(x, dim, name).to(device=like.device, dtype=like.dtype)

    def encode(self, x):
        """Latent codes, shape (..., m)."""
        x = self._points(x, self.ambient_dim, "x")
        with torch.no_grad():
            return self.autoencoder.encoder(x)

    def decode(self, z):
        """Decoded points, shape (..., n)."""
        z = self._points(z, self.latent_dim, "z")
        with torch.no_grad():
            return self.autoencoder.decoder(z)

    def sample(self, n_samples, n_steps=200, step_size=None, seed=None, init=None,
               adjusted=None):
        """Decoded latent Langevin samples, shape (n_samples, n).

        Latent chains start from the replay buffer (exact draws of the gridded
        latent density after exact maximum likelihood, see
        :meth:`AmbientEBM.sample`), or from the latent codes ``init`` (shape
        (n_samples, m), in the coordinates of :meth:`encode`); ``adjusted``: see
        :meth:`AmbientEBM.sample` (MALA by default after exact maximum likelihood).
        """
        if not self.is_fitted:
            raise NotFittedError("call fit first: the latent chains come from the data")
        if init is not None:
            init = (as_points(init, self.latent_dim, "init").to(self.latent_shift_)
                    - self.latent_shift_) / self.latent_scale_
        u = self.latent_ebm.sample(n_samples, n_steps, step_size, seed, init=init,
                                   adjusted=adjusted)
        return self.decode(u * self.latent_scale_ + self.latent_shift_)

    def latent_box(self):
        """``(low, high)`` of the latent chains' box, in the coordinates of :meth:`encode`."""
        if self.latent_ebm.box_ is None:
            raise NotFittedError("call fit first: the latent box comes from the data")
        low, high = self.latent_ebm.box_
        return (low * self.latent_scale_ + self.latent_shift_,
                high * self.latent_scale_ + self.latent_shift_)

    def half_log_det(self, z):
        """``0.5 log det(J^T J)`` of the decoder at latents ``z`` (B, m), shape (B,)."""
        # Checked like every input: a single latent (m,) failed in a torch expand.
        z = self._points(z, self.latent_dim, "z").reshape(-1, self.latent_dim)
        with torch.no_grad():
            _, jac = autodiff.jacobian(self.autoencoder.decoder, z)  # (B, n, m)
            gram = jac.transpose(-1, -2) @ jac
            return 0.5 * torch.linalg.slogdet(gram)[1]

    def log_prob(self, x, normalized=True):
        """Log density of the decoded distribution at ``enc(x)``, w.r.t. the image's volume.

        ``-E(z) - log Z_latent - 0.5 log det(J^T J)`` with ``z = enc(x)``;
        ``log Z_latent`` by a grid over the latent box (``m <= 3``); ``-inf``
        where ``z`` falls outside the latent box (the model has no mass there).

        Raises
        ------
        NotFittedError
            Before :meth:`fit`.
        """
        if not self.is_fitted:
            raise NotFittedError("call fit first: the latent density comes from the data")
        x = self._points(x, self.ambient_dim, "x").reshape(-1, self.ambient_dim)
        z = self.encode(x)
        u = (z - self.latent_shift_) / self.latent_scale_
        out = self.latent_ebm.log_prob(u) - self.half_log_det(z)
        if not normalized:
            return out
        return out - self.latent_ebm.log_partition() - float(self.latent_scale_.log().sum())

    def latent_lattice(self, resolution=None):
        """A regular lattice over the latent chain box: standardised and raw latents.

        Parameters
        ----------
        resolution : int, optional
            Lattice points per latent axis (default 4000, 300, 40 for m = 1, 2, >= 3).

        Returns
        -------
        u : torch.Tensor, shape (resolution ** m, m)
            Standardised latents (the latent EBM's coordinates); every point
            stands for a cell of equal latent volume.
        z : torch.Tensor, shape (resolution ** m, m)
        """
        if self.latent_ebm.box_ is None:
            raise NotFittedError("call fit first: the latent box comes from the data")
        if resolution is None:
            resolution = {1: 4000, 2: 300}.get(self.latent_dim, 40)
        # 0 or 1 gave an empty or one-point "lattice" silently, negatives a
        # bare torch RuntimeError.
        resolution = _check_resolution(resolution, "resolution")
        lo, hi = self.latent_ebm.box_
        axes = [torch.linspace(float(lo[j]), float(hi[j]), int(resolution), dtype=DTYPE)
                for j in range(self.latent_dim)]
        u = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.latent_dim)
        return u, u * self.latent_scale_ + self.latent_shift_

    def density_on_manifold(self, resolution=None):
        """Decoded points of a latent lattice and the model's log density there.

        The lattice (:meth:`latent_lattice`) spans the latent chain box and is
        decoded; the log density is that of :meth:`log_prob` at the decoded
        point, evaluated at the lattice latent itself (no re-encoding), up to
        the constant ``log Z``. The reference code evaluates its baseline the
        same way.

        Returns
        -------
        points : torch.Tensor, shape (resolution ** m, n)
        log_prob : torch.Tensor, shape (resolution ** m,)
        """
        u, z = self.latent_lattice(resolution)
        with torch.no_grad():
            return self.decode(z), -self.latent_ebm.energy(u) - self.half_log_det(z)

    def score_samples(self, X):
        """Normalised log density at points ``X`` (see :meth:`log_prob`), shape (n,)."""
        return self.log_prob(X)

    def projection(self, points, n_iter=50):
        """Closest points of the decoder image (latent L-BFGS from the encoding).

        Lets :func:`implicit_geom.metrics.distance_to_manifold` measure the
        baseline's manifold like the reference code does.
        """
        x = self._points(points, self.ambient_dim, "points").reshape(-1, self.ambient_dim)
        z = self.encode(x).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([z], max_iter=int(n_iter), line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-14)
        decoder = self.autoencoder.decoder

        def closure():
            opt.zero_grad()
            # Points are independent, so one summed loss optimises each latent.
            loss = (decoder(z) - x).square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            return decoder(z)
