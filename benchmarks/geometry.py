"""Geometry benchmark: projection throughput, Newton iterations, Frechet mean, exp/log.

Run:  python benchmarks/geometry.py [--quick] [--json PATH]

Every figure is measured in this run; ratios compare against geomstats'
analytic ``Hypersphere`` measured in the same process.
"""

import argparse
import json
import time
from pathlib import Path

import implicit_geom as ig  # selects the pytorch backend before geomstats
import torch
from geomstats.geometry.hypersphere import Hypersphere
from geomstats.learning.frechet_mean import FrechetMean

from implicit_geom.datasets import vmf_sphere

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeat=3):
    """Best-of-``repeat`` wall time and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def random_mlp(seed=0):
    """A random 3-32-32-1 SiLU MLP whose zero set crosses the box [-2, 2]^3."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(),
                              torch.nn.Linear(32, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))
    net = net.double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / p.shape[-1] ** 0.5)
        # Centre the output so F changes sign inside the box.
        box = 4 * torch.rand(4096, 3, generator=gen, dtype=torch.float64) - 2
        net[-1].bias -= net(box).median()
    return net


def projection_rows(name, manifold, points, repeat):
    rows = []
    for closest in (False, True):
        t, res = timed(lambda: manifold.solve_projection(points, closest=closest), repeat)
        ok = res.converged
        rows.append({
            "manifold": name,
            "mode": "closest point" if closest else "Newton landing",
            "points": len(points),
            "points_per_s": len(points) / t,
            "median_newton_iters": float(res.n_iter[ok].double().median()),
            "converged_frac": float(ok.double().mean()),
            "max_abs_F": float(res.residual[ok].max()),
        })
    return rows


def frechet_rows(n_points, repeat):
    hyper, sphere = Hypersphere(2), ig.ImplicitSphere(2)
    pts = vmf_sphere(n_points, mu=[0.0, 0.0, 1.0], kappa=5.0, seed=0)
    rows = []
    for eps in (1e-4, 1e-12):
        res = {}
        for label, space in (("Hypersphere", hyper), ("ImplicitSphere", sphere)):
            est = FrechetMean(space).set(epsilon=eps, max_iter=100)
            res[label] = timed(lambda est=est: est.fit(pts).estimate_, repeat)
        err = float((res["ImplicitSphere"][1] - res["Hypersphere"][1]).norm())
        rows.append({
            "epsilon": eps,
            "analytic_s": res["Hypersphere"][0],
            "implicit_s": res["ImplicitSphere"][0],
            "time_ratio": res["ImplicitSphere"][0] / res["Hypersphere"][0],
            "mean_error": err,
        })
    return rows


def exp_log_rows(n_pairs):
    hyper, sphere = Hypersphere(2), ig.ImplicitSphere(2)
    gen = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(4 * n_pairs, 3, generator=gen,
                                                  dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(4 * n_pairs, 3, generator=gen,
                                                  dtype=torch.float64), dim=-1)
    keep = hyper.metric.dist(a, b) <= 2.5
    a, b = a[keep][:n_pairs], b[keep][:n_pairs]
    v_ref = hyper.metric.log(b, a)
    t_log, v = timed(lambda: sphere.metric.log(b, a), 1)
    t_exp, e = timed(lambda: sphere.metric.exp(v_ref, a), 1)
    t_ref, _ = timed(lambda: hyper.metric.log(b, a), 3)
    rows = [{
        "manifold": "sphere vs Hypersphere",
        "pairs": len(a),
        "log_rel_err": float(((v - v_ref).norm(dim=-1) / v_ref.norm(dim=-1)).max()),
        "exp_err": float((e - hyper.metric.exp(v_ref, a)).norm(dim=-1).max()),
        "roundtrip_err": float((sphere.metric.log(e, a) - v_ref).norm(dim=-1).max()),
        "exp_ms": 1e3 * t_exp, "log_ms": 1e3 * t_log, "analytic_log_ms": 1e3 * t_ref,
    }]
    for name, space, scale in (("torus R=2 r=1", ig.ImplicitTorus(2.0, 1.0), 1.5),
                               ("random MLP 3-32-32-1", ig.ImplicitManifold(random_mlp(), 3, 1,
                                                                            bounds=([-2] * 3, [2] * 3)), 0.5)):
        base = space.random_point(n_pairs)
        vec = torch.nn.functional.normalize(space.random_tangent_vec(base), dim=-1)
        vec = vec * scale * torch.rand(n_pairs, 1, generator=gen, dtype=torch.float64)
        t_exp, end = timed(lambda: space.metric.exp(vec, base), 1)
        t_log, back = timed(lambda: space.metric.log(end, base), 1)
        rows.append({
            "manifold": name, "pairs": n_pairs, "log_rel_err": float("nan"),
            "exp_err": float(space.submersion(end).abs().max()),
            "roundtrip_err": float((back - vec).norm(dim=-1).max()),
            "exp_ms": 1e3 * t_exp, "log_ms": 1e3 * t_log, "analytic_log_ms": float("nan"),
        })
    return rows


def table(rows, cols):
    head = " | ".join(cols)
    lines = [head, " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])
                                for c in cols))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, one repeat")
    parser.add_argument("--json", type=Path, default=RESULTS / "geometry.json")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of torch and BLAS (1: small batched kernels)")
    args = parser.parse_args(argv)
    ig.set_threads(args.threads)
    torch.manual_seed(0)
    n = 2000 if args.quick else 10_000
    repeat = 1 if args.quick else 3

    gen = torch.Generator().manual_seed(0)
    sphere = ig.ImplicitSphere(2)
    near_sphere = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen,
                                                            dtype=torch.float64), dim=-1)
    near_sphere = near_sphere * (1 + 0.5 * (2 * torch.rand(n, 1, generator=gen) - 1))
    mlp = ig.ImplicitManifold(random_mlp(), 3, 1, bounds=([-2] * 3, [2] * 3))
    box = 4 * torch.rand(n, 3, generator=gen, dtype=torch.float64) - 2
    proj = (projection_rows("sphere, |x| in [0.5, 1.5]", sphere, near_sphere, repeat)
            + projection_rows("MLP 3-32-32-1, uniform in [-2,2]^3", mlp, box, repeat))
    fm = frechet_rows(100, repeat)
    el = exp_log_rows(50 if args.quick else 100)

    print("## Projection (batch of %d)" % n)
    print(table(proj, ["manifold", "mode", "points_per_s", "median_newton_iters",
                       "converged_frac", "max_abs_F"]))
    print("\n## Frechet mean of 100 vMF points: ImplicitSphere vs geomstats Hypersphere")
    print(table(fm, ["epsilon", "analytic_s", "implicit_s", "time_ratio", "mean_error"]))
    print("\n## exp / log")
    print(table(el, ["manifold", "pairs", "log_rel_err", "exp_err", "roundtrip_err",
                     "exp_ms", "log_ms", "analytic_log_ms"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"projection": proj, "frechet_mean": fm, "exp_log": el},
                                    indent=2))
    goals = {
        "MLP landing >= 1e5 points/s": proj[2]["points_per_s"] >= 1e5,
        "median Newton iterations <= 5 (landing)": max(
            r["median_newton_iters"] for r in proj if r["mode"] == "Newton landing") <= 5,
        "Frechet mean <= 20x analytic": max(r["time_ratio"] for r in fm) <= 20,
    }
    print("\n## Goals")
    for goal, met in goals.items():
        print(f"- {goal}: {'met' if met else 'NOT met'}")
    print(f"\n(written to {args.json}; wall times are the best of {repeat} runs)")


if __name__ == "__main__":
    main()
