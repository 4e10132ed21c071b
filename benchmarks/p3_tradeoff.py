"""What measuring costs, as whole quick runs: the share of wall time against cadence and tolerance.

    PYTHONPATH=src python benchmarks/p3_tradeoff.py [--task mnist] [--every 100 125 200] [--tol 1e-3 2e-3]

Runs the quick SAM run of ``--task`` once per (cadence, Lanczos tolerance), all in one process,
each after a short unreported run of the same settings (one chunk) that puts its programs in the
persistent compilation cache: every row is a later run on this machine (the tolerance is a
compile-time constant of the measurement, so each tolerance is a program of its own). Each run is
``run.p3`` with the cadence and tolerance set. The training does not depend on the measurements,
so every run follows the same trajectory, and lambda_max of two runs at the same step is the same
matrix's: the table gives each run's largest relative difference from the first row's at the steps
both measured (the first row, at the smallest tolerance, is the reference). Nothing here is a test; figures go to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from run import p3
from samedge import jit_cache


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
            settings = dict(measure_every=every, lanczos_tol=tol)
            p3(args.task, steps=every, **settings)  # compiles this chunk and measurement; not reported
            r = p3(args.task, **settings)
            if reference is None:
                reference = r["lambda_max"]
            common = [s for s in r["lambda_max"] if s in reference]
            diff = max(abs(r["lambda_max"][s] - reference[s]) / abs(reference[s]) for s in common)
            print(f"{every:>5} {tol:>7g} {r['measurements']:>6} {r['wall_s']:>7.1f} {r['measure_s']:>9.2f} "
                  f"{r['first_measure_s']:>7.2f} {r['hvps_median']:>5g} {r['overhead']:>6.3f} "
                  f"{r['ratio_median']:>12.3f} {diff:>28.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
