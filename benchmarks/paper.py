"""Reproduce the density experiments of Ross et al. (2023) at CPU scale.

For each data set: learn the manifold (``NeuralImplicitManifold`` with the
library's preset for the data set), fit a constrained EBM on it (PCD with
constrained Langevin chains), and compare with the pushforward EBM baseline
(autoencoder + latent EBM) trained on the same data. Reported per data set, as
mean ± std over seeds:

* ``W``: the paper's discretised Wasserstein distance
  (:func:`implicit_geom.metrics.paper_wasserstein`, the reference code's
  protocol): the model's density at temperature 1, evaluated on points
  covering the model's manifold (projected box draws for the implicit model,
  a decoded latent lattice for the pushforward model), binned on a grid over a
  fixed box (99 bins per axis in 2-D, 29 in 3-D: the reference code's
  ``granularity`` 100 and 30), each bin weighted by the mean density of its
  points; compared with the true density on the true manifold (synthetic data)
  or with the held-out test points (flood, glycine); squared Euclidean cost
  normalised by its maximum over the grid; exact OT with POT.
* ``W (samples)``: the same kind of distance between 5000 model samples and
  held-out test data, both binned (the same bins per axis, over the padded data box;
  mass at the bins' centroids); ``oracle`` rows give it for fresh samples of
  the true distribution, i.e. the finite-sample floor of this variant.
* distance of the model samples to the true manifold (where known) and of the
  test data to the learned manifold;
* held-out NLL on flood with the analytic sphere and quadrature ``log Z``;
* wall time.

Writes ``benchmarks/results/paper.md``, ``paper.json`` and PNG figures.

Usage::

    .venv/bin/python benchmarks/paper.py                 # full table, 3 seeds
    .venv/bin/python benchmarks/paper.py --quick --seeds 1 --datasets circle
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import implicit_geom  # noqa: F401  (selects geomstats' pytorch backend)
from implicit_geom import ImplicitSphere, ImplicitTorus, intersection, union
from implicit_geom.datasets import (
    TWO_CIRCLE_CENTRES,
    fibonacci_sphere,
    load_dataset,
    train_test_split,
    true_density,
    vmf_density,
    vmf_sphere,
)
from implicit_geom.learning.presets import mdf_preset
from implicit_geom.learning import NeuralImplicitManifold
from implicit_geom.metrics import (
    balance_pieces,
    discretized_wasserstein,
    grid_mass,
    paper_wasserstein,
)
from implicit_geom.numerics.validation import padded_box
from implicit_geom.models import ConstrainedEBM, IntersectionEBM, PushforwardEBM, UnionEBM

RESULTS = Path(__file__).resolve().parent / "results"
# Ordered so that the data sets with published targets come first.
DATASETS = ("circle", "two_circles", "flood", "glycine", "sphere_mixture", "sphere_cap",
            "sphere_cup")
PAPER_W = {"circle": 0.00098, "two_circles": 0.00167, "flood": 0.020, "glycine": 0.026}
N_MODEL_SAMPLES = 5000
N_TEST_SYNTHETIC = 5000
# The paper's W: bins per axis (reference code: granularity 100 in 2-D, 30 in
# 3-D) and box draws projected onto the model's manifold to cover it.
BINS = {2: 99, 3: 29}
COVER_DRAWS = {2: 20_000, 3: 100_000}


def _box(*half_widths, shift=None):
    hi = torch.tensor(half_widths, dtype=torch.float64)
    lo = -hi
    if shift is not None:
        lo, hi = lo + torch.as_tensor(shift[0]), hi + torch.as_tensor(shift[1])
    return lo, hi


# Per data set: ambient/intrinsic dims, Langevin step h, true manifold and the
# W box (the reference code's limits: the true manifold's box padded by 0.3;
# glycine: its EBM box).
CONFIG = {
    "circle": dict(n=2, m=1, step=0.3, truth=ImplicitSphere(1), box=_box(1.3, 1.3)),
    # Two components: chains start at the data (see cebm_kwargs).
    "two_circles": dict(n=2, m=1, step=0.3, init="data",
                        truth=union(*[ImplicitSphere(1, center=list(c))
                                      for c in TWO_CIRCLE_CENTRES]),
                        box=_box(3.1, 1.3)),
    # Four modes with deep valleys: with beta = 0.01 PCD drifted (W 0.03-0.05,
    # samples off by 0.12); 0.1 keeps the energies bounded.
    "sphere_mixture": dict(n=3, m=2, step=0.2, truth=ImplicitSphere(2), box=_box(1.3, 1.3, 1.3),
                           beta=0.1),
    "flood": dict(n=3, m=2, step=0.15, truth=ImplicitSphere(2), box=_box(1.3, 1.3, 1.3)),
    # beta = 0.1 bounds the energies: with 0.01 the unadjusted chains' O(h^2)
    # spread let PCD carve wells far sharper than the data (log-density range
    # 34 nats, W 0.2), which samples hide but the density itself shows.
    "glycine": dict(n=3, m=2, step=0.3, truth=ImplicitTorus(3.0, 1.0), box=_box(4.1, 4.1, 2.7),
                    beta=0.1),
}
# Spheres centred at 0 and CENTER_B, padded by 0.3.
ARITH_BOX = _box(1.3, 1.3, 1.3, shift=([0.0, 0.0, 0.0], [1.0, 0.0, 0.0]))
# Two unit spheres whose intersection is the circle x = 0.5, |(y, z)| = sqrt(3)/2.
CENTER_B = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
MU_A = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / math.sqrt(2)
MU_B = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) / math.sqrt(2)
KAPPA_AB = 3.0


def log(msg):
    print(msg, flush=True)


def w_bounds(*sets):
    return padded_box(torch.cat(sets), 0.05)


def wasserstein(samples, test, bounds):
    """W between model samples and test data, both binned (the sample-based variant).

    The grid is the density W's (29 bins per axis in 3-D: with 99, nearly every
    point had a bin of its own and each exact OT took ~10 s).
    """
    return discretized_wasserstein(samples, test, bins=BINS[samples.shape[1]], bounds=bounds)


def density_w(points, log_prob, target, box):
    """The paper's W of a model density on points of its manifold against ``target``.

    ``target`` is ``(points, density)`` of the truth, or ``(test points, None)``.
    """
    dens = (log_prob - log_prob.max()).exp()
    return paper_wasserstein(points, dens, *target, bins=BINS[points.shape[1]], bounds=box)


def distance_stats(points, manifold):
    """Distances to the closest points of M (points whose projection fails are counted)."""
    res = manifold.solve_projection(points)
    ok = res.converged
    d = (res.x[ok] - points[ok]).norm(dim=-1)
    return {"median": float(d.median()), "mean": float(d.mean()), "max": float(d.max()),
            "failed": int((~ok).sum())}


def ebm_kwargs(cfg, quick):
    # A small buffer and 15 steps per iteration keep the persistent chains
    # close to equilibrium, which a short training run needs; the cosine decay
    # to lr/10 damps the PCD noise in the final weights (circle seed 1: W 0.0022
    # -> 0.0005). The energy regulariser beta is per data set (see CONFIG);
    # both models get the same settings.
    return dict(n_iter=150 if quick else 400, n_mcmc_steps=15, step_size=cfg["step"],
                batch_size=128, buffer_size=500, lr=3e-3, lr_floor=0.1,
                beta=cfg.get("beta", 0.01), hidden=(64, 64))


CHAIN_INIT_OVERRIDE = None  # set by --chain-init (in every worker, via run_task)


def cebm_kwargs(cfg, quick):
    # Chains start from projected uniform noise (the reference code) except on
    # multi-component data, where they start at (jittered, projected) training
    # points: local dynamics cannot move mass between components, and spurious
    # pieces of a learned manifold away from the data then get no chains.
    init = CHAIN_INIT_OVERRIDE or cfg.get("init", "noise")
    return dict(ebm_kwargs(cfg, quick), chain_init=init)


def fit_manifold(X, n, m, seed, quick, preset):
    """The library's preset for the data set (the CLI's and benchmarks' settings)."""
    config = mdf_preset(preset)
    if quick:
        config["epochs"] = max(config.get("epochs", 400) // 4, 10)
    return NeuralImplicitManifold(n, n - m, seed=seed, progress=False, **config).fit(X)


def balance_components(points, dens, data, box):
    """Each piece of the cover gets the share of ``data`` nearest to it (see balance_pieces).

    On a disconnected manifold PCD cannot set the energy offsets between
    pieces (chains never cross, and with ``chain_init="data"`` every piece
    keeps the data's share of chains whatever the offsets).
    """
    return balance_pieces(points, dens, data, bins=BINS[points.shape[1]], bounds=box,
                          radius=0.05)


def run_standard(name, seed, quick):
    """Learned manifold + constrained EBM vs pushforward EBM on one data set."""
    cfg = CONFIG[name]
    box = cfg["box"]
    if name in ("flood", "glycine"):
        data = load_dataset(name).points
        train, test = train_test_split(data, 0.2, seed=seed)
        oracle = None
        target = (test, None)
    else:
        train = load_dataset(name, 1000, seed=seed).points
        test = load_dataset(name, N_TEST_SYNTHETIC, seed=10_000 + seed).points
        oracle = load_dataset(name, N_MODEL_SAMPLES, seed=20_000 + seed).points
        target = true_density(name)
    bounds = w_bounds(train, test)
    n_draws = COVER_DRAWS[cfg["n"]]
    out = {}

    t0 = time.perf_counter()
    manifold = fit_manifold(train, cfg["n"], cfg["m"], seed, quick, name)
    t_mdf = time.perf_counter() - t0
    ebm = ConstrainedEBM(manifold, seed=seed, **cebm_kwargs(cfg, quick)).fit(train)
    t_ebm = time.perf_counter() - t0
    # Chains start from the (equilibrated) persistent buffer.
    samples = ebm.sample(N_MODEL_SAMPLES, n_steps=100)
    cover, log_prob = ebm.density_on_manifold(n_draws, box, seed)
    if cfg.get("init") == "data":
        # The truth is put on the grid the same way (its pieces' shares from a
        # large exact sample: 1/2 each up to 0.4%).
        dens = balance_components(cover, (log_prob - log_prob.max()).exp(), train, box)
        truth = balance_components(*target, load_dataset(name, 50_000, seed=30_000).points, box)
        w_model = paper_wasserstein(cover, dens, target[0], truth, bins=BINS[cfg["n"]],
                                    bounds=box)
    else:
        w_model = density_w(cover, log_prob, target, box)
    out["constrained EBM"] = {
        "W": w_model,
        "W_samples": wasserstein(samples, test, bounds), "time_s": t_ebm, "time_mdf_s": t_mdf,
        "dist_samples_to_truth": distance_stats(samples, cfg["truth"]),
        "dist_test_to_model": distance_stats(test, manifold)}

    t0 = time.perf_counter()
    kw = ebm_kwargs(cfg, quick)
    kw.pop("hidden")
    pf = PushforwardEBM(cfg["n"], cfg["m"], ae_iter=1000 if quick else 3000, seed=seed,
                        **kw).fit(train)
    t_pf = time.perf_counter() - t0
    pf_samples = pf.sample(N_MODEL_SAMPLES, n_steps=100)
    pf_dist = (pf.projection(test) - test).norm(dim=-1)
    out["pushforward EBM"] = {
        "W": density_w(*pf.density_on_manifold(), target, box),
        "W_samples": wasserstein(pf_samples, test, bounds), "time_s": t_pf,
        "dist_samples_to_truth": distance_stats(pf_samples, cfg["truth"]),
        "dist_test_to_model": {"median": float(pf_dist.median()), "mean": float(pf_dist.mean()),
                               "max": float(pf_dist.max()), "failed": 0}}
    if name == "flood":
        out["pushforward EBM"]["NLL"] = pf.nll(test)
        # Held-out NLL on the analytic sphere, log Z by quadrature: PCD and exact MLE.
        sphere_points = fibonacci_sphere(n_draws)
        for method in ("pcd", "mle"):
            t0 = time.perf_counter()
            kw = ebm_kwargs(cfg, quick)
            if method == "mle":
                # Exact gradients need no energy regulariser and take large
                # batches and steps (held-out NLL 1.63 -> 1.0 for 4000 steps).
                kw.update(n_iter=500 if quick else 2500, lr=1e-2, batch_size=1024, beta=0.0)
            sphere_ebm = ConstrainedEBM(ImplicitSphere(2), method=method, seed=seed,
                                        **kw).fit(train)
            entry = {"NLL": sphere_ebm.nll(test), "time_s": time.perf_counter() - t0}
            with torch.no_grad():
                entry["W"] = density_w(sphere_points, sphere_ebm.log_prob(sphere_points),
                                       target, box)
            # MLE has no replay buffer: chains start at training points.
            init = train[torch.randint(len(train), (N_MODEL_SAMPLES,),
                                       generator=torch.Generator().manual_seed(seed))]
            s = sphere_ebm.sample(N_MODEL_SAMPLES, n_steps=200,
                                  init=None if method == "pcd" else init)
            entry["W_samples"] = wasserstein(s, test, bounds)
            out[f"constrained EBM, analytic S^2 ({method.upper()})"] = entry
    if oracle is not None:
        out["oracle (true samples)"] = {"W_samples": wasserstein(oracle, test, bounds)}
    figures = {"data": test, "constrained EBM": samples, "pushforward EBM": pf_samples}
    return out, figures


def circle_lattice(n=4000):
    """Points of the intersection circle x = 0.5, |(y, z)| = sqrt(3)/2."""
    t = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
    rho = math.sqrt(3) / 2
    return torch.stack([torch.full_like(t, 0.5), rho * t.cos(), rho * t.sin()], -1)


def product_log_density(pts):
    """Unnormalised log of exp(kappa (mu_A.x + mu_B.(x - c_B))) (the product density)."""
    return KAPPA_AB * (pts @ MU_A + (pts - CENTER_B) @ MU_B)


def product_on_circle(n, seed):
    """Exact samples of the product density on the intersection circle."""
    pts = circle_lattice(200_000)
    logp = product_log_density(pts)
    idx = torch.multinomial((logp - logp.max()).exp(), n, replacement=True,
                            generator=torch.Generator().manual_seed(seed))
    return pts[idx]


def grid_normalised(points, dens, weight, box):
    """Scale ``dens`` so that its binned mass (sum of per-bin means) is ``weight``.

    The union's components live on learned manifolds without a quadrature for
    log Z, so each component's density is normalised on the W grid itself; the
    truth is treated identically.
    """
    return dens * (weight / grid_mass(points, dens, bins=BINS[points.shape[1]], bounds=box))


ARITHMETIC = ("sphere_cap", "sphere_cup")
ARITH_CFG = dict(n=3, m=2, step=0.2)


def fit_spheres(seed, quick):
    """Data, learned manifolds and constrained EBMs of the two spheres (shared by ∩ and ∪)."""
    xa = vmf_sphere(1000, MU_A, KAPPA_AB, seed=seed)
    xb = vmf_sphere(1000, MU_B, KAPPA_AB, seed=50 + seed) + CENTER_B
    t0 = time.perf_counter()
    ma = fit_manifold(xa, 3, 2, seed, quick, "sphere_mixture")
    mb = fit_manifold(xb, 3, 2, seed, quick, "sphere_mixture")
    ea = ConstrainedEBM(ma, seed=seed, **cebm_kwargs(ARITH_CFG, quick)).fit(xa)
    eb = ConstrainedEBM(mb, seed=seed, **cebm_kwargs(ARITH_CFG, quick)).fit(xb)
    return dict(xa=xa, xb=xb, ea=ea, eb=eb, time_s=time.perf_counter() - t0)


def run_arithmetic(name, seed, quick, spheres):
    """The spheres' densities combined on their intersection or union.

    ``time_s`` counts the spheres' fits (done once for both combinations) plus
    the combination's own set-up.
    """
    xa, xb, ea, eb = (spheres[k] for k in ("xa", "xb", "ea", "eb"))
    cfg = ARITH_CFG
    t0 = time.perf_counter() - spheres["time_s"]
    truth_a, truth_b = ImplicitSphere(2), ImplicitSphere(2, center=CENTER_B)
    n_draws = COVER_DRAWS[3]
    out = {}
    if name == "sphere_cap":
        model = IntersectionEBM(ea, eb, step_size=0.2)
        circle = circle_lattice()
        w = density_w(*model.density_on_manifold(n_draws, ARITH_BOX, seed),
                      (circle, product_log_density(circle).exp()), ARITH_BOX)
        t_fit = time.perf_counter() - t0
        samples = model.sample(N_MODEL_SAMPLES, n_steps=300)
        test = product_on_circle(N_TEST_SYNTHETIC, 10_000 + seed)
        oracle = product_on_circle(N_MODEL_SAMPLES, 20_000 + seed)
        truth = intersection(truth_a, truth_b)
    else:
        model = UnionEBM(ea, eb, log_partitions=[0.0, 0.0])  # sampling needs no log Z
        covers = [e.density_on_manifold(n_draws, ARITH_BOX, seed) for e in (ea, eb)]
        sphere = fibonacci_sphere(n_draws)
        truths = [(sphere, vmf_density(sphere, MU_A, KAPPA_AB)),
                  (sphere + CENTER_B, vmf_density(sphere, MU_B, KAPPA_AB))]

        def mix(parts):
            return (torch.cat([p for p, _ in parts]),
                    torch.cat([grid_normalised(p, d, 0.5, ARITH_BOX) for p, d in parts]))

        model_pts, model_dens = mix([(p, (lp - lp.max()).exp()) for p, lp in covers])
        w = paper_wasserstein(model_pts, model_dens, *mix(truths), bins=BINS[3],
                              bounds=ARITH_BOX)
        t_fit = time.perf_counter() - t0
        samples = model.sample(N_MODEL_SAMPLES, n_steps=100, seed=seed)
        gen = np.random.default_rng(10_000 + seed)

        def mixture(n, s):
            na = int(np.random.default_rng(s).binomial(n, 0.5))
            return torch.cat([vmf_sphere(na, MU_A, KAPPA_AB, seed=s),
                              vmf_sphere(n - na, MU_B, KAPPA_AB, seed=s + 1) + CENTER_B])

        test = mixture(N_TEST_SYNTHETIC, int(gen.integers(1 << 30)))
        oracle = mixture(N_MODEL_SAMPLES, 20_000 + seed)
        truth = union(truth_a, truth_b)
    bounds = w_bounds(test)
    out["constrained EBM"] = {
        "W": w, "W_samples": wasserstein(samples, test, bounds), "time_s": t_fit,
        "dist_samples_to_truth": distance_stats(samples, truth)}
    if name == "sphere_cup":
        # The pushforward baseline has no arithmetic: fit it to the union's data.
        t0 = time.perf_counter()
        kw = ebm_kwargs(cfg, quick)
        kw.pop("hidden")
        train = torch.cat([xa, xb])
        pf = PushforwardEBM(3, 2, ae_iter=1000 if quick else 3000, seed=seed, **kw).fit(train)
        t_pf = time.perf_counter() - t0
        pf_samples = pf.sample(N_MODEL_SAMPLES, n_steps=100)
        pts, lp = pf.density_on_manifold()
        # One model for both spheres: normalised as a whole, like the truth's mixture.
        out["pushforward EBM"] = {
            "W": paper_wasserstein(pts, grid_normalised(pts, (lp - lp.max()).exp(), 1.0,
                                                        ARITH_BOX),
                                   *mix(truths), bins=BINS[3], bounds=ARITH_BOX),
            "W_samples": wasserstein(pf_samples, test, bounds), "time_s": t_pf,
            "dist_samples_to_truth": distance_stats(pf_samples, truth)}
    out["oracle (true samples)"] = {"W_samples": wasserstein(oracle, test, bounds)}
    figures = {"data": test, "constrained EBM": samples}
    if name == "sphere_cup":
        figures["pushforward EBM"] = pf_samples
    return out, figures


def plot(name, figures, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(figures)
    dim = figures["data"].shape[1]
    fig = plt.figure(figsize=(4 * len(keys), 4))
    for i, key in enumerate(keys):
        pts = figures[key].cpu().numpy()[:3000]
        if dim == 2:
            ax = fig.add_subplot(1, len(keys), i + 1)
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
            ax.set_aspect("equal")
        else:
            ax = fig.add_subplot(1, len(keys), i + 1, projection="3d")
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1, alpha=0.4)
        ax.set_title(f"{name}: {key}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def aggregate(runs):
    """Mean and std over seeds of every numeric leaf."""
    out = {}
    for model in runs[0]:
        entry = {}
        for key, value in runs[0][model].items():
            if isinstance(value, dict):
                entry[key] = {k: float(np.mean([r[model][key][k] for r in runs]))
                              for k in value}
            else:
                vals = [r[model][key] for r in runs]
                entry[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
                              "values": vals}
        out[model] = entry
    return out


def fmt(entry, key, digits=5):
    if key not in entry:
        return "–"
    return f"{entry[key]['mean']:.{digits}f} ± {entry[key]['std']:.{digits}f}"


def write_table(results, args, total, done):
    lines = [
        "# Density experiments (Ross et al. 2023) — implicit_geom",
        "",
        f"Command: `.venv/bin/python benchmarks/paper.py {' '.join(sys.argv[1:])}`  ",
        f"Seeds: {args.seeds}; quick: {args.quick}; {args.jobs} parallel job(s) with "
        f"{args.threads} torch thread(s) each; "
        f"wall time {total / 60:.1f} min for {len(done)} of "
        f"{len(args.datasets) * args.seeds} experiments.",
        "",
        "W: the paper's discretised Wasserstein distance (reference-code protocol): the "
        "model density (temperature 1) on points covering its manifold vs the true density on "
        "the true manifold (synthetic) or vs the held-out points (flood, glycine); "
        f"{BINS[2]} bins per axis in 2-D, {BINS[3]} in 3-D, over a fixed box; bins weighted by "
        "the mean density of their points; squared cost normalised by its maximum over the "
        "grid; exact OT (POT). W (samples): "
        f"{N_MODEL_SAMPLES} model samples vs held-out test data, both binned ({BINS[2]} / {BINS[3]} per "
        "axis over the padded data box); `oracle` = fresh samples of the true distribution, the "
        "finite-sample floor of that variant. Mean ± std over seeds. Distances: median over "
        "points (samples to the true manifold; test data to the model's manifold). Time: "
        "fitting (manifold + density), without the evaluation.",
        "",
        "| data set | model | W | paper W (CEBM) | W (samples) | samples→true M | test→model M "
        "| NLL | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        n_runs = sum(1 for n, _, _ in done if n == name)
        for model, entry in res.items():
            paper = f"{PAPER_W[name]:.5f}" if model == "constrained EBM" and name in PAPER_W else ""
            d1 = entry.get("dist_samples_to_truth", {}).get("median")
            d2 = entry.get("dist_test_to_model", {}).get("median")
            lines.append(
                f"| {name} ({n_runs} seed{'s' if n_runs > 1 else ''}) | {model} | "
                f"{fmt(entry, 'W')} | {paper} | {fmt(entry, 'W_samples')} | "
                f"{'' if d1 is None else f'{d1:.2e}'} | {'' if d2 is None else f'{d2:.2e}'} | "
                f"{fmt(entry, 'NLL', 3) if 'NLL' in entry else ''} | "
                f"{fmt(entry, 'time_s', 1) if 'time_s' in entry else ''} |")
    (RESULTS / f"{args.output}.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def run_task(task):
    """The experiments of one seed on some data sets (the arithmetic ones share their fits).

    A top-level function so that pools can pickle it; returns a list of
    ``(name, seed, results, figures)``.
    """
    global CHAIN_INIT_OVERRIDE
    names, seed, quick, threads, chain_init = task
    CHAIN_INIT_OVERRIDE = chain_init
    torch.set_num_threads(threads)
    spheres = fit_spheres(seed, quick) if set(names) & set(ARITHMETIC) else None
    items = []
    for name in names:
        t0 = time.perf_counter()
        if name in ARITHMETIC:
            res, figures = run_arithmetic(name, seed, quick, spheres)
        else:
            res, figures = run_standard(name, seed, quick)
        log(f"{name} seed {seed}: " + ", ".join(
            f"{k} W={v.get('W', float('nan')):.5f}/{v['W_samples']:.5f}" for k, v in res.items())
            + f" ({time.perf_counter() - t0:.0f} s)")
        items.append((name, seed, res, figures))
    return items


def make_tasks(datasets, seeds, *options):
    """One task per (data set, seed), the two arithmetic sets of a seed together.

    Ordered longest first (flood and the arithmetic pair take about twice the
    others), so that no worker is left with a long task at the end.
    """
    arith = [n for n in datasets if n in ARITHMETIC]
    groups = [(n,) for n in datasets if n not in ARITHMETIC] + ([tuple(arith)] if arith else [])
    cost = {("flood",): 2, tuple(ARITHMETIC): 3}
    groups.sort(key=lambda g: -cost.get(g, 1))
    return [(g, seed, *options) for g in groups for seed in range(seeds)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per job (1 is fastest for these small networks)")
    parser.add_argument("--chain-init", choices=("noise", "data"), default=None,
                        help="start the constrained EBM's chains from projected noise or "
                             "from the data on every data set (default: per data set)")
    parser.add_argument("--output", default="paper",
                        help="results/<output>.md and .json")
    parser.add_argument("--jobs", type=int, default=2,
                        help="experiments run in parallel processes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tasks = make_tasks(args.datasets, args.seeds, args.quick, args.threads, args.chain_init)
    done = []

    def record(items):
        # Results are written after every task, so a partial run still reports.
        for name, seed, res, figures in items:
            done.append((name, seed, res))
            if seed == 0:
                plot(name, figures, RESULTS / f"{args.output}_{name}.png")
        results = {}
        for key in args.datasets:
            runs = [r for (n, _, r) in sorted(done, key=lambda d: d[1]) if n == key]
            if runs:
                results[key] = aggregate(runs)
        (RESULTS / f"{args.output}.json").write_text(json.dumps(
            {"results": results, "seeds_done": {k: sorted(s for n, s, _ in done if n == k)
                                                for k in results}}, indent=1))
        return write_table(results, args, time.perf_counter() - start, done)

    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for item in pool.imap_unordered(run_task, tasks, chunksize=1):
                table = record(item)
    else:
        for task in tasks:
            table = record(run_task(task))
    total = time.perf_counter() - start
    log(table)
    log(f"total wall time: {total:.0f} s")


if __name__ == "__main__":
    main()
