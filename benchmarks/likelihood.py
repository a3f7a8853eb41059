"""Held-out negative log-likelihood of densities on manifolds: ours against the field.

For every data set and each of ``--splits`` random 80/10/10 splits (the split
seed is the run's seed, ``--first-seed`` + 0, 1, ...), the same run fits:

* **ours**: the constrained EBM on the data's analytic manifold (sphere, torus,
  circle, union of circles) by exact maximum likelihood with early stopping
  on the validation part, with several energies (a plain MLP, MLPs with
  random Fourier features of maximum frequency 4 and 16 and, on spheres, a
  learned vMF kernel mixture times such a network,
  :class:`~implicit_geom.models.AnchoredVMFEnergy` with a learned
  concentration per kernel (``adapt_kernels``), normalised by its adapted
  rule); a state whose log Z the quadrature does not resolve to 0.01 is never
  kept. Ours is their convex mixture
  (:class:`~implicit_geom.models.DensityMixture`, normalised because each
  is), weights by EM on the validation part (the same points that stopped
  the candidates early: a mild double use, K - 1 weights on ~490 points; the
  test part is untouched). On the sphere a Monte Carlo check of its
  normaliser (``mc_mass``: ``4 pi`` times its mean density at 200 000 uniform
  points, with its standard error) goes into the json's ``info``. The row
  **ours, best single energy** is the best candidate on validation alone
  (the same fits);
* **ours, learned M** (the sets the paper learned: circle, two circles, flood,
  glycine): the manifold learned from the training part
  (``NeuralImplicitManifold`` with the library's preset), then the same EBM on
  it (plain or Fourier-4 MLP, chosen on validation) by exact maximum
  likelihood with its traced or meshed quadrature. Its
  density is w.r.t. the learned manifold's volume; test points are projected
  onto it first;
* **vMF KDE**: the von Mises-Fisher (on tori: product von Mises) kernel
  density estimate with its concentration chosen on validation;
* **adaptive vMF KDE** (spheres): per-point concentrations ``c / d_k^2`` and a
  uniform floor, ``k``, ``c`` and the floor chosen on validation;
* **vMF mixture (EM)**: components chosen on validation;
* **pushforward EBM**: autoencoder + latent EBM (the paper's baseline), tuned
  with the same care as ours: one autoencoder, then latent EBMs with ours'
  three energy families trained by exact maximum likelihood (grid ``log Z``
  over the latent box, at two box paddings) and the paper's PCD-trained one,
  each stopped early on the validation codes, an uncertified ``log Z``
  dropped; the row is their validation-weighted mixture (one decoder image,
  so a density on it), and **pushforward EBM, best single latent EBM** the
  best candidate on validation. Its density is w.r.t. the decoder image's
  volume at the encoded point, zero (NLL +inf) where a point's code falls
  outside every candidate's latent box;
* **true density** on the synthetic sets (the floor).

``volcano_unique`` is volcano's 267 distinct sites: volcano has 827 rows, most
of them repeated sites, so a held-out point usually coincides with a training
point and kernel models' likelihood grows without bound as their kernels
narrow to the distance floor (``MIN_DISTANCE``, the same for ours and the
adaptive KDE); the distinct sites measure the density itself.

A model whose test points cannot be projected onto its manifold, or project
where its quadrature of log Z has no nodes (``ProjectionError``,
``QuadratureCoverageError``), gets no number on that split: the table says how
many splits failed and with which error (the json's ``info``).

NLL is in nats per point w.r.t. the manifold's volume (area, arc length);
mean +- std (ddof = 1) over the splits. Every choice is made on the
validation part; the test part is only scored. ``--json PATH`` writes rows
``{dataset, model, nll_mean, nll_std, n_splits, fit_s}`` (plus the per-split
values); the table goes to ``benchmarks/results/likelihood.md``.

Usage::

    python benchmarks/likelihood.py                                  # everything, 5 splits
    python benchmarks/likelihood.py --datasets flood volcano --splits 5
    python benchmarks/likelihood.py --data my_events.csv --data more.csv --json nll.json
    python benchmarks/likelihood.py --quick --splits 2 --first-seed 100   # tuning runs
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import implicit_geom  # noqa: F401  (selects geomstats' pytorch backend)
from implicit_geom import (
    ImplicitSphere,
    ImplicitTorus,
    NormalizationError,
    ProjectionError,
    QuadratureCoverageError,
    TrainingDivergedError,
    union,
)
from implicit_geom.datasets import TWO_CIRCLE_CENTRES, load_dataset, load_table, true_log_density
from implicit_geom.evaluation import held_out_nll, mean_std, random_split
from implicit_geom.models import (
    AnchoredVMFEnergy,
    ConstrainedEBM,
    DensityMixture,
    EnergyMLP,
    ManifoldKDE,
    VonMisesFisherMixture,
)

# The pushforward baseline's candidates and their fitting, shared with paper.py
# (this folder is on sys.path when the script runs).
from _pushforward import best_candidate, fit_pushforward_candidates  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("volcano", "volcano_unique", "flood", "glycine", "circle", "two_circles",
            "sphere_mixture", "torus")
SYNTHETIC = ("circle", "two_circles", "sphere_mixture", "torus")
N_SYNTHETIC = 2000
LEARNED = ("circle", "two_circles", "flood", "glycine")
# Published held-out NLL (Chen & Lipman 2024, RFM; De Bortoli et al. 2022, RSGM;
# Huang et al. 2022, RDM; Peel et al. 2001, mixture of Kent).
PUBLISHED = {
    "flood": {"RFM": 0.42, "RDM": 0.43, "RSGM": 0.45, "mixture of Kent": 0.73},
    "volcano": {"RFM": -7.93, "RDM": -6.61, "RSGM": -4.92, "mixture of Kent": -0.80},
}
# Distance floor of the adaptive kernels (both ours and the adaptive KDE): it
# caps the concentration at duplicated points, which decides the volcano NLL.
MIN_DISTANCE = 1e-4
# Dirichlet pseudo-count of the mixture weights of ours (fitted on validation).
MIXTURE_PRIOR = 0.0


def log(msg):
    print(msg, flush=True)


def load(name):
    """Points, their analytic manifold and its kind for a built-in set or a lat/lon file."""
    if name in SYNTHETIC:
        points = load_dataset(name, N_SYNTHETIC, seed=0).points
    elif name == "volcano_unique":
        # 827 rows but 267 distinct sites: with duplicates a held-out point
        # usually coincides with a training point and the likelihood is
        # unbounded (kernels narrow to the distance floor); the distinct
        # sites measure the density itself.
        points = torch.unique(load_dataset("volcano").points, dim=0)
    elif name in DATASETS:
        points = load_dataset(name).points
    else:
        data = load_table(name, coords="latlon")
        return data.points, ImplicitSphere(2), "sphere"
    if name in ("volcano", "volcano_unique", "flood", "sphere_mixture"):
        return points, ImplicitSphere(2), "sphere"
    if name == "glycine":
        return points, ImplicitTorus(3.0, 1.0), "torus"
    if name == "torus":
        return points, ImplicitTorus(2.0, 1.0), "torus"
    if name == "circle":
        return points, ImplicitSphere(1), "circle"
    return points, union(*[ImplicitSphere(1, center=list(c)) for c in TWO_CIRCLE_CENTRES]), \
        "circles"


def mle_settings(quick, kind):
    return dict(method="mle", n_iter=150 if quick else 1500, lr=1e-2, lr_floor=0.1,
                val_every=10, patience=10,
                quadrature_resolution={"circle": 512, "circles": 512}.get(kind, 128))


def energy_candidates(kind, dim, seed):
    """Energies ours chooses from on validation: ``(label, factory, batch size)``.

    Smooth densities favour a plain MLP with full-batch gradients, sharp ones
    Fourier features; on the sphere a learned vMF kernel mixture times a
    network competes too.
    """
    out = [("MLP", lambda: EnergyMLP(dim, hidden=(64, 64), seed=seed), 2048),
           ("Fourier MLP (max frequency 4)",
            lambda: EnergyMLP(dim, hidden=(64, 64), seed=seed, fourier=32, max_frequency=4.0),
            2048),
           ("Fourier MLP (max frequency 16)",
            lambda: EnergyMLP(dim, hidden=(64, 64), seed=seed, fourier=64, max_frequency=16.0),
            2048)]
    if kind == "sphere":
        # Per-kernel concentrations start at the k-NN rule and are learned by
        # leave-one-out likelihood (stopped early on validation like the rest).
        out.append(("vMF kernel mixture (per-kernel concentrations) x MLP",
                    lambda: AnchoredVMFEnergy(k=5, min_distance=MIN_DISTANCE, hidden=(32, 32),
                                              fourier=32, max_frequency=8.0, seed=seed,
                                              adapt_kernels=True), 512))
    return out


def fit_candidates(manifold, candidates, train, val, seed, settings):
    """Fit every candidate energy, each stopped early on validation.

    Returns ``[(label, model, validation NLL)]`` of the candidates whose
    training did not diverge and whose kept state has a certified log Z
    (quadrature error <= 0.01 and no peak between the nodes; early stopping
    never keeps any other state).
    """
    fitted = []
    for label, make, batch in candidates:
        model = ConstrainedEBM(manifold, make(), seed=seed, batch_size=batch, **settings)
        try:
            model.fit(train, val)
        except TrainingDivergedError as err:
            log(f"    [{label}]: dropped, {err}")
            continue
        score = min(model.validation_history_["loss"])
        try:
            error = model.normalizer().error
        except NormalizationError as err:
            log(f"    [{label}]: dropped, log Z not certified: {err}")
            continue
        log(f"    [{label}]: validation NLL {score:.4f} after "
            f"{len(model.history_['loss'])} steps; log Z error {error:.1e}")
        if math.isfinite(score) and error <= model.max_log_z_error:
            fitted.append((label, model, score))
    if not fitted:
        raise NormalizationError("no candidate energy kept a certified log Z")
    return fitted


def mix_candidates(fitted, val):
    """The candidates' convex mixture, weights by EM on the validation part; returns (model, info).

    A mixture of normalised densities is normalised: nothing but the
    weights is fitted here, and the density's log Z error is at most the
    largest of its weighted candidates' (:meth:`DensityMixture.log_z_error`).
    """
    mixture = DensityMixture([m for _, m, _ in fitted], prior=MIXTURE_PRIOR).fit(val)
    weights = {label: round(float(w), 4) for (label, _, _), w in zip(fitted, mixture.weights_)}
    best = min(fitted, key=lambda f: f[2])
    log(f"    mixture weights {weights}; validation NLL {mixture.fit_nll_:.4f} "
        f"(best single: {best[2]:.4f}, {best[0]})")
    return mixture, {"weights": weights, "best_single": best[0],
                     "log_z_error": mixture.log_z_error()}


def fit_ours(manifold, kind, train, val, seed, quick, keep=None):
    """The validation-weighted mixture of the constrained EBMs with every candidate energy.

    ``keep`` (a dict) receives the best single candidate on validation, for
    the comparison row.
    """
    fitted = fit_candidates(manifold, energy_candidates(kind, train.shape[1], seed), train, val,
                            seed, mle_settings(quick, kind))
    if keep is not None:
        label, best, _ = min(fitted, key=lambda f: f[2])
        keep["best"] = (best, {"energy": label, "log_z_error": best.normalizer().error})
    model, info = mix_candidates(fitted, val)
    if kind == "sphere":
        t0 = time.perf_counter()
        info["mc_mass"] = monte_carlo_mass(model, seed)
        # A check of the result, not part of the fit: run_split subtracts it.
        info["check_s"] = round(time.perf_counter() - t0, 1)
    return model, info


def monte_carlo_mass(model, seed, n=200_000):
    """Independent check of the normaliser on the unit 2-sphere: ``4 pi mean p(u)``, u uniform.

    Returns ``(mass, standard error)``; it should be 1 within a few errors.
    """
    gen = torch.Generator().manual_seed(10_000 + int(seed))
    u = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        p = torch.cat([model.score_samples(c) for c in u.split(20_000)]).exp() * (4 * math.pi)
    return round(float(p.mean()), 4), round(float(p.std() / math.sqrt(n)), 4)


def fit_ours_learned(name, kind, train, val, seed, quick):
    from implicit_geom.learning import NeuralImplicitManifold
    from implicit_geom.learning.presets import mdf_preset

    config = mdf_preset(name)
    if quick:
        config["epochs"] = max(config.get("epochs", 400) // 4, 10)
    n = train.shape[1]
    m = 1 if n == 2 else 2
    manifold = NeuralImplicitManifold(n, n - m, seed=seed, progress=False, **config).fit(train)
    settings = mle_settings(quick, kind)
    settings["quadrature_resolution"] = 128
    # The best single candidate on validation (the figure in the README was
    # measured so; the mixture of candidates is not measured here yet).
    label, model, _ = min(fit_candidates(manifold, energy_candidates("learned", n, seed)[:2],
                                         train, val, seed, settings), key=lambda f: f[2])
    rule = model.quadrature()
    norm = model.normalizer()
    return model, {"energy": label, "components": rule.n_components,
                              "open": rule.n_open,
                              "nodes": int(rule.points.shape[0]), "log_z_error": norm.error,
                              "component_mass": [round(float(v), 4)
                                                 for v in model.component_mass()]}


def fit_pushforward(manifold, train, val, seed, quick, keep=None):
    """The pushforward baseline: one autoencoder, the validation-weighted mixture of its
    latent EBM candidates (:func:`_pushforward.pushforward_candidates`), as ours mixes its
    energies.

    Every candidate decodes through the same autoencoder, so their densities
    are on one manifold (the decoder image) and their mixture is a density
    on it. A candidate whose kept ``log Z`` the grid does not resolve to 0.01
    is dropped, as ours drops uncertified states
    (:func:`_pushforward.fit_pushforward_candidates`). ``keep`` receives the
    best single candidate on validation.
    """
    fitted, recon = fit_pushforward_candidates(train, val, manifold.dim, seed, quick, log=log)
    # ``recon``: how far the decoder image (the manifold its density lives
    # on) is from the data: the density is w.r.t. that image's area at dec(enc(x)).
    if keep is not None:
        label, best, _ = best_candidate(fitted)
        keep["best"] = (best, {"latent EBM": label, **recon})
    model, info = mix_candidates(fitted, val)
    return model, {**info, **recon}


def run_split(name, seed, quick, models):
    """Every model on one split of one data set; returns {model: (nll, fit_s, info)}."""
    torch.set_num_threads(1)
    points, manifold, kind = load(name)
    tr, va, te = random_split(points.shape[0], seed)
    train, val, test = points[tr], points[va], points[te]
    out = {}

    def record(label, fit, fit_s=None):
        # ``fit_s``: the fit time of a row whose model was fitted by another
        # row (the best single energy is one of ours' fits).
        t0 = time.perf_counter()
        try:
            model, info = fit()
            if fit_s is None:
                check = info.get("check_s", 0.0) if isinstance(info, dict) else 0.0
                fit_s = time.perf_counter() - t0 - check
            nll = held_out_nll(model, test)
        except (ProjectionError, QuadratureCoverageError) as err:
            # A named failure is reported as such, never as a number.
            fit_s = time.perf_counter() - t0 if fit_s is None else fit_s
            nll, info = math.nan, {"error": f"{type(err).__name__}: {err}"}
        out[label] = (nll, fit_s, info)
        log(f"  {name} split {seed}: {label}: test NLL {nll:.4f} ({fit_s:.1f} s) {info or ''}")

    if "ours" in models:
        keep = {}
        record("ours (constrained EBM, analytic M)",
               lambda: fit_ours(manifold, kind, train, val, seed, quick, keep))
        if "best" in keep:  # the same fits: the best single energy on validation
            record("ours, best single energy (analytic M)", lambda: keep["best"],
                   fit_s=out["ours (constrained EBM, analytic M)"][1])
    if "learned" in models and name in LEARNED:
        record("ours (constrained EBM, learned M)",
               lambda: fit_ours_learned(name, kind, train, val, seed, quick))
    if "kde" in models:
        record("vMF KDE", lambda: (ManifoldKDE(manifold).fit(train, val), {}))
    if "adaptive" in models and kind in ("sphere", "circles"):
        record("adaptive vMF KDE", lambda: (lambda k: (k, k.params_))(
            ManifoldKDE(manifold, adaptive=True, min_distance=MIN_DISTANCE).fit(train, val)))
    if "mixture" in models and kind in ("sphere", "torus", "circle"):
        record("vMF mixture (EM)", lambda: (lambda k: (k, {"K": k.n_components_}))(
            VonMisesFisherMixture(manifold, seed=seed).fit(train, val)))
    if "pushforward" in models:
        keep = {}
        record("pushforward EBM", lambda: fit_pushforward(manifold, train, val, seed, quick, keep))
        if "best" in keep:  # the same fits: its best single latent EBM on validation
            record("pushforward EBM, best single latent EBM", lambda: keep["best"],
                   fit_s=out["pushforward EBM"][1])
    if name in SYNTHETIC:
        out["true density"] = (float(-true_log_density(name, test).mean()), 0.0, {})
    return name, seed, out


def table(rows, args):
    lines = ["# Held-out NLL (nats per point, w.r.t. the manifold's volume)", "",
             f"Command: `python benchmarks/likelihood.py {' '.join(sys.argv[1:])}`  ",
             f"Splits: {args.splits} random 80/10/10 (seeds {args.first_seed}.."
             f"{args.first_seed + args.splits - 1}); mean ± std (ddof=1); every choice "
             "made on the validation part.", "",
             "| data set | model | NLL | fit (s) |", "|---|---|---|---|"]
    for row in rows:
        failed = (f" ({row['n_failed']} of {row['n_failed'] + row['n_splits']} splits "
                  "failed with a named error)" if row.get("n_failed") else "")
        lines.append(f"| {row['dataset']} | {row['model']} | {row['nll_mean']:.3f} ± "
                     f"{row['nll_std']:.3f}{failed} | {row['fit_s']:.1f} |")
    for name, pub in PUBLISHED.items():
        if any(r["dataset"] == name for r in rows):
            lines.append("| " + name + " | published: " + ", ".join(
                f"{k} {v:.2f}" for k, v in pub.items()) + " | | |")
    return "\n".join(lines) + "\n"


def run_task(task):
    """``run_split(*task)``, picklable for a process pool."""
    return run_split(*task)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--data", action="append", default=[], metavar="PATH",
                        help="a latitude/longitude CSV (header optional, '#' comments); "
                             "repeatable")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seed of the first split (tune on seeds you do not report)")
    parser.add_argument("--models", nargs="+",
                        default=["ours", "learned", "kde", "adaptive", "mixture", "pushforward"],
                        choices=["ours", "learned", "kde", "adaptive", "mixture", "pushforward"])
    parser.add_argument("--quick", action="store_true", help="short fits (smoke runs)")
    parser.add_argument("--jobs", type=int, default=1, help="splits run in parallel processes")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--output", default="likelihood", help="results/<output>.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = list(args.datasets) + list(args.data)
    for path in args.data:
        load(path)  # fail early on a bad file
    tasks = [(n, args.first_seed + s, args.quick, tuple(args.models))
             for n in names for s in range(args.splits)]
    start = time.perf_counter()
    results = {}
    RESULTS.mkdir(parents=True, exist_ok=True)

    def record(name, seed, out):
        # Rows are rewritten after every split, so a partial run still reports.
        for model, value in out.items():
            results.setdefault((name, model), []).append((seed, *value))
        rows = []
        for (dataset, model), values in results.items():
            values = sorted(values)
            ok = [v[1] for v in values if math.isfinite(v[1])]
            nll_mean, nll_std = mean_std(ok) if ok else (math.nan, math.nan)
            rows.append({"dataset": Path(dataset).stem if dataset not in DATASETS else dataset,
                         "model": model, "nll_mean": nll_mean, "nll_std": nll_std,
                         "n_splits": len(ok), "n_failed": len(values) - len(ok),
                         "fit_s": float(np.mean([v[2] for v in values])),
                         "nll_values": [v[1] for v in values], "seeds": [v[0] for v in values],
                         "info": [v[3] for v in values]})
        text = table(rows, args)
        (RESULTS / f"{args.output}.md").write_text(text)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
        return text

    text = ""
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            # As each split finishes (not at the end), so a partial run still reports.
            for done in pool.imap_unordered(run_task, tasks, chunksize=1):
                text = record(*done)
    else:
        for task in tasks:
            text = record(*run_split(*task))
    log(text)
    log(f"total wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
