"""Chunked passes (issue 27): the paper's MNIST MLP measured on 10^4 and 6 x 10^4 images, in chunks
of 1,000 and in one pass, each point a fresh process.

    PYTHONPATH=src python benchmarks/chunks.py [--data-dir DIR]

A point builds the paper preset's task (3 x 1000 ReLU MLP, 2.8M parameters) on the first N training
images, resets the process's peak RSS once the data is resident (``/proc/self/clear_refs``), then
measures the initial parameters as a run does (``samedge.measurement``: top-1, tolerance 1e-3; the
first call compiles) and times a bare compiled HVP (median of 5). Peak RSS is read from
``/proc/self/status`` (VmHWM, since the reset) and from ``resource.getrusage`` (the whole process);
"net" is VmHWM less the data set's own bytes (one resident copy: the float32 images and labels).

Goals (issue 27): ``rss_growth_60k_over_10k`` (chunked, net) <= 1.2, ``rss_chunked_over_onepass_60k``
(net) <= 0.6, ``chunked_hvp_over_onepass`` (seconds per HVP at 6 x 10^4) <= 1.15. Last line JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

POINTS = [(10_000, 1000), (60_000, 1000), (10_000, 0), (60_000, 0)]


def _hwm_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def point(n: int, chunk: int, data_dir) -> dict:
    import jax
    import numpy as np

    from samedge import chunking, curvature, optimizers, tasks
    from samedge.measure import MeasureSettings, measurement

    preset = tasks.get_preset("mnist", "paper")
    config = tasks.make_task_config("mnist", dict(preset.task) | {"n_train": n, "n_test": 100})
    task = chunking.chunk_task(tasks.build_task("mnist", config, data_dir=data_dir), chunk)
    data_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(task.data))
    params = task.init_params(jax.random.PRNGKey(0))
    with open("/proc/self/clear_refs", "w") as f:  # the peak from here on: loading's transients left out
        f.write("5")
    base = _hwm_gib()
    m = measurement(task.loss_fn, optimizers.build("gd", 0.1), MeasureSettings(topk=1, tol=1e-3))
    t0 = time.perf_counter()
    row, state = m.measure(params, task.data, m.init(params, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    row = jax.device_get(row)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # a second, warm-started call: compiled, as along a run
    warm, _ = m.measure(params, task.data, state, jax.random.PRNGKey(3))
    warm = jax.device_get(warm)
    warm_s = time.perf_counter() - t0
    hvp = jax.jit(lambda p, d, v: curvature.flat_hvp(lambda q: task.loss_fn(q, d), p)[0](v))
    v = jax.random.normal(jax.random.PRNGKey(3), jax.flatten_util.ravel_pytree(params)[0].shape)
    hvp(params, task.data, v).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        hvp(params, task.data, v).block_until_ready()
        times.append(time.perf_counter() - t0)
    peak = _hwm_gib()
    return {"n": n, "chunk": chunk, "lambda_max": float(row["lambda_max"]), "resid": float(row["resid_1"]),
            "hvps": int(row["hvps"]), "measure_first_s": round(first_s, 2), "hvp_s": statistics.median(times),
            "measure_warm_s": round(warm_s, 2), "hvps_warm": int(warm["hvps"]) + int(warm["hvps_crosscheck"]),
            "peak_gib": round(peak, 3), "base_gib": round(base, 3), "data_gib": round(data_bytes / 2 ** 30, 3),
            "net_gib": round(peak - data_bytes / 2 ** 30, 3),
            "maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # N,CHUNK: run one point here
    args = parser.parse_args()
    import points  # beside this script: the fresh-process runner
    if args.point:
        n, chunk = map(int, args.point.split(","))
        print("POINT " + json.dumps(point(n, chunk, args.data_dir)))
        return 0
    results = {}
    for n, chunk in POINTS:
        r = points.fresh_point(__file__, ["--point", f"{n},{chunk}"] + (["--data-dir", args.data_dir] if args.data_dir else []))
        if r is None:
            return 1
        results[(n, chunk)] = r
        print(f"N {n:6d} chunk {chunk:5d}: peak {r['peak_gib']:.2f} GiB (net of the data {r['net_gib']:.2f}, data "
              f"{r['data_gib']:.2f}), HVP {r['hvp_s'] * 1e3:.0f} ms, first measurement {r['measure_first_s']:.1f} s "
              f"({r['hvps']} HVPs, lambda_max {r['lambda_max']:.5g}, residual {r['resid']:.1e}); warm measurement "
              f"{r['measure_warm_s']:.1f} s ({r['hvps_warm']} HVPs)", flush=True)
    c10, c60, o60 = results[(10_000, 1000)], results[(60_000, 1000)], results[(60_000, 0)]
    print(json.dumps({
        "rss_growth_60k_over_10k": round(c60["net_gib"] / c10["net_gib"], 3),
        "rss_chunked_over_onepass_60k": round(c60["net_gib"] / o60["net_gib"], 3),
        "chunked_hvp_over_onepass": round(c60["hvp_s"] / o60["hvp_s"], 3),
        # inside a measurement a one-pass Lanczos loop reuses the forward pass of its fixed point
        # (loop-invariant); a chunked one recomputes each chunk's (rematerialised): per HVP there
        "chunked_measure_over_onepass_warm": round((c60["measure_warm_s"] / c60["hvps_warm"])
                                                   / (o60["measure_warm_s"] / o60["hvps_warm"]), 3),
        "lambda_max_relerr_60k": abs(c60["lambda_max"] - o60["lambda_max"]) / o60["lambda_max"],
        "points": list(results.values()),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
