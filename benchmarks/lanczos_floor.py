"""The Lanczos loop against its floor: seconds per iteration over one HVP in a bare compiled loop (issue 15).

At the trained quick-MNIST benchmark point (``points.trained_point``: 335,114 parameters, 2,000
images), for a stored basis of ``max_iters`` = 16, 24, 32 and 64 rows, it times :func:`samedge.curvature.lanczos`
run to a fixed number of iterations (``min_iters=ITERS`` with a tolerance every Ritz pair meets: exactly
``ITERS`` HVPs for every basis size) and
a bare ``fori_loop`` of the same HVPs (the primal hoisted, as inside Lanczos), interleaved over
``ROUNDS`` rounds so that a slow spell of a shared machine falls on both. A Lanczos iteration is one
HVP plus the three-term recurrence, a Gram-Schmidt pass over the rows in use when the orthogonality
estimate calls for one (``reorth="partial"``, the default; every iteration with ``"full"``), a norm
and the tridiagonal eigensolve of the stop test: at its floor the ratio is about 1, and it does not
grow with the size of the stored basis.

    PYTHONPATH=src python benchmarks/lanczos_floor.py

Prints a table and, as its last line, one JSON object: per basis size, the median seconds per
iteration, per bare HVP and their ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import jax

import points
from samedge import curvature

ITERS = 16  # iterations timed for every basis size (m = 16 spends all of its basis, m = 64 a quarter)
ROUNDS = 5
SIZES = (16, 24, 32, 64)  # stored basis rows (max_iters)


def main() -> int:
    cfg, task, params = points.trained_point()
    v0 = points.random_start(params)

    def solver(m: int, reorth: str = "partial"):
        @jax.jit
        def run(params, data, v0):
            matvec, _ = curvature.flat_hvp(lambda p: task.loss_fn(p, data), params)
            # the stop test is evaluated at every iteration, as in a real run, and first passes at ITERS
            return curvature.lanczos(matvec, v0, k=1, max_iters=m, tol=1e30, min_iters=ITERS,
                                     reorth=reorth).num_matvecs
        return run

    bare = points.hvp_loop(task, ITERS)

    runs = {m: solver(m) for m in SIZES} | {"full": solver(SIZES[0], "full")}
    for m, run in runs.items():
        n = int(run(params, task.data, v0))  # compile
        assert n == ITERS, (m, n)
    jax.block_until_ready(bare(params, task.data, v0))
    times: dict = {"bare": []} | {m: [] for m in runs}
    for _ in range(ROUNDS):
        for name, fn in (("bare", bare), *runs.items()):
            start = time.perf_counter()
            jax.block_until_ready(fn(params, task.data, v0))
            times[name].append((time.perf_counter() - start) / ITERS)
    hvp = statistics.median(times["bare"])
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {ITERS} iterations, median of {ROUNDS} rounds")
    print(f"{'':<26} {'ms/iteration':>13} {'over bare HVP':>14}")
    print(f"{'bare HVP loop':<26} {1e3 * hvp:>13.2f} {1.0:>14.3f}")
    result = {"bare_hvp_s": hvp, "iters": ITERS}
    for m in SIZES:
        t = statistics.median(times[m])
        print(f"{'Lanczos, max_iters ' + str(m):<26} {1e3 * t:>13.2f} {t / hvp:>14.3f}")
        result[f"lanczos_m{m}_s"] = t
        result[f"lanczos_m{m}_over_hvp"] = t / hvp
    t = statistics.median(times["full"])  # a Gram-Schmidt pass every iteration, as before 7 Dec 2026
    print(f"{'  the same, reorth full ' + str(SIZES[0]):<26} {1e3 * t:>13.2f} {t / hvp:>14.3f}")
    result[f"lanczos_m{SIZES[0]}_full_over_hvp"] = t / hvp
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
