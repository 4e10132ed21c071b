"""The training loop: compiled chunks of steps between measurements, one row per measurement.

The steps between two check points run as one ``lax.scan`` (no host round trip per step, buffers
donated); each check point runs the compiled measurement of :mod:`samedge.measure`. The schedule
is step-based: measure at step 0, every ``measure_every`` steps, and at the last step; evaluate on
the test set at step 0, every ``eval_every`` steps, and at the last step. A non-finite loss stops
the run as ``diverged`` with every row so far kept; so do non-finite parameters and a loss above
``diverge_factor`` times the initial loss.

Checkpoints (:mod:`samedge.checkpoint`) are taken at measurement points, every ``checkpoint_every``
steps and when SIGINT/SIGTERM asks the run to stop; ``resume=True`` continues from the last one.
No data-iterator state is saved or needed: the batch of step ``t`` is ``task.batch_fn(data, t)``,
a function of the seed (inside ``data``'s construction) and ``t`` only.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from samedge import analysis, checkpoint, measure, steps
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


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train(cfg: RunConfig, task: Task, store: RunStore | None = None, *, progress: bool = True,
          on_row: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
    """Run ``cfg`` on ``task``, writing rows to ``store``; returns the summary (with ``status``).

    With ``resume``, continue from the checkpoint in ``store`` (from step 0 if it has none); its
    rows replace ``metrics.csv``, which may hold rows written after it.
    """
    optimizer = steps.build(cfg.optimizer, cfg.lr, cfg.rho, cfg.momentum)
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    opt_state = optimizer.init(params)
    measure_fn = measure.make_measure(task, optimizer, cfg)
    vectors = measure.initial_vectors(params, measure.num_vectors(cfg), cfg.seed)
    chunks: dict[int, Callable] = {}
    rows: list[dict] = []
    points = schedule(cfg.steps, cfg.measure_every)
    evals = set(schedule(cfg.steps, cfg.eval_every))
    done, elapsed, resumed_from = 0, 0.0, None
    if resume and store is not None:
        ckpt = checkpoint.load(store.path, params, opt_state)
        if ckpt is not None:
            if ckpt.seed != cfg.seed:
                from samedge.errors import RunDirError
                raise RunDirError(f"{store.path}: checkpoint seed {ckpt.seed} differs from the config's {cfg.seed}")
            params, opt_state, vectors = ckpt.params, ckpt.opt_state, ckpt.vectors
            rows, done, elapsed, resumed_from = list(ckpt.rows), ckpt.step, ckpt.elapsed_s, ckpt.step
        store.rewrite(rows)
    last_checkpoint = done
    reason = None
    bar = _progress_bar(cfg, progress)
    bar.update(done)
    start_time = time.perf_counter() - elapsed
    status = "completed"
    stop = checkpoint.StopSignals()
    try:
        stop.__enter__()
        for i, step in enumerate(points):
            if resumed_from is not None and step <= resumed_from:
                continue  # measured before the checkpoint; its row is in ``rows``
            if step > done:
                length = step - done
                if length not in chunks:
                    chunks[length] = make_chunk(task, optimizer, length)
                params, opt_state, losses = chunks[length](params, opt_state, task.data, jnp.asarray(done))
                losses = np.asarray(losses)
                bar.update(length)
                reason = _divergence(losses, params, rows, cfg.diverge_factor, done)
                if reason is not None:
                    status = "diverged"
                    break
                done = step
            measure_start = time.perf_counter()
            values, vectors = measure_fn(params, task.data, jnp.asarray(step), vectors)
            row = {"step": step, "time_s": None} | {k: _scalar(v) for k, v in values.items()}  # syncs
            row["measure_s"] = time.perf_counter() - measure_start
            if step in evals:
                row |= task.evaluate(params)
            row["time_s"] = time.perf_counter() - start_time
            if not math.isfinite(row["loss"]) or (rows and row["loss"] > cfg.diverge_factor * rows[0]["loss"]):
                status, reason = "diverged", f"measured loss {row['loss']:.4g} at step {step}"
                break
            rows.append(row)
            if store is not None:
                store.append(row)
                final = step == points[-1]
                due = cfg.checkpoint_every and step - last_checkpoint >= cfg.checkpoint_every
                if not final and (due or stop.requested):
                    checkpoint.save(store.path, checkpoint.Checkpoint(
                        step, params, opt_state, vectors, rows, time.perf_counter() - start_time, cfg.seed))
                    last_checkpoint = step
            if on_row is not None:
                on_row(row)
            bar.set_postfix_str(
                f"loss {row['loss']:.4g}  lambda_max {row['lambda_max']:.4g}  edge {row['edge']:.4g}",
                refresh=False,
            )
            if stop.requested and step != points[-1]:
                status, reason = "interrupted", f"{stop.requested} at step {step}"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as exc:
        bar.close()
        if store is not None:
            store.finish("failed", analysis.summarize(rows) | {"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        stop.__exit__(None, None, None)
    bar.close()
    wall = time.perf_counter() - start_time
    measuring = sum(r.get("measure_s") or 0.0 for r in rows)
    summary = analysis.summarize(rows) | {
        "steps_done": done, "wall_time_s": wall,
        # the share of the run spent in the curvature measurement (compiles of it included)
        "measure_time_s": measuring, "measure_share": measuring / wall if wall > 0 else None,
    }
    if reason is not None:
        summary[f"{status}_reason"] = reason
    if store is not None and checkpoint.path(store.path).exists():
        summary["checkpoint_step"] = last_checkpoint
    if resumed_from is not None:
        summary["resumed_from"] = resumed_from
    if store is not None:
        summary = store.finish(status, summary)
    else:
        summary = {"status": status} | summary
    return summary


def _divergence(losses, params, rows, factor, done) -> str | None:
    """Why the chunk just run diverged (non-finite or exploded loss, non-finite parameters), or None."""
    bad = ~np.isfinite(losses)
    if rows:
        bad |= losses > factor * rows[0]["loss"]
    if bad.any():
        t = int(np.argmax(bad))
        what = "non-finite" if not np.isfinite(losses[t]) else f"{factor:g} x initial loss exceeded:"
        return f"{what} loss {losses[t]:.4g} at step {done + t}"
    if not bool(_all_finite(params)):
        return f"non-finite parameters after step {done + len(losses) - 1}"
    return None


def _scalar(value):
    value = np.asarray(value)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def _progress_bar(cfg: RunConfig, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, disable=not enabled, unit="step", dynamic_ncols=True,
                desc=f"{cfg.task} {cfg.optimizer} lr={cfg.lr:g}" + (f" rho={cfg.rho:g}" if cfg.optimizer != "gd" else ""))
