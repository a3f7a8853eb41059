"""Geometry benchmark: projection throughput, Newton iterations, Frechet mean, exp/log,
curvature / transport / gradient accuracy, estimators on learned curves, geodesic
distance matrices.

Run:  python benchmarks/geometry.py [--quick] [--json PATH] [--threads N] [--jobs N]
      [--no-distances | --distances-only] [--malloc-default]

Every figure is measured in this run; ratios compare against geomstats'
analytic ``Hypersphere`` measured in the same process (the machine may be
shared: the ratios, not the absolute times, are the figures to compare).
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

import implicit_geom as ig  # selects the pytorch backend before geomstats
import torch
from geomstats.geometry.hypersphere import Hypersphere
from geomstats.learning.frechet_mean import FrechetMean
from tqdm import tqdm

from implicit_geom.datasets import vmf_sphere
from implicit_geom.learning.presets import ORIENTED
from implicit_geom.threads import check_jobs, reuse_freed_memory

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeat=3):
    """Best-of-``repeat`` wall time and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _cpu_now():
    """CPU seconds of this process and of its finished children (the worker
    processes of ``n_jobs`` are joined before a call returns)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_cpu(fn, repeat=3):
    """Best-of-``repeat`` wall time and CPU time (this process and its
    workers), and the last result.

    On a shared machine the wall time of a single-threaded run includes the
    time it waits for a core; the CPU time is the work it did, and ratios of
    CPU times are the stable comparison.
    """
    best_wall = best_cpu = float("inf")
    out = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), _cpu_now()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, _cpu_now() - cpu)
    return best_wall, best_cpu, out


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


def callable_sphere(radius=1.0):
    """The unit sphere given as a plain torch callable (generic autograd path)."""
    return ig.ImplicitManifold(lambda x: ((x * x).sum(-1, keepdim=True) - radius**2) / 2,
                               3, 1)


def frechet_rows(n_points, repeat):
    hyper = Hypersphere(2)
    pts = vmf_sphere(n_points, mu=[0.0, 0.0, 1.0], kappa=5.0, seed=0)
    rows = []
    for eps in (1e-4, 1e-12):
        res = {}
        for label, space in (("Hypersphere", hyper), ("ImplicitSphere", ig.ImplicitSphere(2)),
                             ("callable", callable_sphere())):
            est = FrechetMean(space).set(epsilon=eps, max_iter=100)
            res[label] = timed_cpu(lambda est=est: est.fit(pts).estimate_, repeat)
        for label in ("ImplicitSphere", "callable"):
            rows.append({
                "manifold": "closed form" if label == "ImplicitSphere" else "torch callable",
                "epsilon": eps,
                "analytic_cpu_s": res["Hypersphere"][1],
                "implicit_cpu_s": res[label][1],
                "cpu_ratio": res[label][1] / res["Hypersphere"][1],
                "wall_ratio": res[label][0] / res["Hypersphere"][0],
                "mean_error": float((res[label][2] - res["Hypersphere"][2]).norm()),
            })
    return rows


#: The learned glycine torus of the distance rows (and tutorial 4): oriented
#: where the orientation evidence is strong. Unoriented, fits on tuning seeds
#: 1-3 had 576 / 0 / 0 failures on 60 points (seed 1 folds); oriented at every
#: point, 607 / 896 / 805 (9% of glycine normals point inwards); oriented
#: where contrast >= 0.2, 0 / 0 / 0, and with 1600 epochs also 99.7% of pairs
#: within 1% of the analytic torus instead of 35 / 91 / 87%. The box encloses
#: the torus (box_margin 0.35): the residues span x in [-2.6, 2.5] of a torus
#: reaching +-4, and the default box (10% wider) left F untrained beyond it;
#: on 200 residues of tuning seeds 4 / 5, 99.8 / 99.98% of pairs within 1%
#: instead of 98.6 / 72.4%, in 1.03 / 0.82x the time (README: issue 15).
#: Three restarts, the best-conditioned fit kept: single fits folded on 2 of
#: tuning seeds 4-13 (seed 11: 135 failed pairs, conditioning 0.45; seed 13:
#: 0.32, the matrix unfinished after 30 min; the others 0.80-1.06); with restarts both
#: kept a fit of conditioning >= 0.95 and had 0 failures. Five restarts, the sound
#: one agreeing most with the others kept (restart_selection="agreement"): on fresh
#: tuning seeds 30-35 (rule written before the runs) 99.84% of pairs within 1% on
#: average (min 99.23%) against 99.55% (min 98.59%) for the best conditioned of three,
#: and no seed lower; 0 failures with both.
LEARNED_TORUS = dict(hidden=(64, 64, 64), epochs=1600, box_margin=0.35, n_restarts=5,
                     restart_selection="agreement", **ORIENTED)


def learned_circle(seed=0):
    """A circle learned from 400 von Mises points (the tests' settings)."""
    from implicit_geom.datasets import von_mises_circle

    data = von_mises_circle(400, kappa=0.5, seed=seed + 1)
    return ig.NeuralImplicitManifold(2, hidden=(32, 32), epochs=150, batch_size=400,
                                     n_negatives=64, buffer_size=256, langevin_steps=3,
                                     seed=seed, progress=False).fit(data)


def kde_rows(n_points=20):
    """geomstats' KernelDensityEstimationClassifier (sklearn calls dist pair by pair)
    fitted on ``n_points`` labelled points of a learned circle, predicting as
    many new ones; against the analytic circle ``Hypersphere(1)``. The learned
    model is fitted first (not timed); the timing includes everything the
    classifier triggers on the fresh model (tracing its arc-length table)."""
    from geomstats.learning.kernel_density_estimation_classifier import (
        KernelDensityEstimationClassifier,
    )

    start = time.perf_counter()
    model = learned_circle()
    fit_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(0)
    ang = 2 * torch.pi * torch.rand(2 * n_points, generator=gen, dtype=torch.float64)
    circle = torch.stack([ang.cos(), ang.sin()], -1)
    on_model = model.projection(circle)
    labels = (circle[:, 1] > 0).long()
    res = {}
    for label, space, pts in (("analytic", Hypersphere(1), circle), ("learned", model, on_model)):
        def run(space=space, pts=pts):
            clf = KernelDensityEstimationClassifier(space, bandwidth=0.5)
            return clf.fit(pts[:n_points], labels[:n_points]).predict(pts[n_points:])

        wall, cpu, pred = timed_cpu(run, 1)  # once: the first call traces the curve
        res[label] = (wall, cpu, float((torch.as_tensor(pred) == labels[n_points:]).double()
                                       .mean()))
    return [{
        "points": n_points, "mdf_fit_s": fit_s, "analytic_s": res["analytic"][0],
        "learned_s": res["learned"][0], "learned_cpu_s": res["learned"][1],
        "cpu_ratio": res["learned"][1] / res["analytic"][1],
        "accuracy_analytic": res["analytic"][2], "accuracy_learned": res["learned"][2],
    }]


def accuracy_rows():
    """Curvature, transport, gradients and regression on plain callables against
    closed forms / Hypersphere (errors are max abs over the batch)."""
    from geomstats.learning.geodesic_regression import GeodesicRegression

    rows = []
    gen = torch.Generator().manual_seed(2)
    hyper = Hypersphere(2)
    x = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen, dtype=torch.float64), dim=-1)
    a = hyper.to_tangent(torch.randn(50, 3, generator=gen, dtype=torch.float64), x)
    b = hyper.to_tangent(torch.randn(50, 3, generator=gen, dtype=torch.float64), x)
    for radius in (1.0, 2.0):
        k = callable_sphere(radius).metric.sectional_curvature(a, b, radius * x)
        rows.append({"quantity": f"sectional curvature, sphere of radius {radius:g} (callable)",
                     "max_abs_error": float((k - radius**-2).abs().max())})
    big, small = 2.0, 1.0
    torus = ig.ImplicitManifold(
        lambda p: ((torch.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - big) ** 2 + p[..., 2] ** 2
                   - small**2)[..., None] / (2 * small), 3, 1)
    theta = torch.linspace(-3.1, 3.1, 50, dtype=torch.float64)
    phi = torch.linspace(0, 6.2, 50, dtype=torch.float64)
    rho = big + small * theta.cos()
    pts = torch.stack([rho * phi.cos(), rho * phi.sin(), small * theta.sin()], -1)
    e_phi = torch.stack([-phi.sin(), phi.cos(), 0 * phi], -1)
    e_theta = torch.stack([-theta.sin() * phi.cos(), -theta.sin() * phi.sin(), theta.cos()], -1)
    k = torus.metric.sectional_curvature(e_phi, e_theta, pts)
    rows.append({"quantity": "Gaussian curvature, torus R=2 r=1 (callable)",
                 "max_abs_error": float((k - theta.cos() / (small * rho)).abs().max())})
    sphere = callable_sphere()
    direction = 1.2 * a
    ref = hyper.metric.parallel_transport(b, x, direction=direction)
    out = sphere.metric.parallel_transport(b, x, direction=direction)
    rows.append({"quantity": "parallel transport vs Hypersphere (|v| up to 3.6)",
                 "max_abs_error": float((out - ref).abs().max())})
    y = hyper.metric.exp(0.8 * b, x)
    xg = x.clone().requires_grad_(True)
    d = sphere.metric.dist(xg, y)
    d.sum().backward()
    tangential = sphere.to_tangent(xg.grad, x)
    expected = -hyper.metric.log(y, x) / d.detach()[:, None]
    rows.append({"quantity": "tangential gradient of dist vs -log/d",
                 "max_abs_error": float((tangential - expected).abs().max())})
    t = torch.linspace(-1, 1, 20, dtype=torch.float64)
    base = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    targets = hyper.projection(hyper.metric.exp(t[:, None] * torch.tensor(
        [0.6, 0.3, 0.0], dtype=torch.float64), base)
        + 0.05 * torch.randn(20, 3, generator=gen, dtype=torch.float64))
    fits, times = {}, {}
    for label, space in (("hyper", hyper), ("implicit", sphere)):
        reg = GeodesicRegression(space, method="riemannian", initialization="frechet")
        start = time.perf_counter()
        reg.fit(t, targets)
        times[label] = time.perf_counter() - start
        fits[label] = torch.cat([torch.as_tensor(reg.intercept_), torch.as_tensor(reg.coef_)])
    rows.append({"quantity": (f"GeodesicRegression(riemannian) vs Hypersphere "
                              f"({times['implicit'] / times['hyper']:.0f}x its time)"),
                 "max_abs_error": float((fits["implicit"] - fits["hyper"]).abs().max())})
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


def attribute_learned_errors(torus, learned, points, on_learned, d_tor, d_learn, train,
                             seed, gap=0.5, n_times=401, max_pairs=1000):
    """Why learned-torus distances differ from the analytic torus's by more than 1%.

    For each such pair, the analytic torus's geodesic is projected onto the
    learned surface: a curve on it of known length (an upper bound on the
    learned distance in that homotopy class). A learned distance longer than
    that curve means the solver missed the minimiser on the learned surface;
    otherwise the learned surface itself is longer there, by the offset from
    the torus measured along the curve. ``gap``: how far (ambient) the analytic
    geodesic passes from every training residue, against a sample of the
    pairs within 1%; and the share of the torus's area that has no residue
    within ``gap`` (uniform by area), with the learned surface's offset there.
    """
    import numpy as np

    from implicit_geom.datasets import torus_embed
    from implicit_geom.exceptions import ProjectionError

    n = d_tor.shape[0]
    iu = np.triu_indices(n, 1)
    keep = (d_tor[iu] > 1e-9) & np.isfinite(d_learn[iu])
    rel = np.full(keep.shape, np.nan)
    rel[keep] = (d_learn[iu][keep] - d_tor[iu][keep]) / d_tor[iu][keep]
    bad = np.abs(np.nan_to_num(rel)) > 0.01
    rng = np.random.default_rng(seed)
    good = rng.choice(np.flatnonzero(keep & ~bad), min(500, int((keep & ~bad).sum())),
                      replace=False)
    train = torch.as_tensor(train, dtype=torch.float64)
    t = torch.linspace(0, 1, n_times, dtype=torch.float64)

    def project(x):
        """Closest points on the learned surface; NaN where Newton fails."""
        out = torch.full_like(x, math.nan)
        todo = torch.ones(len(x), dtype=torch.bool)
        for _ in range(3):  # Newton's batch may fail anew on a subset
            try:
                out[todo] = learned.projection(x[todo])
                break
            except ProjectionError as err:
                todo[todo.clone()] = ~err.failed
        return out

    def nearest(x, chunk=20000):
        """Distance from each point to its nearest training residue (chunked: memory)."""
        return torch.cat([torch.cdist(c, train).amin(-1) for c in x.split(chunk)])

    def along(which):
        i, j = iu[0][which], iu[1][which]
        path = torus.metric.log_solver.geodesic_bvp(points[j], points[i])(t)  # (P, T, 3)
        on = project(path.reshape(-1, 3)).reshape(path.shape)
        length = (on[:, 1:] - on[:, :-1]).norm(dim=-1).sum(-1).numpy()
        offset = (on - path).norm(dim=-1).amax(-1).numpy()
        far = nearest(path.reshape(-1, 3)).reshape(path.shape[:2])
        return length, offset, far.amax(-1).numpy()

    out = {"n_over_1pct": int(bad.sum()), "n_examined": 0,
           "n_over_1pct_longer": int((rel[bad] > 0).sum())}
    if bad.any():
        # At most max_pairs of them (time and memory on a poor fit), at random.
        which = np.flatnonzero(bad)
        if which.size > max_pairs:
            which = np.sort(rng.choice(which, max_pairs, replace=False))
        length, offset, far = along(which)
        _, offset_good, far_good = along(good)
        d_bad = d_learn[iu][which]
        out.update(
            n_examined=int(which.size),
            # (b) the solver: a learned distance above a curve on the learned surface
            n_solver_beaten=int((d_bad > length * (1 + 1e-3)).sum()),
            n_projection_failed=int(np.isnan(length).sum()),
            offset_along_median=float(np.nanmedian(offset)),
            offset_along_max=float(np.nanmax(offset)),
            offset_along_good_median=float(np.nanmedian(offset_good)),
            gap_share_bad=float((far > gap).mean()),
            gap_share_good=float((far_good > gap).mean()))
    # Area-uniform sample of the torus: how much of it the data leave empty.
    gen = torch.Generator().manual_seed(seed)
    R, r = float(torus.major_radius), float(torus.minor_radius)
    phi = 2 * math.pi * torch.rand(40000, generator=gen, dtype=torch.float64)
    theta = 2 * math.pi * torch.rand(40000, generator=gen, dtype=torch.float64)
    accept = torch.rand(40000, generator=gen, dtype=torch.float64) * (R + r) \
        <= R + r * torch.cos(theta)
    sample = torus_embed(phi[accept], theta[accept], R, r)
    empty = nearest(sample) > gap
    on = project(sample)
    off = (on - sample).norm(dim=-1)
    # Signed (the torus's signed distance of the learned point, negative inside
    # the tube): a bias to one side shows in its mean; the unsigned median hides it.
    inside = torch.hypot(torch.hypot(on[:, 0], on[:, 1]) - R, on[:, 2]) - r
    out.update(gap=gap, area_share_empty=float(empty.double().mean()),
               offset_empty_signed_mean=float(inside[empty].nanmean()),
               offset_empty_median=float(off[empty].nanmedian()),
               offset_empty_max=float(off[empty][~off[empty].isnan()].max()),
               offset_covered_median=float(off[~empty].nanmedian()))
    return out


def learned_matrix(train, points, d_tor, recipe, seed, jobs):
    """Fit the learned torus (``recipe``, fit seed ``seed``) and time its matrix.

    The restarts and the matrix run in ``jobs`` processes (one thread each:
    the same fits and distances as one after another). Returns the model, the
    points projected onto it, the solver's result and the row fields every
    fit seed reports: against the analytic torus's distances ``d_tor``, over
    the pairs of distinct points (failed pairs count as not within 1%; the
    max and median are over the others), and the fit's and matrix's times.
    """
    import numpy as np

    t_fit, learned = timed(lambda: ig.NeuralImplicitManifold(
        3, 1, **recipe, seed=seed, n_jobs=jobs, progress=False).fit(train), 1)
    on_learned = learned.projection(points)
    t_learn, c_learn, res = timed_cpu(
        lambda: learned.metric.log_solver.pairwise(on_learned, n_jobs=jobs), 1)
    iu = np.triu_indices(len(points), 1)
    keep = d_tor[iu] > 1e-9
    rel = np.abs(res.dist.numpy()[iu][keep] - d_tor[iu][keep]) / d_tor[iu][keep]
    fields = {"seed": seed, "kept": getattr(learned, "restart_", 0),
              "conditioning": learned.conditioning_,
              "failures": int(torch.triu(res.failed, 1).sum()),
              "within_1pct": float((rel <= 0.01).mean()),
              "max_err": float(np.nanmax(rel)), "median_err": float(np.nanmedian(rel)),
              "seconds": t_learn, "cpu_seconds": c_learn, "fit_s": t_fit}
    return learned, on_learned, res, fields


def seed_rows(train, points, d_tor, recipe, seeds, jobs):
    """The learned torus of :func:`distance_rows` refitted with other fit seeds,
    on the same points: how much the issue-15 figures depend on the seed."""
    return [learned_matrix(train, points, d_tor, recipe, seed, jobs)[3]
            for seed in tqdm(seeds, desc="learned torus, other fit seeds")]


def print_seed_rows(rows, seed0):
    """The per-seed table and its summary (std with ddof=1), the main fit's row first."""
    import numpy as np

    rows = [seed0] + rows
    print("\n## Learned torus distance matrix by fit seed (same points, same recipe)")
    shown = [{"seed": r["seed"], "kept restart": r["kept"],
              "conditioning": ("-" if r["conditioning"] is None
                               else f"{r['conditioning']:.3f}"),
              "failures": r["failures"], "within 1%": f"{100 * r['within_1pct']:.3f}%",
              "max err": f"{100 * r['max_err']:.2f}%", "median err": f"{r['median_err']:.1e}",
              "matrix s": f"{r['seconds']:.1f}", "fit s": f"{r['fit_s']:.0f}"} for r in rows]
    print(table(shown, list(shown[0])))
    within = np.array([r["within_1pct"] for r in rows])
    print(f"- within 1% over {len(rows)} seeds: mean {100 * within.mean():.3f}%, std "
          f"{100 * within.std(ddof=1):.3f} pp, min {100 * within.min():.3f}%; every pair "
          f"within 1% on {sum(r['max_err'] <= 0.01 for r in rows)}, 0 failures on "
          f"{sum(r['failures'] == 0 for r in rows)}")


def distance_rows(n_points, threads, reference=True, mdf_seed=0, mdf_restarts=None,
                  unoriented=False, box_margin=None, jobs=1, other_seeds=(), selection=None,
                  points_seed=0):
    """Distance matrices (``metric.dist_pairwise``), all in this run.

    The two torus matrices and the learned torus's restarts use ``jobs``
    processes (``n_jobs``; the issue's goal is on 2 cores); the sphere and
    ``Hypersphere`` run in one process, for their ratio.

    - callable implicit sphere (a plain torch lambda, autograd derivatives) vs
      geomstats' ``Hypersphere`` on the same points;
    - the analytic torus (R=3, r=1) on ``n_points`` random glycine residues,
      against the independent intrinsic-BVP reference of
      ``benchmarks/torus_reference.py`` (computed and cached on first use);
    - the torus learned from all glycine residues (as in tutorial 4) on the
      same residues projected onto it, against the analytic torus; and, for
      each of ``other_seeds``, the same with that fit seed (its row's
      ``other_seeds``).
    """
    import numpy as np

    import torus_reference

    rows = []
    load_before = os.getloadavg()[0]
    gen = torch.Generator().manual_seed(3)
    pts = torch.nn.functional.normalize(torch.randn(n_points, 3, generator=gen,
                                                    dtype=torch.float64), dim=-1)
    hyper = Hypersphere(2)
    t_ref, c_ref, d_ref = timed_cpu(lambda: hyper.metric.dist_pairwise(pts), 1)
    sphere = ig.ImplicitManifold(lambda x: ((x * x).sum(-1, keepdim=True) - 1) / 2, 3, 1,
                                 bounds=([-1.5] * 3, [1.5] * 3), name="callable sphere")
    t_sph, c_sph, d_sph = timed_cpu(lambda: sphere.metric.dist_pairwise(pts), 1)
    rows.append({"manifold": "callable sphere (graph built in the call)", "points": n_points,
                 "seconds": t_sph, "vs_Hypersphere": t_sph / t_ref, "cpu_seconds": c_sph,
                 "cpu_vs_Hypersphere": c_sph / c_ref,
                 "failures": int(torch.isnan(d_sph).sum()),
                 "max_err": float((d_sph - d_ref).abs().max()), "ambiguous": float("nan")})
    rows.append({"manifold": "geomstats Hypersphere", "points": n_points, "seconds": t_ref,
                 "vs_Hypersphere": 1.0, "cpu_seconds": c_ref, "cpu_vs_Hypersphere": 1.0,
                 "failures": 0, "max_err": 0.0,
                 "ambiguous": float("nan")})

    # points_seed: which residues are scored (0: the sample the recipe was tuned on).
    data, ref, unresolved = (torus_reference.load_or_compute(n_points, points_seed) if reference
                             else (torus_reference.glycine_angles(n_points, points_seed)[0],
                                   None, None))
    torus = ig.ImplicitTorus(data.meta["R"], data.meta["r"])
    iu = np.triu_indices(n_points, 1)
    t_tor, c_tor, res_tor = timed_cpu(
        lambda: torus.metric.log_solver.pairwise(data.points, n_jobs=jobs), 1)
    d_tor = res_tor.dist.numpy()
    row = {"manifold": "analytic torus R=3 r=1, glycine", "points": n_points, "seconds": t_tor,
           "vs_Hypersphere": t_tor / t_ref, "cpu_seconds": c_tor,
           "cpu_vs_Hypersphere": c_tor / c_ref, "failures": int(torch.triu(res_tor.failed, 1).sum()),
           "ambiguous": float(torch.triu(res_tor.ambiguous, 1).sum())}
    if ref is not None:
        keep = ref[iu] > 0
        rel = (d_tor[iu][keep] - ref[iu][keep]) / ref[iu][keep]
        row.update(max_err=float(np.abs(rel).max()), max_excess=float(rel.max()),
                   n_over_1e3=int((np.abs(rel) > 1e-3).sum()),
                   zero_pairs_max=float(np.abs(d_tor[iu][~keep]).max()) if (~keep).any() else 0.0,
                   reference_unresolved=int(np.triu(unresolved, 1).sum()))
    rows.append(row)

    from implicit_geom.datasets import load_dataset

    glycine = load_dataset("glycine")
    # --unoriented: the recipe before 2026-12-03 (400 epochs, no orientation, default box).
    recipe = (dict(LEARNED_TORUS, mu_orient=0.0, epochs=400, box_margin=0.1, n_restarts=1)
              if unoriented else LEARNED_TORUS)
    if mdf_restarts is not None:  # --mdf-restarts
        recipe = dict(recipe, n_restarts=mdf_restarts)
    if box_margin is not None:  # --mdf-box-margin (see the README's issue-15 row)
        recipe = dict(recipe, box_margin=box_margin)
    if selection is not None:  # --mdf-selection
        recipe = dict(recipe, restart_selection=selection)
    learned, on_learned, res_learn, fields = learned_matrix(
        glycine.points, data.points, d_tor, recipe, mdf_seed, jobs)
    d_learn = res_learn.dist.numpy()
    kind = ("most agreeing" if learned.restart_selection == "agreement"
            else "best-conditioned")
    restarts = (f", {kind} of {recipe['n_restarts']} restarts (kept {learned.restart_}, "
                f"scores {', '.join(f'{v:.3g}' for v in learned.restart_scores_)})"
                if recipe['n_restarts'] > 1 else "")
    orient = ("unoriented" if unoriented else
              f"oriented where contrast >= {recipe['orient_min_contrast']}")
    rows.append({"manifold": f"learned torus (64x3 MLP, {recipe['epochs']} epochs, {orient}, "
                             f"box margin {recipe['box_margin']}, seed {mdf_seed}{restarts}), glycine",
                 "points": n_points, **fields,
                 "vs_Hypersphere": fields["seconds"] / t_ref,
                 "cpu_vs_Hypersphere": fields["cpu_seconds"] / c_ref,
                 "ambiguous": float(torch.triu(res_learn.ambiguous, 1).sum()),
                 "offset_median": float((on_learned - data.points).norm(dim=-1).median())})
    load_after = os.getloadavg()[0]
    # How the pairs were solved (see GeodesicLogSolver): shot geodesics
    # certified minimising (near / injectivity / graph corridor), and pairs
    # that took the graph and path straightening.
    for r, space in ((rows[0], sphere), (rows[2], torus), (rows[3], learned)):
        st = space.metric.log_solver.stats
        r["solved_by"] = (f"near {st.get('certified_near', 0)}, inj "
                          f"{st.get('certified_injectivity', 0)}, corridor "
                          f"{st.get('certified_graph', 0)}, graph {st.get('far', 0)}")
    # After reading the solvers' stats: this solves on the analytic torus again.
    rows[3].update(attribute_learned_errors(torus, learned, data.points, on_learned, d_tor,
                                            d_learn, glycine.points, mdf_seed))
    for i, r in enumerate(rows):
        r.update(threads=threads, jobs=jobs if i >= 2 else 1,
                 load_1min=max(load_before, load_after))
    if other_seeds:
        rows[3]["other_seeds"] = seed_rows(glycine.points, data.points, d_tor, recipe,
                                           other_seeds, jobs)
    return rows


def print_attribution(lrn):
    """The learned-torus row's error attribution (:func:`attribute_learned_errors`)."""
    print(f"- learned vs analytic torus: max rel. diff {lrn['max_err']:.3g}, median "
          f"{lrn['median_err']:.2e}, within 1%: {100 * lrn['within_1pct']:.1f}% of pairs "
          f"(residues moved {lrn['offset_median']:.1e} by the projection; fit "
          f"{lrn['fit_s']:.0f} s)")
    if lrn.get("n_over_1pct"):
        print(f"- pairs off by > 1%: {lrn['n_over_1pct']} ({lrn['n_over_1pct_longer']} longer "
              f"on the learned torus; {lrn['n_examined']} examined, at random beyond 1000); "
              f"learned distance above the analytic geodesic projected "
              f"onto the learned surface (solver missed the minimiser): "
              f"{lrn['n_solver_beaten']} (projection failed on {lrn['n_projection_failed']}); "
              f"learned surface's offset from the torus along those geodesics: median "
              f"{lrn['offset_along_median']:.3f}, max {lrn['offset_along_max']:.3f} (pairs "
              f"within 1%: median {lrn['offset_along_good_median']:.3f}); geodesic passes "
              f"> {lrn['gap']} from every training residue: {100 * lrn['gap_share_bad']:.0f}% "
              f"of them (pairs within 1%: {100 * lrn['gap_share_good']:.0f}%)")
    print(f"- torus area with no residue within {lrn['gap']}: "
          f"{100 * lrn['area_share_empty']:.0f}%; learned surface's offset there median "
          f"{lrn['offset_empty_median']:.3f}, max {lrn['offset_empty_max']:.3f}, signed mean "
          f"{lrn['offset_empty_signed_mean']:+.3f} (negative: inside the tube; elsewhere "
          f"median {lrn['offset_covered_median']:.4f})")


def table(rows, cols):
    head = " | ".join(cols)
    lines = [head, " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(f"{r.get(c, float('nan')):.3g}"
                                if isinstance(r.get(c, float("nan")), float)
                                else str(r[c]) for c in cols))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, one repeat")
    parser.add_argument("--json", type=Path, default=RESULTS / "geometry.json")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of torch and BLAS (1: small batched kernels)")
    parser.add_argument("--distances", action=argparse.BooleanOptionalAction, default=True,
                        help="distance matrices (200 points; a few minutes, plus the torus "
                        "reference the first time)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the independent torus reference (accuracy columns)")
    parser.add_argument("--distances-only", action="store_true",
                        help="only the distance matrices")
    parser.add_argument("--mdf-seed", type=int, default=0,
                        help="seed of the learned torus's fit (reported: 0)")
    parser.add_argument("--mdf-seeds", type=int, nargs="+", default=[], metavar="SEED",
                        help="also refit the learned torus with these fit seeds (same points, "
                        "same recipe) and summarise within 1%% over all seeds (about 6 min "
                        "each at --jobs 2)")
    parser.add_argument("--points-seed", type=int, default=0,
                        help="seed of the 200 glycine residues whose distances are measured "
                        "(0: the sample the learned-torus recipe was tuned on; another seed "
                        "scores residue pairs no tuning run saw)")
    parser.add_argument("--unoriented", action="store_true",
                        help="learned torus without the orientation term, 400 epochs, the "
                        "default box (the recipe before 2026-12-03)")
    parser.add_argument("--mdf-restarts", type=int, default=None,
                        help="fits of the learned torus (NeuralImplicitManifold's n_restarts; "
                        "default: the recipe's 5, "
                        "--unoriented 1)")
    parser.add_argument("--mdf-selection", choices=("conditioning", "agreement"), default=None,
                        help="which restart of the learned torus is kept (NeuralImplicitManifold's "
                        "restart_selection; default: the recipe's)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="processes for the torus distance matrices and the learned torus's "
                        "restarts (n_jobs; default 2: "
                        "the goal is on 2 cores; 1: one process)")
    parser.add_argument("--malloc-default", action="store_true",
                        help="keep glibc's default malloc settings (default: "
                        "implicit_geom.threads.reuse_freed_memory)")
    parser.add_argument("--mdf-box-margin", type=float, default=None,
                        help="box margin of the learned torus's fit (default: the recipe's "
                        "0.35, whose box encloses the torus; 0.1, the class default and the "
                        "recipe before 2026-12-03 (later), cuts it)")
    args = parser.parse_args(argv)
    if args.mdf_box_margin is not None and not args.mdf_box_margin >= 0:
        parser.error(f"--mdf-box-margin must be >= 0, got {args.mdf_box_margin}")
    if args.mdf_restarts is not None and not args.mdf_restarts >= 1:
        parser.error(f"--mdf-restarts must be >= 1, got {args.mdf_restarts}")
    try:
        check_jobs(args.jobs)
    except ValueError as err:
        parser.error(f"--jobs: {err}")
    ig.set_threads(args.threads)
    allocator = ("glibc default" if args.malloc_default or not reuse_freed_memory()
                 else "reuse_freed_memory")
    print(f"threads {args.threads}, jobs {args.jobs} (torus matrices, restarts), "
          f"malloc: {allocator}")
    torch.manual_seed(0)
    n = 2000 if args.quick else 10_000
    repeat = 1 if args.quick else 3
    if args.distances_only:
        dist = distance_rows(200, args.threads, not args.no_reference, args.mdf_seed,
                             args.mdf_restarts, args.unoriented, args.mdf_box_margin, args.jobs,
                             args.mdf_seeds, args.mdf_selection, args.points_seed)
        print("## Distance matrices (dist_pairwise), 200 x 200")
        print(table(dist, ["manifold", "seconds", "vs_Hypersphere", "cpu_seconds",
                           "cpu_vs_Hypersphere", "failures", "ambiguous", "max_err", "threads",
                           "jobs", "load_1min", "solved_by"]))
        print_attribution(dist[3])
        if args.mdf_seeds:
            print_seed_rows(dist[3]["other_seeds"], dist[3])
        print(json.dumps(dist, indent=1))
        return

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
    dist = (distance_rows(200, args.threads, not args.no_reference, args.mdf_seed,
                          args.mdf_restarts, args.unoriented, args.mdf_box_margin, args.jobs,
                          args.mdf_seeds, args.mdf_selection, args.points_seed)
            if args.distances else [])
    kde = kde_rows(20)
    acc = accuracy_rows()

    print("## Projection (batch of %d)" % n)
    print(table(proj, ["manifold", "mode", "points_per_s", "median_newton_iters",
                       "converged_frac", "max_abs_F"]))
    print("\n## Frechet mean of 100 vMF points: implicit spheres vs geomstats Hypersphere")
    print(table(fm, ["manifold", "epsilon", "analytic_cpu_s", "implicit_cpu_s", "cpu_ratio",
                     "wall_ratio", "mean_error"]))
    print("\n## exp / log")
    print(table(el, ["manifold", "pairs", "log_rel_err", "exp_err", "roundtrip_err",
                     "exp_ms", "log_ms", "analytic_log_ms"]))
    print("\n## Kernel-density classifier, 20 points on a learned circle vs Hypersphere(1)")
    print(table(kde, ["points", "mdf_fit_s", "analytic_s", "learned_s", "learned_cpu_s",
                      "cpu_ratio", "accuracy_analytic", "accuracy_learned"]))
    print("\n## Accuracy of curvature, transport, gradients, regression")
    print(table(acc, ["quantity", "max_abs_error"]))
    if dist:
        print("\n## Distance matrices (dist_pairwise), 200 x 200")
        print(table(dist, ["manifold", "seconds", "vs_Hypersphere", "cpu_seconds",
                           "cpu_vs_Hypersphere", "failures", "ambiguous", "max_err", "threads",
                           "jobs", "load_1min", "solved_by"]))
        tor, lrn = dist[2], dist[3]
        if "n_over_1e3" in tor:
            print(f"- analytic torus vs intrinsic-BVP reference: max rel. error "
                  f"{tor['max_err']:.2e}, max excess {tor['max_excess']:.2e}, pairs > 1e-3: "
                  f"{tor['n_over_1e3']}, reference classes unresolved: "
                  f"{tor['reference_unresolved']}")
        print_attribution(lrn)
        if args.mdf_seeds:
            print_seed_rows(lrn["other_seeds"], lrn)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"projection": proj, "frechet_mean": fm, "exp_log": el,
                                     "kde_learned_circle": kde, "accuracy": acc,
                                     "distances": dist}, indent=2))
    goals = {
        "MLP landing >= 1e5 points/s": proj[2]["points_per_s"] >= 1e5,
        "median Newton iterations <= 5 (landing)": max(
            r["median_newton_iters"] for r in proj if r["mode"] == "Newton landing") <= 5,
        "Frechet mean, closed-form sphere <= 20x analytic (CPU time)": max(
            r["cpu_ratio"] for r in fm if r["manifold"] == "closed form") <= 20,
        "Frechet mean, callable sphere <= 20x analytic (CPU time)": max(
            r["cpu_ratio"] for r in fm if r["manifold"] == "torch callable") <= 20,
        "KDE classifier, 20 points on a learned circle <= 2 s (wall)":
            kde[0]["learned_s"] <= 2.0,
        "curvature, transport, gradients to 1e-6": all(
            r["max_abs_error"] <= 1e-6 for r in acc[:-1]),
        "GeodesicRegression to 1e-3": acc[-1]["max_abs_error"] <= 1e-3,
    }
    if dist:
        goals.update({
            "callable sphere 200x200 <= 20x Hypersphere": dist[0]["vs_Hypersphere"] <= 20,
            "analytic torus: 0 failures": dist[2]["failures"] == 0,
            "analytic torus: every distance within 1e-3 of the reference":
                dist[2].get("n_over_1e3", 1) == 0,
            "learned torus: 0 failures": dist[3]["failures"] == 0,
            "learned torus within 1% of the analytic torus": dist[3]["max_err"] <= 0.01,
            f"learned torus 200x200 <= 60 s on 2 cores (this run: {dist[3]['jobs']} "
            "process(es))": dist[3]["seconds"] <= 60,
        })
    print("\n## Goals")
    for goal, met in goals.items():
        print(f"- {goal}: {'met' if met else 'NOT met'}")
    print(f"\n(written to {args.json}; times are the best of {repeat} runs; ratios of "
          "process CPU time are stable on a shared machine, wall-time ratios are not)")


if __name__ == "__main__":
    main()
