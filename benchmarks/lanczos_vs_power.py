"""Lanczos against power iteration at equal numbers of Hessian-vector products (issue 2).

At a trained quick-MNIST point (400 SAM steps, lr 0.1, rho 0.1: at the edge, top eigenvalues close)
it prints, for 10, 20 and 30 HVPs, the relative error of the top eigenvalue and the time of
our Lanczos (``tol=0``, ``max_iters=n``), of power iteration with exact HVPs, and of power
iteration with the original finite-difference HVPs (each costs two gradients), all from the same
random start; the truth is a 100-step Lanczos in float64.

    PYTHONPATH=src /work/venv/bin/python benchmarks/lanczos_vs_power.py
"""

from __future__ import annotations

import json
import sys

import jax

import baselines
import points
from samedge import curvature

COUNTS = (10, 20, 30)


def solver(task, kind: str, n: int):
    """A jitted ``(params, data, v0) -> Eigen`` spending exactly ``n`` products."""

    def run(params, data, v0):
        loss = lambda p: task.loss_fn(p, data)
        if kind == "lanczos":
            return curvature.lanczos(curvature.flat_hvp(loss, params)[0], v0, k=1, max_iters=n, tol=0.0)
        if kind == "power":
            return curvature.power_iteration(curvature.flat_hvp(loss, params)[0], v0, max_iters=n, tol=0.0)
        return baselines.fd_power_iteration(loss, params, v0, tol=0.0, max_iters=n)

    return jax.jit(run)


def main() -> int:
    cfg, task, params = points.trained_point()
    lam, resid = points.truth(task, params)
    print(f"trained quick-MNIST point: 400 SAM steps (lr {cfg.lr}, rho {cfg.hparams["rho"]}); "
          f"truth lambda_max = {lam:.7f} (float64 Lanczos, residual {resid:.1e})")
    v0 = points.random_start(params)
    rows = []
    for n in COUNTS:
        row = {"hvps": n}
        for kind in ("lanczos", "power", "fd_power"):
            eig, seconds = points.timed(solver(task, kind, n), params, task.data, v0)
            row[f"{kind}_relerr"] = abs(abs(float(eig.values[0])) - lam) / lam
            row[f"{kind}_s"] = seconds
        rows.append(row)
    print(f"{'HVPs':>5} | {'Lanczos err':>11} {'time s':>7} | {'power err':>10} {'time s':>7} | "
          f"{'FD power err':>12} {'time s':>7}")
    for r in rows:
        print(f"{r['hvps']:>5} | {r['lanczos_relerr']:>11.2e} {r['lanczos_s']:>7.3f} | {r['power_relerr']:>10.2e} "
              f"{r['power_s']:>7.3f} | {r['fd_power_relerr']:>12.2e} {r['fd_power_s']:>7.3f}")
    print("(FD power: each product is two gradients; times are medians of 3 after a compile, on a shared CPU)")
    print(json.dumps({"truth_lambda_max": lam, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
