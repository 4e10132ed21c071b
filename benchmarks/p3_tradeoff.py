"""What measuring costs, as whole quick runs: the share of wall time against cadence and tolerance.

    PYTHONPATH=src python benchmarks/p3_tradeoff.py [--task mnist] [--every 100 125 200] [--tol 1e-3 2e-3]

Runs the quick SAM run of ``--task`` once per (cadence, Lanczos tolerance), all in one process,
each after a short unreported run of the same settings (one chunk) that puts its programs in the
persistent compilation cache: every row is a later run on this machine (the tolerance is a
compile-time constant of the measurement, so each tolerance is a program of its own). The training does not depend on the measurements, so every run follows the
same trajectory, and lambda_max of two runs at the same step is the same matrix's: the table gives
each run's largest relative difference from the first row's at the steps both measured (the first
row, at the smallest tolerance, is the reference). Nothing here is a test; figures go to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import points
from samedge import jit_cache, train


def one_run(task_name: str, every: int, tol: float, steps: int | None = None) -> dict:
    cfg, task = points.quick_task(task_name, optimizer="sam", measure_every=every, lanczos_tol=tol, steps=steps)
    rows: list[dict] = []
    summary = train.train(cfg, task, progress=False, on_row=rows.append)
    return {"every": every, "tol": tol, "wall_s": summary["wall_time_s"], "measure_s": summary["measure_time_s"],
            "first_s": rows[0]["measure_s"], "share": summary["measure_share"], "points": len(rows),
            "hvps": statistics.median(int(r["hvps"]) for r in rows), "ratio_median": summary.get("ratio_median"),
            "lambda": {r["step"]: r["lambda_max"] for r in rows}, "status": summary["status"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist")
    parser.add_argument("--every", type=int, nargs="+", default=[100, 125, 200])
    parser.add_argument("--tol", type=float, nargs="+", default=[1e-3, 2e-3])
    args = parser.parse_args(argv)
    jit_cache.enable(tempfile.mkdtemp(prefix="samedge-tradeoff-jit-"))
    tols = sorted(args.tol)
    print(f"quick {args.task} SAM runs, compiled programs from the persistent cache")
    print(f"{'every':>5} {'tol':>7} {'points':>6} {'wall s':>7} {'measure s':>9} {'first s':>7} {'HVPs':>5} "
          f"{'share':>6} {'ratio median':>12} {'max rel. diff of lambda_max':>28}")
    reference = None
    for tol in tols:
        for every in args.every:
            one_run(args.task, every, tol, steps=every)  # compiles this chunk and measurement; not reported
            r = one_run(args.task, every, tol)
            if reference is None:
                reference = r["lambda"]
            common = [s for s in r["lambda"] if s in reference]
            diff = max(abs(r["lambda"][s] - reference[s]) / abs(reference[s]) for s in common)
            print(f"{every:>5} {tol:>7g} {r['points']:>6} {r['wall_s']:>7.1f} {r['measure_s']:>9.2f} "
                  f"{r['first_s']:>7.2f} {r['hvps']:>5g} {r['share']:>6.3f} {r['ratio_median']:>12.3f} "
                  f"{diff:>28.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
