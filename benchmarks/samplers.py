"""Sampler benchmark: our batched exact constrained samplers against mici, the
unadjusted sampler's bias, and one constrained Langevin step on a learned MDF.

Run:  python benchmarks/samplers.py [--quick] [--threads N] [--json PATH]

Targets (exact answers known):
- vMF on S^2, kappa = 5: E[z] = coth(kappa) - 1/kappa;
- uniform (Hausdorff) on the torus R = 1, r = 0.5: E[cos theta] = r / (2R).

For each target mici (``DynamicMultinomialHMC`` + ``ConstrainedLeapfrogIntegrator``
on ``DenseConstrainedEuclideanMetricSystem`` with analytic numpy derivatives,
its default dual-averaging warm-up, chains run one after the other) and our
samplers (all chains as one tensor) run in this process; ESS/s is the ESS of the
statistic's mean divided by the wall time of the whole sampling call, warm-up
included, and every ratio compares figures measured in this run. ``max|F|`` is
re-evaluated on every kept sample. mici is an optional extra (``pip install
.[bench]``); without it its rows are skipped.

The MDF part fits ``NeuralImplicitManifold`` (2 -> 8 -> 8 -> 8 -> 1 SiLU) to the
two-circle data and times ``ConstrainedLangevin`` transitions for 1000 chains
(median of many steps after warm-up), checking every emitted state's ``|F|``.
"""

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

import implicit_geom  # noqa: F401  (selects the pytorch backend before geomstats)
import numpy as np
import torch

from implicit_geom.datasets import two_circles
from implicit_geom.manifolds import ImplicitSphere, ImplicitTorus
from implicit_geom.sampling import (
    EMIT_TOL,
    ConstrainedHMC,
    ConstrainedLangevin,
    ConstrainedMALA,
    monte_carlo_estimate,
)

RESULTS = Path(__file__).resolve().parent / "results"
KAPPA, BIG, SMALL = 5.0, 1.0, 0.5


# ------------------------------------------------------------------- targets
def vmf_target():
    """vMF(e_z, kappa) on the unit sphere; statistic z."""
    return dict(
        name="vMF S^2 (kappa=5)",
        manifold=ImplicitSphere(2),
        energy=lambda x: -KAPPA * x[..., 2],
        statistic=lambda x: x[..., 2],
        exact=1.0 / math.tanh(KAPPA) - 1.0 / KAPPA,
        mici=dict(
            neg_log_dens=lambda q: -KAPPA * q[2],
            grad_neg_log_dens=lambda q: np.array([0.0, 0.0, -KAPPA]),
            constr=lambda q: np.array([(q @ q - 1.0) / 2.0]),
            jacob_constr=lambda q: q[None, :].copy(),
        ),
    )


def _torus_constr(q):
    rho = math.hypot(q[0], q[1])
    return np.array([((rho - BIG) ** 2 + q[2] ** 2 - SMALL**2) / (2 * SMALL)])


def _torus_jacob(q):
    rho = math.hypot(q[0], q[1])
    s = (rho - BIG) / rho
    return np.array([[s * q[0], s * q[1], q[2]]]) / SMALL


def torus_target():
    """Uniform on the torus (R=1, r=0.5); statistic cos(tube angle)."""
    return dict(
        name="uniform torus (R=1, r=0.5)",
        manifold=ImplicitTorus(BIG, SMALL),
        energy=None,
        statistic=lambda x: (x[..., :2].norm(dim=-1) - BIG) / SMALL,
        exact=SMALL / (2 * BIG),
        mici=dict(
            neg_log_dens=lambda q: 0.0,
            grad_neg_log_dens=lambda q: np.zeros(3),
            constr=_torus_constr,
            jacob_constr=_torus_jacob,
        ),
    )


# ------------------------------------------------------------------- runners
def max_abs_f(manifold, samples):
    flat = torch.as_tensor(samples, dtype=torch.float64).reshape(-1, manifold.ambient_dim)
    return float(manifold.submersion(flat).norm(dim=-1).max())


def row_from(target, label, samples, wall, n_chains, n_fail_proj, n_nonrev, step_size):
    stat = target["statistic"](torch.as_tensor(samples, dtype=torch.float64))
    mean, se, ess = monte_carlo_estimate(stat)
    return dict(target=target["name"], sampler=label, n_chains=n_chains,
                n_draws=int(stat.numel()), wall_s=wall, ess=ess, ess_per_s=ess / wall,
                mean=mean, exact=target["exact"], bias=mean - target["exact"], se=se,
                bias_over_se=(mean - target["exact"]) / se, step_size=step_size,
                projection_failures=n_fail_proj, nonreversible=n_nonrev,
                max_abs_F=max_abs_f(target["manifold"], samples))


def run_ours(target, cls, label, n_chains, n_warmup, n_steps, seed=0, target_accept=None,
             **kwargs):
    manifold = target["manifold"]
    torch.manual_seed(seed)
    x0 = manifold.random_point(n_chains)
    sampler = cls(manifold, target["energy"], seed=seed, **kwargs)
    start = time.perf_counter()
    samples, info = sampler.sample(x0, n_steps=n_steps, n_warmup=n_warmup,
                                   target_accept=target_accept)
    wall = time.perf_counter() - start
    return row_from(target, label, samples, wall, n_chains,
                    int(info.n_projection_failures.sum()), int(info.n_nonreversible.sum()),
                    info.step_size), info


def run_mici(target, n_chains, n_warmup, n_steps, seed=0):
    import mici

    spec = target["mici"]
    system = mici.systems.DenseConstrainedEuclideanMetricSystem(
        neg_log_dens=spec["neg_log_dens"], constr=spec["constr"],
        grad_neg_log_dens=spec["grad_neg_log_dens"], jacob_constr=spec["jacob_constr"],
        dens_wrt_hausdorff=True)
    integrator = mici.integrators.ConstrainedLeapfrogIntegrator(system)
    rng = np.random.default_rng(seed)
    sampler = mici.samplers.DynamicMultinomialHMC(system, integrator, rng)
    torch.manual_seed(seed)
    x0 = target["manifold"].random_point(n_chains).numpy()
    start = time.perf_counter()
    logging.getLogger("mici").setLevel(logging.WARNING)  # one line per failed solve
    _, traces, stats = sampler.sample_chains(
        n_warmup, n_steps, list(x0), trace_funcs=[lambda state: {"pos": state.pos}],
        n_process=1, display_progress=False)
    wall = time.perf_counter() - start
    samples = np.swapaxes(np.asarray(traces["pos"]), 0, 1)  # (n_steps, n_chains, 3)
    n_fail = int(np.sum(stats["convergence_error"]))
    n_nonrev = int(np.sum(stats["non_reversible_step"]))
    step = float(np.mean(stats["step_size"]))
    return row_from(target, "mici DynamicMultinomialHMC", samples, wall, n_chains, n_fail,
                    n_nonrev, step)


# ----------------------------------------------------------------------- MDF
def mdf_step_timing(n_chains, epochs, n_timed, seed=0):
    """Fit the 2-8-8-8-1 SiLU MDF and time constrained Langevin steps on it.

    Steps are timed one by one on the sampler's transition (what one step of
    persistent contrastive divergence costs), and once more as the mean over
    a public ``run()`` call; every emitted state's ``|F|`` is re-evaluated.
    ``step_cpu_ms_median`` is the same median in CPU time of this thread (torch
    runs single-threaded here), which other processes on a busy machine
    inflate far less than the wall time.
    """
    from implicit_geom.learning import NeuralImplicitManifold

    data = two_circles(2000, seed=seed)
    start = time.perf_counter()
    mdf = NeuralImplicitManifold(ambient_dim=2, codim=1, hidden=(8, 8, 8), activation="silu",
                                 seed=seed, progress=False).fit(data, epochs=epochs)
    fit_s = time.perf_counter() - start
    data_res = mdf.submersion(data).abs()
    torch.manual_seed(seed)
    energy = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(),
                                 torch.nn.Linear(16, 16), torch.nn.SiLU(),
                                 torch.nn.Linear(16, 1)).double()  # an EBM-sized energy
    sampler = ConstrainedLangevin(mdf, energy, step_size=0.1, seed=seed)
    x0 = data[torch.randperm(data.shape[0])[:n_chains]]
    state = sampler._initial_state(x0)  # data projected onto the learned manifold
    emitted_res, times, cpu_times, n_fail = [], [], [], 0
    for i in range(20 + n_timed):
        t0, c0 = time.perf_counter(), time.thread_time()
        state, _, accepted, _ = sampler._transition(state, sampler.step_size)
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        if i >= 20:
            times.append(dt)
            cpu_times.append(dc)
            n_fail += int((~accepted).sum())
            emitted_res.append(mdf.submersion(state.x).norm(dim=-1))
    res = torch.cat(emitted_res)
    # The same through the public API: one run() of n_timed steps, per step.
    x_final, info = sampler.run(state.x, n_steps=n_timed)
    run_ms = 1e3 * info.wall_time / n_timed
    return dict(n_chains=n_chains, fit_epochs=epochs, fit_s=fit_s,
                data_median_abs_F=float(data_res.median()),
                step_ms_median=1e3 * statistics.median(times),
                step_ms_p90=1e3 * float(np.quantile(times, 0.9)),
                step_cpu_ms_median=1e3 * statistics.median(cpu_times),
                run_ms_per_step=run_ms, run_max_abs_F=info.max_abs_F,
                run_failed_steps=int(info.n_projection_failures.sum()),
                n_timed_steps=n_timed, failed_steps=n_fail,
                emitted_max_abs_F=float(res.max()),
                frac_emitted_off_manifold=float((res > EMIT_TOL).double().mean()))


# ---------------------------------------------------------------------- main
def fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _width(spec):
    return int("".join(ch for ch in spec.split(".")[0] if ch.isdigit()))


def print_table(rows):
    cols = [("target", "<27"), ("sampler", "<34"), ("n_chains", ">5"), ("wall_s", ">7.2f"),
            ("ess", ">9.0f"), ("ess_per_s", ">9.0f"), ("speedup", ">8.1f"),
            ("bias", ">+8.4f"), ("se", ">7.4f"), ("step_size", ">6.3f"),
            ("projection_failures", ">6d"), ("nonreversible", ">5d"), ("max_abs_F", ">8.1e")]
    heads = ["target", "sampler", "chains", "wall s", "ESS", "ESS/s", "x mici", "bias",
             "se", "h", "pfail", "nrev", "max|F|"]
    print(" | ".join(f"{h:{spec[0]}{_width(spec)}}" for h, (_, spec) in zip(heads, cols)))
    for r in rows:
        print(" | ".join(fmt(r.get(k), spec) for k, spec in cols))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (mici's numpy runs on one core)")
    parser.add_argument("--json", type=Path, default=RESULTS / "samplers.json")
    parser.add_argument("--no-mdf", action="store_true", help="skip the learned-MDF timing")
    parser.add_argument("--mdf-only", action="store_true", help="only the learned-MDF timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.quick:
        ours = dict(n_chains=300, n_warmup=40, n_steps=100)
        mici_cfg = dict(n_chains=2, n_warmup=100, n_steps=300)
        mdf_cfg = dict(n_chains=1000, epochs=60, n_timed=30)
    else:
        ours = dict(n_chains=1000, n_warmup=100, n_steps=400)
        mici_cfg = dict(n_chains=4, n_warmup=300, n_steps=1000)
        mdf_cfg = dict(n_chains=1000, epochs=300, n_timed=200)

    rows, lang_rows = [], []
    for target in () if args.mdf_only else (vmf_target(), torus_target()):
        try:
            base = run_mici(target, **mici_cfg)
        except ImportError:
            base = None
            print("mici is not installed: its rows are skipped (pip install .[bench])")
        mala, mala_info = run_ours(target, ConstrainedMALA, "ours ConstrainedMALA (batched)",
                                   step_size=0.3, **ours)
        hmc, _ = run_ours(target, ConstrainedHMC, "ours ConstrainedHMC L=3 (batched)",
                          step_size=0.3, n_leapfrog=3, **ours)
        for r in (mala, hmc):
            r["speedup"] = r["ess_per_s"] / base["ess_per_s"] if base else None
        rows += [r for r in (base, mala, hmc) if r is not None]
        # The unadjusted paper sampler at the step size MALA adapted to.
        lang, _ = run_ours(target, ConstrainedLangevin, "ours ConstrainedLangevin (unadj.)",
                           step_size=mala_info.step_size, **ours)
        lang_rows.append(lang)

    if rows:
        print(f"\nExact constrained samplers (torch threads = {args.threads}; "
              "ESS/s over the whole call, warm-up included)")
        print_table(rows)
        print("\nUnadjusted constrained Langevin at the step size MALA adapted to")
        print_table(lang_rows)

    result = dict(config=dict(quick=args.quick, threads=args.threads, ours=ours, mici=mici_cfg),
                  exact=rows, unadjusted=lang_rows)
    if not args.no_mdf:
        mdf = mdf_step_timing(**mdf_cfg)
        result["mdf_langevin_step"] = mdf
        print("\nConstrained Langevin step on a learned MDF (2-8-8-8-1 SiLU, two circles), "
              f"{mdf['n_chains']} chains")
        for key, val in mdf.items():
            print(f"  {key:28s} {val:.4g}" if isinstance(val, float) else f"  {key:28s} {val}")
        print(f"  goal: <= 5 ms per step and no emitted |F| > {EMIT_TOL:g} "
              "(paper's reference: ~55 ms, ~2/3 of chain samples off the manifold)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
