"""The README's main job (``implicit-geom demo``) timed on a quiet machine and under load.

Each run is the full demo in a fresh process, as a user starts it. Loaded runs
start ``--busy`` CPU-bound processes (pure Python busy loops, one core each)
first and stop them afterwards, in two ways:

- ``loaded``: each in a session of its own, like other users' work (on Linux with
  autogroup scheduling, ``/proc/sys/kernel/sched_autogroup_enabled``, the
  kernel shares the CPUs between sessions first, then between their threads);
- ``loaded-same-session``: in the demo's own session, where every runnable
  thread gets an equal share.

Either way a one-thread demo competes with two busy loops on 2 cores and gets
2/3 of a core: 1.5x its quiet time is the floor, and any other work on the
machine shows directly in the ratio.

The thread policy under test is the command line's: one thread (``--threads
1``, the default) against as many threads as cores (torch's own default, what
the command line did before it set a thread count). Reported per run: wall
time, CPU time of the demo process, the load average just before it started
(other users' work shows there), and per setting the ratio of loaded to quiet
wall time (goal: <= 1.5).

Usage::

    python benchmarks/demo_load.py                       # 1 thread: quiet, then loaded
    python benchmarks/demo_load.py --threads 1 2 --runs 2
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BUSY_LOOP = "while True:\n    pass\n"


def run_demo(threads, extra):
    """Run the demo once in a subprocess; returns (wall s, CPU s, metrics)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "implicit_geom.cli", "demo", "--out", str(out),
               "--no-progress", "--threads", str(threads), *extra]
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)  # the command line's own policy decides
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"demo failed ({proc.returncode}): {proc.stderr[-2000:]}")
        metrics = json.loads((out / "metrics.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, metrics


def _autogroup():
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="thread counts to compare (the CLI's --threads)")
    parser.add_argument("--busy", type=int, default=2, help="busy processes for the load")
    parser.add_argument("--runs", type=int, default=1, help="runs per setting")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick mode")
    parser.add_argument("--json", type=Path, default=RESULTS / "demo_load.json")
    args = parser.parse_args(argv)
    extra = ["--quick"] if args.quick else []
    rows = []
    conditions = ("quiet", "loaded", "loaded-same-session")
    for threads in args.threads:
        for condition in conditions:
            for rep in range(args.runs):
                busy = []
                load = os.getloadavg()[0]
                if condition != "quiet":
                    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                                             start_new_session=condition == "loaded")
                            for _ in range(args.busy)]
                    time.sleep(1.0)  # let them reach full speed
                try:
                    wall, cpu, metrics = run_demo(threads, extra)
                finally:
                    for p in busy:
                        p.kill()
                        p.wait()
                row = dict(threads=threads, condition=condition, run=rep, wall_s=wall,
                           cpu_s=cpu, load_before=load,
                           W={k: v for k, v in metrics.items() if k.startswith("W")})
                rows.append(row)
                w_text = ", ".join(f"{k} {v:.5f}" for k, v in row["W"].items())
                print(f"threads {threads}, {condition}: {wall:.1f} s wall, {cpu:.1f} s CPU "
                      f"(load average before: {load:.2f}); {w_text}", flush=True)
    print(f"\nimplicit-geom demo{' --quick' if args.quick else ''}: quiet vs "
          f"{args.busy} busy processes ({os.cpu_count()} CPUs)")
    print(f"{'threads':>7s} {'condition':>20s} {'wall s':>8s} {'CPU s':>7s} {'x quiet':>8s}"
          "  goal <= 1.5")
    summary = []
    for threads in args.threads:
        def median(condition, key):
            return statistics.median(r[key] for r in rows
                                     if r["threads"] == threads and r["condition"] == condition)

        quiet = median("quiet", "wall_s")
        for condition in conditions:
            wall, cpu = median(condition, "wall_s"), median(condition, "cpu_s")
            summary.append(dict(threads=threads, condition=condition, wall_s=wall, cpu_s=cpu,
                                ratio=wall / quiet))
            goal = "" if condition == "quiet" else ("met" if wall / quiet <= 1.5 else "MISSED")
            print(f"{threads:7d} {condition:>20s} {wall:8.1f} {cpu:7.1f} {wall / quiet:8.2f}  "
                  f"{goal}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(command=" ".join(sys.argv), busy=args.busy,
                                         autogroup=_autogroup(), rows=rows, summary=summary),
                                    indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
