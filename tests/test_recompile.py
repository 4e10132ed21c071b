"""The training chunk and the measurement compile once: later calls with new values reuse them.

Compiles are counted two ways: the jitted function's own cache size, and JAX's backend-compile
events (``/jax/core/compile/backend_compile_duration``), which also catch anything compiled
behind the loop's back (an eager op on a new shape, a re-traced closure).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import pytest

from samedge import config, measure, tasks, train

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Yields a list that gets one entry per backend compile inside the block."""
    seen: list[str] = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def tiny(data_dir):
    # A small MNIST MLP on real images: compiles in seconds, same code paths as the quick preset.
    task_config = dict(n_train=128, n_test=64, width=32, depth=3)
    cfg = config.resolve("mnist", "quick", optimizer="sam", task_overrides=task_config,
                         steps=30, measure_every=10, eval_every=10, lanczos_max_iters=12,
                         measure_sam_point=True)  # the fullest measurement program
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", cfg.task_config), data_dir=data_dir)
    return cfg, task


def test_chunk_compiles_once(tiny):
    cfg, task = tiny
    optimizer = train.build_optimizer(cfg)
    params = task.init_params(jax.random.PRNGKey(0))
    state = optimizer.init(params)
    chunk = train.make_chunk(task, optimizer, 5)
    with count_compiles() as first:
        params, state, losses = chunk(params, state, task.data, jnp.asarray(0))
        jax.block_until_ready(losses)
    assert len(first) >= 1  # the counter does see a compile
    with count_compiles() as seen:
        for start in (5, 10):  # new parameters, new step index: same shapes, same program
            params, state, losses = chunk(params, state, task.data, jnp.asarray(start))
        jax.block_until_ready(losses)
    assert seen == []
    assert chunk._cache_size() == 1
    # The chunk did train: the loss fell, so the calls were real (not a cached no-op).
    assert float(losses[-1]) < float(losses[0])


def test_measure_compiles_once(tiny):
    cfg, task = tiny
    optimizer = train.build_optimizer(cfg)
    params = task.init_params(jax.random.PRNGKey(0))
    m = measure.measurement(task.loss_fn, optimizer, train.measure_settings(cfg, optimizer),
                            accuracy_fn=task.accuracy_fn)
    state = m.init(params, jax.random.PRNGKey(0))
    opt_state = optimizer.init(params)
    row, state = m.measure(params, task.data, state, jax.random.PRNGKey(1), opt_state)
    first = float(row["lambda_max"])
    moved = jax.tree.map(lambda a: a * 1.5, params)  # new values, same shapes
    with count_compiles() as seen:
        for i in range(3):  # new parameters, new keys, new state: one program
            row, state = m.measure(moved, task.data, state, jax.random.PRNGKey(10 + i), opt_state)
            moved = jax.tree.map(lambda a: a * 0.9, moved)
        jax.block_until_ready(row)
    assert seen == []
    assert float(row["lambda_max"]) != first  # it measured the new point


def test_training_loop_compiles_nothing_after_the_first_chunk(tiny):
    # Step 0 is measured first, then the first chunk compiles; from the second measurement on,
    # every chunk has the same length (30 = 3 x 10) and nothing may compile again.
    cfg, task = tiny
    compiles_after: list[int] = []
    state = {"armed": False}

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE and state["armed"]:
            compiles_after.append(1)

    def on_row(row):
        if row["step"] == cfg.measure_every:
            state["armed"] = True

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        summary = train.train(cfg, task, progress=False, on_row=on_row)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert summary["status"] == "completed" and summary["measurements"] == 4
    assert state["armed"] and compiles_after == []
