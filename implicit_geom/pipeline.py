"""The library's default pipeline: a manifold for the data, then a constrained EBM on it.

One definition, run by the command line (``implicit-geom fit`` and ``demo``)
and by ``benchmarks/pipelines.py``, so that the benchmark measures what users
run:

1. the manifold: analytic where the data's manifold is known (latitude and
   longitude on the sphere, angles on the torus), otherwise learned by a
   :class:`~implicit_geom.learning.NeuralImplicitManifold` with the data set's
   preset (:func:`~implicit_geom.learning.presets.mdf_preset`); the intrinsic
   dimension of plain points comes from the data set or from local PCA;
2. the density: :class:`~implicit_geom.models.ConstrainedEBM` with the data
   set's settings (:func:`ebm_preset`).

Per-data-set presets go to the built-in data sets only (``Dataset.preset_name``):
a user's file ``glycine.csv`` gets the generic settings (those of its kind on
the analytic sphere or torus), whatever its name.
"""

import time
from dataclasses import dataclass, field

import torch

from .datasets import estimate_intrinsic_dim
from .exceptions import NamedText, ParameterError
from .manifolds import ImplicitSphere, ImplicitTorus
from .numerics.validation import check_spread

__all__ = ["EBM_DEFAULTS", "EBM_PRESETS", "MLE_DEFAULTS", "LEARNED_MLE_PRESETS", "Pipeline",
           "build_manifold", "ebm_preset", "fit_pipeline", "manifold_kind", "mle_preset"]

#: Settings of every constrained EBM of the pipeline. A small buffer and 15
#: steps per iteration keep the persistent chains near equilibrium in a short
#: run; the cosine decay to lr / 10 damps the PCD noise in the final weights.
EBM_DEFAULTS = dict(n_iter=400, n_mcmc_steps=15, batch_size=128, buffer_size=500, lr=3e-3,
                    lr_floor=0.1, beta=0.01, hidden=(64, 64))

#: Per data set: the Langevin step (absolute, for the data set's scale), the
#: energy regulariser and where chains start (at the data on disconnected
#: manifolds: local dynamics cannot move mass between components).
EBM_PRESETS = {
    "circle": dict(step_size=0.3),
    "two_circles": dict(step_size=0.3, chain_init="data"),
    "sphere_mixture": dict(step_size=0.2, beta=0.1),
    "torus": dict(step_size=0.3, beta=0.1),
    "flood": dict(step_size=0.15),
    "volcano": dict(step_size=0.15),
    "glycine": dict(step_size=0.3, beta=0.1),
    # 8x8 images on a learned 8-dimensional manifold (benchmarks/images.py):
    # a wider energy network, a larger buffer of chains started from noise;
    # the step chosen on seed 1 (Fréchet distance of fresh-noise samples 2.3
    # at 0.2; 3.2 at 0.1, with a constant learning rate).
    "digits": dict(step_size=0.2, hidden=(128, 128), buffer_size=1000, n_iter=300,
                   n_mcmc_steps=20, lr=1e-3),
}


#: Settings by the kind of manifold, for users' data on the analytic sphere
#: (latitude/longitude, like flood) or torus (angles, like glycine).
KIND_PRESETS = {"sphere": "flood", "torus": "glycine"}

#: Exact maximum likelihood (where log Z has a quadrature: analytic spaces,
#: learned curves and surfaces): exact gradients take large batches and steps,
#: random Fourier features let the energy carve sharp peaks, and a tenth of the
#: training data is held out for early stopping.
MLE_DEFAULTS = dict(lr=1e-2, batch_size=512, n_iter=1000, fourier=32, max_frequency=8.0,
                    val_every=10, patience=10)

#: Per data set, settings of exact maximum likelihood on its *learned*
#: manifold (a projected-mesh quadrature) that differ from :data:`MLE_DEFAULTS`.
#: Glycine (chosen on seeds 10-14 of benchmarks/pipelines.py; W mean and
#: worst seed): Fourier frequencies up to 4 instead of 8 (0.0079 / 0.019
#: against 0.0104 / 0.022: sharper energies soon outrun the mesh, and
#: validation rejects those states); stopping after 5 validations without
#: improvement instead of 10 (the held-out NLL rose steadily after its best,
#: reached after 20-120 iterations, on every seed: the same states in a third
#: less time); hidden layers of 32 instead of 64 (0.0080 / 0.018 in half the
#: time: every step evaluates the energy at all ~30-55k mesh nodes). On the
#: analytic torus (an exact rule of 8k nodes) they made W worse (0.0063 against
#: 0.0032 on seeds 0-2), so they stay off there.
LEARNED_MLE_PRESETS = {"glycine": dict(max_frequency=4.0, patience=5, hidden=(32, 32))}


def ebm_preset(name, points=None, kind=None):
    """Constrained-EBM settings for data set ``name`` (a copy; ``None``: a user's data).

    Data without a preset of their own take that of their kind of manifold
    (``kind`` "sphere" or "torus", whose scale is fixed), else a Langevin
    step of 0.3 times the data's mean coordinate spread (the presets' ratio
    on the built-in sets), so that the step suits data of any scale.
    """
    preset = dict(EBM_DEFAULTS)
    name = name if name in EBM_PRESETS else KIND_PRESETS.get(kind, name)
    if name in EBM_PRESETS:
        preset.update(EBM_PRESETS[name])
    elif points is not None:
        spread = float(torch.as_tensor(points).std(0).mean())
        preset["step_size"] = 0.3 * spread if spread > 0 else 0.1
    return preset


def mle_preset(name, learned=True):
    """Exact maximum-likelihood settings for data set ``name`` (a copy):
    :data:`MLE_DEFAULTS`, with the data set's :data:`LEARNED_MLE_PRESETS` entry
    on a ``learned`` manifold."""
    preset = dict(MLE_DEFAULTS)
    if learned:
        preset.update(LEARNED_MLE_PRESETS.get(name, {}))
    return preset


@dataclass
class Pipeline:
    """What :func:`fit_pipeline` fitted.

    Attributes
    ----------
    kind : {"learned", "sphere", "torus"}
    manifold : ImplicitManifold
    ebm : ConstrainedEBM
    geometry : dict
        Parameters of an analytic manifold (torus radii).
    timings : dict
        ``manifold_s`` (learned manifolds) and ``ebm_s``, seconds.
    notes : list of str
        What was decided on the user's behalf (an estimated dimension).
    """

    kind: str
    manifold: object
    ebm: object
    geometry: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def manifold_kind(dataset, choice="auto"):
    """What ``choice`` means for ``dataset``: ``"auto"`` is the analytic sphere or
    torus for sphere or torus data, else ``"learned"``; other choices are kept."""
    if choice == "auto":
        return {"sphere": "sphere", "torus": "torus"}.get(dataset.kind, "learned")
    return choice


def build_manifold(dataset, choice="auto", intrinsic_dim=None, seed=0, progress=True,
                   mdf_epochs=None, n_train=None, mdf_restarts=None, mdf_orient=False, mdf_jobs=1,
                   mdf_selection=None):
    """The (unfitted) manifold of the pipeline for ``dataset``.

    Parameters
    ----------
    dataset : implicit_geom.datasets.Dataset
        Its preset is that of ``dataset.preset_name`` (built-in data sets only).
    choice : {"auto", "learned", "sphere", "torus"}
        ``"auto"``: analytic for sphere and torus data, else learned.
    intrinsic_dim : int, optional
        Dimension of a learned manifold (default: the data set's, else local
        PCA).
    seed : int
    progress : bool
    mdf_epochs : int, optional
        Overrides the preset's epochs.
    n_train : int, optional
        Training points (sizes the MDF's batches, see
        :func:`~implicit_geom.learning.presets.mdf_preset`).
    mdf_restarts : int, optional
        Fits of a learned manifold; one that is not folded is kept, the one
        agreeing most with the others (``NeuralImplicitManifold``'s
        ``n_restarts`` and ``restart_selection``). Default: the preset's
        (glycine 3), else 1.
    mdf_jobs : int
        Processes for those fits (``NeuralImplicitManifold``'s ``n_jobs``).
    mdf_selection : {"agreement", "conditioning"}
        Which of those fits is kept (``NeuralImplicitManifold``'s
        ``restart_selection``; None: its default).
    mdf_orient : bool
        Orient a learned hypersurface:
        :data:`~implicit_geom.learning.presets.ORIENTED` over the preset
        (``NeuralImplicitManifold``'s ``mu_orient``, ``orient_min_contrast``).

    Returns
    -------
    kind : str
    manifold : ImplicitManifold
    geometry : dict
    notes : list of str

    Raises
    ------
    ValueError
        An unknown choice, a sphere or torus for points that are not 3-D, or
        points without lower-dimensional structure.
    InvalidPointError
        Points without a spread float64 can work with (all equal, coordinates
        beyond 1e150, a spread below 1e-150), naming the data's file.
    """
    # Before any work (the dimension estimate included): data without a usable
    # spread failed only after training, or were said to show "no
    # lower-dimensional structure"; the message names the file.
    check_spread(dataset.points, f"the data ({dataset.meta.get('source', dataset.name)})")
    choice = manifold_kind(dataset, choice)
    if choice in ("sphere", "torus") and dataset.ambient_dim != 3:
        raise ParameterError(f"{{choice={choice!r}}} needs 3-D points, the data has "
                             f"{dataset.ambient_dim}", params=("choice",))
    if choice == "sphere":
        return "sphere", ImplicitSphere(2), {}, []
    if choice == "torus":
        R, r = dataset.meta.get("R", 3.0), dataset.meta.get("r", 1.0)
        return "torus", ImplicitTorus(R, r), {"R": R, "r": r}, []
    if choice != "learned":
        raise ParameterError(f"unknown {{choice={str(choice).replace('{', '(').replace('}', ')')!r}}}; "
                             "use auto, learned, sphere or torus", params=("choice",))
    from .learning import NeuralImplicitManifold
    from .learning.presets import ORIENTED, mdf_preset

    notes = []
    intrinsic = intrinsic_dim or dataset.intrinsic_dim
    if intrinsic is None:
        intrinsic = estimate_intrinsic_dim(dataset.points, seed=seed)
        if intrinsic >= dataset.ambient_dim:
            raise ParameterError(f"the {dataset.ambient_dim}-D points show no lower-dimensional "
                                 "structure (local PCA): pass {intrinsic_dim} to fit one anyway",
                                 params=("intrinsic_dim",))
        notes.append(NamedText(f"intrinsic dimension {intrinsic}, estimated by local PCA "
                               "(pass {intrinsic_dim} to set it)", ("intrinsic_dim",)))
    codim = dataset.ambient_dim - int(intrinsic)
    if codim < 1:
        raise ParameterError(f"{{intrinsic_dim={intrinsic}}} must be below the ambient "
                             f"dimension {dataset.ambient_dim}", params=("intrinsic_dim",))
    kwargs = dict(mdf_preset(dataset.preset_name, n_train, dataset.points), seed=seed,
                  progress=progress)
    if mdf_epochs:
        kwargs["epochs"] = int(mdf_epochs)
    # The preset's restarts unless given (an explicit 1 overrides glycine's 3).
    if mdf_restarts is not None:
        kwargs["n_restarts"] = int(mdf_restarts)
    kwargs["n_jobs"] = mdf_jobs
    if mdf_selection is not None:
        kwargs["restart_selection"] = mdf_selection
    if mdf_orient:
        if codim != 1:
            raise ParameterError("{mdf_orient=True} needs a hypersurface (codimension 1); this "
                                 f"manifold has dimension {intrinsic} in {dataset.ambient_dim}-D",
                                 params=("mdf_orient",))
        kwargs.update(ORIENTED)
    return "learned", NeuralImplicitManifold(dataset.ambient_dim, codim=codim, **kwargs), {}, \
        notes


def fit_pipeline(dataset, train, choice="auto", intrinsic_dim=None, seed=0, progress=True,
                 mdf_epochs=None, ebm_iter=None, notify=None, mdf_restarts=None, mdf_orient=False,
                 mdf_jobs=1, mdf_selection=None, **ebm_kwargs):
    """Fit the default pipeline: a manifold for ``dataset``, then a constrained EBM.

    Parameters
    ----------
    dataset : implicit_geom.datasets.Dataset
        Says what the data are (name, kind, dimensions); the fit uses ``train``.
    train : torch.Tensor, shape (N, n)
    choice, intrinsic_dim, seed, progress, mdf_epochs, mdf_restarts, mdf_orient, mdf_jobs, \
    mdf_selection
        See :func:`build_manifold`.
    ebm_iter : int, optional
        Overrides the EBM's iterations.
    notify : callable, optional
        Called with each of :attr:`Pipeline.notes` as soon as it is decided
        (before the long fits).
    **ebm_kwargs
        Override :func:`ebm_preset` settings.

    Returns
    -------
    Pipeline
    """
    from .models import ConstrainedEBM

    kind, manifold, geometry, notes = build_manifold(dataset, choice, intrinsic_dim, seed,
                                                     progress, mdf_epochs, len(train),
                                                     mdf_restarts, mdf_orient, mdf_jobs,
                                                     mdf_selection)
    for note in notes if notify is not None else ():
        notify(note)
    timings = {}
    if kind == "learned":
        t0 = time.perf_counter()
        manifold.fit(train)
        timings["manifold_s"] = time.perf_counter() - t0
    # The kind's preset only where the fit is on that analytic manifold.
    settings = dict(ebm_preset(dataset.preset_name, train, kind if kind != "learned" else None),
                    seed=seed, progress=progress)
    fit_data, val = train, None
    if ConstrainedEBM(manifold, **settings).resolved_method() == "mle":
        settings.update(mle_preset(dataset.preset_name, kind == "learned"))
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        k = max(len(train) // 10, 1)
        fit_data, val = train[perm[k:]], train[perm[:k]]
    if dataset.kind == "image":
        # Images lie 0.3 data scales from their learned M (benchmarks/images.py),
        # beyond the default reach of "near M": seen at their closest points,
        # as in the paper, unless max_distance is given.
        settings["max_distance"] = None
    settings.update(ebm_kwargs)
    if ebm_iter:
        settings["n_iter"] = int(ebm_iter)
    energy = None
    if kind == "sphere" and val is not None:
        # Points on the globe are clustered far below any smooth scale (coasts,
        # rivers, repeated sites): a learned vMF kernel mixture times a network,
        # normalised exactly (benchmarks/likelihood.py: flood, volcano).
        from .models import AnchoredVMFEnergy

        energy = AnchoredVMFEnergy(k=5, hidden=(32, 32), fourier=32, seed=seed)
    t0 = time.perf_counter()
    ebm = ConstrainedEBM(manifold, energy, **settings).fit(fit_data, val)
    timings["ebm_s"] = time.perf_counter() - t0
    return Pipeline(kind, manifold, ebm, geometry, timings, notes)
