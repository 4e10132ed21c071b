"""What a cold cross-check costs along the benchmark's run, by its tolerance (issue 15).

At each check point of the pinned quick-MNIST SAM run (``points.quick_task``: 1,000 steps measured
every 100) it runs the run's own measurement (:func:`points.measured_run`), then cold Lanczos runs from
one random start at residual tolerances 1e-3, 3e-3, 1e-2 and 3e-2 (at least 8 steps, as the
measurement's), and prints for each the HVPs spent and the value relative to the measured
lambda_max. A Ritz value is a lower bound of the largest eigenvalue, so a cold run that stops
early can only read low: the loose runs show how low, and what they save.

    PYTHONPATH=src python benchmarks/crosscheck_cost.py
"""

from __future__ import annotations

import json
import sys

import jax

import points
from samedge import curvature

TOLS = (1e-3, 3e-3, 1e-2, 3e-2)


def main() -> int:
    cfg, task = points.quick_task("mnist", optimizer="sam")

    @jax.jit
    def cold(params, data, key):
        matvec, n = curvature.flat_hvp(lambda p: task.loss_fn(p, data), params)
        v0 = jax.random.normal(key, (n,))
        return [curvature.lanczos(matvec, v0, k=1, max_iters=cfg.lanczos_max_iters, tol=t, min_iters=8)
                for t in TOLS]

    print(f"{'step':>5} {'warm HVPs':>9} {'lambda_max':>10} " + " ".join(f"{'tol ' + format(t, 'g'):>18}" for t in TOLS))
    out = []
    for seg, row, _ in points.measured_run(cfg, task):
        lam = float(row["lambda_max"])
        runs = cold(seg.params, task.data, jax.random.PRNGKey(seg.step + 99))
        cells = [(int(e.num_matvecs), abs(float(e.values[0])) / lam - 1) for e in runs]
        print(f"{seg.step:>5} {int(row['hvps']):>9} {lam:>10.5f} " + " ".join(f"{n:>5} HVPs {d:>+8.1e}" for n, d in cells))
        out.append({"step": seg.step, "warm_hvps": int(row["hvps"]), "lambda_max": lam,
                    "cold": {format(t, "g"): {"hvps": n, "reldiff": d} for t, (n, d) in zip(TOLS, cells)}})
    steady = out[1:]
    print(json.dumps({format(t, "g"): {"hvps_min": min(r["cold"][format(t, "g")]["hvps"] for r in steady),
                                       "hvps_max": max(r["cold"][format(t, "g")]["hvps"] for r in steady),
                                       "reldiff_min": min(r["cold"][format(t, "g")]["reldiff"] for r in steady)}
                      for t in TOLS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
