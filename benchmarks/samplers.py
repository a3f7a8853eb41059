"""Sampler benchmark: our constrained samplers against mici at matched and at batched
chain counts, the unadjusted sampler's bias, and the cost of a constrained Langevin
step on a learned MDF through the public API.

Run:  python benchmarks/samplers.py [--quick] [--threads N] [--json PATH]

Targets (exact answers known):
- vMF on S^2, kappa = 5: E[z] = coth(kappa) - 1/kappa;
- uniform (Hausdorff) on the torus R = 1, r = 0.5: E[cos theta] = r / (2R).

mici (``DynamicMultinomialHMC`` + ``ConstrainedLeapfrogIntegrator`` on
``DenseConstrainedEuclideanMetricSystem`` with analytic numpy derivatives, its
default dual-averaging warm-up, chains one after the other in this process)
runs ``n`` chains; ours run the same ``n`` chains for the same iterations
(matched: the fair per-chain comparison), and 1000 chains as one batch (what
our samplers are built for). Every figure is measured in this run:

- ESS of the statistic's mean (the same multi-chain estimator for all rows)
  per second of the whole sampling call, warm-up included, in total and per
  chain; the ratios divide by mici's figure of the same run;
- ESS per 1000 gradient evaluations of the log density (every evaluation of
  every chain, warm-up included: mici's ``grad_neg_log_dens`` calls, our
  target's rows);
- bias against the exact answer in Monte Carlo standard errors, rejections,
  and ``max|F|`` re-evaluated on every kept sample.

The MDF part fits ``NeuralImplicitManifold`` (2 -> 8 -> 8 -> 8 -> 1 SiLU) to
the two-circle data and times ``ConstrainedLangevin.run`` calls (the public
API) on 1000 chains started at the data: one step per call, and 20 steps per
call (one PCD iteration of the EBM), median and 90th percentile per step.
mici is an optional peer (``pip install -c constraints.txt mici``); without it
its rows are skipped.
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

from implicit_geom import set_threads
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


def row_from(target, label, samples, wall, n_chains, n_grads, n_fail_proj, n_nonrev,
             step_size):
    stat = target["statistic"](torch.as_tensor(samples, dtype=torch.float64))
    mean, se, ess = monte_carlo_estimate(stat)
    return dict(target=target["name"], sampler=label, n_chains=n_chains,
                n_draws=int(stat.numel()), wall_s=wall, ess=ess, ess_per_s=ess / wall,
                ess_per_s_per_chain=ess / wall / n_chains, n_grads=n_grads,
                ess_per_1k_grads=1e3 * ess / n_grads if n_grads else None,
                mean=mean, exact=target["exact"], bias=mean - target["exact"], se=se,
                bias_over_se=(mean - target["exact"]) / se, step_size=step_size,
                projection_failures=n_fail_proj, nonreversible=n_nonrev,
                max_abs_F=max_abs_f(target["manifold"], samples))


class _CountingTarget:
    """Counts the rows (chain states) at which the sampler's target takes a gradient."""

    def __init__(self, sampler):
        self.rows = 0
        inner = sampler.target.energy_and_grad

        def counted(x):
            self.rows += x.shape[0]
            return inner(x)

        sampler.target.energy_and_grad = counted


def run_ours(target, cls, label, n_chains, n_warmup, n_steps, seed=0, target_accept=None,
             **kwargs):
    manifold = target["manifold"]
    torch.manual_seed(seed)
    x0 = manifold.random_point(n_chains)
    sampler = cls(manifold, target["energy"], seed=seed, **kwargs)
    counter = _CountingTarget(sampler)
    start = time.perf_counter()
    samples, info = sampler.sample(x0, n_steps=n_steps, n_warmup=n_warmup,
                                   target_accept=target_accept)
    wall = time.perf_counter() - start
    # A zero energy has no gradient to evaluate (uniform target): count none.
    grads = counter.rows if target["energy"] is not None else 0
    return row_from(target, label, samples, wall, n_chains, grads,
                    int(info.n_projection_failures.sum()), int(info.n_nonreversible.sum()),
                    info.step_size), info


def run_mici(target, n_chains, n_warmup, n_steps, seed=0):
    import mici

    spec = target["mici"]
    calls = [0]

    def grad(q):
        calls[0] += 1
        return spec["grad_neg_log_dens"](q)

    system = mici.systems.DenseConstrainedEuclideanMetricSystem(
        neg_log_dens=spec["neg_log_dens"], constr=spec["constr"],
        grad_neg_log_dens=grad, jacob_constr=spec["jacob_constr"],
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
    grads = calls[0] if target["energy"] is not None else 0
    return row_from(target, "mici DynamicMultinomialHMC", samples, wall, n_chains, grads,
                    n_fail, n_nonrev, step)


# ----------------------------------------------------------------------- MDF
def _quantiles(times):
    ms = 1e3 * np.asarray(times)
    return float(np.median(ms)), float(np.quantile(ms, 0.9))


def mdf_step_timing(n_chains, epochs, n_calls, seed=0, pcd_steps=20):
    """Fit the 2-8-8-8-1 SiLU MDF and time constrained Langevin steps on it.

    Only the public ``ConstrainedLangevin.run`` is timed, as a user (or PCD)
    calls it: ``n_calls`` calls of one step each, and ``n_calls // 4`` calls of
    ``pcd_steps`` steps each (one PCD iteration of the EBM), each call's wall
    time divided by its steps; chains continue from call to call. The CPU
    time of this thread is given too (a busy machine inflates it far less than
    the wall time). Every emitted state's ``|F|`` is checked by ``run`` itself
    and re-evaluated here.
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
    x = data[torch.randperm(data.shape[0])[:n_chains]]
    x, _ = sampler.run(x, n_steps=20)  # warm-up: projects the data, fills caches
    out = dict(n_chains=n_chains, fit_epochs=epochs, fit_s=fit_s,
               data_median_abs_F=float(data_res.median()))
    emitted = []
    for label, steps, calls in (("1_step_calls", 1, n_calls),
                                (f"{pcd_steps}_step_calls", pcd_steps, max(n_calls // 4, 5))):
        walls, cpus, failed = [], [], 0
        for _ in range(calls):
            t0, c0 = time.perf_counter(), time.thread_time()
            x, info = sampler.run(x, n_steps=steps)
            walls.append((time.perf_counter() - t0) / steps)
            cpus.append((time.thread_time() - c0) / steps)
            failed += int(info.n_projection_failures.sum())
            emitted.append(mdf.submersion(x).norm(dim=-1))
        med, p90 = _quantiles(walls)
        out[label] = dict(calls=calls, steps_per_call=steps, step_ms_median=med,
                          step_ms_p90=p90, cpu_ms_median=_quantiles(cpus)[0],
                          failed_step_fraction=failed / (calls * steps * n_chains))
    res = torch.cat(emitted)
    out["emitted_max_abs_F"] = float(res.max())
    out["frac_emitted_off_manifold"] = float((res > EMIT_TOL).double().mean())
    return out


# ---------------------------------------------------------------------- main
def fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _width(spec):
    return int("".join(ch for ch in spec.split(".")[0] if ch.isdigit()))


def print_table(rows):
    cols = [("target", "<26"), ("sampler", "<34"), ("n_chains", ">6d"), ("wall_s", ">7.2f"),
            ("ess", ">8.0f"), ("ess_per_s", ">8.0f"), ("ess_per_s_per_chain", ">9.1f"),
            ("x_mici", ">7.1f"), ("x_mici_per_chain", ">7.2f"), ("ess_per_1k_grads", ">7.1f"),
            ("bias", ">+8.4f"), ("se", ">7.4f"), ("step_size", ">6.3f"),
            ("projection_failures", ">6d"), ("nonreversible", ">5d"), ("max_abs_F", ">8.1e")]
    heads = ["target", "sampler", "chains", "wall s", "ESS", "ESS/s", "ESS/s/ch", "x mici",
             "x/chain", "ESS/1kg", "bias", "se", "h", "pfail", "nrev", "max|F|"]
    print(" | ".join(f"{h:{spec[0]}{_width(spec)}}" for h, (_, spec) in zip(heads, cols)))
    for r in rows:
        print(" | ".join(fmt(r.get(k), spec) for k, spec in cols))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of torch and BLAS (mici's numpy runs on one core)")
    parser.add_argument("--json", type=Path, default=RESULTS / "samplers.json")
    parser.add_argument("--no-mdf", action="store_true", help="skip the learned-MDF timing")
    parser.add_argument("--mdf-only", action="store_true", help="only the learned-MDF timing")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    if args.quick:
        batched = dict(n_chains=300, n_warmup=40, n_steps=100)
        matched = dict(n_chains=2, n_warmup=100, n_steps=300)
        mdf_cfg = dict(n_chains=1000, epochs=60, n_calls=40)
    else:
        batched = dict(n_chains=1000, n_warmup=100, n_steps=400)
        matched = dict(n_chains=4, n_warmup=300, n_steps=1000)
        mdf_cfg = dict(n_chains=1000, epochs=300, n_calls=200)

    rows, lang_rows = [], []
    for target in () if args.mdf_only else (vmf_target(), torus_target()):
        try:
            base = run_mici(target, **matched)
        except ImportError:
            base = None
            print("mici is not installed: its rows are skipped "
                  "(pip install -c constraints.txt mici)")
        found = []
        for cfg, tag in ((matched, "matched"), (batched, "batched")):
            mala, mala_info = run_ours(target, ConstrainedMALA,
                                       f"ours ConstrainedMALA ({tag})", step_size=0.3, **cfg)
            hmc, _ = run_ours(target, ConstrainedHMC, f"ours ConstrainedHMC L=3 ({tag})",
                              step_size=0.3, n_leapfrog=3, **cfg)
            found += [mala, hmc]
        for r in found:
            if base is not None:
                r["x_mici"] = r["ess_per_s"] / base["ess_per_s"]
                r["x_mici_per_chain"] = r["ess_per_s_per_chain"] / base["ess_per_s_per_chain"]
        rows += [r for r in (base, *found) if r is not None]
        # The unadjusted paper sampler at the step size the batched MALA adapted to.
        lang, _ = run_ours(target, ConstrainedLangevin, "ours ConstrainedLangevin (unadj.)",
                           step_size=mala_info.step_size, **batched)
        lang_rows.append(lang)

    if rows:
        print(f"\nExact constrained samplers (threads = {args.threads}; ESS/s over the whole "
              "call, warm-up included; x mici: ESS/s over mici's in this run, in total and "
              "per chain; ESS/1kg: ESS per 1000 gradient evaluations)")
        print_table(rows)
        print("\nUnadjusted constrained Langevin at the step size MALA adapted to")
        print_table(lang_rows)

    result = dict(config=dict(quick=args.quick, threads=args.threads, batched=batched,
                              matched=matched), exact=rows, unadjusted=lang_rows)
    if not args.no_mdf:
        mdf = mdf_step_timing(**mdf_cfg)
        result["mdf_langevin_step"] = mdf
        print("\nConstrained Langevin step on a learned MDF (2-8-8-8-1 SiLU, two circles), "
              f"{mdf['n_chains']} chains, through ConstrainedLangevin.run")
        for key, val in mdf.items():
            if isinstance(val, dict):
                print(f"  {key}: median {val['step_ms_median']:.2f} ms, p90 "
                      f"{val['step_ms_p90']:.2f} ms per step (CPU {val['cpu_ms_median']:.2f} "
                      f"ms; {val['calls']} calls; failed steps "
                      f"{100 * val['failed_step_fraction']:.2f}%)")
            else:
                print(f"  {key:28s} {val:.4g}" if isinstance(val, float) else
                      f"  {key:28s} {val}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
