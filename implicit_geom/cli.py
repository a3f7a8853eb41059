"""The ``implicit-geom`` command line: fit, sample, evaluate, plot, demo.

A model folder holds ``config.json`` (what was fitted, on which data, how),
``manifold/`` (a learned manifold's checkpoint, absent for analytic ones),
``ebm.pt`` (the constrained energy model), ``test.npy`` (held-out points),
``samples.npy`` (the model samples the metrics were computed on, which ``plot``
shows when asked for as many with the same seed), ``history.json`` (training
curves) and ``metrics.json``. It is built in a temporary sibling folder and renamed into
place, so an interrupted or failed command never leaves a half-written model.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import DataError, ImplicitGeomError
from ._io import usual_mode
from .datasets import COORDS, DATASET_NAMES, load_dataset, train_test_split
from .exceptions import template_fields
from .learning import distributed
from .manifolds import ImplicitSphere, ImplicitTorus
from .pipeline import fit_pipeline, manifold_kind
from .threads import check_jobs, reuse_freed_memory, set_threads

FORMAT = "implicit_geom.model/1"


class CLIError(Exception):
    """A user-facing error: printed on one line, exit status 2."""


def _positive_int(text):
    # Counts (--n, --n-eval, --n-samples, --mdf-epochs ...) are checked when
    # parsed: `fit --n-eval 0` used to train in full and then fail with an
    # error naming none of the options.
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text):
    # --test-fraction is checked when parsed: out of (0, 1) it failed after
    # loading the data with "test_fraction must be in (0, 1)", naming no option.
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _seed(text):
    # --seed is checked when parsed: -1 failed in numpy with "expected
    # non-negative integer", 2**70 in torch with "Overflow when unpacking long
    # long", naming no option.
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}")
    return value


def _max_distance(text):
    # ConstrainedEBM's max_distance: "auto", "none" (no limit) or a length > 0.
    low = text.strip().lower()
    if low in ("auto", "none"):
        return None if low == "none" else "auto"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'none' or a positive length, got {text!r}")
    return value


def _jobs(text):
    try:
        return check_jobs(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or -1, got {text!r}") from None


# ------------------------------------------------------------ library words
# The library's errors and warnings name its Python parameters (n_restarts=3,
# quadrature_resolution) and list them (ParameterMessage.params); a CLI user
# can only type flags. Those with a flag are named by it; those without one
# are said to be Python-only, not left as advice the user cannot follow.
_FLAGS = {
    # load_dataset / load_table / train_test_split
    "n_samples": "--n-samples", "seed": "--seed", "coords": "--coords",
    "columns": "--columns", "where": "--where", "degrees": "--degrees",
    "test_fraction": "--test-fraction",
    # fit_pipeline / build_manifold
    "choice": "--manifold", "intrinsic_dim": "--intrinsic-dim", "mdf_orient": "--mdf-orient",
    "mdf_restarts": "--mdf-restarts", "mdf_jobs": "--mdf-jobs",
    "mdf_selection": "--mdf-selection", "mdf_epochs": "--mdf-epochs", "ebm_iter": "--ebm-iter",
    "max_distance": "--max-distance",
    # NeuralImplicitManifold (set by fit from the options above)
    "n_restarts": "--mdf-restarts", "n_jobs": "--mdf-jobs",
    "restart_selection": "--mdf-selection", "epochs": "--mdf-epochs",
    # ConstrainedEBM.fit on fit_pipeline's validation split (a tenth of the training points)
    "X_val": "the validation tenth of the training points",
    # The points fit_pipeline fits NeuralImplicitManifold to.
    "X": "the data",
}
#: Advice added when a message names these parameters (after their flag).
_FLAG_HINTS = {"X_val": "use more data or a smaller --test-fraction"}


def _flag(name):
    return _FLAGS.get(name)


def _in_cli_terms(message):
    """A library error's or warning's text with its parameters named by the CLI's flags
    (see :class:`~implicit_geom.exceptions.ParameterMessage`); other text is kept."""
    params = getattr(message, "params", ())
    if not params:
        return str(message)
    first, *rest = message.naming(_flag).split("\n", 1)
    fields = template_fields(message.template)
    named = [p for p in dict.fromkeys(params) if p in fields]
    hints = [_FLAG_HINTS[p] for p in named if p in _FLAG_HINTS]
    python_only = [p for p in named if p not in _FLAGS]
    if hints:
        first += f" ({'; '.join(hints)})"
    if python_only:
        one = len(python_only) == 1
        first += (f" ({' and '.join(python_only)} {'is a setting' if one else 'are settings'}"
                  f" of the Python API; implicit-geom has no option for "
                  f"{'it' if one else 'them'})")
    return "\n".join([first, *rest])


@contextlib.contextmanager
def _warnings_in_cli_terms():
    """Show the warnings of a command with :func:`_in_cli_terms` messages."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            shown(category(_in_cli_terms(message)), category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _check_writable(path, folder=False):
    """Fail before the work if ``--out`` cannot be written: a file in the way of its
    folder, a folder where a file should go, no permission (creates nothing)."""
    text = os.fspath(path)
    # Path() drops a trailing slash: `sample --out x.npy/` wrote a file x.npy.
    if not folder and text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise CLIError(f"--out {text} names a folder (it ends in {text[-1]}); name a file")
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise CLIError(f"--out {path} is a {'file' if folder else 'folder'}; name a "
                       f"{'folder' if folder else 'file'}")
    ancestor = path if folder else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CLIError(f"--out {path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CLIError(f"--out {path} cannot be written: no permission to write in {ancestor}")


# ----------------------------------------------------------------- building
def _geometry(config):
    """The analytic manifold a model folder names (None for a learned one)."""
    if config["manifold"] == "sphere":
        return ImplicitSphere(2)
    if config["manifold"] == "torus":
        return ImplicitTorus(config["geometry"]["R"], config["geometry"]["r"])
    return None


def _reading(args, stored=None):
    """The file-reading options (``--coords`` ...), defaulting to ``stored`` ones."""
    stored = stored or {}
    given = {"coords": getattr(args, "coords", None), "columns": getattr(args, "columns", None),
             "where": getattr(args, "where", None), "degrees": getattr(args, "degrees", False)}
    # A typed --coords auto counts as given: it reads the file on its own.
    if all(v in (None, False) for v in given.values()):
        given = {**given, **stored}
    return {"coords": given["coords"] or "auto", "columns": given["columns"],
            "where": given["where"], "degrees": bool(given["degrees"])}


def _reading_options(reading):
    """The command-line options that give ``reading`` (empty for the defaults)."""
    options = [] if reading["coords"] == "auto" else [f"--coords {reading['coords']}"]
    if reading["columns"]:
        options.append(f"--columns {reading['columns']}")
    options += [f"--where {w}" for w in reading["where"] or ()]
    if reading["degrees"]:
        options.append("--degrees")
    return " ".join(options)


def _read_data(source, args, reading=None):
    """``load_dataset`` of ``source`` under ``reading`` (default: the options typed)."""
    reading = reading or _reading(args)
    try:
        return load_dataset(source, n_samples=args.n_samples, seed=args.seed,
                            intrinsic_dim=getattr(args, "intrinsic_dim", None), **reading)
    except FileNotFoundError as err:
        raise CLIError(f"data file not found: {err.filename or source}") from None


def _load_data(source, args, reading=None):
    """:func:`_read_data`, printing how a file was read."""
    data = _read_data(source, args, reading)
    if "reading" in data.meta:
        print(_in_cli_terms(data.meta["reading"]))
    return data


def _evaluation_data(args, config, dim):
    """The points of ``evaluate --data``.

    A file is read with the reading options typed; without any, with those
    the model's data were read with (a file in that layout, e.g. more rows of
    it, is read the same way), and that is said. When the file reads as
    ``dim``-D points both with the model's options and on its own (no options),
    differently, which was meant cannot be told: an error asks for the options.
    """
    own = _reading(args)
    # A built-in data set has no reading options: the model's are not its.
    builtin = str(args.data) in DATASET_NAMES
    reading = own if builtin else _reading(args, config.get("reading"))
    inherited = _reading_options(reading) if reading != own else ""

    def wrong_dim(data):
        if data.ambient_dim != dim:
            return f"--data has {data.ambient_dim}-D points, the model {dim}-D ones"
        return None

    if not inherited:
        data = _load_data(args.data, args, own)
        err = wrong_dim(data)
        if err:
            raise CLIError(err)
        return data

    def attempt(how):
        try:
            data = _read_data(args.data, args, how)
        except DataError as err:
            return None, _in_cli_terms(err)
        err = wrong_dim(data)
        return (None, err) if err else (data, None)

    data, err = attempt(reading)
    if data is None:
        # The model's own options were applied: say so, or `--where
        # residue=G` fails on a file of samples naming an option never given.
        raise CLIError(f"{err} (--data is read like the model's data, with {inherited}; "
                       "pass reading options to read it otherwise, e.g. --coords auto to read "
                       "it on its own)")
    alone, _ = attempt(own)
    if alone is not None and not (alone.points.shape == data.points.shape
                                  and torch.equal(alone.points, data.points)):
        raise CLIError(f"--data {args.data} reads one way with the model's reading options "
                       f"({inherited}) and another on its own: pass the options to use "
                       f"({inherited}, or --coords auto for the file's own reading)")
    print(f"--data is read like the model's data, with {inherited} (pass reading options to "
          "read it otherwise)")
    if "reading" in data.meta:
        print(_in_cli_terms(data.meta["reading"]))
    return data


def _points_of(args, n, flag=""):
    """"FILE gives 1 point (--n-samples 1)": what ``args.data`` gave, for the error
    that refuses too few points."""
    given = f" (--n-samples {args.n_samples})" if args.n_samples is not None else ""
    return f"{flag}{args.data} gives {n} point{'' if n == 1 else 's'}{given}"


def _print_note(note):
    """Print a library note (``fit_pipeline``'s notify) in the CLI's terms."""
    print(_in_cli_terms(note))


def _write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, default=float) + "\n")


def _replaceable(path):
    """Whether ``--overwrite`` may replace ``path``: a model folder or an empty folder."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / "config.json").is_file() or not any(path.iterdir())


@contextlib.contextmanager
def _made_folder(folder):
    """Create ``folder`` and its missing ancestors; if the body fails, remove again
    those this created (deepest first; one something else was written to stays)."""
    created = []
    parent = Path(folder)
    while not parent.exists():
        created.append(parent)  # deepest first
        parent = parent.parent
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        yield
    except BaseException:
        for made in created:
            try:
                made.rmdir()
            except OSError:  # something else was written there meanwhile: keep it
                break
        raise


class _AtomicFolder:
    """Build a folder under a temporary name; rename it into place on success."""

    def __init__(self, target, overwrite):
        self.target = Path(target)
        if self.target.exists() and not overwrite:
            raise CLIError(f"{self.target} already exists (pass --overwrite to replace it)")
        # --overwrite (and demo, which always overwrites) replaces a model
        # folder, never anything else: `--out ~/data` would otherwise delete
        # that folder, and a file would be replaced by a model folder.
        if self.target.exists() and not _replaceable(self.target):
            raise CLIError(f"{self.target} exists and is not a model folder (no config.json); "
                           "refusing to replace it: choose another --out")

    def __enter__(self):
        # The missing folders above --out are created here and removed again
        # if the command fails: a failed fit left them behind, empty.
        self.parents = contextlib.ExitStack()
        with self.parents:  # closed (failed) unless the temporary folder is made
            self.parents.enter_context(_made_folder(self.target.parent))
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.",
                                             dir=self.target.parent))
            usual_mode(self.tmp, directory=True)
            self.parents = self.parents.pop_all()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.parents.__exit__(exc_type, exc, tb)
            return False
        self.parents.close()
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)
        return False


def fit(args):
    """Fit a manifold (learned or analytic) and a constrained EBM on it."""
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    data = _load_data(args.data, args)
    if len(data) < 2:  # train_test_split's "need at least 2 points to split" named no file
        raise CLIError(f"{_points_of(args, len(data))}: fit needs at least 2, points to "
                       "train on and held-out ones (--test-fraction)")
    _refuse_learned_options(args, data)
    _refuse_restart_options(args, data)
    train, test = train_test_split(data.points, test_fraction=args.test_fraction, seed=args.seed)
    # Under torchrun every rank trains (learning.distributed); rank 0 alone
    # builds the model folder, the others write into a throwaway one.
    ctx = distributed.context()
    folder = _AtomicFolder(args.out, args.overwrite)  # every rank checks --out
    with (folder if ctx.is_main else _scratch_folder()) as tmp:
        fitted = fit_pipeline(data, train, args.manifold, args.intrinsic_dim, args.seed,
                              not args.no_progress and ctx.is_main, args.mdf_epochs,
                              args.ebm_iter, notify=_print_note if ctx.is_main else None,
                              mdf_restarts=args.mdf_restarts,
                              mdf_orient=args.mdf_orient, mdf_jobs=args.mdf_jobs or 1,
                              mdf_selection=args.mdf_selection,
                              **({"max_distance": args.max_distance}
                                 if hasattr(args, "max_distance") else {}))
        kind, manifold, ebm, geometry = (fitted.kind, fitted.manifold, fitted.ebm,
                                         fitted.geometry)
        timings = fitted.timings
        if kind == "learned":
            manifold.save(tmp / "manifold")
        ebm.save(tmp / "ebm.pt")
        # The samples the metrics use are kept: `plot` shows the same ones.
        # Under torchrun each rank draws its share (its own stream), gathered:
        # at codimension 56 these chains cost more than training, and rank 0
        # alone would run them while the others wait.
        samples = _sample_sharded(ebm, args.n_eval, args.seed, ctx,
                                  not args.no_progress and ctx.is_main)
        if not ctx.is_main:
            return 0
        # The training curves, for `plot` (whatever the checkpoints keep).
        _write_json(tmp / "history.json", {
            "manifold": manifold.history_ if kind == "learned" else {},
            "EBM": getattr(ebm, "history_", None) or {}})
        np.save(tmp / "test.npy", test.numpy())
        config = {
            "format": FORMAT, "data": str(args.data), "data_name": data.name,
            "data_kind": data.kind, "meta": {
                k: v for k, v in data.meta.items()
                if isinstance(v, (int, float, str)) or (
                    isinstance(v, list) and all(isinstance(e, str) for e in v))},
            "manifold": kind, "geometry": geometry, "seed": args.seed,
            "n_train": len(train), "n_test": len(test), "reading": _reading(args),
        }
        _write_json(tmp / "config.json", config)
        np.save(tmp / "samples.npy", samples.numpy())
        config["samples"] = {"n": args.n_eval, "seed": args.seed, "processes": ctx.world_size}
        _write_json(tmp / "config.json", config)
        metrics = _evaluate(manifold, ebm, test, data.kind, kind, args.n_eval, args.seed,
                            samples)
        metrics.update({k: round(v, 3) for k, v in timings.items()})
        metrics["wall_s"] = round(time.perf_counter() - start, 3)
        _write_json(tmp / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2, default=float))
    print(f"model written to {args.out}")
    return 0


def _refuse_learned_options(args, data):
    """Options of a learned manifold's fit given where nothing is learned: an error
    before any work (they used to be ignored silently)."""
    kind = manifold_kind(data, args.manifold)
    if kind not in ("sphere", "torus"):
        return
    # Their defaults are None/False, so that any typed value is seen (--mdf-restarts 1 too).
    given = [flag for flag, value in (
        ("--intrinsic-dim", args.intrinsic_dim), ("--mdf-epochs", args.mdf_epochs),
        ("--mdf-restarts", args.mdf_restarts), ("--mdf-selection", args.mdf_selection),
        ("--mdf-jobs", args.mdf_jobs), ("--mdf-orient", args.mdf_orient or None))
        if value is not None]
    if given:
        why = (f"--manifold {kind}" if args.manifold != "auto" else
               f"--manifold auto takes the analytic {kind} for {data.kind} data")
        one = len(given) == 1
        raise CLIError(f"{', '.join(given)} {'sets' if one else 'set'} the fit of a learned "
                       f"manifold, but nothing is learned here ({why}): drop "
                       f"{'it' if one else 'them'}, or pass --manifold learned")


def _refuse_restart_options(args, data):
    """--mdf-selection and --mdf-jobs other than 1 act on several restarts: with one
    (--mdf-restarts 1, the default but for glycine's preset) an error before any work
    (they were ignored)."""
    from .learning.presets import mdf_preset

    if (args.mdf_restarts or mdf_preset(data.preset_name).get("n_restarts", 1)) > 1:
        return
    given = [text for text, value in (
        (f"--mdf-selection {args.mdf_selection}", args.mdf_selection is not None),
        (f"--mdf-jobs {args.mdf_jobs}", args.mdf_jobs not in (None, 1))) if value]
    if given:
        one = len(given) == 1
        restarts = ("--mdf-restarts 1" if args.mdf_restarts else
                    "one by default (--mdf-restarts 1)")
        raise CLIError(f"{' and '.join(given)} {'acts' if one else 'act'} on several restarts "
                       f"of the manifold's fit, but there is {restarts}: drop "
                       f"{'it' if one else 'them'}, or pass --mdf-restarts 2 or more")


def _sample_sharded(ebm, n, seed, ctx, progress):
    """``n`` model samples, split between the ranks of a distributed run.

    Rank r draws its :meth:`~DistContext.shard_size` with seed ``ctx.seed(seed)``
    (rank 0 keeps ``seed``: one process draws exactly ``ebm.sample(n, seed)``);
    every rank gets all ``n``, in rank order.
    """
    share = ctx.shard_size(n)
    if share > 0:
        part = ebm.sample(share, seed=ctx.seed(seed), progress=progress)
    else:  # fewer samples than ranks
        part = next(ebm.energy_net.parameters()).new_empty((0, ebm.dim))
    return ctx.all_gather(part)


# ------------------------------------------------------------------ loading
def load_model(folder):
    """Load ``(config, manifold, ebm, test_points)`` from a model folder."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CLIError(f"{folder} is not a model folder (no config.json); run `implicit-geom fit`")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CLIError(f"{cfg_path} is corrupt: {err}") from None
    if not isinstance(config, dict):
        raise CLIError(f"{cfg_path} is corrupt: not a JSON object")
    if config.get("format") != FORMAT:
        raise CLIError(f"{cfg_path}: unsupported format {config.get('format')!r}")
    # A hand-edited or truncated config would otherwise end in a KeyError
    # traceback somewhere in evaluate/plot.
    missing = [k for k in ("manifold", "data_kind", "data_name") if k not in config]
    if missing:
        raise CLIError(f"{cfg_path} is corrupt: no {', '.join(map(repr, missing))}")
    for key in ("geometry", "meta", "reading", "samples"):  # read with .get / ** later
        if not isinstance(config.get(key) or {}, dict):
            raise CLIError(f"{cfg_path} is corrupt: {key!r} is not a JSON object")
    if config["manifold"] not in ("learned", "sphere", "torus"):
        raise CLIError(f"{cfg_path} is corrupt: unknown manifold {config['manifold']!r}")
    try:
        manifold = _geometry(config)
    except (KeyError, TypeError) as err:
        raise CLIError(f"{cfg_path} is corrupt: bad 'geometry' ({type(err).__name__}: "
                       f"{err})") from None
    if manifold is None:
        from .learning import NeuralImplicitManifold

        manifold = NeuralImplicitManifold.load(folder / "manifold", progress=False)
    from .models import ConstrainedEBM

    ebm = ConstrainedEBM.load(folder / "ebm.pt", manifold)
    test = torch.as_tensor(_load_array(folder / "test.npy", manifold.ambient_dim),
                           dtype=torch.float64)
    return config, manifold, ebm, test


def _load_array(path, dim):
    """A model folder's ``.npy`` array of finite ``dim``-D points; a missing or corrupt
    one is a CLIError naming it (numpy's own messages do not say which file, and
    points of another dimension or NaN failed deep in evaluate or plot)."""
    try:
        array = np.load(path)
    except FileNotFoundError:
        raise CLIError(f"{path} is missing; the model folder is incomplete") from None
    except (ValueError, OSError, EOFError) as err:
        raise CLIError(f"{path} is corrupt or unreadable: {err}") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise CLIError(f"{path} is corrupt: expected a 2-D float array, got {array.dtype} "
                       f"{array.shape}")
    if array.shape[1] != dim or len(array) == 0:
        raise CLIError(f"{path} is corrupt: expected {dim}-D points (the model's), got shape "
                       f"{array.shape}")
    if not np.isfinite(array).all():
        raise CLIError(f"{path} is corrupt: it has NaN or infinite values")
    return array


def _evaluate(manifold, ebm, test, data_kind, manifold_kind, n_samples, seed, samples=None):
    # The one evaluation of the library (implicit_geom.evaluation): the W
    # protocols, held-out NLL and log Z error, component masses, distances.
    from .evaluation import evaluate_model

    return evaluate_model(ebm, test, n_samples=n_samples, seed=seed, manifold=manifold,
                          samples=samples)


def evaluate(args):
    """Metrics of a fitted model against its held-out data (or --data)."""
    if not args.data:
        # They read --data only: without it they would be ignored silently.
        given = [flag for flag, value in (
            ("--n-samples", args.n_samples), ("--coords", args.coords),
            ("--columns", args.columns), ("--where", args.where),
            ("--degrees", args.degrees or None)) if value is not None]
        if given:
            raise CLIError(f"{', '.join(given)} read{'s' if len(given) == 1 else ''} --data; "
                           "pass --data FILE, or drop them to evaluate on the held-out split")
    config, manifold, ebm, test = load_model(args.model)
    if hasattr(args, "max_distance"):  # given (absent: the model's own setting)
        ebm.max_distance = args.max_distance
    if args.data:
        test = _evaluation_data(args, config, manifold.ambient_dim).points
        if len(test) < 2:  # one point failed in the metrics with "x is empty"
            raise CLIError(f"{_points_of(args, len(test), '--data ')}: evaluate needs at least 2")
    # Drawn here (evaluate_model would draw the same ones silently): --no-progress
    # decides whether the chains report progress.
    samples = ebm.sample(args.n_eval, seed=args.seed, progress=not args.no_progress)
    metrics = _evaluate(manifold, ebm, test, config["data_kind"], config["manifold"],
                        args.n_eval, args.seed, samples)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def sample(args):
    """Draw points from a fitted model into a .csv or .npy file."""
    out = Path(args.out)
    if out.suffix not in (".npy", ".csv"):  # before the (possibly long) sampling
        raise CLIError(f"--out must end in .csv or .npy, got {out.name}")
    _check_writable(args.out)  # the text typed: Path(args.out) drops a trailing slash
    _, manifold, ebm, _ = load_model(args.model)
    pts = ebm.sample(args.n, sampler=args.sampler, seed=args.seed,
                     progress=not args.no_progress).numpy()
    # Written under a temporary name in the folders it creates, which a failed
    # write removes again (as fit's _AtomicFolder does).
    with _made_folder(out.parent):
        fd, tmp = tempfile.mkstemp(suffix=out.suffix, dir=out.parent)
        os.close(fd)
        try:
            if out.suffix == ".npy":
                np.save(tmp, pts)
            elif out.suffix == ".csv":
                header = ",".join(f"x{i}" for i in range(pts.shape[1]))
                np.savetxt(tmp, pts, delimiter=",", header=header, comments="")
            usual_mode(tmp)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    print(f"{len(pts)} samples written to {out}")
    return 0


def plot(args):
    """PNG figures of a fitted model: data, manifold, density, samples."""
    config, manifold, ebm, test = load_model(args.model)
    out = Path(args.out or Path(args.model) / "figures")
    _check_writable(out, folder=True)  # before the sampling
    # Drawn into a temporary sibling folder, moved into place when all are
    # drawn: a failure half-way left some new figures beside old ones.
    with _made_folder(out):
        stage = Path(tempfile.mkdtemp(prefix=".figures.", dir=out))
        try:
            drawn = _draw_figures(args, config, manifold, ebm, test, stage)
            paths = [out / path.name for path in drawn]
            for path, final in zip(drawn, paths):
                os.replace(path, final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    for path in paths:
        print(path)
    return 0


def _draw_figures(args, config, manifold, ebm, test, out):
    """:func:`plot`'s figures, written into ``out``; returns their paths."""
    from . import plotting

    kind = config["data_kind"]
    view = kind if kind in ("sphere", "torus") else ("euclidean" if manifold.ambient_dim == 2
                                                     else "ambient3d")
    meta = dict(config.get("meta", {}), **config.get("geometry", {}))
    kept = config.get("samples") or {}
    if (kept.get("n"), kept.get("seed")) == (args.n, args.seed):  # fit's own draw
        samples = torch.as_tensor(_load_array(Path(args.model) / "samples.npy",
                                              manifold.ambient_dim))
    else:
        samples = ebm.sample(args.n, seed=args.seed, progress=not args.no_progress)
    paths = []
    if kind == "image":  # grids of images instead of scatter plots
        from .images import grid_figure

        shape = tuple(int(v) for v in str(meta.get("image_shape", "")).split("x") if v)
        if len(shape) != 2 or shape[0] * shape[1] != manifold.ambient_dim:
            raise CLIError(f"{args.model}: the image shape of the data is not recorded")
        fig = grid_figure({"held-out data": test, "constrained EBM samples": samples}, shape,
                          title=config["data_name"])
        paths.append(plotting.save(fig, out / "samples.png"))
        paths.append(_training_figure(args.model, config, manifold, ebm, out))
        return paths
    size = 3 if len(test) > 2000 else 6
    fig = plotting.scatter(test, view, meta=meta, size=size,
                           title=f"held-out data: {config['data_name']}")
    paths.append(plotting.save(fig, out / "data.png"))
    fig = plotting.scatter(samples, view, meta=meta, color="tab:red", size=size,
                           title="samples from the constrained EBM")
    paths.append(plotting.save(fig, out / "samples.png"))
    if config["manifold"] in ("sphere", "torus"):
        # M is the whole chart: the density over every angle, normalised by
        # the quadrature log Z, under the held-out data.
        fig = plotting.density_heatmap(lambda x: ebm.log_prob(x, normalized=True), view,
                                       meta=meta, title="model density and held-out data")
        plotting.scatter(test, view, ax=fig.axes[0], meta=meta, color="white", size=2,
                         alpha=0.7)
        paths.append(plotting.save(fig, out / "density.png"))
        if view == "sphere":
            # Facing the data's mean direction, and the far side.
            lon = float(torch.rad2deg(torch.atan2(test[:, 1].mean(), test[:, 0].mean())))
            fig = plotting.globe(lambda x: ebm.log_prob(x), test, azimuths=(lon, lon + 180),
                                 title="model density on the globe, held-out data")
            paths.append(plotting.save(fig, out / "globe.png"))
    else:
        # The model's own density (its energy carries each component's mass).
        log_p = ebm.log_prob(samples, normalized=False)
        density = (log_p - log_p.max()).exp()
        fig = plotting.density_map(samples, density, view, meta=meta,
                                   title="model density at its samples")
        paths.append(plotting.save(fig, out / "density.png"))
    if view == "euclidean":
        lo = torch.minimum(test.min(0).values, samples.min(0).values) - 0.5
        hi = torch.maximum(test.max(0).values, samples.max(0).values) + 0.5
        bounds = (lo.tolist(), hi.tolist())
        fig, ax = plotting.new_axes("euclidean", "learned manifold F = 0, density on it, data")
        plotting.zero_set_2d(manifold, bounds, ax, color="0.6")
        on_m, log_prob = ebm.density_on_manifold(20_000, (lo, hi), args.seed)
        density = (log_prob - log_prob.max()).exp()
        plotting.scatter(on_m, "euclidean", ax=ax, color=density, size=4)
        plotting.scatter(test, "euclidean", ax=ax, color="k", size=2, alpha=0.5)
        paths.append(plotting.save(fig, out / "manifold.png"))
    paths.append(_training_figure(args.model, config, manifold, ebm, out))
    return paths


def _training_figure(model, config, manifold, ebm, out):
    """``training.png``: the training curves kept in the model folder."""
    from . import plotting

    stored = Path(model) / "history.json"
    saved = {}
    if stored.is_file():
        try:
            saved = json.loads(stored.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CLIError(f"{stored} is corrupt: {err}") from None
        curves = [saved.get(k) or {} for k in ("manifold", "EBM")] if isinstance(
            saved, dict) else [None]
        if not all(isinstance(c, dict) and all(isinstance(v, list) for v in c.values())
                   for c in curves):
            raise CLIError(f"{stored} is corrupt: not a JSON object of training curves")
    histories = {"EBM": saved.get("EBM") or getattr(ebm, "history_", None) or {}}
    if config["manifold"] == "learned":
        histories = {"manifold": saved.get("manifold") or manifold.history_, **histories}
    return plotting.save(plotting.training_curves(histories), out / "training.png")


def demo(args):
    """The README's main job: two circles end to end, metrics and figures."""
    args.data = "two_circles"
    args.manifold = "learned"
    args.intrinsic_dim = None
    args.overwrite = True
    if args.n_samples is None:
        args.n_samples = 1000 if args.quick else 4000
    if args.quick:
        args.mdf_epochs = args.mdf_epochs or 60
        args.ebm_iter = args.ebm_iter or 100
    if args.n_eval is None:  # a typed --n-eval is honoured, --quick or not
        args.n_eval = 500 if args.quick else 2000
    print(f"implicit-geom demo: two circles -> learned manifold + constrained EBM in {args.out}")
    fit(args)
    plot_args = argparse.Namespace(model=args.out, out=None, n=args.n_eval, seed=args.seed,
                                   no_progress=args.no_progress)
    print("figures:")
    return plot(plot_args)


# --------------------------------------------------------------------- main
def build_parser():
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="implicit-geom",
        description="Learn manifolds implicitly and densities on them (Ross et al. 2023).")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--seed", type=_seed, default=0)
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bars (on a terminal) or progress lines (otherwise)")
        p.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                       help="CPU threads for torch and BLAS (default 1: the kernels are small, "
                            "and more threads spin against other work on a busy machine)")

    def reading(p):
        p.add_argument("--coords", choices=COORDS, default=None,
                       help="how to read a data file's columns: plain coordinates (xyz), "
                            "latitude/longitude in degrees onto the sphere (latlon), two angles "
                            "onto the torus (angles); default auto: by header names, and a "
                            "headerless 2-column file whose values fit latitude/longitude is "
                            "read as such (a line says which reading was taken)")
        p.add_argument("--columns", default=None, metavar="A,B,...",
                       help="the columns to use, by header name or 0-based index, in order "
                            "(e.g. lat,lon or 1,2)")
        p.add_argument("--where", action="append", default=None, metavar="COL=VALUE",
                       help="keep the rows whose column COL equals VALUE, e.g. residue=G "
                            "(repeat for several conditions)")
        p.add_argument("--degrees", action="store_true",
                       help="angles (--coords angles) are in degrees instead of radians")

    def fitting(p, data=True):
        # demo fixes its data and manifold (two circles, learned): it has
        # neither option, which it used to list and then ignore.
        if data:
            p.add_argument("--manifold", default="auto",
                           help="auto (analytic for lat/lon or torus data, else learned), "
                                "learned, sphere or torus")
            p.add_argument("--intrinsic-dim", type=_positive_int, default=None,
                           help="manifold dimension for a user CSV/NPY (learned manifold)")
        p.add_argument("--n-samples", type=_positive_int, default=None, help="subsample the data")
        p.add_argument("--test-fraction", type=_fraction, default=0.2,
                       help="share of the data held out for evaluation (default 0.2)")
        p.add_argument("--mdf-epochs", type=_positive_int, default=None,
                       help="epochs of a learned manifold's fit (default: the data set's preset)")
        p.add_argument("--mdf-restarts", type=_positive_int, default=None,
                       help="fits of a learned manifold (default: the data set's preset, 3 "
                            "for glycine, else 1); of those whose zero set "
                            "is not folded (near-singular where the data leave gaps), the one "
                            "agreeing most with the others is kept")
        p.add_argument("--mdf-selection", choices=("agreement", "conditioning"), default=None,
                       help="which restart is kept: the unfolded one agreeing most with the "
                            "others (agreement, the default) or the best conditioned")
        p.add_argument("--mdf-jobs", type=_jobs, default=None, metavar="N",
                       help="processes for the restarts (default 1: one after another; -1: "
                            "one per CPU; the forked ones run one thread each)")
        p.add_argument("--mdf-orient", action="store_true",
                       help="orient a learned hypersurface (codimension 1): F grows outwards "
                            "through the data, which fixes its sign, hence its topology "
                            "(NeuralImplicitManifold's mu_orient=10, orient_min_contrast=0.2; "
                            "a closed surface sampled all over otherwise may come out with a "
                            "channel through it)")
        p.add_argument("--ebm-iter", type=_positive_int, default=None,
                       help="training iterations of the constrained EBM (default: the data "
                            "set's preset)")
        p.add_argument("--max-distance", type=_max_distance, default=argparse.SUPPRESS,
                       metavar="D",
                       help="farthest a data point may lie from the manifold to be seen at "
                            "its closest point (auto, the default: 5%% of the diagonal of the "
                            "manifold's box, none for images; none: no limit); farther points "
                            "are an error (on a learned manifold: it does not fit them)")
        if data:
            p.add_argument("--n-eval", type=_positive_int, default=2000,
                           help="model samples for W (default 2000)")
        else:  # demo: None, so that a value typed with --quick is seen (and honoured)
            p.add_argument("--n-eval", type=_positive_int, default=None,
                           help="model samples for W (default 2000; 500 with --quick)")

    p = sub.add_parser("fit", help="fit a manifold and a constrained EBM to data")
    p.add_argument("data", help="a data file (.csv, .tsv, .txt, .npy) or one of "
                                f"{', '.join(DATASET_NAMES)}")
    p.add_argument("--out", required=True, help="model folder to create")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing model folder (never any other folder)")
    fitting(p)
    reading(p)
    common(p)
    p.set_defaults(func=fit)

    p = sub.add_parser("sample", help="draw samples from a fitted model")
    p.add_argument("model")
    p.add_argument("--n", type=_positive_int, default=1000)
    p.add_argument("--out", required=True,
                   help=".csv or .npy file of points in ambient coordinates (x, y, z on the "
                        "sphere and the torus, not latitude/longitude or angles)")
    p.add_argument("--sampler", default="mala", choices=("langevin", "mala", "hmc"))
    common(p)
    p.set_defaults(func=sample)

    p = sub.add_parser("evaluate", help="W, distance to manifold, NLL where defined")
    p.add_argument("model")
    p.add_argument("--data", default=None,
                   help="evaluate on this data instead of the held-out split (a file is read "
                        "with the model's --coords/--columns/--where/--degrees unless any is "
                        "given, which is said; --coords auto reads it on its own; a file that "
                        "reads differently both ways is refused)")
    p.add_argument("--n-eval", type=_positive_int, default=2000, help="model samples for W")
    p.add_argument("--n-samples", type=_positive_int, default=None,
                   help="subsample the --data points")
    p.add_argument("--max-distance", type=_max_distance, default=argparse.SUPPRESS, metavar="D",
                   help="farthest a point may lie from the manifold to be scored at its "
                        "closest point (default: the model's own setting, see fit)")
    # No --intrinsic-dim: the model fixes the manifold (it was accepted and ignored).
    reading(p)
    common(p)
    p.set_defaults(func=evaluate)

    p = sub.add_parser("plot", help="PNG figures of a fitted model")
    p.add_argument("model")
    p.add_argument("--out", default=None, help="folder (default: MODEL/figures)")
    p.add_argument("--n", type=_positive_int, default=2000, help="model samples to draw")
    common(p)
    p.set_defaults(func=plot)

    p = sub.add_parser("demo", help="two circles end to end (the README's main job)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for CI)")
    fitting(p, data=False)
    common(p)
    p.set_defaults(func=demo)
    return parser


@contextlib.contextmanager
def _scratch_folder():
    """A temporary folder removed afterwards (what ranks other than 0 write to)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def main(argv=None):
    """Entry point; returns the exit status.

    Started by ``torchrun`` with several processes, the command joins their
    process group (gloo) and trains data-parallel (:mod:`implicit_geom.learning.distributed`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    reuse_freed_memory()  # freed tensor blocks stay mapped (see its docstring)
    clean = False
    try:
        if distributed.launched():
            distributed.init_distributed("cpu")
        with _warnings_in_cli_terms():
            status = args.func(args)
        clean = True
        return status
    except (CLIError, ImplicitGeomError, ValueError, OSError) as err:
        msg = _in_cli_terms(err).splitlines()
        print(f"implicit-geom: error: {msg[0] if msg else type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("implicit-geom: interrupted", file=sys.stderr)
        return 130
    finally:
        # After a failure the other ranks may never arrive: leave without waiting.
        distributed.shutdown_distributed(wait=clean)


if __name__ == "__main__":
    sys.exit(main())
