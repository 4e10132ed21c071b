"""Paper-scale MNIST on an accelerator: one SAM step and one measurement, timed (not yet run on a GPU).

The paper's setting (3 x 1000 ReLU MLP, all 60,000 images, full batch, square loss), SAM lr 0.1,
rho 0.1. Prints the median SAM step inside a compiled 10-step chunk, the median gradient, their
ratio (p1), and the median measurement (default settings) after 200 steps, with its HVP count.
Meant to finish in well under 5 minutes on one GPU.

    SAMEDGE_DATA_DIR=... PYTHONPATH=src python benchmarks/gpu_paper_mnist.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from samedge import config, measure, steps, tasks, train

import points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", help="paper (the point); quick for a CPU smoke run")
    args = parser.parse_args(argv)
    cfg = config.resolve("mnist", args.preset, optimizer="sam")
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", cfg.task_config), data_dir=points.data_dir())
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}); {task.info}")
    optimizer = steps.build("sam", cfg.lr, cfg.rho)
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    state = optimizer.init(params)

    length = 10
    chunk = train.make_chunk(task, optimizer, length)
    start = time.perf_counter()
    params, state, losses = chunk(params, state, task.data, jnp.asarray(0))
    jax.block_until_ready(losses)
    compile_chunk = time.perf_counter() - start
    per_step = []
    for i in range(1, 20):  # 200 steps: off the initial transient, towards the edge
        start = time.perf_counter()
        params, state, losses = chunk(params, state, task.data, jnp.asarray(i * length))
        jax.block_until_ready(losses)
        per_step.append((time.perf_counter() - start) / length)

    gradient = jax.jit(lambda p, d: jax.value_and_grad(task.loss_fn)(p, d))
    jax.block_until_ready(gradient(params, task.data))
    grads = []
    for _ in range(20):
        start = time.perf_counter()
        jax.block_until_ready(gradient(params, task.data))
        grads.append(time.perf_counter() - start)

    measure_fn = measure.make_measure(task, optimizer, cfg)
    vectors = measure.initial_vectors(params, cfg.topk, cfg.seed)
    start = time.perf_counter()
    row, vectors = jax.block_until_ready(measure_fn(params, task.data, jnp.asarray(200), vectors))
    first_measure = time.perf_counter() - start
    measures, hvps = [], []
    for i in range(3):
        params, state, losses = chunk(params, state, task.data, jnp.asarray(200 + i * length))
        jax.block_until_ready(losses)
        start = time.perf_counter()
        row, vectors = jax.block_until_ready(measure_fn(params, task.data, jnp.asarray(210 + i * length), vectors))
        measures.append(time.perf_counter() - start)
        hvps.append(int(row["hvps"]) + int(row.get("hvps_sam", 0)))

    step_s, grad_s, measure_s = (statistics.median(x) for x in (per_step, grads, measures))
    result = {
        "device": f"{device.platform}:{device.device_kind}",
        "sam_step_ms": 1e3 * step_s, "grad_ms": 1e3 * grad_s, "p1_sam_step_over_two_grads": step_s / (2 * grad_s),
        "measure_s": measure_s, "measure_hvps": hvps, "measure_over_100_steps": measure_s / (100 * step_s),
        "first_measure_s_with_compile": first_measure, "chunk_compile_s": compile_chunk,
        "lambda_max": float(row["lambda_max"]), "ratio": float(row["ratio"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    for key, value in result.items():
        print(f"{key:>32}: {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
