"""Why chunks of exactly 1,000 look slow on the paper's MNIST MLP (issue 27): an XLA CPU quirk.

    PYTHONPATH=src python benchmarks/chunk_rows.py

The paper's 3 x 1000 ReLU MLP on random inputs: the loss's compiled forward pass on 999, 1,000,
1,001 and 2,000 rows (one pass, nothing chunked), then a warm measurement (8 HVPs, top-1) on 10,000
rows in one pass and in chunks of 1,000, 1,001 and 1,024. Medians of 3 calls after a warm-up; last
line JSON.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from samedge import chunking, optimizers
from samedge.measure import MeasureSettings, measurement

SIZES = [784, 1000, 1000, 1000, 10]


def loss(p, b):
    h = b[0]
    for layer in p[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    return jnp.mean((h @ p[-1]["w"] + p[-1]["b"] - b[1]) ** 2)


def seconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(10_000, 784)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=(10_000, 10)).astype(np.float32))
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    params = [{"w": jax.random.normal(k, (a, b)) / a ** 0.5, "b": jnp.zeros(b)}
              for k, a, b in zip(keys, SIZES[:-1], SIZES[1:])]
    out = {}
    for rows in (999, 1000, 1001, 2000):
        out[f"loss_s_{rows}_rows"] = seconds(jax.jit(loss), params, (x[:rows], y[:rows]))
        print(f"loss on {rows:5d} rows: {out[f'loss_s_{rows}_rows'] * 1e3:7.1f} ms", flush=True)
    for chunk in (0, 1000, 1001, 1024):
        f = loss if chunk == 0 else chunking.chunked_mean(loss, chunk)
        m = measurement(f, optimizers.build("gd", 0.1), MeasureSettings(min_hvps=8, max_hvps=8))
        state = m.init(params, jax.random.PRNGKey(1))
        row, state = m.measure(params, (x, y), state, jax.random.PRNGKey(2))  # compiles
        t0 = time.perf_counter()
        row, _ = m.measure(params, (x, y), state, jax.random.PRNGKey(3))
        jax.block_until_ready(row)
        out[f"measure_s_chunk_{chunk}"] = time.perf_counter() - t0
        print(f"warm measurement (8 HVPs), {'one pass' if not chunk else f'chunks of {chunk}'}: "
              f"{out[f'measure_s_chunk_{chunk}']:.2f} s", flush=True)
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
