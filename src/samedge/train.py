"""The training loop: compiled chunks of steps between measurements, one row per measurement.

The steps between two check points run as one ``lax.scan`` (no host round trip per step, buffers
donated); each check point runs the compiled measurement of :mod:`samedge.measure`. The schedule
is step-based: measure at step 0, every ``measure_every`` steps, and at the last step; evaluate on
the test set at step 0, every ``eval_every`` steps, and at the last step. A non-finite loss stops
the run as ``diverged`` with every row so far kept.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from samedge import analysis, measure, steps
from samedge.config import RunConfig
from samedge.store import RunStore
from samedge.tasks import Task


def schedule(total: int, every: int) -> list[int]:
    """Check-point steps: 0, every, 2*every, ..., and ``total``."""
    points = list(range(0, total, every))
    return points + [total]


def make_chunk(task: Task, optimizer: steps.Optimizer, length: int) -> Callable:
    """A jitted ``chunk(params, opt_state, data, start) -> (params, opt_state, losses)`` of ``length`` steps."""

    def chunk(params, opt_state, data, start):
        def body(carry, i):
            params, opt_state = carry
            batch = task.batch_fn(data, start + i)
            grad_fn = jax.value_and_grad(lambda p: task.loss_fn(p, batch))
            params, opt_state, loss = optimizer.update(params, opt_state, grad_fn)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(length))
        return params, opt_state, losses

    return jax.jit(chunk, donate_argnums=(0, 1))


def train(cfg: RunConfig, task: Task, store: RunStore | None = None, *, progress: bool = True,
          on_row: Callable[[dict], None] | None = None) -> dict:
    """Run ``cfg`` on ``task``, writing rows to ``store``; returns the summary (with ``status``)."""
    optimizer = steps.build(cfg.optimizer, cfg.lr, cfg.rho, cfg.momentum)
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    opt_state = optimizer.init(params)
    measure_fn = measure.make_measure(task, optimizer, cfg)
    vectors = measure.initial_vectors(params, measure.num_vectors(cfg), cfg.seed)
    chunks: dict[int, Callable] = {}
    rows: list[dict] = []
    points = schedule(cfg.steps, cfg.measure_every)
    evals = set(schedule(cfg.steps, cfg.eval_every))
    bar = _progress_bar(cfg, progress)
    start_time = time.perf_counter()
    status = "completed"
    done = 0
    try:
        for i, step in enumerate(points):
            if step > done:
                length = step - done
                if length not in chunks:
                    chunks[length] = make_chunk(task, optimizer, length)
                params, opt_state, losses = chunks[length](params, opt_state, task.data, jnp.asarray(done))
                losses = np.asarray(losses)
                bar.update(length)
                if not np.all(np.isfinite(losses)):
                    status = "diverged"
                    break
                done = step
            values, vectors = measure_fn(params, task.data, jnp.asarray(step), vectors)
            row = {"step": step, "time_s": None} | {k: _scalar(v) for k, v in values.items()}
            if step in evals:
                row |= task.evaluate(params)
            row["time_s"] = time.perf_counter() - start_time
            if not math.isfinite(row["loss"]):
                status = "diverged"
                break
            rows.append(row)
            if store is not None:
                store.append(row)
            if on_row is not None:
                on_row(row)
            bar.set_postfix_str(
                f"loss {row['loss']:.4g}  lambda_max {row['lambda_max']:.4g}  edge {row['edge']:.4g}",
                refresh=False,
            )
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as exc:
        bar.close()
        if store is not None:
            store.finish("failed", analysis.summarize(rows) | {"error": f"{type(exc).__name__}: {exc}"})
        raise
    bar.close()
    summary = analysis.summarize(rows) | {
        "steps_done": done, "wall_time_s": time.perf_counter() - start_time,
    }
    if store is not None:
        summary = store.finish(status, summary)
    else:
        summary = {"status": status} | summary
    return summary


def _scalar(value):
    value = np.asarray(value)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def _progress_bar(cfg: RunConfig, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, disable=not enabled, unit="step", dynamic_ncols=True,
                desc=f"{cfg.task} {cfg.optimizer} lr={cfg.lr:g}" + (f" rho={cfg.rho:g}" if cfg.optimizer != "gd" else ""))
