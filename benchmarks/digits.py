"""Image-manifold experiment at CPU scale: scikit-learn's 8x8 digits (64-d).

The paper's MNIST setting (Ross et al. 2023, Sec. 6.3) learns an implicit
manifold of images with a neural MDF, then a constrained EBM on it. Here the
bundled ``sklearn.datasets.load_digits`` images (scaled to [0, 1]) play that
role: an MLP MDF ``F: R^64 -> R^k`` (manifold dimension ``64 - k``), a
constrained EBM trained by PCD with constrained Langevin chains, and, for
comparison, the pushforward EBM with the same latent dimension. Everything is
device-agnostic (``--device cuda`` runs the same code on a GPU).

Writes ``benchmarks/results/digits.png`` (sample grids: data, constrained EBM,
pushforward EBM) and ``digits.json`` (timings, |F| of the data and samples,
distance of samples to the nearest training image).

Usage::

    .venv/bin/python benchmarks/digits.py            # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/digits.py --quick
"""

import argparse
import json
import time
from pathlib import Path

import torch

import implicit_geom  # noqa: F401  (selects geomstats' pytorch backend)
from implicit_geom.learning import NeuralImplicitManifold
from implicit_geom.models import ConstrainedEBM, PushforwardEBM

RESULTS = Path(__file__).resolve().parent / "results"


def load_digits_tensor():
    from sklearn.datasets import load_digits

    images = load_digits().data / 16.0
    return torch.as_tensor(images, dtype=torch.float64)


def nearest_distance(samples, data):
    return torch.cdist(samples, data).min(dim=1).values


def save_grid(panels, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for ax, (title, imgs) in zip(axes, panels.items()):
        imgs = imgs[:64].clamp(0, 1).reshape(8, 8, 8, 8).permute(0, 2, 1, 3).reshape(64, 64)
        ax.imshow(imgs.cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    # Manifold dimension 48 (codimension 16): every Newton solve and Jacobian costs
    # O(codim) network passes, so the paper's small-dimensional image manifolds
    # (codimension ~ 54 here) are GPU work; 16 constraints run on a CPU in minutes.
    parser.add_argument("--latent-dim", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    implicit_geom.set_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    X = load_digits_tensor().to(device)
    gen = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(X.shape[0], generator=gen).to(device)
    train, test = X[perm[:1500]], X[perm[1500:]]
    codim = 64 - args.latent_dim
    report = {"latent_dim": args.latent_dim, "codim": codim, "device": str(device)}

    start = time.perf_counter()
    manifold = NeuralImplicitManifold(
        64, codim, hidden=(128, 128), epochs=3 if args.quick else 20, batch_size=128,
        n_negatives=64, buffer_size=512, seed=args.seed, device=device, progress=True,
    ).fit(train)
    report["time_mdf_s"] = time.perf_counter() - start
    report["median_abs_F_test"] = float(manifold.submersion(test).norm(dim=-1).median())
    print(f"MDF fitted in {report['time_mdf_s']:.0f} s; median |F| on test "
          f"{report['median_abs_F_test']:.3g}", flush=True)

    t0 = time.perf_counter()
    ebm = ConstrainedEBM(manifold, hidden=(128, 128), n_iter=20 if args.quick else 150,
                         n_mcmc_steps=5, step_size=0.1, batch_size=64, buffer_size=256,
                         chain_init="data", seed=args.seed, progress=True).fit(train)
    samples = ebm.sample(64, n_steps=50)
    report["time_ebm_s"] = time.perf_counter() - t0
    report["max_abs_F_samples"] = float(manifold.submersion(samples).norm(dim=-1).max())

    t0 = time.perf_counter()
    pf = PushforwardEBM(64, args.latent_dim, hidden=(128, 128),
                        ae_iter=300 if args.quick else 2000, n_iter=20 if args.quick else 150,
                        n_mcmc_steps=5, step_size=0.3, buffer_size=256, seed=args.seed).fit(train)
    pf_samples = pf.sample(64, n_steps=50)
    report["time_pushforward_s"] = time.perf_counter() - t0

    report["nearest_train_distance"] = {
        "test data": float(nearest_distance(test[:64], train).median()),
        "constrained EBM": float(nearest_distance(samples, train).median()),
        "pushforward EBM": float(nearest_distance(pf_samples, train).median()),
    }
    report["total_s"] = time.perf_counter() - start
    save_grid({"test data": test, "constrained EBM": samples, "pushforward EBM": pf_samples},
              RESULTS / "digits.png")
    (RESULTS / "digits.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
