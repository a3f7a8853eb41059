"""A manifold learned from data: fitting the zero set of a neural network to
data (Ross et al., 2023).

The geometry of the fitted manifold is :class:`~implicit_geom.manifolds.neural.
NetworkImplicitManifold`; this estimator adds the MDF objective, negatives,
orientation, the training loop and checkpoints.
"""

import contextlib
import copy
import dataclasses
import math
import warnings

import torch

from ..exceptions import (CheckpointError, ConditioningWarning, FitWarning, InvalidPointError,
                          NotFittedError, ProjectionError)
from ..manifolds.components import sample_in_box
from ..manifolds.neural import MDFNetwork, NetworkImplicitManifold
from ..manifolds.residual import ResidualMDFNetwork
from ..numerics.validation import (DTYPE, FLAT_AXIS, as_points, check_int, check_spread,
                                   padded_box)
from ..threads import check_jobs, fork_map, resolve_jobs
from .checkpoint import checkpoint_dtype, dtype_name, load_checkpoint, save_checkpoint
from .distributed import context, make_trainer
from .estimator import EstimatorMixin
from .mdf import MDFObjective
from .negatives import LangevinNegativeSampler
from .orientation import outward_normals

class NeuralImplicitManifold(NetworkImplicitManifold, EstimatorMixin):
    """Implicit manifold whose defining function is a trained network.

    ``fit(X)`` trains the network so that its zero set passes through the data
    (positive term), has no spurious pieces (negatives from Langevin chains on
    ``|F|``) and is a well-conditioned submersion there (Jacobian singular values
    in ``[s_min, s_max]``); afterwards the object is an ordinary
    :class:`ImplicitManifold`: projection, exp/log and geomstats' estimators
    work on it. Before (the zero set of random initial weights) they raise
    :class:`~implicit_geom.exceptions.NotFittedError`, as does :meth:`save`.
    Outside :meth:`fit` the weights have ``requires_grad=False``,
    so no geometry call can build a graph through them or touch their ``.grad``.

    Parameters
    ----------
    ambient_dim : int
    codim : int
        Number of outputs of F; the manifold has dimension ``ambient_dim - codim``.
    hidden : sequence of int
        Widths of the hidden layers.
    activation : {"silu", "softplus", "tanh", "gelu"}
    architecture : {"mlp", "residual"}
        ``"mlp"``: :class:`~implicit_geom.manifolds.neural.MDFNetwork`, for
        low-dimensional data of any topology. ``"residual"``:
        :class:`~implicit_geom.manifolds.residual.ResidualMDFNetwork`, the
        data's principal normal coordinates plus an MLP, for high-dimensional
        data at large codimension (images): training starts from the
        principal subspace with every singular value at ``s_min`` instead of
        from a random zero set.
    radial : float
        Weight of the compactness prior of :class:`MDFNetwork` (0: none). It
        makes every learned piece closed and bounded and turns a learned circle
        from an open arc into a closed curve in a few hundred steps. Only used
        by ``architecture="mlp"``.
    s_min, s_max, mu, w_neg, beta, mu_box, box_s_min, mu_orient, norm, rank_batch
        Objective, see :class:`~implicit_geom.learning.MDFObjective`. ``s_min``
        and ``s_max`` bound slopes of F in the units of ``X``, not relative to
        the data's spread: the defaults suit data of spread about 1 (fits of
        data a hundred times smaller miss them; :meth:`fit` warns). With
        ``mu_orient > 0`` (codim 1) :meth:`fit` first orients the data's normals
        outwards (:func:`~implicit_geom.learning.outward_normals`) and F is
        trained to grow along them: the sign pattern, hence the topology, of
        the learned hypersurface is then that of the data, however sparsely
        parts of it are sampled. It helps closed surfaces in 3-D too: the
        rest of the loss sees only ``|F|``, and on a torus sampled all over
        (1000 points) unoriented fits joined the tube's inside to its hole
        through a channel on each of 5 seeds, oriented ones on none. The
        normals come from local PCA, so points whose neighbours lie along a
        curve (volcano sites on arcs) are left unoriented
        (:func:`~implicit_geom.learning.outward_normals`'s ``min_spread``).
    orient_radius : float
        Absorbing radius of the orienting random walks, relative to the data's
        length scale; below the size of the features to tell apart (gaps
        between components, radii of curvature).
    orient_min_contrast : float
        Only training points whose orientation evidence (the pooled escape
        contrast, in [0, 1]) reaches this are oriented; the others are left to
        the rank and negative terms (``min_contrast`` of
        :func:`~implicit_geom.learning.outward_normals`: on the glycine torus
        the weakest evidence is wrong, and forcing it folds the fit). 0
        orients every point.
    lr : float
        Adam's initial learning rate (cosine decay to ``lr_floor * lr``).
    lr_floor : float
    weight_decay : float
        Decoupled weight decay (``AdamW``; 0 is plain Adam): a pull towards
        simpler F, which decides the surface in the gaps between samples. On
        the learned glycine torus (55% of it without data) 0.03 lifted the
        worst of eight tuning seeds from 97.5% to 99.99% of distances within
        1% of the torus's, but lowered two others by 0.4 and 0.8 points, so
        the benchmark's recipe leaves it at 0.
    epochs : int
        Epochs of a fit (and length of the schedule).
    batch_size : int
    n_negatives : int
        Negatives per training step.
    langevin_steps : int
        Langevin steps per training step.
    langevin_step_size, langevin_temperature : float
        Relative to the data's length scale.
    buffer_size : int
        Persistent chains in the replay buffer.
    reinit_prob : float
        Chance that a chain restarts uniformly in the box.
    neg_exclusion : float
        Negatives closer than this (times the data's length scale) to a
        training point are dropped from the objective; 0 (the paper) keeps all.
        Contrastive negatives lift F wherever the zero set holds more chains
        than data, which also erodes sparsely sampled parts of the data
        manifold; excluding the data's neighbourhood weakens that.
    box_margin : float
        The box is the data's bounding box widened by this fraction of its size
        on every side. Negatives live in it, and it is the learned manifold's
        ``bounds`` (global geodesics sample their graph there). Where the data
        leave parts of a closed manifold empty, the default box may cut it:
        F is never trained beyond the box and the surface there is pure
        extrapolation (the glycine residues span x in [-2.6, 2.5] of a torus
        reaching +-4: with 0.35, whose box encloses it, learned distances on
        tuning seeds 4-9 came within 1.5% of the analytic torus's, against up
        to 3.7% and 72% of pairs within 1% on seed 5 with 0.1).
    n_restarts : int
        Fits from this many initialisations (seeds ``seed``, ``seed + RESTART_STRIDE``,
        ...); folded fits are told apart by the conditioning of their zero set
        in the box (:meth:`zero_set_conditioning`), and one is kept as
        ``restart_selection`` says. Where the data leave regions
        of the manifold empty, some initialisations fill them with
        near-singular folds (on the glycine torus without ``mu_orient``, 4 of
        12 seeds tried: conditioning 0.24-0.38 against 0.69-0.99; with it and
        ``box_margin=0.35``, 2 of seeds 4-13: 0.45 and 0.32 against
        0.80-1.06), where projection and geodesics fail or crawl; the data
        cannot tell these fits apart, the conditioning can. Costs
        ``n_restarts`` fits and a projection of 20 000 box points each.
    restart_selection : {"agreement", "conditioning"}
        Which restart is kept. ``"agreement"`` (default): among the restarts
        that are not folded (conditioning at least ``FOLD_FRACTION * s_min``),
        the one whose zero set lies closest on average to the others' (mean
        first-order distance, :attr:`restart_gaps_`): where the data leave
        gaps each fit extrapolates its own surface there, and the medoid is
        the least idiosyncratic; with fewer than three sound restarts, the
        best conditioned. ``"conditioning"``: the best conditioned. Sound
        fits differ in accuracy by more than the conditioning tells apart
        (a minimum over a sample, it also varies with the sample): on fresh
        tuning seeds 30-35 of the glycine torus, five restarts each, the
        kept fit had on average 99.84% of 19 900 distances within 1% of the
        analytic torus's with agreement among the five, 99.55% with the best
        conditioned of three (the rule before; on no seed higher) and 99.32%
        of five; 0 failures with every rule. Agreement costs each restart's
        F and Jacobian at 4 000 points of every other's zero set.
    n_jobs : int
        Processes for the restarts (default 1: one after another; -1: one per
        CPU). The restarts are forked (:func:`~implicit_geom.threads.fork_map`)
        and each child runs one thread, so on one thread the fits are the same
        as one after another (the restart in this process uses its threads).
        Restarts run one after another under torchrun and where forking is
        unsafe (:func:`~implicit_geom.threads.can_fork`).
    tol, max_iter
        Projection tolerance and Newton cap, see :class:`ImplicitManifold`.
    seed : int
        Seeds the weights, shuffling and negatives: a fit is reproducible.
    device : str or torch.device, optional
    progress : bool
        Show a progress bar while fitting.

    Attributes
    ----------
    net : MDFNetwork or ResidualMDFNetwork
        ``F``.
    history_ : dict of list of float
        Per-epoch training curves (``loss``, ``positive``, ``negative``, ``rank``,
        ``neg_sq``, ``box_rank``, ``orientation``, ``sv_min``, ``lr``).
    bounds : tuple of torch.Tensor or None
        The box around the training data, after fit (see ``box_margin``; an
        axis along which the data do not vary gets the widest axis's extent).
    restart_scores_ : list of float
        :meth:`zero_set_conditioning` of each restart (``n_restarts > 1``).
    restart_ : int
        Index of the kept restart.
    restart_gaps_ : torch.Tensor or None
        ``restart_selection="agreement"`` with three or more sound restarts:
        the symmetric matrix of mean first-order distances between their
        zero sets (NaN rows and columns for folded restarts).
    conditioning_ : float or None
        :meth:`zero_set_conditioning` of the fit (sample seed ``seed``; after
        restarts, the kept one's score); None after a single fit in more than
        ``CHECK_MAX_DIM`` ambient dimensions (not checked: call
        :meth:`zero_set_conditioning` or fit with restarts). Below
        ``FOLD_FRACTION * s_min``, :meth:`fit` warns (:class:`ConditioningWarning`).

    Warns
    -----
    ConditioningWarning
        From :meth:`fit`, when the zero set is near-singular somewhere in the
        box (see ``n_restarts``).
    FitWarning
        From :meth:`fit`, for data whose spread (length scale) is outside
        [0.2, 5] when their median distance to the zero set (first order,
        ``|J^+ F|``) exceeds ``GAP_FRACTION`` of it: ``s_min`` and ``s_max``
        are slopes in the data's units.
    """

    #: Seed offset between restarts (restart 0 is the plain fit of ``seed``).
    RESTART_STRIDE = 1000
    #: Fitted attributes that :meth:`save` keeps beside the weights.
    REPORT = ("conditioning_", "restart_scores_", "restart_", "restart_gaps_")
    #: ``fit`` warns below this fraction of ``s_min``. On the glycine torus
    #: (``s_min=1``) folded fits scored 0.24-0.48 and sound ones 0.69-1.06;
    #: a check on 5 000 or 10 000 points instead of 20 000 missed one fold (0.56).
    FOLD_FRACTION = 0.6
    #: A single fit is checked in at most this many ambient dimensions.
    CHECK_MAX_DIM = 3
    #: Box points projected to score a fit (:meth:`zero_set_conditioning`'s default).
    CONDITIONING_SAMPLES = 20000
    #: Points of each restart's zero set at which ``restart_selection="agreement"``
    #: measures the other restarts' zero sets.
    AGREEMENT_SAMPLES = 4000
    #: :meth:`fit` warns (:class:`~implicit_geom.FitWarning`) when the training
    #: data's median distance to the zero set exceeds this fraction of their
    #: length scale (README fits: 1e-4 to 1e-3; at data spreads of 0.01-0.1
    #: default fits stopped 0.3-4 length scales away, silently).
    GAP_FRACTION = 0.05
    #: Rows of the training data :meth:`_data_gap` measures after a fit.
    GAP_SAMPLES = 2000
    #: Length scales of the data for which the default slopes are meant;
    #: outside, fit warns of missed data and folds by naming the spread.
    SPREAD_RANGE = (0.2, 5.0)
    _RESCALE_HINT = ("{s_min} and {s_max} are slopes of F in the units of {X}: rescale the data "
                     "to unit spread, or divide {s_min} and {s_max} by their spread")
    #: The parameters the messages of :meth:`_warn_if_missed` and :meth:`_warn_if_folded` name.
    _HINT_PARAMS = ("s_min", "s_max", "X")
    #: A box axis along which the data vary by at most this fraction of the
    #: widest axis counts as flat (see :meth:`_data_box`).
    FLAT_AXIS = FLAT_AXIS

    _CONFIG_KEYS = (
        "ambient_dim", "codim", "hidden", "activation", "architecture", "radial", "s_min",
        "s_max", "mu", "rank_batch",
        "w_neg", "beta", "mu_box", "box_s_min", "mu_orient", "orient_radius",
        "orient_min_contrast", "norm", "lr",
        "lr_floor", "weight_decay", "epochs", "batch_size", "n_negatives", "langevin_steps",
        "langevin_step_size", "langevin_temperature", "buffer_size", "reinit_prob",
        "neg_exclusion", "box_margin", "n_restarts", "restart_selection", "n_jobs", "tol",
        "max_iter", "seed", "progress",
    )

    def __init__(self, ambient_dim, codim=1, hidden=(32, 32, 32), activation="silu", *,
                 architecture="mlp", radial=1.0, s_min=1.0, s_max=10.0, mu=10.0, w_neg=0.1, beta=0.1,
                 mu_box=0.0, box_s_min=0.2, mu_orient=0.0, orient_radius=0.1,
                 orient_min_contrast=0.0, norm="l2", lr=1e-2, lr_floor=0.01, weight_decay=0.0,
                 epochs=400, batch_size=256, n_negatives=128, langevin_steps=5,
                 langevin_step_size=0.01, langevin_temperature=0.01, buffer_size=1000,
                 reinit_prob=0.05, neg_exclusion=0.0, box_margin=0.1, rank_batch=0,
                 n_restarts=1, restart_selection="agreement", n_jobs=1, tol=1e-10,
                 max_iter=50, seed=0, device=None, progress=True):
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        if architecture not in ("mlp", "residual"):
            raise ValueError(f"architecture must be 'mlp' or 'residual', got {architecture!r}")
        self.architecture = architecture
        self.radial = float(radial)
        self.objective = MDFObjective(s_min=s_min, s_max=s_max, mu=mu, w_neg=w_neg,
                                      beta=beta, mu_box=mu_box, box_s_min=box_s_min,
                                      mu_orient=mu_orient,
                                      norm=norm, rank_batch=int(rank_batch))
        self.lr, self.lr_floor, self.epochs = float(lr), float(lr_floor), int(epochs)
        self.weight_decay = float(weight_decay)
        if not self.weight_decay >= 0:  # NaN too
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.batch_size, self.n_negatives = int(batch_size), int(n_negatives)
        self.langevin_steps = int(langevin_steps)
        self.langevin_step_size = float(langevin_step_size)
        self.langevin_temperature = float(langevin_temperature)
        self.buffer_size, self.reinit_prob = int(buffer_size), float(reinit_prob)
        self.neg_exclusion = float(neg_exclusion)
        # Checked here, not at fit: there a negative step or temperature failed
        # as a bare "math domain error" from the Langevin noise's square root.
        for name in ("lr", "langevin_step_size", "langevin_temperature", "neg_exclusion"):
            value = getattr(self, name)
            if not (value > 0 if name == "lr" else value >= 0) or math.isinf(value):
                raise ValueError(f"{name} must be finite and {'>' if name == 'lr' else '>='} 0, "
                                 f"got {value}")
        self.orient_radius = float(orient_radius)
        if mu_orient > 0 and codim != 1:
            raise ValueError(f"mu_orient needs a hypersurface (codim 1), got codim {codim}")
        if self.orient_radius <= 0:
            raise ValueError(f"orient_radius must be > 0, got {orient_radius}")
        self.orient_min_contrast = float(orient_min_contrast)
        if not 0.0 <= self.orient_min_contrast <= 1.0:
            raise ValueError(f"orient_min_contrast must be in [0, 1], got {orient_min_contrast}")
        self.box_margin, self.seed, self.progress = float(box_margin), int(seed), bool(progress)
        self.n_restarts = int(n_restarts)
        if self.n_restarts < 1:
            raise ValueError(f"n_restarts must be >= 1, got {n_restarts}")
        if restart_selection not in ("conditioning", "agreement"):
            raise ValueError(f"restart_selection must be 'conditioning' or 'agreement', got "
                             f"{restart_selection!r}")
        self.restart_selection = restart_selection
        self.n_jobs = check_jobs(n_jobs)
        device = torch.device(device) if device is not None else torch.device("cpu")
        if min(self.epochs, self.batch_size) < 1 or not self.box_margin >= 0:  # NaN too
            raise ValueError("epochs and batch_size must be >= 1 and box_margin >= 0")
        net = self._make_net(ambient_dim, codim)
        net.requires_grad_(False)
        super().__init__(net, ambient_dim, codim, tol=tol, max_iter=max_iter)
        self.to(device)
        self._trainer = self._sampler = self._generator = None
        self.history_ = {}

    # ------------------------------------------------------------ config access
    s_min = property(lambda self: self.objective.s_min, doc="Lower singular value bound.")
    s_max = property(lambda self: self.objective.s_max, doc="Upper singular value bound.")
    mu = property(lambda self: self.objective.mu, doc="Weight of the rank penalty.")
    w_neg = property(lambda self: self.objective.w_neg, doc="Weight of the negative term.")
    beta = property(lambda self: self.objective.beta, doc="Weight of |F|^2 on negatives.")
    mu_box = property(lambda self: self.objective.mu_box, doc="Weight of the box rank term.")
    box_s_min = property(lambda self: self.objective.box_s_min, doc="Box lower bound.")
    mu_orient = property(lambda self: self.objective.mu_orient, doc="Weight of the orientation.")
    norm = property(lambda self: self.objective.norm, doc="Norm of F in the objective.")
    rank_batch = property(lambda self: self.objective.rank_batch,
                          doc="Rows per batch of the Jacobian terms (0: all).")

    def get_config(self):
        """Constructor arguments (JSON-serialisable), enough to rebuild the model."""
        config = {key: getattr(self, key) for key in self._CONFIG_KEYS}
        config["hidden"] = list(self.hidden)
        return config

    @property
    def is_fitted(self):
        """Whether :meth:`fit` has run (or a fitted model was loaded).

        True from the moment a fit sets up its state (so that the fit's own
        negatives, conditioning and restarts can evaluate F); a fit that stops
        part-way restores the previous value with the rest of the model."""
        return self._trainer is not None

    # ------------------------------------------------------ geometry of a fit
    # Every geometry call (projection, belongs, tangents, exp/log/dist,
    # random_point, components, forward) evaluates F through these hooks.
    # Before a fit F is the zero set of random initial weights, with no box:
    # answers there would be meaningless, so they are refused here, under
    # every public entry point (the fit itself runs with is_fitted True).
    def _check_fitted(self):
        if not self.is_fitted:
            raise NotFittedError(
                f"call fit first: this {type(self).__name__} is unfitted, and the zero set of "
                f"its random initial weights is no manifold of the data (load a saved fit with "
                f"{type(self).__name__}.load; for the zero set of a given network use "
                f"NetworkImplicitManifold)")

    def _value(self, x):
        self._check_fitted()
        return super()._value(x)

    def _value_and_jacobian(self, x):
        self._check_fitted()
        return super()._value_and_jacobian(x)

    def _second_forms(self, x, dirs):
        self._check_fitted()
        return super()._second_forms(x, dirs)

    def _jacobian_and_second_derivative(self, x, v):
        self._check_fitted()
        return super()._jacobian_and_second_derivative(x, v)

    def sampled_components(self, n_samples=None, seed=0):
        # Checked before the box: "no bounds, pass them when building it" would
        # blame an argument this constructor does not take (fit sets the box).
        self._check_fitted()
        return super().sampled_components(n_samples, seed)

    # ---------------------------------------------------------------- training
    @contextlib.contextmanager
    def _trainable(self):
        self.net.requires_grad_(True)
        try:
            yield
        finally:
            self.net.requires_grad_(False)
            for p in self.net.parameters():
                p.grad = None

    def _make_net(self, ambient_dim, codim):
        """A freshly initialised network of the chosen architecture (seeded)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.architecture == "residual":
                return ResidualMDFNetwork(ambient_dim, codim, self.hidden, self.activation)
            return MDFNetwork(ambient_dim, codim, self.hidden, self.activation, self.radial)

    def _setup(self, data):
        """Fresh weights, normalisation, box, sampler and optimizer for ``data``."""
        fresh = self._make_net(self.ambient_dim, self.codim)
        self.net.load_state_dict(fresh.state_dict())
        if self.architecture == "residual":
            self.net.init_from_data(data, slope=self.objective.s_min)
        else:
            self.net.shift.copy_(data.mean(0))
            # One scale for all axes keeps the geometry isotropic (per-axis scaling
            # made the glycine torus markedly harder to fit).
            self.net.scale.copy_(data.std(0).mean().clamp_min(1e-12))
        self._build_state(*self._data_box(data))

    def _data_box(self, data):
        """The box of a fit: the data's bounding box widened by ``box_margin``.

        An axis along which the data do not vary at all (data on an
        axis-aligned plane: a circle in the plane z = 0 of R^3) is given the
        extent of the widest axis, centred on the data: the learned zero set
        is never exactly flat, and a box of (numerically) zero width left all
        of it outside, so conditioning, components and box-sampled geodesics
        found nothing and the negatives could not leave the plane.
        """
        return padded_box(data, self.box_margin, min_width=1e-12, flat=self.FLAT_AXIS)

    def _build_state(self, low, high):
        self.bounds = (low, high)
        self.invalidate_caches()  # a new fit: components and curves are found again
        # Under torchrun each rank runs its own share of the negative chains
        # with its own random stream (rank 0 keeps the single-process seed);
        # the trainer averages the steps (learning.distributed).
        ctx = context()
        self._generator = torch.Generator(device=self.device).manual_seed(ctx.seed(self.seed + 1))
        self._sampler = LangevinNegativeSampler(
            low.to(self.device), high.to(self.device),
            n_negatives=max(1, ctx.shard_size(self.n_negatives)),
            buffer_size=max(1, ctx.shard_size(self.buffer_size)), steps=self.langevin_steps,
            step_size=self.langevin_step_size, temperature=self.langevin_temperature,
            reinit_prob=self.reinit_prob, scale=float(self.net.scale), norm=self.norm,
            generator=self._generator)
        self._trainer = make_trainer(self.net.parameters(), lr=self.lr, total_epochs=self.epochs,
                                     lr_floor=self.lr_floor, weight_decay=self.weight_decay,
                                     progress=self.progress,
                                     desc=f"fitting {type(self).__name__}")
        self.history_ = self._trainer.history

    def _outward_normals(self, data):
        """Outward normals of the training points, for the orientation term."""
        low, high = (b.to(data) for b in self.bounds)
        # Zero rows (no orientation known) are left out of the orientation term.
        normals, _ = outward_normals(data, low, high, self.orient_radius * float(self.net.scale),
                                     seed=self.seed, min_contrast=self.orient_min_contrast)
        return normals

    def _loss(self, batch, normals=None):
        negatives = None
        if self.objective.w_neg > 0 or self.objective.beta > 0:
            # The graph-free value-and-Jacobian hook drives the chains.
            negatives = self._sampler.sample(self.net, self._value_and_jacobian)
            if self.neg_exclusion > 0:
                # Negatives next to data are where the zero set belongs: only
                # push F up elsewhere, so sparse arcs are not dissolved.
                gap = torch.cdist(negatives, self._data).amin(-1)
                negatives = negatives[gap > self.neg_exclusion * self._sampler.scale]
                if negatives.shape[0] == 0:
                    negatives = None
        box = None
        if self.objective.mu_box > 0:
            box = self._sampler.uniform(self.n_negatives)
        objective = self.objective
        ctx = context()
        if ctx.active and objective.rank_batch > 0:
            # rank_batch counts rows of the global batch, like batch_size: each
            # rank takes its share, so the Jacobian work is split too.
            objective = dataclasses.replace(
                objective, rank_batch=max(1, ctx.shard_size(objective.rank_batch)))
        return objective(self.net, batch, negatives, box, normals)

    def fit(self, X, y=None, epochs=None, resume=False):
        """Learn the manifold of the data ``X``.

        Parameters
        ----------
        X : array-like, shape=[N, ambient_dim]
        y : None
            Ignored (sklearn convention).
        epochs : int, optional
            Epochs to run (default: ``self.epochs``).
        resume : bool
            Continue the previous fit (weights, optimizer, schedule, negatives,
            random state) instead of starting afresh; the box and the input
            standardisation stay those of the first fit. After a fit with
            ``n_restarts > 1`` it continues the kept restart.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            ``epochs`` is not a non-negative integer (the model is left as it was).
        InvalidPointError
            ``X`` has NaN/inf values or the wrong shape, fewer than 2 rows,
            all rows equal, or a size or spread float64 cannot square
            (:func:`~implicit_geom.numerics.validation.check_spread`).
        EmptyDataError
            ``X`` is empty.
        """
        del y
        # Checked before anything changes: the trainer refused a bad count only
        # after fresh weights had replaced the fit (untrained, still "fitted").
        if epochs is not None:
            check_int(epochs, "epochs", minimum=0,
                      message=f"epochs must be an integer >= 0 or None, got {epochs!r}")
        X = as_points(X, self.ambient_dim, "X", dtype=DTYPE)
        if X.ndim != 2:
            raise InvalidPointError(f"X must have shape (N, {self.ambient_dim}); got "
                                    f"{tuple(X.shape)}")
        if X.shape[0] < 2:
            raise InvalidPointError(f"fit needs at least 2 points, got {X.shape[0]}")
        # No spread (no length scale to standardise by, no box: it was 1e-12
        # wide, the fit a random zero set beside the point), or one whose
        # squares overflow or underflow (a NaN loss at epoch 0).
        check_spread(X, "X")
        # In the model's dtype too: after .to(torch.float32) float64 data met
        # float32 weights in the negative sampler ("must have the same dtype").
        X = X.to(device=self.device, dtype=self.dtype)
        # A fit that stops part-way (TrainingDivergedError, Ctrl-C) leaves the
        # model as it was (a resumed fit keeps the state it resumed from), not
        # part-trained weights under the previous fit's flags. The caches go
        # first: the fit drops them anyway, and they need not be copied.
        self.invalidate_caches()
        saved = copy.deepcopy(self.__dict__, {id(self): self})
        try:
            if not (resume and self.is_fitted) and self.n_restarts > 1:
                self._fit_restarts(X, epochs)
            else:
                if not (resume and self.is_fitted):
                    self._setup(X)
                self._train(X, epochs)
                # Beyond 3-D a box sample rarely reaches every part of the zero set,
                # and projecting 20 000 points costs more than many fits (34 s in 16-D).
                self.conditioning_ = (self._conditioning(self.seed)[0]
                                      if self.ambient_dim <= self.CHECK_MAX_DIM else None)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
        self._warn_if_folded()
        self._warn_if_data_missed(X)
        return self

    def _data_gap(self, X):
        """Median first-order distance ``|J_F^+ F(x)|`` of the points ``X`` to
        the learned zero set, in units of the data's length scale (the
        network's ``scale``): about the median distance for points near it.
        Uses at most ``GAP_SAMPLES`` rows of ``X`` (evenly spaced)."""
        X = as_points(X, self.ambient_dim, "X", dtype=DTYPE).reshape(-1, self.ambient_dim)
        X = X[::max(1, -(-X.shape[0] // self.GAP_SAMPLES))].to(self.device)
        return float(self._first_order_distances(X).median() / self.net.scale)

    def _first_order_distances(self, points):
        """``|J^+ F(y)|`` at each point: the length of the Newton step onto the
        zero set, its distance to first order, shape (B,)."""
        value, jac = self.value_and_jacobian(points.to(self.device))
        return (torch.linalg.pinv(jac) @ value[..., None]).squeeze(-1).norm(dim=-1)

    def _unusual_spread(self):
        """Whether the data's length scale lies outside ``SPREAD_RANGE``, where the
        default slopes ``s_min``, ``s_max`` (in the data's units) do not suit them."""
        low, high = self.SPREAD_RANGE
        return not low <= float(self.net.scale) <= high

    def _warn_if_data_missed(self, X):
        # Only where the data's spread is far from 1, the trap of slopes in the
        # data's units: near unit spread a zero set some way from the data is
        # noise in them or a short fit (the tests' few-epoch fits), which the
        # distance to M reports, not a failure to warn of.
        if not self._unusual_spread():
            return
        gap = self._data_gap(X)
        if gap <= self.GAP_FRACTION:  # NaN warns too
            return
        warnings.warn(FitWarning(
            f"the learned zero set misses the training data: their median distance to it is "
            f"{gap:.3g} times the data's length scale ({float(self.net.scale):.3g}): "
            f"{self._RESCALE_HINT}", params=self._HINT_PARAMS), stacklevel=3)

    def _conditioning(self, seed):
        """:meth:`zero_set_conditioning` (``-inf`` where nothing reaches the zero set, or
        NaN) and the sample of the zero set it was taken on (None then)."""
        try:
            points = self._zero_set_sample(self.CONDITIONING_SAMPLES, seed)
        except ProjectionError:  # no zero set in the box: the worst fit
            return -math.inf, None
        score = float(self.singular_values(points)[..., -1].min())
        return (score if score == score else -math.inf), points

    def _warn_if_folded(self):
        limit = self.FOLD_FRACTION * self.s_min
        if self.conditioning_ is None or self.conditioning_ >= limit:
            return
        fix = (f"even the best of {self.n_restarts} restarts; try a larger {{n_restarts}}" if
               self.n_restarts > 1 else
               "refit with {n_restarts=3} (a fit that is not folded is kept)")
        if self._unusual_spread():
            # Restarts do not help there: every fit starts with slopes ~ 1 / spread.
            fix = (f"the data's spread is {float(self.net.scale):.3g}: {self._RESCALE_HINT}; "
                   f"else {fix}")
        if self.conditioning_ == -math.inf:
            message = ("no box point reached the learned zero set inside the box: the fit may "
                       "have no zero set there (or the box is flat)")
        else:
            message = (f"the learned zero set is near-singular in its box (smallest Jacobian "
                       f"singular value {self.conditioning_:.3g} < {self.FOLD_FRACTION} * s_min "
                       f"= {limit:.3g}): projection and geodesics may fail or crawl there, e.g. "
                       f"at a fold where the data leave gaps")
        warnings.warn(ConditioningWarning(f"{message}; {fix} or another {{seed}}",
                                          params=("n_restarts", "seed") + self._HINT_PARAMS),
                      stacklevel=3)

    def _train(self, X, epochs):
        epochs = self.epochs if epochs is None else int(epochs)
        self._data = X
        try:
            with self._trainable():
                data = X if self.objective.mu_orient == 0 else (X, self._outward_normals(X))
                self._trainer.run(self._loss, data, epochs, self.batch_size, self._generator)
        finally:
            del self._data
            self.invalidate_caches()  # the zero set moved

    def _fit_restarts(self, X, epochs):
        """``n_restarts`` fresh fits; one is kept (see ``restart_selection``)."""
        base, progress = self.seed, self.progress
        # Under torchrun every rank must take part in every step: no forking there.
        n_jobs = 1 if context().active else min(resolve_jobs(self.n_jobs), self.n_restarts)
        groups = [range(j, self.n_restarts, n_jobs) for j in range(n_jobs)]

        def run(part):
            j, group = part
            done = []
            try:
                for i in group:
                    self.seed = base + self.RESTART_STRIDE * i
                    self.progress = progress and j == 0  # one bar: this process's
                    self._setup(X)
                    self._train(X, epochs)
                    score, points = self._conditioning(base)
                    keep = self.restart_selection == "agreement" and points is not None
                    done.append((i, score, self._fit_state(),
                                 points[:self.AGREEMENT_SAMPLES] if keep else None))
            finally:
                self.seed, self.progress = base, progress
            return done

        fits = sorted((f for part in fork_map(run, enumerate(groups)) for f in part),
                      key=lambda f: f[0])
        scores = [f[1] for f in fits]
        best = max(range(len(fits)), key=lambda i: (scores[i], -i))  # the first of equals
        self.restart_gaps_ = None
        sound = [i for i, score in enumerate(scores) if score >= self.FOLD_FRACTION * self.s_min]
        if self.restart_selection == "agreement" and len(sound) >= 3:
            # Two sound fits are equally far from each other: agreement needs three.
            gaps = self._restart_gaps([fits[i] for i in sound])
            self.restart_gaps_ = torch.full((len(fits), len(fits)), math.nan, dtype=DTYPE)
            self.restart_gaps_[torch.tensor(sound)[:, None], torch.tensor(sound)] = gaps
            mean = gaps.sum(1) / (len(sound) - 1)
            best = sound[min(range(len(sound)), key=lambda k: (float(mean[k]), k))]
        self._restore_fit_state(fits[best][2])
        self.restart_scores_, self.restart_ = scores, best
        self.conditioning_ = scores[best]
        return self

    def _restart_gaps(self, fits):
        """Symmetrised mean first-order distance between the zero sets of ``fits``.

        Entry ``(i, j)``: the mean over fit ``i``'s sample of its zero set of
        ``|J_j^+ F_j(y)|`` (the Newton step onto fit ``j``'s zero set: its
        distance to first order), averaged with ``(j, i)``. Leaves the last
        fit's state loaded.
        """
        k = len(fits)
        gaps = torch.zeros(k, k, dtype=DTYPE)
        for j, (_, _, state, _) in enumerate(fits):
            self._restore_fit_state(dict(state, rng=None))
            for i, (_, _, _, points) in enumerate(fits):
                if i != j:
                    gaps[i, j] = self._first_order_distances(points).mean().cpu()
        return (gaps + gaps.T) / 2

    def _fit_state(self):
        """Everything a fit leaves (weights, box, optimizer, negatives, random
        stream), as CPU copies: for restarts and checkpoints."""
        weights = self.net.state_dict()
        return {"state_dict": {k: v.detach().cpu().clone() for k, v in weights.items()},
                "bounds": [b.detach().cpu().clone() for b in self.bounds],
                "trainer": self._trainer.state_dict(),
                "sampler": {"buffer": self._sampler.state_dict()["buffer"].cpu()},
                "rng": self._generator.get_state()}

    def _restore_fit_state(self, state):
        """Make :meth:`_fit_state`'s record the current fit (``rng`` None: a fresh stream)."""
        self.net.load_state_dict(state["state_dict"])
        low, high = (torch.as_tensor(b, device=self.device, dtype=self.dtype)
                     for b in state["bounds"])
        self._build_state(low, high)
        self._trainer.load_state_dict(state["trainer"])
        self.history_ = self._trainer.history
        self._sampler.load_state_dict(state["sampler"])
        if state["rng"] is not None:
            # A copy: set_state reads the raw storage, which for a view may start elsewhere.
            self._generator.set_state(state["rng"].clone().contiguous())

    def zero_set_conditioning(self, n_samples=CONDITIONING_SAMPLES, seed=0):
        """Smallest Jacobian singular value of F over its zero set in the box.

        Uniform points of the box are projected onto the zero set (Newton's
        failures are left out, like points projected out of the box); the
        minimum over them of the smallest singular value of ``J_F``. A small
        value flags a near-singular fold, where projection, tangent spaces and
        geodesics break down. The sample is seeded: the same model gives the
        same value.

        Raises
        ------
        NotFittedError
            Before :meth:`fit`.
        ProjectionError
            No sample reached the zero set in the box.
        """
        if not self.is_fitted:
            raise NotFittedError("call fit first: the box to sample comes from the data")
        return float(self.singular_values(self._zero_set_sample(n_samples, seed))[..., -1].min())

    def _zero_set_sample(self, n_samples, seed):
        """Uniform box points projected onto the zero set (seeded; failures and
        points leaving the box dropped)."""
        gen = torch.Generator().manual_seed(int(seed))
        y, _ = sample_in_box(self, n_samples, *self.bounds, generator=gen, closest=True)
        if y.shape[0] == 0:
            raise ProjectionError("no box sample reached the zero set in the box")
        return y

    # ------------------------------------------------------------- persistence
    def save(self, path):
        """Save configuration, weights, box, history, optimizer and sampler state.

        Written atomically (temporary file + rename): an existing checkpoint at
        ``path`` is replaced whole or left untouched. In a distributed run every
        rank must call it (the negative chains of all ranks are gathered into
        one buffer) and rank 0 alone writes the file.

        Raises
        ------
        NotFittedError
            Before :meth:`fit`: an unfitted model holds no fit to save (its
            weights are the seed's initial ones, which :meth:`fit` replaces;
            ``get_config`` rebuilds it).
        """
        if not self.is_fitted:
            raise NotFittedError(f"call fit first: an unfitted {type(self).__name__} has no fit "
                                 f"to save (its configuration is get_config())")
        ctx = context()
        payload = {"state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                   "fitted": True,  # older versions also saved unfitted models, see load
                   # A model moved to float32 reloads in float32 (it came back float64).
                   "dtype": dtype_name(self.dtype)}
        payload.update(self._fit_state())
        rng = payload["rng"]
        # Every rank's chains in one buffer, and every rank's stream, so
        # that a resume on as many ranks continues each.
        payload["sampler"] = {"buffer": ctx.all_gather(payload["sampler"]["buffer"]
                                                       .to(self.device)).cpu()}
        payload["rng_ranks"] = [r.clone() for r in ctx.all_gather(rng[None]).unbind(0)]
        # How the fit was scored and chosen: a reloaded model answers as the fitted one.
        payload["report"] = {name: getattr(self, name) for name in self.REPORT
                             if hasattr(self, name)}
        if ctx.is_main:
            save_checkpoint(path, type(self).__name__, self.get_config(), payload)
        ctx.barrier()

    @classmethod
    def load(cls, path, device=None, progress=None):
        """Rebuild a model saved with :meth:`save`: a fitted model, ready to
        use or to resume.

        Raises
        ------
        CheckpointError
            Missing, corrupt or incompatible file, or one of an unfitted model
            (older versions wrote those).
        """
        config, record = load_checkpoint(path, cls.__name__, required=("state_dict", "fitted"))
        if not record["fitted"]:
            # Its weights are the seed's initial ones, which fit replaces: the
            # file holds nothing but the configuration.
            raise CheckpointError(f"checkpoint {path} holds an unfitted {cls.__name__} (no fit "
                                  f"to load); build {cls.__name__}(**config) and fit it")
        if progress is not None:
            config["progress"] = progress
        dtype = checkpoint_dtype(record, path)  # float64 in older checkpoints
        try:
            model = cls(**config, device=device)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} has an incompatible configuration: "
                                  f"{err}") from err
        if dtype != model.dtype:
            model.to(dtype)
        try:
            # The saved buffer holds every rank's chains: this rank takes its share.
            ctx = context()
            buffer = record["sampler"]["buffer"]
            if buffer.shape[0] == model.buffer_size:
                buffer = ctx.shard(buffer)
            ranks = record.get("rng_ranks")
            rng = (ranks[ctx.rank] if ranks is not None and len(ranks) == ctx.world_size
                   else record["rng"] if ctx.is_main else None)
            model._restore_fit_state(dict(record, sampler={"buffer": buffer}, rng=rng))
            report = record.get("report", {})  # absent in older checkpoints
            if not isinstance(report, dict):
                raise CheckpointError(f"checkpoint {path} has a corrupt fit report")
            for name, value in report.items():
                if name in cls.REPORT:
                    setattr(model, name, value)
        except CheckpointError:
            raise
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as err:
            raise CheckpointError(f"checkpoint {path} is incompatible with "
                                  f"{cls.__name__}: {err}") from err
        return model
