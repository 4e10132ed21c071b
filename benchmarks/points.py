"""Shared set-up of the benchmarks: a trained quick-MNIST point, its loss, a float64 truth, timing.

The eigen-solvers are compared where it is hard for them: after a few hundred SAM steps the run
sits at its edge of stability and the top eigenvalues of the Hessian are close together.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from samedge import config, curvature, tasks, train


def data_dir():
    return os.environ.get("SAMEDGE_DATA_DIR", "/work/shared/data")


# The MNIST benchmark problem, pinned so that preset changes do not move the figures: the quick preset
# as it was when the speed goals were set (issue 15; BENCHMARKS.md's history): a 3 x 256 ReLU MLP
# (335,114 parameters) on the first 2,000 images, 1,000 SAM steps at lr 0.1, rho 0.1, measured every
# 100. (The quick preset now trains a 7 x 48 GELU MLP on 1,000 images for 6,000 steps, chosen for GD's
# progressive sharpening; issue 18.)
MNIST = dict(task_overrides=dict(n_train=2000, n_test=2000, width=256, depth=4, activation="relu", init_scale=1.0),
             steps=1000, measure_every=100, eval_every=200)
SAM = dict(lr=0.1, rho=0.1)


def quick_task(name: str = "mnist", **overrides):
    """``(cfg, task)`` for the quick preset of task ``name`` (MNIST: the pinned :data:`MNIST` problem)."""
    if name == "mnist":
        overrides = MNIST | (SAM if overrides.get("optimizer") == "sam" else {}) | overrides
    cfg = config.resolve(name, "quick", **overrides)
    task = tasks.build_task(name, tasks.make_task_config(name, cfg.task_config), data_dir=data_dir(),
                            seed=cfg.seed)
    return cfg, task


@functools.lru_cache(maxsize=2)  # P2 and the HVP floor share one point
def trained_point(train_steps: int = 400, chunk: int = 50):
    """``(cfg, task, params)`` after ``train_steps`` SAM steps (lr 0.1, rho 0.1) on quick MNIST."""
    cfg, task = quick_task("mnist", optimizer="sam")
    optimizer = train.build_optimizer(cfg)
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    state = optimizer.init(params)
    run_chunk = train.make_chunk(task, optimizer, chunk)
    for start in range(0, train_steps, chunk):
        params, state, losses = run_chunk(params, state, task.data, jnp.asarray(start))
    jax.block_until_ready(losses)
    return cfg, task, params


def random_start(params, seed: int = 1):
    n = ravel_pytree(params)[0].shape[0]
    return jax.random.normal(jax.random.PRNGKey(seed), (n,))


def truth(task, params, iters: int = 100) -> tuple[float, float]:
    """``(lambda_max, residual)`` by a ``iters``-step Lanczos in float64 (cold start, tol 1e-12)."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        d64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                           task.data)
        v0 = random_start(p64, seed=7).astype(jnp.float64)

        @jax.jit
        def solve(p, d, v0):
            matvec, _ = curvature.flat_hvp(lambda q: task.loss_fn(q, d), p)
            return curvature.lanczos(matvec, v0, k=1, max_iters=iters, tol=1e-12)

        eig = solve(p64, d64, v0)
        return float(abs(eig.values[0])), float(eig.residuals[0])


def hvp_loop(task, length: int):
    """A jitted ``(params, data, v) -> v`` of ``length`` exact HVPs in a bare compiled loop (each
    product normalised; the primal hoisted by XLA, as inside Lanczos): the floor a measurement's HVPs
    cannot beat."""

    @jax.jit
    def loop(params, data, v):
        matvec, _ = curvature.flat_hvp(lambda p: task.loss_fn(p, data), params)

        def step(i, v):
            w = matvec(v)
            return w / jnp.linalg.norm(w)

        return jax.lax.fori_loop(0, length, step, v)

    return loop


def hvp_seconds(loop, length: int, params, data, reps: int = 5) -> float:
    """Seconds of one HVP: the best of ``reps`` timed calls of ``loop`` (:func:`hvp_loop` of ``length``
    HVPs) at ``params``, after one untimed call."""
    v0 = random_start(params)
    jax.block_until_ready(loop(params, data, v0))
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(loop(params, data, v0))
        best = min(best, time.perf_counter() - start)
    return best / length


def measured_run(cfg, task, repeats: int = 1):
    """The trajectory of run ``cfg`` on ``task`` (e.g. :func:`quick_task`'s pinned quick-MNIST SAM run)
    with its own measurement at every check point.

    Yields ``(segment, row, seconds)``: the :class:`samedge.train.Segment`, the measurement's row
    (``train._make_measure``, the program ``train.train`` calls, warm-started along the run) and the
    seconds that call took; with ``repeats`` > 1, ``seconds`` is the list of ``repeats`` timed calls,
    each from a copy (made untimed) of the same incoming state: the same work, the same HVPs. Use the
    segment's arrays before asking for the next one.
    """
    optimizer = train.build_optimizer(cfg)
    _, init_measure, measure_fn = train._make_measure(cfg, task, optimizer)
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    opt_state, mstate = optimizer.init(params), init_measure(params)
    for seg in train.trajectory(task, optimizer, params, opt_state, train.schedule(cfg.steps, cfg.measure_every)):
        seconds, incoming = [], mstate
        for _ in range(repeats):
            state = jax.block_until_ready(jax.tree.map(jnp.copy, incoming)) if repeats > 1 else incoming
            start = time.perf_counter()
            row, mstate = measure_fn(seg.params, task.data, jnp.asarray(seg.step), state, seg.opt_state)
            row = jax.device_get(row)
            seconds.append(time.perf_counter() - start)
        yield seg, row, (seconds if repeats > 1 else seconds[0])


def timed(fn, *args, repeats: int = 3):
    """``(result, median seconds)`` of ``fn(*args)`` after one untimed call (the compile)."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def fresh_point(script: str, args: list[str]) -> dict | None:
    """Run ``python script *args`` in a fresh process (compilation cache off) and return the JSON of its
    last ``POINT `` line; ``None`` (its stderr's tail printed) when it failed. Each point of a memory
    benchmark runs alone, so that its peak RSS is its own."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=os.environ | {"SAMEDGE_JIT_CACHE": "off"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("POINT ")]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(lines[-1][len("POINT "):])
