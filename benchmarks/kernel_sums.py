"""Sparse against dense kernel sums of the vMF kernel mixture (``AnchoredVMFEnergy``).

Run:  python benchmarks/kernel_sums.py [--steps N] [--threads N] [--json PATH]

The per-kernel-concentration vMF energy (the sphere candidate of
``benchmarks/likelihood.py``) evaluates its kernel mixture q at training
batches, validation points and every node of its adapted quadrature; summed
densely that is points x kernels (flood: ~3,900 kernels, ~63,000 nodes).
``AnchoredVMFEnergy`` sums, beyond ``DENSE_PAIRS`` pairs, only the kernels
within reach of each point. Both ways run here, on the same flood split
(seed 100, a tuning split), in one process:

- ``set_anchors`` (its leave-one-out grid over the shared concentration
  factor);
- ``log q`` at every node of the adapted quadrature (what each validation's
  certified-normaliser check evaluates, twice);
- a maximum-likelihood fit of the candidate for ``--steps`` steps with
  validation every 10 (the benchmark's settings otherwise), wall and CPU
  seconds, and the largest difference of the validation NLLs between the two
  ways (the sparse sum leaves out at most exp(-60)/(2 pi) per steradian).
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import likelihood  # noqa: E402  (the candidate and its settings)

import implicit_geom  # noqa: E402
from implicit_geom.models import ConstrainedEBM  # noqa: E402
from implicit_geom.models import energy_nets  # noqa: E402

SPLIT_SEED = 100
DEFAULT_PAIRS = energy_nets.DENSE_PAIRS


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run(mode, manifold, kind, train, val, steps):
    """One way of summing (``dense`` or ``sparse``): times and the fit's validation NLLs."""
    energy_nets.DENSE_PAIRS = float("inf") if mode == "dense" else DEFAULT_PAIRS
    label, make, batch = likelihood.energy_candidates(kind, 3, SPLIT_SEED)[-1]
    row = {"mode": mode}
    energy = make()
    _, row["set_anchors_s"], _ = timed(lambda: energy.set_anchors(train))
    with torch.no_grad():
        nodes, _ = energy._nodes(energy.n_u, energy.n_phi)
        log_q, row["log_q_nodes_s"], _ = timed(lambda: torch.cat(
            [energy._log_q(chunk) for chunk in nodes.split(4096)]))
    row["nodes"] = int(nodes.shape[0])
    row["kernels"] = int(energy.anchors.shape[0])
    settings = dict(likelihood.mle_settings(False, kind), n_iter=steps)
    model = ConstrainedEBM(manifold, make(), seed=SPLIT_SEED, batch_size=batch, **settings)
    _, row["fit_s"], row["fit_cpu_s"] = timed(lambda: model.fit(train, val))
    row["validation_nll"] = list(model.validation_history_["loss"])
    row["log_z"] = float(model.log_partition())
    return row, log_q


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="fit steps (validation every 10)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    implicit_geom.set_threads(args.threads)
    points, manifold, kind = likelihood.load("flood")
    tr, va, _ = likelihood.random_split(points.shape[0], SPLIT_SEED)
    train, val = points[tr], points[va]
    rows, values = [], []
    for mode in ("dense", "sparse"):
        row, log_q = run(mode, manifold, kind, train, val, args.steps)
        rows.append(row)
        values.append(log_q)
        print(f"{mode}: fit {row['fit_s']:.1f} s", flush=True)
    dense, sparse = rows
    diff_q = float((values[0] - values[1]).abs().max())
    diff_val = max(abs(a - b) for a, b in zip(dense["validation_nll"], sparse["validation_nll"]))
    print(f"\nflood split {SPLIT_SEED}: {dense['kernels']} kernels, {dense['nodes']} quadrature "
          f"nodes; {args.steps} fit steps, {args.threads} thread(s)\n")
    print("| | dense | sparse | ratio |")
    print("|---|---|---|---|")
    for key, name in (("set_anchors_s", "set_anchors (s)"),
                      ("log_q_nodes_s", "log q at the nodes (s)"),
                      ("fit_s", "fit (s, wall)"), ("fit_cpu_s", "fit (s, CPU)")):
        print(f"| {name} | {dense[key]:.2f} | {sparse[key]:.2f} | "
              f"{dense[key] / sparse[key]:.1f}x |")
    print(f"\nlargest |difference| of log q at the nodes {diff_q:.1e}; of the validation NLLs "
          f"{diff_val:.1e}; of log Z {abs(dense['log_z'] - sparse['log_z']):.1e}; "
          f"validations {len(dense['validation_nll'])} / {len(sparse['validation_nll'])}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "max_log_q_diff": diff_q, "max_val_nll_diff": diff_val,
                       "steps": args.steps, "threads": args.threads}, fh, indent=1)


if __name__ == "__main__":
    main()
