"""A Lanczos run in a fresh basis against one in a carried, donated workspace (issue 15).

    PYTHONPATH=src python benchmarks/workspace.py

At the trained quick-MNIST point (``points.trained_point``), interleaved over 7 rounds: Lanczos at
the measurement's settings (tolerance 1e-3, at most 64 HVPs, at least 8) from a warm start (the
point's top vector plus 10% noise: 8 HVPs, as a steady measurement) and from a random one (as the
first measurement or a cross-check), with its basis allocated inside the call (``workspace=None``:
72 x 335,114 floats, 96 MB, mapped afresh from the operating system by every call) and with
``curvature.krylov_workspace`` passed in and donated (``jax.jit(..., donate_argnums=...)``: the same
memory every call), against as many HVPs in a bare compiled loop. Prints medians in ms, the ratios to the bare loop
and the process's minor page faults per call (``resource.getrusage``); last line JSON.
"""

from __future__ import annotations

import functools
import json
import resource
import statistics
import time

import jax

import points
from samedge import curvature

ROUNDS = 7


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> int:
    cfg, task, params = points.trained_point()
    v0 = points.random_start(params)
    out = {}

    @jax.jit
    def fresh(p, d, v):
        matvec, _ = curvature.flat_hvp(lambda q: task.loss_fn(q, d), p)
        e = curvature.lanczos(matvec, v, max_iters=64, tol=1e-3, min_iters=8)
        return e.values, e.num_matvecs

    @functools.partial(jax.jit, donate_argnums=3)
    def carried(p, d, v, ws):
        matvec, _ = curvature.flat_hvp(lambda q: task.loss_fn(q, d), p)
        e = curvature.lanczos(matvec, v, max_iters=64, tol=1e-3, min_iters=8, workspace=ws)
        return e.values, e.num_matvecs, e.workspace

    top = jax.jit(lambda p, d, v: curvature.lanczos(curvature.flat_hvp(lambda q: task.loss_fn(q, d), p)[0], v,
                                                    max_iters=64, tol=1e-6).vectors[0])(params, task.data, v0)
    noise = points.random_start(params, seed=2)
    starts = {"warm": top + 0.1 * noise / jax.numpy.linalg.norm(noise), "random": v0}
    ws = curvature.krylov_workspace(v0.shape[0], 64)
    for name, start in starts.items():
        values, iters = fresh(params, task.data, start)
        values2, iters2, ws = carried(params, task.data, start, ws)
        iters = int(iters)
        assert int(iters2) == iters and float(values[0]) == float(values2[0]), (iters, int(iters2))
        bare = points.hvp_loop(task, iters)
        jax.block_until_ready(bare(params, task.data, v0))
        times = {"fresh": [], "carried": [], "bare": []}
        faults = {"fresh": [], "carried": []}
        for _ in range(ROUNDS):
            f0, t0 = minor_faults(), time.perf_counter()
            jax.block_until_ready(fresh(params, task.data, start))
            times["fresh"].append(time.perf_counter() - t0)
            faults["fresh"].append(minor_faults() - f0)
            f0, t0 = minor_faults(), time.perf_counter()
            values, _, ws = carried(params, task.data, start, ws)
            jax.block_until_ready(values)
            times["carried"].append(time.perf_counter() - t0)
            faults["carried"].append(minor_faults() - f0)
            t0 = time.perf_counter()
            jax.block_until_ready(bare(params, task.data, v0))
            times["bare"].append(time.perf_counter() - t0)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        r = {"hvps": iters, "ms": {k: round(v, 1) for k, v in ms.items()},
             "fresh_over_bare": ms["fresh"] / ms["bare"], "carried_over_bare": ms["carried"] / ms["bare"],
             "faults_fresh": statistics.median(faults["fresh"]), "faults_carried": statistics.median(faults["carried"])}
        out[name] = r
        print(f"{name} start, {iters} HVPs: fresh basis {ms['fresh']:.1f} ms ({r['faults_fresh']:.0f} minor "
              f"faults), carried workspace {ms['carried']:.1f} ms ({r['faults_carried']:.0f}), bare loop "
              f"{ms['bare']:.1f} ms: "
              f"{r['fresh_over_bare']:.3f} / {r['carried_over_bare']:.3f} x bare")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
