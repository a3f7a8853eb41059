"""Constrained energy-based models: densities ``p(x) ~ exp(-E(x))`` on a manifold.

:class:`ConstrainedEBM` follows Ross et al. (2023, Sec. 4): an energy network
on the ambient space, restricted to the manifold M, trained by persistent
contrastive divergence (PCD) whose negative samples come from constrained
Langevin chains on M kept in a replay buffer. Where ``log Z`` has an exact
quadrature (circle, sphere, torus and their unions) it can instead be trained
by exact maximum likelihood (``method="mle"``).

:class:`EnergyModel` holds the PCD loop shared with the ambient baseline
(:mod:`implicit_geom.models.ambient`).
"""

import functools
import itertools

import torch
from torch import nn

from ..exceptions import CheckpointError, EmptyDataError, InvalidPointError, ProjectionError
from ..learning.topology import sample_in_box
from ..learning.trainer import Trainer
from ..manifolds.analytic import as_implicit
from ..numerics.validation import DTYPE, as_points, padded_box
from .energy_nets import EnergyMLP
from .normalization import has_quadrature, log_partition, manifold_quadrature

__all__ = ["EnergyModel", "ConstrainedEBM", "contrastive_divergence_loss"]

_SAMPLERS = ("langevin", "mala", "hmc")


def contrastive_divergence_loss(e_pos, e_neg, beta):
    """``mean(E(x+) - E(x-)) + beta * mean(E(x+)^2 + E(x-)^2)`` (the paper's PCD loss)."""
    return (e_pos.mean() - e_neg.mean()
            + beta * (e_pos.square().mean() + e_neg.square().mean()))


def _check_data(X, dim, name="X"):
    X = as_points(X, dim, name)
    if X.ndim != 2:
        raise InvalidPointError(f"{name} must be a (n_samples, {dim}) array, got {tuple(X.shape)}")
    if X.shape[0] < 2:
        raise EmptyDataError(f"{name} needs at least 2 points to fit a density, got {X.shape[0]}")
    return X


class EnergyModel:
    """Persistent contrastive divergence for an energy network (base class).

    Subclasses say where chains start (:meth:`_init_chains`) and how they move
    (:meth:`_advance`); the loss, replay buffer, optimiser, clipping and
    history are shared.

    Parameters
    ----------
    energy_net : torch.nn.Module
        Maps ``(B, d)`` to ``(B,)`` energies.
    beta : float
        Weight of the energy-magnitude regulariser.
    lr : float
        Adam learning rate.
    lr_floor : float
        Final learning rate as a fraction of ``lr``, reached by cosine decay
        over the ``n_iter`` steps; 1 (default) keeps it constant. Decay damps
        the step-to-step noise of PCD gradients in the final weights.
    n_iter : int
        Optimiser steps.
    batch_size : int
        Data points and negative chains per step.
    buffer_size : int
        Replay-buffer size (persistent chains).
    n_mcmc_steps : int
        Sampler steps per training iteration.
    step_size : float
        Sampler step ``h`` (a Langevin step moves ``-(h^2/2) grad E + h xi``,
        the convention of :mod:`implicit_geom.sampling`).
    reinit_prob : float
        Probability that a chain restarts from fresh noise (keeps the buffer
        from collapsing onto few modes).
    grad_clip : float
        Maximum gradient norm.
    val_every : int
        Steps between validation measurements (``fit(X, X_val)``).
    patience : int, optional
        Stop after this many validation measurements without improvement
        (None: run all ``n_iter`` steps; the best weights are kept either way).
    seed : int
    progress : bool
        Report progress (a bar on a terminal, periodic lines otherwise).
    """

    def __init__(self, energy_net, *, beta=0.01, lr=3e-3, lr_floor=1.0, n_iter=1000,
                 batch_size=128, buffer_size=5000, n_mcmc_steps=20, step_size=0.1,
                 reinit_prob=0.05, grad_clip=1.0, val_every=25, patience=None, seed=0,
                 progress=False):
        if not isinstance(energy_net, nn.Module):
            raise TypeError("energy_net must be a torch.nn.Module mapping (B, d) to (B,)")
        for name, value in (("n_iter", n_iter), ("batch_size", batch_size),
                            ("buffer_size", buffer_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if int(n_mcmc_steps) < 0 or not step_size > 0 or not 0 <= reinit_prob <= 1:
            raise ValueError("need n_mcmc_steps >= 0, step_size > 0 and 0 <= reinit_prob <= 1")
        if not 0 < lr_floor <= 1:
            raise ValueError(f"lr_floor must be in (0, 1], got {lr_floor}")
        self.energy_net = energy_net
        self.beta = float(beta)
        self.lr = float(lr)
        self.lr_floor = float(lr_floor)
        self.n_iter = int(n_iter)
        self.batch_size = int(batch_size)
        self.buffer_size = int(buffer_size)
        self.n_mcmc_steps = int(n_mcmc_steps)
        self.step_size = float(step_size)
        self.reinit_prob = float(reinit_prob)
        self.grad_clip = float(grad_clip)
        if int(val_every) < 1 or (patience is not None and int(patience) < 1):
            raise ValueError(f"need val_every >= 1 and patience >= 1 or None, got {val_every}, "
                             f"{patience}")
        self.val_every = int(val_every)
        self.patience = None if patience is None else int(patience)
        self.validation_history_ = None
        self.seed = int(seed)
        self.progress = bool(progress)
        self.buffer_ = None
        self.history_ = None

    # ------------------------------------------------------------ subclass API
    @property
    def dim(self):
        """Dimension of the points the density lives on."""
        raise NotImplementedError

    def _prepare(self, X):
        """Set data-dependent state (boxes, samplers) before training."""

    def _init_chains(self, n):
        """``n`` fresh chain states, shape (n, dim)."""
        raise NotImplementedError

    def _advance(self, x, n_steps):
        """Move chains ``x`` by ``n_steps`` sampler steps; returns the new states."""
        raise NotImplementedError

    def _uses_pcd(self):
        """Whether training is PCD (else :meth:`_direct_loss`)."""
        return True

    def _direct_loss(self, X):
        """Loss replacing PCD (e.g. the exact negative log-likelihood)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ common
    def _param(self):
        """A tensor of the energy's device and dtype (float64 CPU if it has none)."""
        for tensor in itertools.chain(self.energy_net.parameters(), self.energy_net.buffers()):
            return tensor
        return torch.empty(0, dtype=DTYPE)

    def energy(self, x):
        """Energies ``E(x)``, shape ``(...,)`` (no autograd graph)."""
        x = as_points(x, self.dim, "x").to(self._param())
        with torch.no_grad():
            return self.energy_net(x.reshape(-1, self.dim)).reshape(x.shape[:-1])

    def log_prob(self, x):
        """Unnormalised log density ``-E(x)``."""
        return -self.energy(x)

    def _energy_fn(self, x):
        # Called by samplers, which differentiate with respect to x only.
        return self.energy_net(x)

    def fit(self, X, X_val=None):
        """Fit the energy to data.

        Parameters
        ----------
        X : array-like, shape (n_samples, dim)
        X_val : array-like, shape (n_val, dim), optional
            Validation points: every ``val_every`` steps the validation loss
            (:meth:`_validation_loss`) is measured, training stops after
            ``patience`` measurements without improvement (if set), and the
            energy ends with the weights of the best one.

        Returns
        -------
        self
        """
        X = _check_data(X, self.dim)
        param = self._param()
        X = X.to(device=param.device, dtype=param.dtype)
        if X_val is not None:
            X_val = _check_data(X_val, self.dim, "X_val").to(device=param.device,
                                                             dtype=param.dtype)
        # Seeded and reproducible, without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._fit(X, X_val)
        return self

    def _fit(self, X, X_val=None):
        # The batch, buffer and restart draws share one generator, in this
        # order per step (the trainer draws the batch first).
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        self._prepare(X)
        if self._uses_pcd():
            self.buffer_ = self._init_chains(self.buffer_size)
            loss_fn = functools.partial(self._pcd_loss, generator=gen)
        else:
            loss_fn = self._mle_loss
        validation = None
        if X_val is not None:
            validation = functools.partial(self._validation_loss, X_val)
            validation()  # fails here, before training, if there is no validation loss
        trainer = Trainer(self.energy_net.parameters(), lr=self.lr, total_epochs=self.n_iter,
                          lr_floor=self.lr_floor, grad_clip=self.grad_clip,
                          progress=self.progress, desc=type(self).__name__)
        trainer.run(loss_fn, X, self.n_iter, self.batch_size, generator=gen,
                    sampling="replacement", validation=validation, val_every=self.val_every,
                    patience=self.patience)
        self.history_ = trainer.history
        self.validation_history_ = trainer.validation_history if X_val is not None else None

    def _pcd_loss(self, pos, generator):
        """The contrastive loss of one step; advances a random subset of the buffer."""
        b, device = pos.shape[0], pos.device
        idx = torch.randint(self.buffer_size, (b,), generator=generator).to(device)
        x0 = self.buffer_[idx]
        fresh = (torch.rand(b, generator=generator) < self.reinit_prob).to(device)
        if bool(fresh.any()):
            x0[fresh] = self._init_chains(int(fresh.sum()))
        neg = self._advance(x0, self.n_mcmc_steps).detach()
        self.buffer_[idx] = neg
        e_pos, e_neg = self.energy_net(pos), self.energy_net(neg)
        loss = contrastive_divergence_loss(e_pos, e_neg, self.beta)
        return loss, {"e_pos": float(e_pos.detach().mean()),
                      "e_neg": float(e_neg.detach().mean())}

    def _mle_loss(self, pos):
        loss = self._direct_loss(pos)
        return loss, {"e_pos": float(self.energy_net(pos).detach().mean()), "e_neg": 0.0}

    def _validation_loss(self, X_val):
        """Loss on validation points (lower is better); by default the loss that is trained."""
        raise NotImplementedError(
            f"{type(self).__name__} has no validation loss: fit without X_val")


class ConstrainedEBM(EnergyModel):
    """Energy-based density on an implicit manifold (Ross et al. 2023).

    ``p(x) = exp(-E(x)) / Z`` for ``x`` on M, with respect to the induced
    volume of M.

    Parameters
    ----------
    manifold : ImplicitManifold or geomstats LevelSet
        Learned (``NeuralImplicitManifold``), analytic, or e.g. ``Hypersphere``.
    energy_net : torch.nn.Module, optional
        Default: :class:`EnergyMLP` with two hidden layers of 64.
    method : {"pcd", "mle"}
        Persistent contrastive divergence with constrained Langevin chains
        (the paper), or exact maximum likelihood with a quadrature ``log Z``
        (only where :func:`has_quadrature` holds).
    sampler : {"langevin", "mala", "hmc"} or class
        Chain dynamics during training: the paper's unadjusted
        ``ConstrainedLangevin`` by default, or any class with the constructor
        ``(manifold, energy, step_size=, seed=)`` and ``run(x0, n_steps)``.
    quadrature_resolution : int
        Nodes of the quadrature for ``method="mle"`` and :meth:`log_partition`.
    chain_init : {"noise", "data"}
        Where new persistent chains start: uniform noise in the padded data
        box projected onto M (the reference code), or training points jittered
        by ``0.05`` of the data's spread and projected. With ``"data"`` chains
        never reach components of a learned manifold that carry no data
        (spurious pieces) and each component keeps the data's share of chains,
        which local dynamics cannot transport between components.
    **kwargs
        PCD settings of :class:`EnergyModel` (``beta``, ``lr``, ``n_iter``,
        ``batch_size``, ``buffer_size``, ``n_mcmc_steps``, ``step_size``,
        ``reinit_prob``, ``grad_clip``, ``seed``, ``progress``).

    Attributes
    ----------
    history_ : dict of lists
        Per-iteration loss, mean positive/negative energies, gradient norm.
    buffer_ : torch.Tensor, shape (buffer_size, n)
        The replay buffer (points on M) after :meth:`fit` with PCD.
    """

    def __init__(self, manifold, energy_net=None, *, method="pcd", sampler="langevin",
                 quadrature_resolution=128, chain_init="noise", hidden=(64, 64), **kwargs):
        self.manifold = as_implicit(manifold)
        if energy_net is None:
            energy_net = EnergyMLP(self.manifold.ambient_dim, hidden=hidden,
                                   seed=kwargs.get("seed", 0))
        if method not in ("pcd", "mle"):
            raise ValueError(f"method must be 'pcd' or 'mle', got {method!r}")
        if method == "mle" and not has_quadrature(self.manifold):
            raise NotImplementedError(
                f"method='mle' needs an exact quadrature of {self.manifold!r} for log Z; "
                "use method='pcd'")
        if chain_init not in ("noise", "data"):
            raise ValueError(f"chain_init must be 'noise' or 'data', got {chain_init!r}")
        self.method = method
        self.chain_init = chain_init
        self._data = None
        self.sampler = sampler
        self.quadrature_resolution = int(quadrature_resolution)
        self._box = None
        self._quadrature = None
        super().__init__(energy_net, **kwargs)

    @property
    def dim(self):
        return self.manifold.ambient_dim

    # -------------------------------------------------------------- sampling
    def _sampler_class(self, sampler):
        if not isinstance(sampler, str):
            return sampler
        if sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS} or a class, got {sampler!r}")
        from .. import sampling  # the constrained samplers (issue 3)

        return {"langevin": sampling.ConstrainedLangevin, "mala": sampling.ConstrainedMALA,
                "hmc": sampling.ConstrainedHMC}[sampler]

    def _make_sampler(self, sampler, step_size, seed):
        cls = self._sampler_class(sampler)
        # An EnergyMLP hands its layers over, so that the samplers take the exact
        # graph-free gradient (numerics.mlp); other networks go through autograd.
        energy = self.energy_net.net if type(self.energy_net) is EnergyMLP else self._energy_fn
        return cls(self.manifold, energy, step_size=step_size, seed=seed)

    def _prepare(self, X):
        # Fresh chains start from uniform noise in the (padded) data box,
        # projected onto M, as in the paper's reference code.
        self._box = padded_box(X, 0.1, min_width=1e-3)
        self._data = X if self.chain_init == "data" else None
        if self._uses_pcd():
            self._chain_sampler = self._make_sampler(self.sampler, self.step_size, self.seed)

    def _init_chains(self, n, max_rounds=50):
        if self._box is None:
            raise RuntimeError("call fit first (the noise box comes from the data)")
        lo, hi = self._box

        def draw(k):
            if self._data is not None:
                rows = torch.randint(self._data.shape[0], (k,)).to(lo.device)
                jitter = 0.05 * self._data.std(0) * torch.randn(
                    k, self.dim, dtype=lo.dtype, device=lo.device)
                return self._data[rows] + jitter
            return lo + (hi - lo) * torch.rand(k, self.dim, dtype=lo.dtype, device=lo.device)

        return self.manifold.project_draws(draw, n, max_rounds)

    def _advance(self, x, n_steps):
        if n_steps == 0:
            return x
        x_new, _ = self._chain_sampler.run(x, n_steps)
        return x_new

    def sample(self, n_samples, n_steps=200, sampler=None, step_size=None, init=None,
               seed=None, progress=None):
        """Draw points on M from the fitted density.

        Chains start from the replay buffer (with ``chain_init="data"``: from
        jittered, projected training points; or from ``init``) and run
        ``n_steps`` steps of the chosen constrained sampler; the final states
        are returned.

        Parameters
        ----------
        n_samples : int
        n_steps : int
        sampler : {"langevin", "mala", "hmc"} or class, optional
            Default: the training sampler. ``"mala"``/``"hmc"`` are exact
            (Metropolis-adjusted) and remove the step-size bias.
        step_size : float, optional
            Default: the training step size.
        init : torch.Tensor, shape (n_samples, n), optional
            Starting points on M.
        seed : int, optional

        Returns
        -------
        torch.Tensor, shape (n_samples, n)
            Points with ``|F| <= manifold.tol``.

        Raises
        ------
        ProjectionError
            If the sampler returned points off M (never expected).
        """
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        n_samples = int(n_samples)
        seed = self.seed + 1 if seed is None else int(seed)
        if init is None:
            if self.buffer_ is None and self._box is None:
                raise RuntimeError("call fit first, or pass init points on the manifold")
            gen = torch.Generator().manual_seed(seed)
            # With chain_init="data" fresh chains start at the data, so that each
            # component gets the data's share, not the few-hundred-chain buffer's
            # (two circles: 55% vs 50% on one circle).
            if self.buffer_ is not None and self._data is None:
                idx = torch.randint(self.buffer_.shape[0], (n_samples,), generator=gen)
                init = self.buffer_[idx.to(self.buffer_.device)]
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    init = self._init_chains(n_samples)
        else:
            init = as_points(init, self.dim, "init").reshape(-1, self.dim).to(self._param())
        chain = self._make_sampler(self.sampler if sampler is None else sampler,
                                   self.step_size if step_size is None else step_size, seed)
        kwargs = {} if progress is None else {"progress": progress}
        x = chain.run(init, int(n_steps), **kwargs)[0] if n_steps > 0 else init.clone()
        residual = self.manifold.submersion(x).norm(dim=-1)
        if not bool((residual <= max(self.manifold.tol, 1e-9)).all()):
            raise ProjectionError(
                f"the sampler returned {int((residual > self.manifold.tol).sum())} point(s) off "
                f"the manifold (max |F| = {float(residual.max()):.2e})")
        return x.detach()

    def density_on_manifold(self, n_draws, bounds=None, seed=0):
        """Points covering M inside a box and the model's log density there.

        Uniform draws in the box are projected onto M (Newton landing); the
        converged ones that stay in the box are kept. The points are not
        uniform on M but cover it, which is what binned comparisons of
        densities need (:func:`~implicit_geom.metrics.paper_wasserstein`).

        Parameters
        ----------
        n_draws : int
            Box draws (the kept points are fewer).
        bounds : pair of array_like, shape (n,), optional
            The box; default the padded training-data box.
        seed : int

        Returns
        -------
        points : torch.Tensor, shape (k, n)
        log_prob : torch.Tensor, shape (k,)
            Unnormalised: ``-E(x)`` (temperature 1).
        """
        if bounds is None:
            if self._box is None:
                raise RuntimeError("call fit first, or pass bounds")
            bounds = self._box
        low, high = (torch.as_tensor(b, dtype=DTYPE).reshape(self.dim) for b in bounds)
        gen = torch.Generator().manual_seed(int(seed))
        points, _ = sample_in_box(self.manifold, int(n_draws), low, high, generator=gen)
        with torch.no_grad():
            return points, self.log_prob(points)

    # ---------------------------------------------------------- normalisation
    def quadrature(self):
        """The exact quadrature of M used for ``log Z`` (cached)."""
        if self._quadrature is None:
            self._quadrature = manifold_quadrature(self.manifold, self.quadrature_resolution)
        return self._quadrature.to(self._param().device)

    def log_partition(self):
        """``log Z`` by quadrature over M with the induced volume (no graph)."""
        with torch.no_grad():
            return float(log_partition(self.energy_net, self.quadrature()))

    def log_prob(self, x, normalized=False):
        """Log density ``-E(x)``, minus ``log Z`` when ``normalized`` (needs a quadrature)."""
        out = -self.energy(x)
        return out - self.log_partition() if normalized else out

    def nll(self, X):
        """Mean held-out negative log-likelihood (nats, w.r.t. the volume of M)."""
        X = as_points(X, self.dim, "X")
        return float(-self.log_prob(X, normalized=True).mean())

    def _uses_pcd(self):
        return self.method == "pcd"

    def _direct_loss(self, X):
        # Exact NLL: mean E(x+) + log Z(theta), log Z by differentiable quadrature.
        return self.energy_net(X).mean() + log_partition(self.energy_net, self.quadrature())

    def _validation_loss(self, X_val):
        # The held-out NLL, for PCD as well, wherever log Z has a quadrature.
        if not has_quadrature(self.manifold):
            raise NotImplementedError(
                f"validation needs an exact quadrature of {self.manifold!r} for log Z")
        with torch.no_grad():
            return float(self._direct_loss(X_val))

    # ----------------------------------------------------------- persistence
    def _hyper(self):
        return {"method": self.method, "chain_init": self.chain_init,
                "sampler": self.sampler if isinstance(self.sampler, str) else "langevin",
                "quadrature_resolution": self.quadrature_resolution,
                "beta": self.beta, "lr": self.lr, "lr_floor": self.lr_floor,
                "n_iter": self.n_iter,
                "batch_size": self.batch_size, "buffer_size": self.buffer_size,
                "n_mcmc_steps": self.n_mcmc_steps, "step_size": self.step_size,
                "reinit_prob": self.reinit_prob, "grad_clip": self.grad_clip,
                "val_every": self.val_every, "patience": self.patience,
                "seed": self.seed}

    def save(self, path):
        """Save the energy network, hyper-parameters, data box and buffer.

        Only :class:`EnergyMLP` energies can be rebuilt by :meth:`load`.
        """
        if not isinstance(self.energy_net, EnergyMLP):
            raise TypeError("save supports EnergyMLP energies only")
        state = {
            "format": "implicit_geom.ConstrainedEBM/1",
            "ambient_dim": self.dim,
            "net_config": self.energy_net.config(),
            "state_dict": self.energy_net.state_dict(),
            "hyper": self._hyper(),
            "box": None if self._box is None else torch.stack(self._box),
            "buffer": self.buffer_,
        }
        torch.save(state, path)

    @classmethod
    def load(cls, path, manifold):
        """Rebuild a saved model on ``manifold``.

        Raises
        ------
        CheckpointError
            Missing, unreadable, corrupt or incompatible file.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: checkpoint not found") from None
        except Exception as err:  # torch raises many types for corrupt files
            raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from err
        if not isinstance(state, dict) or state.get("format") != "implicit_geom.ConstrainedEBM/1":
            raise CheckpointError(f"{path}: not a ConstrainedEBM checkpoint")
        manifold = as_implicit(manifold)
        if state["ambient_dim"] != manifold.ambient_dim:
            raise CheckpointError(
                f"{path}: saved for ambient dimension {state['ambient_dim']}, the manifold has "
                f"{manifold.ambient_dim}")
        try:
            cfg = state["net_config"]
            net = EnergyMLP(cfg["dim"], hidden=tuple(cfg["hidden"]), activation=cfg["activation"])
            net.load_state_dict(state["state_dict"])
            model = cls(manifold, net, **state["hyper"])
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from err
        if state["box"] is not None:
            model._box = (state["box"][0], state["box"][1])
        model.buffer_ = state["buffer"]
        return model
