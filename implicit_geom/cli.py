"""The ``implicit-geom`` command line: fit, sample, evaluate, plot, demo.

A model folder holds ``config.json`` (what was fitted, on which data, how),
``manifold/`` (a learned manifold's checkpoint, absent for analytic ones),
``ebm.pt`` (the constrained energy model), ``test.npy`` (held-out points) and
``metrics.json``. It is built in a temporary sibling folder and renamed into
place, so an interrupted or failed command never leaves a half-written model.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import ImplicitGeomError
from .datasets import DATASET_NAMES, load_dataset, train_test_split
from .manifolds import ImplicitSphere, ImplicitTorus
from .metrics import (
    balance_pieces,
    discretized_wasserstein,
    distance_to_manifold,
    paper_wasserstein,
)
from .numerics.validation import padded_box

FORMAT = "implicit_geom.model/1"


class CLIError(Exception):
    """A user-facing error: printed on one line, exit status 2."""


# ----------------------------------------------------------------- building
def _manifold_for(dataset, choice, args):
    """The manifold to fit the density on: analytic when known, else learned."""
    if choice == "auto":
        choice = {"sphere": "sphere", "torus": "torus"}.get(dataset.kind, "learned")
    if choice == "sphere":
        if dataset.ambient_dim != 3:
            raise CLIError(f"--manifold sphere needs 3-D points, the data has {dataset.ambient_dim}")
        return "sphere", ImplicitSphere(2), {}
    if choice == "torus":
        if dataset.ambient_dim != 3:
            raise CLIError(f"--manifold torus needs 3-D points, the data has {dataset.ambient_dim}")
        R, r = dataset.meta.get("R", 3.0), dataset.meta.get("r", 1.0)
        return "torus", ImplicitTorus(R, r), {"R": R, "r": r}
    if choice != "learned":
        raise CLIError(f"unknown --manifold {choice!r}; use auto, learned, sphere or torus")
    from .learning import NeuralImplicitManifold

    intrinsic = dataset.intrinsic_dim or args.intrinsic_dim
    if intrinsic is None:
        raise CLIError("the intrinsic dimension of this data is unknown: pass --intrinsic-dim")
    codim = dataset.ambient_dim - int(intrinsic)
    if codim < 1:
        raise CLIError(f"--intrinsic-dim must be below the ambient dimension {dataset.ambient_dim}")
    from .learning.presets import mdf_preset

    kwargs = dict(mdf_preset(dataset.name), seed=args.seed, progress=not args.no_progress)
    if args.mdf_epochs:
        kwargs["epochs"] = args.mdf_epochs
    return "learned", NeuralImplicitManifold(dataset.ambient_dim, codim=codim, **kwargs), {}


def _ebm_for(manifold, args):
    from .models import ConstrainedEBM

    kwargs = {"seed": args.seed, "progress": not args.no_progress}
    if args.ebm_iter:
        kwargs["n_iter"] = args.ebm_iter
    return ConstrainedEBM(manifold, **kwargs)


def _load_data(source, args):
    try:
        return load_dataset(source, n_samples=args.n_samples, seed=args.seed,
                            intrinsic_dim=getattr(args, "intrinsic_dim", None))
    except FileNotFoundError as err:
        raise CLIError(f"data file not found: {err.filename or source}") from None


def _write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, default=float) + "\n")


class _AtomicFolder:
    """Build a folder under a temporary name; rename it into place on success."""

    def __init__(self, target, overwrite):
        self.target = Path(target)
        if self.target.exists() and not overwrite:
            raise CLIError(f"{self.target} already exists (pass --overwrite to replace it)")
        self.target.parent.mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
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
    train, test = train_test_split(data.points, test_fraction=args.test_fraction, seed=args.seed)
    kind, manifold, geometry = _manifold_for(data, args.manifold, args)
    with _AtomicFolder(args.out, args.overwrite) as tmp:
        timings = {}
        if kind == "learned":
            t0 = time.perf_counter()
            manifold.fit(train)
            timings["manifold_s"] = time.perf_counter() - t0
            manifold.save(tmp / "manifold")
        t0 = time.perf_counter()
        ebm = _ebm_for(manifold, args).fit(train)
        timings["ebm_s"] = time.perf_counter() - t0
        ebm.save(tmp / "ebm.pt")
        np.save(tmp / "test.npy", test.numpy())
        config = {
            "format": FORMAT, "data": str(args.data), "data_name": data.name,
            "data_kind": data.kind, "meta": {k: v for k, v in data.meta.items()
                                             if isinstance(v, (int, float, str))},
            "manifold": kind, "geometry": geometry, "seed": args.seed,
            "n_train": len(train), "n_test": len(test),
        }
        _write_json(tmp / "config.json", config)
        metrics = _evaluate(manifold, ebm, test, data.kind, kind, args.n_eval, args.seed)
        metrics.update({k: round(v, 3) for k, v in timings.items()})
        metrics["wall_s"] = round(time.perf_counter() - start, 3)
        _write_json(tmp / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2, default=float))
    print(f"model written to {args.out}")
    return 0


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
    if config.get("format") != FORMAT:
        raise CLIError(f"{cfg_path}: unsupported format {config.get('format')!r}")
    kind = config["manifold"]
    if kind == "learned":
        from .learning import NeuralImplicitManifold

        manifold = NeuralImplicitManifold.load(folder / "manifold", progress=False)
    elif kind == "sphere":
        manifold = ImplicitSphere(2)
    else:
        manifold = ImplicitTorus(config["geometry"]["R"], config["geometry"]["r"])
    from .models import ConstrainedEBM

    ebm = ConstrainedEBM.load(folder / "ebm.pt", manifold)
    test = torch.as_tensor(np.load(folder / "test.npy"), dtype=torch.float64)
    return config, manifold, ebm, test


def _piece_density(points, log_prob, samples, bounds, bins):
    """exp(log_prob) on points covering M, each connected piece scaled to its sample share.

    PCD cannot set the energy offsets between disconnected pieces of M, so
    each piece gets the mass the model's own samples put on it
    (:func:`~implicit_geom.metrics.balance_pieces`).
    """
    radius = 0.02 * float((torch.as_tensor(bounds[1]) - torch.as_tensor(bounds[0])).norm())
    return balance_pieces(points, (log_prob - log_prob.max()).exp(), samples, bins=bins,
                          bounds=bounds, radius=radius)


def _evaluate(manifold, ebm, test, data_kind, manifold_kind, n_samples, seed):
    samples = ebm.sample(n_samples, seed=seed, progress=False)
    # Both of the paper's W settings (as in benchmarks/paper.py), over the
    # held-out data's box padded by 5%: "W_density" is the model's density on
    # points covering its manifold against the held-out points (99 bins per
    # axis in 2-D, 29 in 3-D), "W" its samples against them (99 bins).
    bounds = padded_box(test, 0.05)
    dim, bins = test.shape[1], 99 if test.shape[1] == 2 else 29
    points, log_prob = ebm.density_on_manifold(20_000 if dim == 2 else 100_000, bounds, seed)
    density = _piece_density(points, log_prob, samples, bounds, bins)
    metrics = {
        "W_density": paper_wasserstein(points, density, test, bins=bins, bounds=bounds),
        "W": discretized_wasserstein(samples, test, bins=99, bounds=bounds),
        "max_abs_F_samples": float(manifold.submersion(samples).abs().max())}
    dist = distance_to_manifold(test, manifold).as_dict()
    metrics.update({f"test_dist_{k}": v for k, v in dist.items()})
    if manifold_kind in ("sphere", "torus"):
        metrics["test_nll"] = ebm.nll(test)
    return metrics


def evaluate(args):
    """Metrics of a fitted model against its held-out data (or --data)."""
    config, manifold, ebm, test = load_model(args.model)
    if args.data:
        test = _load_data(args.data, args).points
    metrics = _evaluate(manifold, ebm, test, config["data_kind"], config["manifold"],
                        args.n_eval, args.seed)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def sample(args):
    """Draw points from a fitted model into a .csv or .npy file."""
    _, manifold, ebm, _ = load_model(args.model)
    pts = ebm.sample(args.n, sampler=args.sampler, seed=args.seed,
                     progress=not args.no_progress).numpy()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        if out.suffix == ".npy":
            np.save(tmp, pts)
        elif out.suffix == ".csv":
            header = ",".join(f"x{i}" for i in range(pts.shape[1]))
            np.savetxt(tmp, pts, delimiter=",", header=header, comments="")
        else:
            raise CLIError(f"--out must end in .csv or .npy, got {out.name}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"{len(pts)} samples written to {out}")
    return 0


def plot(args):
    """PNG figures of a fitted model: data, manifold, density, samples."""
    from . import plotting

    config, manifold, ebm, test = load_model(args.model)
    out = Path(args.out or Path(args.model) / "figures")
    kind = config["data_kind"]
    view = kind if kind in ("sphere", "torus") else ("euclidean" if manifold.ambient_dim == 2
                                                     else "ambient3d")
    meta = dict(config.get("meta", {}), **config.get("geometry", {}))
    samples = ebm.sample(args.n, seed=args.seed, progress=False)
    paths = []
    fig = plotting.scatter(test, view, meta=meta, title=f"held-out data: {config['data_name']}")
    paths.append(plotting.save(fig, out / "data.png"))
    fig = plotting.scatter(samples, view, meta=meta, color="tab:red",
                           title="samples from the constrained EBM")
    paths.append(plotting.save(fig, out / "samples.png"))
    box = padded_box(torch.cat([test, samples]), 0.05)
    density = _piece_density(samples, -ebm.energy(samples), samples, box, 99)
    fig = plotting.density_map(samples, density / density.max(), view, meta=meta,
                               title="model density at its samples")
    paths.append(plotting.save(fig, out / "density.png"))
    if view == "euclidean":
        lo = torch.minimum(test.min(0).values, samples.min(0).values) - 0.5
        hi = torch.maximum(test.max(0).values, samples.max(0).values) + 0.5
        bounds = (lo.tolist(), hi.tolist())
        fig, ax = plotting.new_axes("euclidean", "learned manifold F = 0, density on it, data")
        plotting.zero_set_2d(manifold, bounds, ax, color="0.6")
        on_m, log_prob = ebm.density_on_manifold(20_000, (lo, hi), args.seed)
        density = _piece_density(on_m, log_prob, samples, (lo, hi), 99)
        plotting.scatter(on_m, "euclidean", ax=ax, color=density / density.max(), size=4)
        plotting.scatter(test, "euclidean", ax=ax, color="k", size=2, alpha=0.5)
        paths.append(plotting.save(fig, out / "manifold.png"))
    histories = {"EBM": ebm.history_ or {}}
    if config["manifold"] == "learned":
        histories = {"manifold": manifold.history_, **histories}
    paths.append(plotting.save(plotting.training_curves(histories), out / "training.png"))
    for p in paths:
        print(p)
    return 0


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
        args.n_eval = min(args.n_eval, 500)
    print(f"implicit-geom demo: two circles -> learned manifold + constrained EBM in {args.out}")
    fit(args)
    plot_args = argparse.Namespace(model=args.out, out=None, n=args.n_eval, seed=args.seed)
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
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    def fitting(p):
        p.add_argument("--manifold", default="auto",
                       help="auto (analytic for lat/lon or torus data, else learned), "
                            "learned, sphere or torus")
        p.add_argument("--intrinsic-dim", type=int, default=None,
                       help="manifold dimension for a user CSV/NPY (learned manifold)")
        p.add_argument("--n-samples", type=int, default=None, help="subsample the data")
        p.add_argument("--test-fraction", type=float, default=0.2)
        p.add_argument("--mdf-epochs", type=int, default=None)
        p.add_argument("--ebm-iter", type=int, default=None)
        p.add_argument("--n-eval", type=int, default=2000, help="model samples for W")

    p = sub.add_parser("fit", help="fit a manifold and a constrained EBM to data")
    p.add_argument("data", help=f"a .csv/.npy file or one of {', '.join(DATASET_NAMES)}")
    p.add_argument("--out", required=True, help="model folder to create")
    p.add_argument("--overwrite", action="store_true")
    fitting(p)
    common(p)
    p.set_defaults(func=fit)

    p = sub.add_parser("sample", help="draw samples from a fitted model")
    p.add_argument("model")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", required=True, help=".csv or .npy file")
    p.add_argument("--sampler", default="mala", choices=("langevin", "mala", "hmc"))
    common(p)
    p.set_defaults(func=sample)

    p = sub.add_parser("evaluate", help="W, distance to manifold, NLL where defined")
    p.add_argument("model")
    p.add_argument("--data", default=None, help="evaluate on this data instead of the held-out split")
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--intrinsic-dim", type=int, default=None)
    common(p)
    p.set_defaults(func=evaluate)

    p = sub.add_parser("plot", help="PNG figures of a fitted model")
    p.add_argument("model")
    p.add_argument("--out", default=None, help="folder (default: MODEL/figures)")
    p.add_argument("--n", type=int, default=2000, help="model samples to draw")
    common(p)
    p.set_defaults(func=plot)

    p = sub.add_parser("demo", help="two circles end to end (the README's main job)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for CI)")
    fitting(p)
    common(p)
    p.set_defaults(func=demo)
    return parser


def main(argv=None):
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ImplicitGeomError, ValueError, OSError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"implicit-geom: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("implicit-geom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
