"""Benchmark: learn the data manifold of each data set of Ross et al. (2023).

For circle, two circles, sphere mixture, flood and glycine this fits a
:class:`NeuralImplicitManifold` on 80% of the data and reports the fit time,
the distance from the held-out 20% to the learned manifold (closest-point
projection), the paper's median distance, the number of connected components of
the learned zero set in the data box (how many are far from all data, and how
many reach the faces of the box, i.e. are not closed inside it), whether that
topology is the expected one (circle: one closed curve; two circles: two;
sphere mixture: one closed surface), and the smallest Jacobian singular value
on the held-out data relative to ``s_min``. The speed baseline is the paper's
reference code on its authors' CPU (about 3 minutes for the circle, 22 for
flood), quoted, not re-run.

Usage::

    python benchmarks/manifold_learning.py [--quick] [--seed S] [--datasets circle flood ...]

Writes ``benchmarks/results/manifold_learning.json``.
"""

import argparse
import json
import time
from pathlib import Path

import implicit_geom  # noqa: F401  (pytorch backend first)
import torch

from implicit_geom import NeuralImplicitManifold, ProjectionError
from implicit_geom.datasets import load_dataset, train_test_split
from implicit_geom.learning import count_components
from implicit_geom.learning.presets import MDF_PRESETS
from implicit_geom.metrics import distance_to_manifold

# Median held-out distance reported in the paper (Table 1 / Sec. 4).
PAPER_MEDIAN = {"circle": 0.0012, "two_circles": 0.0037, "sphere_mixture": 0.0077,
                "flood": 0.0013, "glycine": 0.0097}
EXPECTED_COMPONENTS = {"circle": 1, "two_circles": 2, "sphere_mixture": 1}

# Per data set settings: the library's presets (shared with the CLI).
CONFIGS = MDF_PRESETS
TOPO = {True: "ok", False: "WRONG", None: "-"}


def topology_ok(name, report):
    """Expected number of components, all closed and near the data (None: no expectation)."""
    expected = EXPECTED_COMPONENTS.get(name)
    if expected is None:
        return None
    return (report.n_components == expected and report.n_spurious == 0
            and report.n_open == 0)


def run(name, quick=False, progress=True, seed=0):
    """Fit and evaluate one data set; returns a dict of results."""
    data = load_dataset(name, seed=seed).points
    train, test = train_test_split(data, 0.2, seed=seed)
    config = dict(CONFIGS[name], seed=seed, progress=progress)
    if quick:
        config["epochs"] = max(config["epochs"] // 4, 10)
    model = NeuralImplicitManifold(data.shape[1], **config)
    start = time.perf_counter()
    model.fit(train)
    fit_time = time.perf_counter() - start
    try:
        stats = distance_to_manifold(test, model).as_dict()
        failed = 0
    except ProjectionError as err:
        # Report the projectable points and say how many were not.
        ok = ~err.failed
        stats = distance_to_manifold(test[ok], model).as_dict()
        failed = int(err.failed.sum())
    report = count_components(model, data=train, seed=seed)
    sv_ratio = float(model.singular_values(test).min()) / model.s_min
    return {
        "dataset": name, "n_train": len(train), "n_test": len(test), "fit_s": fit_time,
        **{f"dist_{k}": v for k, v in stats.items()}, "projection_failed": failed,
        "paper_median": PAPER_MEDIAN[name],
        "median_vs_paper": stats["median"] / PAPER_MEDIAN[name],
        "components": report.n_components, "spurious": report.n_spurious,
        "open": report.n_open,
        "expected_components": EXPECTED_COMPONENTS.get(name),
        "topology_ok": topology_ok(name, report),
        "sv_min_over_s_min": sv_ratio, "config": model.get_config(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the epochs")
    parser.add_argument("--datasets", nargs="+", default=list(PAPER_MEDIAN),
                        choices=list(PAPER_MEDIAN))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (small networks run fastest on one)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data, the split and the fit")
    args = parser.parse_args(argv)
    implicit_geom.set_threads(args.threads)
    rows = [run(name, args.quick, not args.no_progress, args.seed) for name in args.datasets]
    header = (f"{'data set':<15}{'fit s':>7}{'min':>10}{'median':>10}{'mean':>10}"
              f"{'max':>10}{'paper med':>10}{'med/paper':>10}{'comp':>6}{'spur':>6}{'open':>6}"
              f"{'topo':>6}{'sv/s_min':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['dataset']:<15}{r['fit_s']:>7.1f}{r['dist_min']:>10.2e}"
              f"{r['dist_median']:>10.2e}{r['dist_mean']:>10.2e}{r['dist_max']:>10.2e}"
              f"{r['paper_median']:>10.4f}{r['median_vs_paper']:>10.2f}{r['components']:>6}"
              f"{r['spurious']:>6}{r['open']:>6}{TOPO[r['topology_ok']]:>6}"
              f"{r['sv_min_over_s_min']:>9.2f}"
              + (f"  ({r['projection_failed']} held-out points not projected)"
                 if r["projection_failed"] else ""))
    out = Path(__file__).resolve().parent / "results" / "manifold_learning.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "threads": args.threads, "seed": args.seed,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
