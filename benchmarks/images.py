"""Image manifolds (the paper's image experiments at CPU scale): 8x8 digits in 64-D.

Ross et al. (2023, Sec. 6.3) learn an implicit manifold of MNIST, a constrained
EBM on it, and use |F| as an out-of-distribution score. Here scikit-learn's
bundled digits (1,797 images of 8x8, no download) play MNIST:

1. **Manifold.** ``NeuralImplicitManifold`` with the library's high-dimensional
   preset (residual architecture: the data's principal normals plus an MLP,
   codimension 56 for dimension 8), trained on 80% of the images; held-out
   distances by closest-point projection (failures counted), relative to the
   data scale (median distance of the held-out images to the training mean),
   against PCA and the pushforward model's autoencoder of the same dimension.
2. **Out of distribution.** The same models trained on the digits 0-4 only;
   held-out 0-4 against all 5-9, scored by |F| (ours) and by the
   autoencoder's reconstruction error (the pushforward model); AUROC.
3. **Densities.** A constrained EBM on the learned manifold (PCD with
   constrained Langevin chains that start at noise: uniform draws in the data
   box projected onto M) and the pushforward EBM (autoencoder + latent EBM)
   with the same settings. Samples by chains that (a) continue the replay
   buffer (chains started at noise during training) and (b) start afresh
   from noise, 300 steps each; no chain ever starts at data. Quality: the
   Fréchet distance between the samples and the held-out images in the
   hidden features of an MLP classifier trained on the training split, and
   the classifier's mean confidence.
4. **Scale-out.** Seconds per MDF epoch and per EBM iteration with 1 and 2
   processes (``torchrun``, gloo on CPUs, NCCL with ``--device cuda``).

Prints a table, writes ``benchmarks/results/images_seed<S>.json`` and the
sample grids ``benchmarks/results/images_seed<S>.png`` (with ``--docs`` also the
README's ``docs/digits_samples.png``).

Usage::

    python benchmarks/images.py                 # ~40 min on 2 shared CPU cores
    python benchmarks/images.py --quick         # a smoke run (minutes; figures meaningless)
    python benchmarks/images.py --device cuda   # the same on a GPU
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import implicit_geom  # noqa: F401  (selects geomstats' pytorch backend)
from implicit_geom.datasets import load_digits
from implicit_geom.images import ClassifierFeatures, auroc, grid_figure
from implicit_geom.learning import NeuralImplicitManifold
from implicit_geom.learning.presets import mdf_preset
from implicit_geom.models import ConstrainedEBM, PushforwardEBM
from implicit_geom.numerics.validation import padded_box
from implicit_geom.pipeline import ebm_preset
from implicit_geom.threads import set_threads

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (8, 8)


def split(n, seed, fraction=0.8):
    """Train and test row indices (a seeded permutation)."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(fraction * n)
    return perm[:k], perm[k:]


def pca_distance(train, points, dim):
    """Distance of points to the affine principal subspace of ``train`` (the closest point)."""
    mean = train.mean(0)
    _, _, vh = torch.linalg.svd(train - mean, full_matrices=False)
    basis = vh[:dim]
    centred = points - mean
    return (centred - centred @ basis.T @ basis).norm(dim=-1)


def manifold_distance(manifold, points):
    """Closest-point distances of ``points`` to a learned manifold, and the failures."""
    res = manifold.solve_projection(points)
    dist = (points - res.x).detach().norm(dim=-1)
    return dist[res.converged], int((~res.converged).sum())


def fit_mdf(train, args, device):
    preset = mdf_preset("digits", len(train), train)
    if args.quick:
        preset["epochs"] = 5
    model = NeuralImplicitManifold(64, 64 - args.latent_dim, seed=args.seed, device=device,
                                   progress=args.progress, **preset)
    t0 = time.perf_counter()
    model.fit(train)
    return model, time.perf_counter() - t0


def ebm_settings(args):
    settings = ebm_preset("digits")
    if args.quick:
        settings.update(n_iter=5, n_mcmc_steps=2)
    return settings


def fit_pushforward(train, args, device):
    settings = ebm_settings(args)
    hidden = settings.pop("hidden")
    # The autoencoder gets the MDF's widths; the latent EBM the same PCD
    # settings as ours, with the Langevin step in its standardised latent units.
    pf = PushforwardEBM(64, args.latent_dim, hidden=(256, 256), energy_hidden=hidden,
                        ae_iter=200 if args.quick else 4000, ae_lr=1e-3, seed=args.seed,
                        progress=args.progress, **{**settings, "step_size": args.pf_step})
    pf.autoencoder.to(device)
    pf.latent_ebm.energy_net.to(device)
    t0 = time.perf_counter()
    pf.fit(train)
    return pf, time.perf_counter() - t0


# ------------------------------------------------------------------ sections
def manifold_section(train, test, args, device, report):
    mdf, t_mdf = fit_mdf(train, args, device)
    scale = float(np.median((test - train.mean(0)).norm(dim=-1).cpu().numpy()))
    ours, failed = manifold_distance(mdf, test)
    pca = pca_distance(train, test, args.latent_dim)
    pf, t_pf = fit_pushforward(train, args, device)
    with torch.no_grad():
        recon = (pf.autoencoder(test) - test).norm(dim=-1)
    ae = (pf.projection(test) - test).detach().norm(dim=-1)
    report["manifold"] = {
        "data_scale": scale, "mdf_fit_s": t_mdf, "pushforward_fit_s": t_pf,
        "median_distance": {"ours": float(ours.median()), "pca": float(pca.median()),
                            "autoencoder (closest point)": float(ae.median()),
                            "autoencoder (reconstruction)": float(recon.median())},
        "projection_failures": failed, "n_test": len(test),
        "epochs": mdf.epochs,
    }
    return mdf, pf


def projection_section(mdf, test, report):
    """Newton at codimension 56: projections of the held-out images, and the
    constrained Langevin step with full Newton against chord position solves."""
    from implicit_geom.sampling import ConstrainedLangevin

    row = {}
    for closest in (False, True):
        t0 = time.perf_counter()
        res = mdf.solve_projection(test, closest=closest)
        row["closest" if closest else "landing"] = {
            "s": time.perf_counter() - t0, "converged": float(res.converged.double().mean()),
            "median_iterations": float(res.n_iter.double().median()),
            "max_abs_F": float(res.residual[res.converged].max())}
    landed = mdf.solve_projection(test[:300], closest=False)
    start = landed.x[landed.converged].detach()
    for newton in ("exact", "chord"):
        sampler = ConstrainedLangevin(mdf, None, step_size=0.2, seed=0, newton=newton)
        sampler.run(start, 1)  # warm-up
        t0 = time.perf_counter()
        _, info = sampler.run(start, 5)
        row[f"langevin_step_{newton}_s"] = (time.perf_counter() - t0) / 5
        row[f"langevin_rejected_{newton}"] = float(
            (info.n_projection_failures.sum() + info.n_nonreversible.sum()) / (5 * len(start)))
    report["projection"] = row


def ood_section(images, labels, args, device, report):
    inside = np.flatnonzero(labels < 5)
    rows_train, rows_test = split(len(inside), args.seed)
    train, test_in = images[inside[rows_train]], images[inside[rows_test]]
    test_out = images[np.flatnonzero(labels >= 5)]
    mdf, t_mdf = fit_mdf(train, args, device)
    with torch.no_grad():
        f_in, f_out = mdf.submersion(test_in).norm(dim=-1), mdf.submersion(test_out).norm(dim=-1)
    pf, t_pf = fit_pushforward(train, args, device)
    with torch.no_grad():
        r_in = (pf.autoencoder(test_in) - test_in).norm(dim=-1)
        r_out = (pf.autoencoder(test_out) - test_out).norm(dim=-1)
    report["ood"] = {
        "auroc": {"ours |F|": auroc(f_in.cpu(), f_out.cpu()),
                  "pushforward reconstruction error": auroc(r_in.cpu(), r_out.cpu()),
                  "pca residual": auroc(pca_distance(train, test_in, args.latent_dim).cpu(),
                                        pca_distance(train, test_out, args.latent_dim).cpu())},
        "n_train": len(train), "n_in": len(test_in), "n_out": len(test_out),
        "mdf_fit_s": t_mdf, "pushforward_fit_s": t_pf,
    }


def density_section(mdf, pf, train, test, train_labels, args, device, report):
    settings = ebm_settings(args)
    # max_distance=None: digits lie 0.3 data scales from the learned M
    # (median), beyond the default reach of "near M" (5% of the 64-D box's
    # diagonal); the paper's protocol sees every image at its closest point.
    ebm = ConstrainedEBM(mdf, seed=args.seed, progress=args.progress, max_distance=None,
                         **settings)
    ebm.energy_net.to(device)
    t0 = time.perf_counter()
    ebm.fit(train)
    t_ebm = time.perf_counter() - t0
    n, steps = args.n_samples, 20 if args.quick else args.sample_steps
    gen = torch.Generator(device=device).manual_seed(args.seed + 7)
    low, high = padded_box(train, 0.1)  # the EBM's noise box

    def noise(k):
        u = torch.rand(k, 64, generator=gen, device=device, dtype=train.dtype)
        return low + (high - low) * u

    samples, times = {}, {}
    t0 = time.perf_counter()
    samples["ours, buffer"] = ebm.sample(n, n_steps=steps, seed=args.seed)
    times["ours, buffer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    start = mdf.project_draws(noise, n)  # noise projected onto M
    # Another sampler seed than the buffer chains': with the same Langevin noise,
    # chains from different starts couple and the two rows would not be two
    # measurements.
    samples["ours, fresh noise"] = ebm.sample(n, n_steps=steps, init=start,
                                              seed=args.seed + 1000)
    times["ours, fresh noise"] = time.perf_counter() - t0
    samples["M at noise (no EBM)"] = start
    t0 = time.perf_counter()
    samples["pushforward, buffer"] = pf.sample(n, n_steps=steps, seed=args.seed)
    times["pushforward, buffer"] = time.perf_counter() - t0
    z_low, z_high = pf.latent_box()
    z = z_low + (z_high - z_low) * torch.rand(n, args.latent_dim, generator=gen, device=device,
                                              dtype=train.dtype)
    t0 = time.perf_counter()
    samples["pushforward, fresh noise"] = pf.sample(n, n_steps=steps, init=z,
                                                    seed=args.seed + 1000)
    times["pushforward, fresh noise"] = time.perf_counter() - t0
    clf = ClassifierFeatures(seed=args.seed).fit(train.cpu().numpy(), train_labels)
    rows = {}
    reference = test.cpu().numpy()
    for name, x in [("held-out data", test), ("training data (floor)", train[:n]),
                    *samples.items()]:
        x = x.detach().cpu().numpy()
        rows[name] = {"frechet": clf.frechet_distance(x, reference),
                      "confidence": clf.confidence(x),
                      "sample_s": times.get(name)}
    rows["held-out data"]["frechet"] = 0.0
    report["density"] = {
        "ebm_fit_s": t_ebm, "pushforward_ebm_fit_s": report["manifold"]["pushforward_fit_s"],
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
        "sample_steps": steps, "n_samples": n,
        "classifier_test_accuracy": None, "rows": rows,
        "max_abs_F_samples": float(max(mdf.submersion(samples[k]).norm(dim=-1).max()
                                       for k in ("ours, buffer", "ours, fresh noise"))),
        "chain_rejected_share": float(np.mean(ebm.history_.get("chain_rejected", [0.0]))),
    }
    return clf, samples


# --------------------------------------------------------------- scale-out
def ddp_worker(args):
    """One rank of the scale-out measurement (also run alone for 1 process)."""
    from implicit_geom.learning import distributed

    device = torch.device(args.device)
    if distributed.launched():
        _, device = distributed.init_distributed(args.device)
    ctx = distributed.context()
    images, _ = load_digits(return_labels=True)
    rows, _ = split(len(images), args.seed)
    train = images[rows].to(device)
    epochs, iters = (2, 2) if args.quick else (args.ddp_epochs, args.ddp_iters)
    preset = dict(mdf_preset("digits", len(train), train), epochs=epochs)
    mdf = NeuralImplicitManifold(64, 64 - args.latent_dim, seed=args.seed, device=device,
                                 progress=False, **preset)
    ctx.barrier()
    t0 = time.perf_counter()
    mdf.fit(train)
    ctx.barrier()
    t_mdf = (time.perf_counter() - t0) / epochs
    settings = dict(ebm_settings(args), n_iter=iters)
    ebm = ConstrainedEBM(mdf, seed=args.seed, progress=False, max_distance=None,
                         **settings)  # (as in density_section)
    ebm.energy_net.to(device)
    ctx.barrier()
    t0 = time.perf_counter()
    ebm.fit(train)
    ctx.barrier()
    t_ebm = (time.perf_counter() - t0) / iters
    if ctx.is_main:
        print("DDP_RESULT " + json.dumps({
            "processes": ctx.world_size, "mdf_epoch_s": t_mdf, "ebm_iter_s": t_ebm,
            "mdf_final_loss": mdf.history_["loss"][-1], "epochs": epochs, "ebm_iters": iters,
            "backend": "nccl" if device.type == "cuda" else "gloo"}), flush=True)
    distributed.shutdown_distributed()


def ddp_section(args, report):
    script = [str(Path(__file__).resolve()), "--ddp-worker", "--seed", str(args.seed),
              "--device", args.device, "--latent-dim", str(args.latent_dim),
              "--ddp-epochs", str(args.ddp_epochs), "--ddp-iters", str(args.ddp_iters),
              "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    commands = {1: [sys.executable] + script,
                args.ddp_procs: [torchrun, "--standalone", f"--nproc_per_node={args.ddp_procs}"]
                + script}
    rows = {}
    for procs, command in commands.items():
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("DDP_RESULT ")]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"the {procs}-process run failed:\n{out.stderr[-3000:]}")
        rows[procs] = json.loads(lines[-1].split(" ", 1)[1])
    report["ddp"] = rows


# --------------------------------------------------------------------- main
def print_table(report):
    m, o, d = report.get("manifold"), report.get("ood"), report.get("density")
    print(f"\nDigits 8x8 (64-D), manifold dimension {report['latent_dim']} (codimension "
          f"{64 - report['latent_dim']}), seed {report['seed']}, device {report['device']}")
    if m:
        print(f"\nHeld-out median distance to the manifold ({m['n_test']} images; data scale "
              f"{m['data_scale']:.3f} = median distance to the training mean):")
        for name, value in m["median_distance"].items():
            print(f"  {name:32s} {value:.3f}  ({value / m['data_scale']:.3f} of the scale)")
        print(f"  closest-point projections that failed: {m['projection_failures']}")
        print(f"  fit: MDF {m['mdf_fit_s']:.0f} s ({m['epochs']} epochs), "
              f"pushforward (AE + latent EBM) {m['pushforward_fit_s']:.0f} s")
    p = report.get("projection")
    if p:
        print("\nNewton at codimension "
              f"{64 - report['latent_dim']} (held-out images; 300 chains for Langevin):")
        for key in ("landing", "closest"):
            r = p[key]
            print(f"  {key:8s} {r['s']:.2f} s, converged {100 * r['converged']:.1f}%, median "
                  f"{r['median_iterations']:.0f} iterations, max |F| {r['max_abs_F']:.1e}")
        print(f"  constrained Langevin step: full Newton {1e3 * p['langevin_step_exact_s']:.0f} "
              f"ms, chord {1e3 * p['langevin_step_chord_s']:.0f} ms (rejected "
              f"{100 * p['langevin_rejected_exact']:.1f}% / "
              f"{100 * p['langevin_rejected_chord']:.1f}%)")
    if o:
        print(f"\nOut of distribution (train 0-4: {o['n_train']}; held-out 0-4: {o['n_in']}, "
              f"5-9: {o['n_out']}): AUROC")
        for name, value in o["auroc"].items():
            print(f"  {name:34s} {value:.4f}")
    if d:
        print(f"\nSamples ({d['n_samples']} chains, {d['sample_steps']} steps; Fréchet distance "
              f"to the held-out images in classifier features; EBM fit {d['ebm_fit_s']:.0f} s):")
        for name, row in d["rows"].items():
            t = "" if row["sample_s"] is None else f"  {row['sample_s']:.1f} s"
            print(f"  {name:28s} FD {row['frechet']:7.3f}  confidence "
                  f"{row['confidence']:.3f}{t}")
        print(f"  max |F| of our samples {d['max_abs_F_samples']:.1e}; chain steps rejected "
              f"in training {100 * d['chain_rejected_share']:.2f}%")
    if report.get("ddp"):
        print("\nData-parallel training (torch.distributed), seconds:")
        for procs, row in report["ddp"].items():
            print(f"  {procs} process(es), {row['backend']}: MDF epoch {row['mdf_epoch_s']:.2f}, "
                  f"EBM iteration {row['ebm_iter_s']:.2f}  (MDF loss after {row['epochs']} "
                  f"epochs {row['mdf_final_loss']:.3f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-samples", type=int, default=300)
    parser.add_argument("--sample-steps", type=int, default=300)
    parser.add_argument("--pf-step", type=float, default=0.4,
                        help="latent Langevin step of the pushforward EBM")
    parser.add_argument("--ddp-procs", type=int, default=2)
    parser.add_argument("--ddp-epochs", type=int, default=10)
    parser.add_argument("--ddp-iters", type=int, default=10)
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--docs", action="store_true",
                        help="also write the README's figure docs/digits_samples.png")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.ddp_worker:
        return ddp_worker(args)
    device = torch.device(args.device)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"seed": args.seed, "latent_dim": args.latent_dim, "device": str(device),
              "threads": args.threads, "quick": args.quick,
              "load_average": os.getloadavg()[0]}
    start = time.perf_counter()
    images, labels = load_digits(return_labels=True)
    rows_train, rows_test = split(len(images), args.seed)
    train, test = images[rows_train].to(device), images[rows_test].to(device)
    print("manifold ...", flush=True)
    mdf, pf = manifold_section(train, test, args, device, report)
    projection_section(mdf, test, report)
    print("out of distribution ...", flush=True)
    ood_section(images.to(device), labels, args, device, report)
    print("densities ...", flush=True)
    clf, samples = density_section(mdf, pf, train, test, labels[rows_train], args, device,
                                   report)
    report["density"]["classifier_test_accuracy"] = clf.accuracy(test.cpu().numpy(),
                                                                 labels[rows_test])
    if not args.skip_ddp:
        print("scale-out ...", flush=True)
        ddp_section(args, report)
    report["total_s"] = time.perf_counter() - start
    panels = {"held-out data": test, "ours (buffer)": samples["ours, buffer"],
              "ours (fresh noise)": samples["ours, fresh noise"],
              "pushforward (buffer)": samples["pushforward, buffer"],
              "pushforward (fresh noise)": samples["pushforward, fresh noise"]}
    fig = grid_figure({k: v.detach().cpu() for k, v in panels.items()}, SHAPE, n_images=64)
    fig.savefig(RESULTS / f"images_seed{args.seed}.png", dpi=90)
    if args.docs:  # the README's figure
        fig.savefig(Path(__file__).resolve().parents[1] / "docs" / "digits_samples.png", dpi=60)
    (RESULTS / f"images_seed{args.seed}.json").write_text(json.dumps(report, indent=1,
                                                                      default=float))
    print_table(report)
    print(f"\ntotal {report['total_s'] / 60:.1f} min; results in "
          f"{RESULTS / f'images_seed{args.seed}.json'}, sample grids in "
          f"{RESULTS / f'images_seed{args.seed}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
