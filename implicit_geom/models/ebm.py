"""Constrained energy-based models: normalised densities ``p = exp(-E) / Z`` on a manifold.

:class:`ConstrainedEBM` follows Ross et al. (2023, Sec. 4): an energy network
on the ambient space, restricted to the manifold M. ``log Z`` (w.r.t. the
Riemannian volume of M) comes with a checked error from
:mod:`~implicit_geom.models.normalization`: quadrature on analytic spaces and
on learned curves and surfaces, per connected component, annealed importance
sampling in higher dimensions. Where the quadrature exists the model is fitted
by exact maximum likelihood (each component's mass included); elsewhere by the
paper's persistent contrastive divergence with constrained Langevin chains,
which jump between components with a Metropolis-Hastings correction.

:class:`EnergyModel` holds what is shared with the ambient baseline
(:mod:`implicit_geom.models.ambient`): the fit through the library's one
training loop, validation and the PCD loss.
"""

import contextlib
import functools
import itertools
import math
import warnings

import torch
from torch import nn

from ..exceptions import (CheckpointError, EmptyDataError, InvalidPointError, NormalizationError,
                          NotFittedError, ProjectionError)
from ..manifolds.components import sample_in_box
from ..learning.checkpoint import (check_manifolds, checkpoint_dtype, dtype_name, load_checkpoint,
                                   manifold_identity, save_checkpoint)
from ..learning.distributed import context, make_trainer
from ..learning.estimator import EstimatorMixin
from ..manifolds.analytic import as_implicit
from ..numerics.validation import DTYPE, as_points, check_int, padded_box
from ..sampling.transitions import ComponentJump
from .closest import closest_points, resolve_max_distance
from .energy_nets import AnchoredVMFEnergy, EnergyMLP, PolynomialEnergy, SumEnergy
from .normalization import (
    LogPartition,
    ais_log_partition,
    component_log_partitions,
    has_quadrature,
    log_partition,
    log_partition_error,
    manifold_quadrature,
)

__all__ = ["EnergyModel", "ConstrainedEBM", "contrastive_divergence_loss"]

_SAMPLERS = ("langevin", "mala", "hmc")
_CHECKPOINT_KIND = "ConstrainedEBM"
_ENERGIES = {"EnergyMLP": EnergyMLP, "AnchoredVMFEnergy": AnchoredVMFEnergy,
             "PolynomialEnergy": PolynomialEnergy}


def _energy_spec(net):
    """JSON description of an energy network, enough for :func:`_build_energy`.

    A :class:`SumEnergy` (products on intersections, cross-fitted ensembles)
    is described by its weights and its members' descriptions.
    """
    if type(net) is SumEnergy:
        return {"energy": "SumEnergy", "weights": list(net.weights),
                "members": [_energy_spec(member) for member in net.nets]}
    kind = type(net).__name__
    if kind not in _ENERGIES or type(net) is not _ENERGIES[kind]:
        raise TypeError(f"save supports {', '.join(_ENERGIES)} energies and SumEnergy of them, "
                        f"not {kind}")
    return {"energy": kind, "net": net.config()}


def _build_energy(spec):
    """The untrained network of ``spec``; its ``load_state_dict`` takes the saved
    state (data-sized kernel buffers included)."""
    kind = spec.get("energy", "EnergyMLP")
    if kind == "SumEnergy":
        return SumEnergy([_build_energy(member) for member in spec["members"]],
                         spec["weights"])
    return _ENERGIES[kind](**spec["net"])


def _is_unit_sphere(manifold):
    from .normalization import _sphere_params

    params = _sphere_params(manifold)
    return (params is not None and params[0] == 2 and manifold.ambient_dim == 3
            and float(params[1]) == 1.0 and float(torch.as_tensor(params[2]).abs().max()) == 0.0)


def contrastive_divergence_loss(e_pos, e_neg, beta):
    """``mean(E(x+) - E(x-)) + beta * mean(E(x+)^2 + E(x-)^2)`` (the paper's PCD loss)."""
    return (e_pos.mean() - e_neg.mean()
            + beta * (e_pos.square().mean() + e_neg.square().mean()))


def _check_data(X, dim, name="X"):
    X = as_points(X, dim, name)
    if X.ndim != 2:
        raise InvalidPointError(f"{name} must be a (n_samples, {dim}) array, got {tuple(X.shape)}")
    if X.shape[0] < 2:
        field = f"{{{name}}}" if name.isidentifier() else name
        raise EmptyDataError(f"{field} needs at least 2 points to fit a density, got "
                             f"{X.shape[0]}", params=(name,))
    return X


@contextlib.contextmanager
def _forked_rng(seed):
    """Seeded CPU RNG for the block, leaving the caller's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class EnergyModel(EstimatorMixin):
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
            check_int(value, name)
        check_int(n_mcmc_steps, "n_mcmc_steps", minimum=0)
        if not step_size > 0 or not 0 <= reinit_prob <= 1:
            raise ValueError("need n_mcmc_steps >= 0, step_size > 0 and 0 <= reinit_prob <= 1")
        if not 0 < lr_floor <= 1:
            raise ValueError(f"lr_floor must be in (0, 1], got {lr_floor}")
        # (NaN fails these too: lr=nan trained to a NaN loss, TrainingDivergedError.)
        if not (0 < lr < math.inf and 0 <= beta < math.inf and grad_clip > 0):
            raise ValueError(f"need 0 < lr < inf, 0 <= beta < inf and grad_clip > 0, got lr={lr}, "
                             f"beta={beta}, grad_clip={grad_clip}")
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
        self._chain_stats = {}  # per-step chain diagnostics reported with the loss
        self._initial_state = None  # the energy's weights before the first fit

    # ------------------------------------------------------------ subclass API
    @property
    def dim(self):
        """Dimension of the points the density lives on."""
        raise NotImplementedError

    @property
    def is_fitted(self):
        """Whether :meth:`fit` has run."""
        return self.history_ is not None

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

        Training starts from the energy network's weights as they were at
        the first ``fit``, so a refit equals a fresh fit.

        Returns
        -------
        self
        """
        X = _check_data(X, self.dim)
        # Every fit starts afresh (sklearn's convention): a refit trains from
        # the weights the first fit started from, not from the last fit's.
        if self._initial_state is None:
            self._initial_state = {k: v.detach().clone()
                                   for k, v in self.energy_net.state_dict().items()}
        else:
            self.energy_net.load_state_dict(self._initial_state)
        param = self._param()
        X = X.to(device=param.device, dtype=param.dtype)
        if X_val is not None:
            X_val = _check_data(X_val, self.dim, "X_val").to(device=param.device,
                                                             dtype=param.dtype)
        # Seeded and reproducible, without disturbing the caller's global RNG
        # (under torchrun each rank draws its own chains: rank-specific seeds).
        try:
            with _forked_rng(context().seed(self.seed)):
                self._fit(X, X_val)
        except BaseException:
            # A fit that stops part-way (TrainingDivergedError, Ctrl-C) leaves
            # part-trained weights: unfitted, not the previous fit's "fitted"
            # flag over them (a refit starts afresh anyway).
            self._forget_fit()
            raise
        return self

    def _forget_fit(self):
        """Mark the model unfitted (after a failed fit), dropping its chains."""
        self.history_ = self.validation_history_ = self.buffer_ = None

    def _fit(self, X, X_val=None):
        # The batch, buffer and restart draws share one generator, in this
        # order per step (the trainer draws the batch first).
        # Under torchrun (learning.distributed) every rank keeps and advances
        # its own share of the replay buffer; the steps are averaged over ranks.
        ctx = context()
        gen = torch.Generator(device="cpu").manual_seed(ctx.seed(self.seed))
        self._prepare(X)
        if self._uses_pcd():
            self.buffer_ = self._init_chains(max(1, ctx.shard_size(self.buffer_size)))
            loss_fn = functools.partial(self._pcd_loss, generator=gen)
        else:
            loss_fn = self._mle_loss
        validation = None
        if X_val is not None:
            validation = functools.partial(self._validation_loss, X_val)
            validation()  # fails here, before training, if there is no validation loss
        trainer = make_trainer(self.energy_net.parameters(), lr=self.lr,
                               total_epochs=self.n_iter, lr_floor=self.lr_floor,
                               grad_clip=self.grad_clip, progress=self.progress,
                               desc=type(self).__name__)
        trainer.run(loss_fn, self._training_data(X), self.n_iter, self.batch_size, generator=gen,
                    sampling="replacement", validation=validation, val_every=self.val_every,
                    patience=self.patience)
        if self.buffer_ is not None:
            self.buffer_ = ctx.all_gather(self.buffer_)  # every rank's chains, on every rank
        self.history_ = trainer.history
        self.validation_history_ = trainer.validation_history if X_val is not None else None

    def _pcd_loss(self, pos, generator):
        """The contrastive loss of one step; advances a random subset of the buffer."""
        b, device = pos.shape[0], pos.device
        idx = torch.randint(self.buffer_.shape[0], (b,), generator=generator).to(device)
        x0 = self.buffer_[idx]
        fresh = (torch.rand(b, generator=generator) < self.reinit_prob).to(device)
        if bool(fresh.any()):
            x0[fresh] = self._init_chains(int(fresh.sum()))
        neg = self._advance(x0, self.n_mcmc_steps).detach()
        self.buffer_[idx] = neg
        # The chains are in the manifold's dtype, the energy's data in its own.
        e_pos, e_neg = self.energy_net(pos), self.energy_net(neg.to(pos.dtype))
        loss = contrastive_divergence_loss(e_pos, e_neg, self.beta)
        return loss, {"e_pos": float(e_pos.detach().mean()),
                      "e_neg": float(e_neg.detach().mean()), **self._chain_stats}

    def _training_data(self, X):
        """What the trainer batches: ``X``, or ``(X, row indices)`` for a loss that needs them."""
        return X

    def _mle_loss(self, pos, rows=None):
        loss = self._direct_loss(pos) if rows is None else self._direct_loss(pos, rows)
        return loss, {"e_pos": float(self.energy_net(pos).detach().mean()), "e_neg": 0.0}

    def _validation_loss(self, X_val):
        """Loss on validation points (lower is better); by default the loss that is trained."""
        raise NotImplementedError(
            f"{type(self).__name__} has no validation loss: fit without X_val")


class _NetworkEnergy:
    """A model's energy function ``fn`` as samplers and AIS take it: its
    ``dtype`` (the network's, read at each call) tells their energy wrapper
    (:class:`~implicit_geom.sampling.ConstrainedTarget`) what to cast the
    chains' points to, and the energies come back in the chains' dtype."""

    def __init__(self, model, fn):
        self._model, self._fn = model, fn

    @property
    def dtype(self):
        return self._model._param().dtype

    def __call__(self, x):
        return self._fn(x)


class ConstrainedEBM(EnergyModel):
    """Energy-based density on an implicit manifold (Ross et al. 2023).

    ``p(x) = exp(-E(x)) / Z`` for ``x`` on M, with respect to the Riemannian
    volume (Hausdorff measure) of M; :meth:`log_prob` is normalised.

    ``Z`` comes from a quadrature wherever one can be built
    (:func:`~implicit_geom.models.normalization.manifold_quadrature`: exact
    rules on analytic circles, spheres and tori; traced curves and projected
    surface meshes on learned manifolds of dimension <= 2), else from annealed
    importance sampling with error bars; :meth:`normalizer` reports the value,
    its error and each connected component's mass.

    Training is exact maximum likelihood (loss ``mean E(data) + log Z``) where
    the quadrature exists, and persistent contrastive divergence with
    constrained Langevin chains (the paper) elsewhere. On a manifold with
    several connected components, maximum likelihood learns each piece's
    mass directly; PCD chains and :meth:`sample` add Metropolis-Hastings jumps
    between components (:class:`~implicit_geom.sampling.ComponentJump`), so
    that mass flows to where the density puts it.

    Parameters
    ----------
    manifold : ImplicitManifold or geomstats LevelSet
        Learned (``NeuralImplicitManifold``), analytic, or e.g. ``Hypersphere``.
    energy_net : torch.nn.Module, optional
        Default: :class:`EnergyMLP` with ``hidden`` layers and ``fourier``
        random Fourier features (float64 whatever the manifold's dtype: move
        it with ``.to`` for a float32 model). Its dtype may differ from the
        manifold's: chains, samples and points of M are in the manifold's
        dtype, energies and log densities in the energy's.
    method : {"auto", "mle", "pcd"}
        ``"auto"``: maximum likelihood where a quadrature exists, else PCD.
    sampler : {"langevin", "mala", "hmc"} or class
        Chain dynamics during PCD training: the paper's unadjusted
        ``ConstrainedLangevin`` by default, or any class with the constructor
        ``(manifold, energy, step_size=, seed=, moves=)`` and ``run(x0, n_steps)``.
    quadrature_resolution : int
        Resolution of the quadrature (see ``manifold_quadrature``).
    quadrature_bounds : pair of array_like, optional
        Box in which learned manifolds are integrated; default the manifold's
        box (``manifold.bounds``) widened by a quarter of its size per side.
        The density lives on the part of M inside it.
    chain_init : {"noise", "data"}
        Where new persistent chains start: uniform noise in the padded data
        box projected onto M (the reference code), or training points jittered
        by ``0.05`` of the data's spread and projected.
    hidden : sequence of int
        Hidden widths of the default energy network.
    fourier : int
        Random Fourier features of the default energy network (0: none).
    max_frequency : float
        Highest Fourier frequency of the default energy network.
    jumps : {"auto", True, False}
        Metropolis-Hastings jumps between connected components in PCD and
        sampling (``"auto"``: when M has several components in its box, found by
        quadrature or by sampling; not sought by sampling on manifolds of
        dimension above 2).
    jump_scale : float, optional
        Tangent noise of a jump; default 5% of the box diagonal.
    ais : dict, optional
        Settings of :func:`~implicit_geom.models.normalization.ais_log_partition`
        where no quadrature exists.
    max_log_z_error : float
        Largest estimated error of ``log Z`` (fine minus coarse rule) that
        validation accepts: states beyond it are never selected by early
        stopping, and :meth:`normalizer` warns about them (raise
        ``quadrature_resolution``).
    max_peak_excess : float
        Largest rise (nats) of ``-E`` at a training or validation point above
        the quadrature nodes around it
        (:meth:`~implicit_geom.models.normalization.Quadrature.peak_excess`).
        Above it the density has peaks between the nodes whose mass ``log Z``
        misses (maximum likelihood on a fixed rule drifts there): validation
        never selects such a state, and :meth:`normalizer` raises
        :class:`~implicit_geom.exceptions.NormalizationError` for it.
    max_distance : "auto", float or None
        Farthest a point may lie from M to be seen at its closest point (fit,
        validation, :meth:`score_samples`); farther points raise
        :class:`~implicit_geom.exceptions.InvalidPointError`. ``"auto"``: 5% of
        the diagonal of M's box (no limit where M has none); None: no limit.
    **kwargs
        Settings of :class:`EnergyModel` (``beta``, ``lr``, ``n_iter``,
        ``batch_size``, ``buffer_size``, ``n_mcmc_steps``, ``step_size``,
        ``reinit_prob``, ``grad_clip``, ``seed``, ``progress``...).

    Attributes
    ----------
    history_ : dict of lists
        Per-iteration loss, mean positive/negative energies, gradient norm.
    buffer_ : torch.Tensor, shape (buffer_size, n)
        The replay buffer (points on M) after :meth:`fit` with PCD.
    component_log_weights_ : torch.Tensor, shape (C,) or None
        Log mass of each connected component, fitted by maximum likelihood on
        a manifold with several components (None otherwise).
    validation_history_ : dict or None
        Validation NLL per measurement when fitted with ``X_val``.
    """

    def __init__(self, manifold, energy_net=None, *, method="auto", sampler="langevin",
                 quadrature_resolution=128, quadrature_bounds=None, chain_init="noise",
                 hidden=(64, 64), fourier=0, max_frequency=8.0, jumps="auto", jump_scale=None,
                 ais=None, max_log_z_error=0.01, max_peak_excess=1.0, max_distance="auto",
                 **kwargs):
        self.manifold = as_implicit(manifold)
        if energy_net is None:
            energy_net = EnergyMLP(self.manifold.ambient_dim, hidden=hidden,
                                   seed=kwargs.get("seed", 0), fourier=fourier,
                                   max_frequency=max_frequency)
        if method not in ("auto", "pcd", "mle"):
            raise ValueError(f"method must be 'auto', 'pcd' or 'mle', got {method!r}")
        if chain_init not in ("noise", "data"):
            raise ValueError(f"chain_init must be 'noise' or 'data', got {chain_init!r}")
        if jumps not in ("auto", True, False):
            raise ValueError(f"jumps must be 'auto', True or False, got {jumps!r}")
        self.method = method
        self.chain_init = chain_init
        self._sampler_class(sampler)  # a bad name fails here, not at fit
        self.sampler = sampler
        self.quadrature_resolution = int(quadrature_resolution)
        self.quadrature_bounds = None if quadrature_bounds is None else tuple(
            torch.as_tensor(b, dtype=DTYPE).reshape(-1) for b in quadrature_bounds)
        self.jumps = jumps
        self.jump_scale = None if jump_scale is None else float(jump_scale)
        self.ais = dict(ais or {})
        self.max_log_z_error = float(max_log_z_error)
        self.max_peak_excess = float(max_peak_excess)
        resolve_max_distance(self.manifold, max_distance)  # a bad value fails here
        self.max_distance = max_distance
        self._probe = None
        self._data = None
        self._box = None
        self._quadrature = None
        self._normalizer = None
        self._components = None
        self._label_tree = None
        self.component_log_weights_ = None
        self._train_labels = None
        self._fitted = False
        super().__init__(energy_net, **kwargs)
        if hasattr(self.energy_net, "set_anchors") and not _is_unit_sphere(self.manifold):
            raise ValueError(f"{type(self.energy_net).__name__} lives on the unit 2-sphere, "
                             f"not on {self.manifold!r}")
        if method == "mle" and not self._has_quadrature():
            raise NotImplementedError(
                f"method='mle' needs a quadrature of {self.manifold!r} for log Z (dimension "
                "<= 2 with a box, or an analytic space); use method='pcd' or 'auto'")

    @property
    def dim(self):
        return self.manifold.ambient_dim

    @property
    def is_fitted(self):
        """Whether the model is ready: fitted, loaded, adopted from a cross-fit,
        built from fitted factors (:class:`IntersectionEBM`), or given an energy
        with nothing to fit (no trainable parameters: a known density)."""
        return self._fitted or not any(p.requires_grad for p in self.energy_net.parameters())

    # ----------------------------------------------------------- quadrature
    def _quadrature_box(self):
        """Box of the quadrature on a learned manifold (None: analytic rule or none)."""
        if self.quadrature_bounds is not None:
            return self.quadrature_bounds
        if self.manifold.bounds is None:
            return None
        lo, hi = (torch.as_tensor(b, dtype=DTYPE) for b in self.manifold.bounds)
        pad = 0.25 * (hi - lo)
        return lo - pad, hi + pad

    def _has_quadrature(self):
        box = self._quadrature_box()
        return has_quadrature(self.manifold, box)

    def resolved_method(self):
        """``"mle"`` or ``"pcd"``: what ``method`` means for this manifold."""
        if self.method != "auto":
            return self.method
        return "mle" if self._has_quadrature() else "pcd"

    def quadrature(self):
        """The quadrature of M used for ``log Z`` (built once, labelled by component).

        Raises
        ------
        NotImplementedError
            Where no quadrature exists (see :meth:`normalizer` for the estimate).
        """
        if hasattr(self.energy_net, "adapted_quadrature"):
            return self.energy_net.adapted_quadrature()  # it moves with the parameters
        if self._quadrature is None:
            if not self._has_quadrature():
                raise NotImplementedError(
                    f"no quadrature for {self.manifold!r}; log Z is estimated by annealed "
                    "importance sampling (see normalizer())")
            self._quadrature = manifold_quadrature(self.manifold, self.quadrature_resolution,
                                                   bounds=self._quadrature_box())
            if self._quadrature.n_open:
                warnings.warn(
                    f"{self._quadrature.n_open} component(s) of {self.manifold.name} leave the "
                    "quadrature box; the density is normalised on the part inside it "
                    "(pass quadrature_bounds to widen it)", RuntimeWarning, stacklevel=2)
        # Nodes and weights meet the energy: in its dtype (a float32 network
        # met float64 nodes: "mat1 and mat2 must have the same dtype").
        param = self._param()
        return self._quadrature.to(param.device, param.dtype)

    # -------------------------------------------------------- normalisation
    def normalizer(self):
        """``log Z`` of the energy network with its error and each component's share.

        Quadrature (error: the difference from the half-resolution rule) where
        one exists, else annealed importance sampling (error: one standard
        error). Cached until the next :meth:`fit`.

        Returns
        -------
        LogPartition
        """
        if self._normalizer is None:
            energy = self._log_z_energy
            with torch.no_grad():
                if self._has_quadrature():
                    rule = self.quadrature()
                    comp = component_log_partitions(energy, rule)
                    self._normalizer = LogPartition(
                        float(torch.logsumexp(comp, 0)), log_partition_error(energy, rule),
                        comp.cpu(), method=rule.method)
                    excess = self._peak_excess()
                    if excess > self.max_peak_excess:
                        self._normalizer = None
                        raise NormalizationError(
                            f"the density rises {excess:.3g} nats above the {rule.method} "
                            f"rule's nodes at training points ({rule.points.shape[0]} nodes; "
                            f"max_peak_excess {self.max_peak_excess:g}): it has peaks "
                            "narrower than the node spacing, whose mass log Z misses. Fit "
                            "with validation data (early stopping then keeps a resolved "
                            "state), raise quadrature_resolution, or use a smoother energy")
                    if self._normalizer.error > self.max_log_z_error:
                        warnings.warn(
                            f"log Z of the energy is resolved only to "
                            f"{self._normalizer.error:.2g} by the {rule.method} rule "
                            f"({rule.points.shape[0]} nodes): the density is sharper than the "
                            "nodes; raise quadrature_resolution", RuntimeWarning, stacklevel=2)
                else:
                    box = self._quadrature_box()
                    if box is None:
                        raise NotImplementedError(
                            f"log Z on {self.manifold!r} needs a box: pass quadrature_bounds "
                            "(or a manifold with bounds)")
                    kwargs = dict(step_size=self.step_size, seed=self.seed)
                    kwargs.update(self.ais)
                    # AIS chains live on M, in its dtype; the energy in its own
                    # (ais_log_partition's target casts between the two).
                    self._normalizer = ais_log_partition(
                        self.manifold, _NetworkEnergy(self, energy), box, **kwargs)
        return self._normalizer

    def _log_z_energy(self, x):
        """The energy :meth:`normalizer` integrates: the network's (component
        offsets are added on top of its per-component ``log Z_c``)."""
        return self.energy_net(x)

    def log_partition(self):
        """``log Z`` of the energy network (float); see :meth:`normalizer` for its error."""
        return self.normalizer().value

    def component_mass(self):
        """Probability mass of each connected component of M, shape (C,).

        The learned component weights where maximum likelihood fitted them
        (several components with a quadrature), else each component's share
        of ``Z``.
        """
        if self.component_log_weights_ is not None:
            return self.component_log_weights_.exp().cpu()
        return self.normalizer().component_mass

    def _offsets(self, x):
        """``log Z_c - log w_c`` at the component ``c`` of each point (0 without weights)."""
        if self.component_log_weights_ is None:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        comp = self.normalizer().component_log_z.to(x) - self.component_log_weights_.to(x)
        return comp[self._label(x)]

    def energy(self, x):
        """The model's energy ``E(x)``, shape ``(...,)``: ``p = exp(-E)`` up to ``log Z``.

        With learned component weights ``w_c`` it includes the offsets
        ``log Z_c - log w_c`` of the energy network on each component, so that
        ``exp(-E)`` is the normalised density itself.
        """
        x = as_points(x, self.dim, "x").to(self._param())
        flat = x.reshape(-1, self.dim)
        with torch.no_grad():
            return (self.energy_net(flat) + self._offsets(flat)).reshape(x.shape[:-1])

    def _energy_fn(self, x):
        # Called by samplers (through _NetworkEnergy, in the network's dtype),
        # which differentiate with respect to x only (the offsets are constant
        # on each component).
        return self.energy_net(x) + self._offsets(x.detach())

    def log_prob(self, x, normalized=True):
        """Log density w.r.t. the volume of M: ``-E(x) - log Z`` (``-E(x)`` if not ``normalized``).

        Raises
        ------
        NotFittedError
            ``normalized`` before :meth:`fit`, as :meth:`score_samples`.
        """
        if normalized and not self.is_fitted:
            raise NotFittedError(f"call fit first: {type(self).__name__}'s energy is untrained")
        out = -self.energy(x)
        if not normalized or self.component_log_weights_ is not None:
            return out  # with component weights -E is normalised already
        return out - self.log_partition()

    def score_samples(self, X):
        """Normalised log density (w.r.t. the volume of M) at the closest
        points of ``X`` on M (:meth:`on_manifold`), shape (n,): what a held-out
        point off a learned M scores (sklearn's convention).

        Raises
        ------
        NotFittedError
            Before :meth:`fit` (see :attr:`is_fitted`): an untrained energy
            network's density means nothing.
        ProjectionError, QuadratureCoverageError
            See :meth:`on_manifold`.
        """
        if not self.is_fitted:
            raise NotFittedError(f"call fit first: {type(self).__name__}'s energy is untrained")
        X = as_points(X, self.dim, "X").reshape(-1, self.dim)
        return self.log_prob(self.on_manifold(X, "held-out points"))

    def _uses_pcd(self):
        return self.resolved_method() == "pcd"

    def _label(self, x):
        """Component of points on M: that of the nearest quadrature node."""
        if self._label_tree is None:
            from scipy.spatial import cKDTree

            rule = self.quadrature()
            self._label_tree = (cKDTree(rule.points.detach().cpu().numpy()), rule.labels.cpu())
        tree, labels = self._label_tree
        idx = torch.as_tensor(tree.query(x.detach().cpu().numpy())[1])
        return labels[idx].to(x.device)

    def _setup_components(self, X):
        """Maximum-likelihood component weights (Jeffreys-smoothed data shares).

        The likelihood separates: ``sum_i log w_{c_i} + log p(x_i | c_i)``, so
        the weights' estimate is closed-form (each component's data share, with
        half a pseudo-count so that a piece without data keeps a little mass)
        and the energy is fitted to the conditional likelihoods.
        """
        self.component_log_weights_ = self._train_labels = None
        self._label_tree = None
        if self._uses_pcd() or hasattr(self.energy_net, "loo_energy"):
            return
        rule = self.quadrature()
        if rule.n_components < 2:
            return
        labels = self._label(X)
        counts = torch.bincount(labels, minlength=rule.n_components).to(X.dtype) + 0.5
        self.component_log_weights_ = (counts / counts.sum()).log()
        self._train_labels = labels

    def _log_z_tensor(self):
        """Differentiable ``log Z``: the energy's own adapted rule, else the manifold's."""
        if hasattr(self.energy_net, "log_partition"):
            return self.energy_net.log_partition()
        return log_partition(self.energy_net, self.quadrature())

    def _training_data(self, X):
        # Anchored energies are trained leave-one-out, component weights need
        # each point's component: both look rows up.
        if not self._uses_pcd() and (hasattr(self.energy_net, "loo_energy")
                                     or self.component_log_weights_ is not None):
            return X, torch.arange(X.shape[0], device=X.device)
        return X

    def _direct_loss(self, X, rows=None):
        # Exact NLL: mean E(x+) + log Z(theta), log Z by differentiable quadrature;
        # anchored energies see the training points without their own kernel;
        # with component weights: sum_i E(x_i) + log Z_{c_i} - log w_{c_i}.
        anchored = rows is not None and hasattr(self.energy_net, "loo_energy")
        energy = self.energy_net.loo_energy(X, rows) if anchored else self.energy_net(X)
        if self.component_log_weights_ is None:
            return energy.mean() + self._log_z_tensor()
        labels = self._train_labels[rows] if rows is not None else self._label(X)
        comp = component_log_partitions(self.energy_net, self.quadrature())
        return (energy.mean() + comp[labels].mean()
                - self.component_log_weights_.to(comp)[labels].mean())

    def _log_z_error(self):
        """Current error estimate of ``log Z`` (fine minus coarse rule), no graph."""
        with torch.no_grad():
            if hasattr(self.energy_net, "log_partition"):
                return abs(float(self.energy_net.log_partition())
                           - float(self.energy_net.log_partition(coarse=True)))
            return log_partition_error(self.energy_net, self.quadrature())

    def _peak_excess(self, extra=None):
        """Largest rise of ``-E`` above the quadrature nodes around the probe
        points (the training data) and ``extra``; -inf without probes."""
        probe = self._probe
        if extra is not None:
            probe = extra if probe is None else torch.cat([probe, extra.to(probe)])
        if probe is None or probe.shape[0] == 0:
            return -math.inf
        return float(self.quadrature().peak_excess(self.energy_net, probe).max())

    def _validation_loss(self, X_val):
        # The held-out NLL, for PCD as well, wherever log Z has a quadrature.
        # A state whose log Z the rule no longer resolves (an energy sharper
        # than the node spacing lowers the quadrature's log Z: maximum
        # likelihood can exploit that) scores inf, so early stopping never
        # selects it.
        if not self._has_quadrature():
            raise NotImplementedError(
                f"validation needs a quadrature of {self.manifold!r} for log Z")
        if self._log_z_error() > self.max_log_z_error:
            return math.inf
        if self._peak_excess(X_val) > self.max_peak_excess:
            return math.inf
        with torch.no_grad():
            return float(self._direct_loss(X_val))

    # ----------------------------------------------------------- components
    def components(self):
        """Points covering M inside the box and their connected component labels.

        The quadrature's nodes where it exists, else projected box draws linked
        within a few sample spacings (:class:`~implicit_geom.manifolds.components.ComponentMap`).
        """
        if self._components is None:
            if self._has_quadrature():
                rule = self.quadrature()
                self._components = (rule.points, rule.labels)
            else:
                from ..manifolds.components import ComponentMap

                box = self._quadrature_box()
                if box is None:
                    raise NotFittedError("call fit first (the box comes from the data)")
                cmap = ComponentMap.sample(self.manifold, bounds=box, seed=self.seed)
                self._components = (cmap.points, cmap.labels)
        return self._components

    def _moves(self):
        """The component jumps to add to samplers (empty on a connected manifold)."""
        if self.jumps is False or (self._quadrature_box() is None and not self._has_quadrature()):
            return ()
        if self.jumps == "auto" and self.manifold.dim > 2 and not self._has_quadrature():
            # Components found by sampling are reliable on curves and surfaces;
            # on higher-dimensional manifolds (images) a few thousand projected
            # draws do not link up, and jumps between such "components" would
            # be wrong. Pass jumps=True to have them anyway.
            return ()
        points, labels = self.components()
        if int(labels.max()) < 1:
            return ()
        scale = self.jump_scale
        if scale is None:
            lo, hi = points.min(0).values, points.max(0).values
            scale = 0.05 * float(torch.linalg.vector_norm(hi - lo))
        return (ComponentJump.from_cover(points, labels, scale=scale),)

    # -------------------------------------------------------------- sampling
    def _sampler_class(self, sampler):
        if not isinstance(sampler, str):
            return sampler
        if sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS} or a class, got {sampler!r}")
        from .. import sampling

        return {"langevin": sampling.ConstrainedLangevin, "mala": sampling.ConstrainedMALA,
                "hmc": sampling.ConstrainedHMC}[sampler]

    def _make_sampler(self, sampler, step_size, seed, moves=()):
        cls = self._sampler_class(sampler)
        # A plain EnergyMLP hands its layers over, so that the samplers take the
        # exact graph-free gradient (numerics.mlp); other networks use autograd.
        # The sampler's target casts the chains (in the manifold's dtype) to
        # the network's and the energies back.
        plain = (type(self.energy_net) is EnergyMLP and self.energy_net.features is None
                 and self.component_log_weights_ is None)
        energy = self.energy_net.net if plain else _NetworkEnergy(self, self._energy_fn)
        kwargs = {"moves": moves} if moves else {}
        return cls(self.manifold, energy, step_size=step_size, seed=seed, **kwargs)

    def _prepare(self, X, anchor=True):
        # Fresh chains start from uniform noise in the (padded) data box,
        # projected onto M, as in the paper's reference code.
        self._box = padded_box(X, 0.1, min_width=1e-3)
        if anchor and hasattr(self.energy_net, "set_anchors"):
            self.energy_net.set_anchors(X)
        self._setup_components(X)
        # Where the density is checked against the rule's nodes: the data
        # (at most 4096 of them, evenly strided), where likelihood puts peaks.
        self._probe = X[:: max(1, X.shape[0] // 4096)].detach()
        self._data = X if self.chain_init == "data" else None
        self._normalizer = None
        if self._uses_pcd():
            self._chain_sampler = self._make_sampler(self.sampler, self.step_size,
                                                     context().seed(self.seed), self._moves())

    def on_manifold(self, X, what="points"):
        """Closest points of ``X`` on M, checked against the quadrature where there is one.

        How the model sees data: the density lives on M, so a point off M (a
        learned manifold fits its data only approximately) stands for its
        closest point.

        Raises
        ------
        ProjectionError
            Points that cannot be projected onto M.
        InvalidPointError
            Points farther than ``max_distance`` from M.
        QuadratureCoverageError
            Projections where the quadrature of ``log Z`` has no nodes (a part
            of M outside its box, or missed by its mesh): the normalised
            density says nothing there.
        """
        X = as_points(X, self.dim, what).to(self._param())
        X = closest_points(self.manifold, X, what, self.max_distance)
        self.check_covered(X, what)
        return X

    def check_covered(self, X, what="points"):
        """Raise :class:`QuadratureCoverageError` for points of M (``X`` on M
        already) where the quadrature of ``log Z`` has no nodes."""
        # (An energy's own adapted rule covers its whole sphere.)
        if self._has_quadrature() and not hasattr(self.energy_net, "adapted_quadrature"):
            self.quadrature().check_covered(X.to(self._param()), what)

    def _fit(self, X, X_val=None):
        # Training sees the data's closest points on M: at points off M (on a
        # learned manifold) the energy could be lowered without log Z (whose
        # nodes lie on M) or the chains (which stay on M) noticing: an
        # unbounded likelihood that validation points beside the training
        # points would reward too.
        X = self.on_manifold(X, "training points")
        if X_val is not None:
            X_val = self.on_manifold(X_val, "validation points")
        super()._fit(X, X_val)
        self._normalizer = None  # the energy changed
        self._fitted = True

    def _forget_fit(self):
        super()._forget_fit()
        self._fitted = False
        self._normalizer = None

    def _adopt(self, X):
        """Take the data-dependent state (box, probes, component weights) from ``X``
        without training: for an energy fitted elsewhere (cross-fitted members)."""
        X = _check_data(X, self.dim).to(self._param())
        with _forked_rng(context().seed(self.seed)):
            # A fitted kernel energy keeps its kernels (re-anchoring resets them).
            self._prepare(self.on_manifold(X, "training points"), anchor=False)
        self._normalizer = None
        self._fitted = True

    def _init_chains(self, n, max_rounds=50):
        if self._box is None:
            raise NotFittedError("call fit first (the noise box comes from the data)")
        # Chains live on M, in its dtype (the energy may have another).
        lo, hi = (b.to(self.manifold.dtype) for b in self._box)

        def draw(k):
            if self._data is not None:
                rows = torch.randint(self._data.shape[0], (k,)).to(lo.device)
                jitter = 0.05 * self._data.std(0) * torch.randn(
                    k, self.dim, dtype=lo.dtype, device=lo.device)
                return self._data[rows].to(lo.dtype) + jitter
            return lo + (hi - lo) * torch.rand(k, self.dim, dtype=lo.dtype, device=lo.device)

        return self.manifold.project_draws(draw, n, max_rounds)

    def _advance(self, x, n_steps):
        if n_steps == 0:
            return x
        x_new, info = self._chain_sampler.run(x, n_steps)
        # Share of proposals rejected (failed projections, non-reversible
        # steps): reported per step, averaged over ranks in a distributed run.
        failed = info.n_projection_failures + info.n_nonreversible
        self._chain_stats = {"chain_rejected": float(failed.sum()) / (x.shape[0] * n_steps)}
        return x_new

    def _quadrature_draws(self, n, generator):
        """Quadrature nodes drawn with probability ``w_i exp(-E(x_i))``: a start at equilibrium."""
        rule = self.quadrature()
        with torch.no_grad():
            logits = -self._energy_fn(rule.points) + rule.weights.log()
        idx = torch.multinomial((logits - logits.max()).exp().cpu(), n, replacement=True,
                                generator=generator)
        # Chain starts in the manifold's dtype (the rule's nodes are in the energy's).
        return rule.points[idx.to(rule.points.device)].to(self.manifold.dtype)

    def sample(self, n_samples, n_steps=200, sampler=None, step_size=None, init=None,
               seed=None, progress=None):
        """Draw points on M from the fitted density.

        Chains start at equilibrium where a quadrature exists (nodes drawn with
        probability ``w_i exp(-E(x_i))``, which gives every component its
        mass), else from the replay buffer (with ``chain_init="data"``: from
        jittered, projected training points), or from ``init``; they run
        ``n_steps`` steps of the chosen constrained sampler, with jumps
        between connected components, and the final states are returned.

        Parameters
        ----------
        n_samples : int
        n_steps : int
        sampler : {"langevin", "mala", "hmc"} or class, optional
            Default: the training sampler of PCD models, constrained MALA for
            maximum-likelihood ones. ``"mala"``/``"hmc"`` are exact
            (Metropolis-adjusted) and remove the step-size bias.
        step_size : float, optional
            Default: the training step size.
        init : torch.Tensor, shape (n_samples, n), optional
            Starting points on M.
        seed : int, optional
        progress : bool, optional

        Returns
        -------
        torch.Tensor, shape (n_samples, n)
            Points with ``|F| <= manifold.tol`` (floored at what the manifold's
            dtype resolves, :meth:`~implicit_geom.manifolds.implicit.ImplicitManifold.tol_for`),
            in the manifold's dtype.

        Raises
        ------
        ProjectionError
            If the sampler returned points off M (never expected).
        """
        n_samples = check_int(n_samples, "n_samples")  # 2.5 drew 2
        seed = self.seed + 1 if seed is None else int(seed)
        if init is None:
            if not self.is_fitted and self.buffer_ is None:
                raise NotFittedError("call fit first, or pass init points on the manifold")
            gen = torch.Generator().manual_seed(seed)
            if self._has_quadrature():
                init = self._quadrature_draws(n_samples, gen)
            elif self.buffer_ is not None and self._data is None:
                idx = torch.randint(self.buffer_.shape[0], (n_samples,), generator=gen)
                init = self.buffer_[idx.to(self.buffer_.device)]
            else:
                with _forked_rng(seed):
                    init = self._init_chains(n_samples)
        else:
            init = as_points(init, self.dim, "init").reshape(-1, self.dim).to(
                device=self._param().device, dtype=self.manifold.dtype)
        if sampler is None:
            # Maximum-likelihood models have no training sampler: the exact one.
            sampler = self.sampler if self._uses_pcd() else "mala"
        chain = self._make_sampler(sampler, self.step_size if step_size is None else step_size,
                                   seed, self._moves())
        kwargs = {} if progress is None else {"progress": progress}
        x = chain.run(init, int(n_steps), **kwargs)[0] if n_steps > 0 else init.clone()
        # Points of M, in its dtype: |F| is checked at what that dtype resolves
        # (a float32 manifold cannot reach 1e-9).
        x = x.detach().to(self.manifold.dtype)
        tol = max(self.manifold.tol_for(), 1e-9)
        residual = self.manifold.submersion(x).norm(dim=-1)
        with torch.no_grad():
            off = ~self.manifold._within(x, residual, tol)
        if bool(off.any()):
            raise ProjectionError(
                f"the sampler returned {int(off.sum())} point(s) off "
                f"the manifold (max |F| = {float(residual.max()):.2e})")
        return x

    def density_on_manifold(self, n_draws, bounds=None, seed=0):
        """Points covering M inside a box and the model's raw log density there.

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
            ``-E(x)`` (temperature 1, unnormalised: the reference protocol's
            raw density; subtract :meth:`log_partition` for the normalised one).
        """
        if bounds is None:
            if self._box is None:
                raise NotFittedError("call fit first, or pass bounds")
            bounds = self._box
        low, high = (torch.as_tensor(b, dtype=DTYPE).reshape(self.dim) for b in bounds)
        gen = torch.Generator().manual_seed(int(seed))
        points, _ = sample_in_box(self.manifold, int(n_draws), low, high, generator=gen)
        with torch.no_grad():
            return points, self.log_prob(points, normalized=False)

    # ----------------------------------------------------------- persistence
    def _hyper(self):
        return {"method": self.method, "chain_init": self.chain_init,
                "sampler": self.sampler if isinstance(self.sampler, str) else "langevin",
                "quadrature_resolution": self.quadrature_resolution,
                "quadrature_bounds": None if self.quadrature_bounds is None else
                [b.tolist() for b in self.quadrature_bounds],
                "jumps": self.jumps, "jump_scale": self.jump_scale, "ais": self.ais,
                "max_log_z_error": self.max_log_z_error, "max_peak_excess": self.max_peak_excess,
                "max_distance": self.max_distance, "beta": self.beta, "lr": self.lr, "lr_floor": self.lr_floor,
                "n_iter": self.n_iter,
                "batch_size": self.batch_size, "buffer_size": self.buffer_size,
                "n_mcmc_steps": self.n_mcmc_steps, "step_size": self.step_size,
                "reinit_prob": self.reinit_prob, "grad_clip": self.grad_clip,
                "val_every": self.val_every, "patience": self.patience,
                "seed": self.seed}

    def save(self, path):
        """Save the energy network, hyper-parameters, data box, buffer, component
        weights and the training points whose peaks :meth:`normalizer` checks.

        The file is the library's atomic, weights-only checkpoint
        (:mod:`implicit_geom.learning.checkpoint`). :class:`EnergyMLP` and
        :class:`AnchoredVMFEnergy` energies, and :class:`SumEnergy` of them
        (cross-fitted ensembles, products), can be rebuilt by :meth:`load`.

        A model with a trainable energy must be fitted (or loaded, or built
        from fitted factors) first; an energy with no trainable parameters
        (a known density, e.g. ``PolynomialEnergy`` with its coefficients
        frozen) is ready as built and saves without a fit (see :attr:`is_fitted`).

        Raises
        ------
        NotFittedError
            A trainable energy that was never fitted: its weights are the
            seed's initial ones, and :meth:`load` would hand them back as a
            fitted density.
        TypeError
            An energy network of another type (its architecture cannot be
            rebuilt from the file).
        """
        save_checkpoint(path, _CHECKPOINT_KIND, *self._checkpoint())

    def _checkpoint(self):
        """``(config, payload)`` of :meth:`save` (also a piece of a union's file)."""
        # Here, not in save: a union saving this model as one of its pieces checks too.
        if not self.is_fitted:
            raise NotFittedError(
                f"call fit first: an unfitted {type(self).__name__} has no density to save "
                "(its trainable energy holds the seed's initial weights)")
        config = {"ambient_dim": self.dim, **_energy_spec(self.energy_net),
                  "hyper": self._hyper(),
                  # What identifies the manifold the density was fitted on: load
                  # refuses another (a sphere of radius 2 scored as one of 1).
                  "manifold": manifold_identity(self.manifold)}
        payload = {"state_dict": self.energy_net.state_dict(),
                   "box": None if self._box is None else torch.stack(self._box),
                   "buffer": self.buffer_,
                   "component_log_weights": self.component_log_weights_,
                   # The points normalizer() checks the density's peaks at: without
                   # them a loaded model would skip the check its original makes.
                   "probe": self._probe,
                   # A float32 energy reloads in float32 (it came back float64).
                   "dtype": dtype_name(self._param().dtype)}
        return config, payload

    @classmethod
    def load(cls, path, manifold, check_manifold=True):
        """Rebuild a saved model on ``manifold``.

        The manifold is not stored: ``manifold`` must be the one the model
        was fitted on, rebuilt (same class, dimensions, state dict and
        defining parameters: radii, expressions, a learned MDF's weights;
        a plain callable F with the same values at the recorded probe
        points, wherever it is defined, see
        :func:`~implicit_geom.learning.checkpoint.manifold_identity`).
        ``check_manifold=False`` loads onto one that differs with a warning
        instead, e.g. the same manifold whose plain F was renamed or moved
        (a checkpoint before version 3 of the record knew F by its name).
        A checkpoint from before the manifold was recorded loads unchecked,
        with a warning.

        Raises
        ------
        CheckpointError
            Missing, unreadable, corrupt or incompatible file, or (with
            ``check_manifold``) a manifold other than the saved one.
        """
        config, record = load_checkpoint(path, _CHECKPOINT_KIND,
                                         required=("state_dict", "box", "buffer"))
        return cls._from_checkpoint(config, record, manifold, path, check_manifold)

    @classmethod
    def _from_checkpoint(cls, config, record, manifold, path, check_manifold=True):
        """The model of one :meth:`_checkpoint` record, on ``manifold``
        (``check_manifold``: as :meth:`load`; None when the caller, a
        union's or mixture's load, checked the manifold already)."""
        manifold = as_implicit(manifold)
        if not isinstance(config, dict) or not isinstance(record, dict):
            raise CheckpointError(f"{path}: corrupt model record")
        if config.get("ambient_dim") != manifold.ambient_dim:
            raise CheckpointError(
                f"{path}: saved for ambient dimension {config.get('ambient_dim')}, the manifold "
                f"has {manifold.ambient_dim}")
        if check_manifold is not None:
            if "manifold" in config:
                check_manifolds([config["manifold"]], [manifold], path, "the model was saved on",
                                check_manifold=check_manifold)
            else:
                # Written before the manifold was recorded: refusing would leave
                # a valid fit unreadable (nothing can be recorded now); saving the
                # loaded model again records the manifold it was given.
                warnings.warn(f"{path} was saved without its manifold's fingerprint: cannot "
                              f"check that {manifold.name} is the manifold the model was "
                              "fitted on; save it again to record it", UserWarning, stacklevel=3)
        dtype = checkpoint_dtype(record, path)  # float64 in older checkpoints
        try:
            net = _build_energy(config).to(dtype)
            net.load_state_dict(record["state_dict"])
            model = cls(manifold, net, **config["hyper"])
            if record["box"] is not None:
                model._box = (record["box"][0], record["box"][1])
            model.buffer_ = record["buffer"]
        except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from err
        model.component_log_weights_ = record.get("component_log_weights")
        model._probe = record.get("probe")  # absent in older checkpoints
        model._fitted = True
        return model
