"""The training loop: compiled chunks of steps between measurements, one row per measurement.

:func:`trajectory` is the one training loop: the steps between two check points run as one
``lax.scan`` (no host round trip per step, buffers donated) and it yields the state at each check
point. :func:`train` walks it, measuring at each check point with :mod:`samedge.measure`, and adds
what a run needs around it: the run folder's rows, test metrics, checkpoints, divergence and
signals. The schedule is step-based: measure at step 0, every ``measure_every`` steps and at the
last step; evaluate on the test set at step 0, every ``eval_every`` steps and at the last step.

A non-finite loss stops the run as ``diverged`` with every row so far kept; so do non-finite
parameters and a loss above ``diverge_factor`` times the initial loss. Checkpoints
(:mod:`samedge.checkpoint`) are taken at measurement points, every ``checkpoint_every`` steps and
when SIGINT/SIGTERM asks the run to stop (:class:`StopSignals`); ``resume=True`` continues from the
last one. No data-iterator state is saved or needed: the batch of step ``t`` is
``task.batch_fn(data, t)``, a function of the seed (inside ``data``'s construction) and ``t`` only,
and the measurement's random draws are ``fold_in(PRNGKey(seed), t)``.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samedge import analysis, checkpoint, measure, optimizers, schedules, steps
from samedge.config import RunConfig
from samedge.errors import ConfigError, RunDirError
from samedge.store import RunStore
from samedge.tasks import Task

__all__ = ["schedule", "make_chunk", "step_key", "stateful_grad_fn", "evaluate", "Segment", "trajectory", "StopSignals", "measure_settings", "train",
           "spectra_along_run"]

INIT_KEY = 0x5A3  # folded into the seed for the first measurement's random start vectors
BATCH_SHARPNESS_MAX = 200  # most fresh minibatches a batch-sharpness estimate draws (--batch-sharpness)


def schedule(total: int, every: int) -> list[int]:
    """Check-point steps: 0, every, 2*every, ..., and ``total``.

    >>> schedule(90, 25)
    [0, 25, 50, 75, 90]
    """
    points = list(range(0, total, every))
    return points + [total]


# Folded into the run's seed for the per-step keys of a task with state (dropout): at or above 2**31,
# so that it never equals a step index (see samedge.tasks.MINIBATCH_KEY).
STEP_KEY = 0xD70F_0000


def step_key(seed: int, step):
    """The PRNG key a stateful task's step ``step`` draws its dropout from: a pure function of the
    run's seed and the step (``fold_in(fold_in(PRNGKey(seed), STEP_KEY), step)``), so a resumed run
    draws the same masks.

    >>> bool((step_key(0, 3) == step_key(0, 3)).all()), bool((step_key(0, 3) == step_key(0, 4)).all())
    (True, False)
    """
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), STEP_KEY), step)


def stateful_grad_fn(task: Task, params, model_state, batch, key):
    """``(grad_fn, new_state)`` for one step of a task with model state.

    ``grad_fn(p) -> (loss, grad)`` differentiates ``task.train_loss_fn(p, model_state, batch, key)``
    (the state as it was before the step, the same dropout key for every gradient of the step);
    ``new_state()`` is the state the call at ``params`` itself returned: the unperturbed pass (SAM's
    ascent-point pass leaves the running statistics alone, as common SAM implementations do).

    Args:
      task: a task with model state.
      params: the point of the step.
      model_state: the state before the step.
      batch: the step's batch.
      key: the step's key (:func:`step_key`).

    Returns:
      ``(grad_fn, new_state)``; call ``new_state()`` after the optimizer's update has called ``grad_fn``.

    >>> from samedge import tasks
    >>> t = tasks.make_task("q", lambda k: jnp.ones(2), lambda p, b: jnp.sum(p ** 2), jnp.ones(1),
    ...                     init_state=lambda k: jnp.zeros(()), train_loss_fn=lambda p, s, b, k: (jnp.sum(p ** 2), s + p[0]))
    >>> p = jnp.ones(2)
    >>> grad_fn, new_state = stateful_grad_fn(t, p, jnp.zeros(()), None, None)
    >>> _ = grad_fn(p + 5.0), grad_fn(p)          # an ascent point first, then the point itself
    >>> float(new_state())                          # the pass at p: 0 + p[0]
    1.0
    """
    seen = []

    def grad_fn(p):
        (loss, state), grad = jax.value_and_grad(
            lambda q: task.train_loss_fn(q, model_state, batch, key), has_aux=True)(p)
        seen.append((p is params, state))
        return loss, grad

    def new_state():
        return next((st for own, st in seen if own), seen[0][1] if seen else model_state)

    return grad_fn, new_state


def make_chunk(task: Task, optimizer: steps.Optimizer, length: int, *, seed: int = 0) -> Callable:
    """A jitted ``chunk(params, opt_state, data, start) -> (params, opt_state, losses)`` of ``length`` steps.

    Step ``start + i`` sees ``task.batch_fn(data, start + i)``; ``losses`` (``(length,)``) are the
    losses before each step. ``params`` and ``opt_state`` are donated. For a task with model state
    (``task.stateful``) the chunk is ``chunk(params, opt_state, model_state, data, start) -> (params,
    opt_state, model_state, losses)``: each step descends ``task.train_loss_fn`` with the key
    :func:`step_key` ``(seed, step)`` and takes the state of its unperturbed pass
    (:func:`stateful_grad_fn`); the model state is donated too.
    """
    if task.stateful:
        def stateful_chunk(params, opt_state, model_state, data, start):
            def body(carry, i):
                params, opt_state, model_state = carry
                step = start + i
                batch = task.batch_fn(data, step)
                grad_fn, new_state = stateful_grad_fn(task, params, model_state, batch, step_key(seed, step))
                params, opt_state, loss = optimizer.update(params, opt_state, grad_fn)
                return (params, opt_state, new_state()), loss

            (params, opt_state, model_state), losses = jax.lax.scan(
                body, (params, opt_state, model_state), jnp.arange(length))
            return params, opt_state, model_state, losses

        return jax.jit(stateful_chunk, donate_argnums=(0, 1, 2))

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


class Segment(NamedTuple):
    """The state at a check point: after ``step`` steps, with the losses of the steps just run."""

    step: int
    params: Any
    opt_state: Any
    losses: np.ndarray  # (steps since the previous check point,) the loss before each of them
    model_state: Any = None  # the model's state (a task with state), else None


def trajectory(task: Task, optimizer: steps.Optimizer, params, opt_state, points, *, start: int = 0,
               model_state=None, seed: int = 0) -> Iterator[Segment]:
    """Train from step ``start`` and yield a :class:`Segment` at every check point of ``points``.

    Args:
      task: the task (its ``batch_fn`` gives each step's batch).
      optimizer: the step.
      params, opt_state: the state after ``start`` steps.
      points: increasing check-point steps; those before ``start`` are skipped (``start`` itself is
        yielded, with no losses, when listed).
      start: steps already done.
      model_state: the model's state after ``start`` steps (a task with state; else ``None``).
      seed: the run's seed (a task with state: its steps' dropout keys, :func:`step_key`).

    Returns:
      An iterator; each chunk between two check points is one compiled ``lax.scan`` (compiled once
      per length). The yielded arrays are the next chunk's donated inputs: use them before asking
      for the next segment.
    """
    chunks: dict[int, Callable] = {}
    done = start
    for step in points:
        if step < start:
            continue
        losses = np.zeros((0,), np.float32)
        if step > done:
            length = step - done
            if length not in chunks:
                chunks[length] = make_chunk(task, optimizer, length, seed=seed)
            if task.stateful:
                params, opt_state, model_state, losses = chunks[length](params, opt_state, model_state, task.data,
                                                                        jnp.asarray(done))
            else:
                params, opt_state, losses = chunks[length](params, opt_state, task.data, jnp.asarray(done))
            losses = np.asarray(losses)
            done = step
        yield Segment(step, params, opt_state, losses, model_state)


class StopSignals:
    """While active, the first SIGINT or SIGTERM only asks the loop to stop at its next measurement
    point (where it checkpoints); a second one interrupts at once (``KeyboardInterrupt``).

    Handlers can only be set from the main thread; elsewhere (a worker thread) this does nothing
    and the signals keep their usual effect. Use it as ``with StopSignals() as stop: ...``.
    """

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def measure_settings(cfg: RunConfig, optimizer: steps.Optimizer) -> measure.MeasureSettings:
    """The :class:`~samedge.measure.MeasureSettings` of a run's configuration."""
    if cfg.custom_optimizer:
        ascends = optimizer.ascent_point is not None
    else:
        ascends = optimizers.get(cfg.optimizer).ascends(cfg.hparams)
    return measure.MeasureSettings(topk=cfg.topk, tol=cfg.lanczos_tol, max_hvps=cfg.lanczos_max_iters,
                                   track_fraction=cfg.track_fraction, track_max=cfg.track_max,
                                   ascent_point=cfg.measure_sam_point and ascends,
                                   crosscheck_every=cfg.crosscheck_every, max_basis=cfg.max_basis,
                                   full_batch=cfg.measure_full_batch,
                                   batch_sharpness=BATCH_SHARPNESS_MAX if cfg.batch_sharpness else 0,
                                   dtype="float64" if cfg.measure_dtype == "float64" else None)


def build_optimizer(cfg: RunConfig) -> steps.Optimizer:
    """The run's optimizer from the registry."""
    if cfg.custom_optimizer:
        raise RunDirError(f"this run's optimizer {cfg.optimizer!r} was passed as a Python object; pass it "
                          f"again (samedge.fit(task, optimizer, ..., resume=True))")
    lr = schedules.make(cfg.schedule, cfg.lr, cfg.steps, cfg.warmup_steps)  # cfg.lr itself when constant
    return optimizers.build(cfg.optimizer, lr, decay_mask=cfg.decay_mask, **cfg.hparams)


def _make_measure(cfg: RunConfig, task: Task, optimizer: steps.Optimizer, probes=()):
    """The run's measurement and, as one jitted ``(params, data, step, state, opt_state) -> (row, state)``,
    its call on the task's measurement batch of that step."""
    eval_mode = cfg.measure_mode == "eval"
    if eval_mode:
        if task.eval_loss_fn is None:
            raise ConfigError(f"--measure-mode eval: task {task.name!r} has no eval_loss_fn (a model with state "
                              f"measured with its running statistics)")
        loss_fn, accuracy_fn = task.eval_loss_fn, None
    else:
        loss_fn, accuracy_fn = task.loss_fn, task.accuracy_fn
    m = measure.measurement(loss_fn, optimizer, measure_settings(cfg, optimizer),
                            accuracy_fn=accuracy_fn, batch_fn=task.batch_fn, full_batch_fn=task.full_batch_fn,
                            probes=probes, stateful=eval_mode)
    seed_key = jax.random.PRNGKey(cfg.seed)

    def at_step(params, data, step, state, workspace, opt_state, model_state):
        return m.measure(params, task.measure_batch_fn(data, step), state._replace(workspace=workspace),
                         jax.random.fold_in(seed_key, step), opt_state,
                         data if cfg.batch_sharpness or cfg.measure_full_batch else None,
                         model_state if eval_mode else None)

    # the state's Krylov workspace (96 MB on quick MNIST) is donated: reused in place instead of
    # mapped afresh from the operating system by every call
    jitted = jax.jit(at_step, donate_argnums=4)

    def measure_at(params, data, step, state, opt_state, model_state=None):
        rest, workspace = measure.split_workspace(state)
        return jitted(params, data, step, rest, workspace, opt_state, model_state)

    init = lambda params: m.init(params, jax.random.fold_in(seed_key, INIT_KEY))  # noqa: E731
    return m, init, measure_at


def resolve_probes(cfg: RunConfig, given=(), *, task: Task | None = None,
                   settings: measure.MeasureSettings | None = None) -> tuple:
    """The run's own probes: ``cfg.probes`` in order, each ``package.module:PROBE`` loaded, or, for a
    plain name, the :class:`~samedge.probes.Probe` of that name in ``given`` (objects passed to
    ``samedge.fit``), else the opt-in probe of that name (``layers``, ``gauss_newton``, ``trace``:
    :func:`samedge.measure.opt_in`).

    Args:
      cfg: the run's settings.
      given: probe objects passed from Python.
      task: the run's task (``gauss_newton`` takes its outputs).
      settings: the measurement's settings (the opt-in probes' workspace).

    Returns:
      The probes; a one-line :class:`~samedge.errors.ConfigError` for one that cannot be had.

    >>> [p.name for p in resolve_probes(RunConfig(task="mine", preset=None, probes=("layers", "trace")))]
    ['layers', 'trace']
    """
    from samedge import probes as probes_mod

    by_name = {p.name: p for p in given}
    out = []
    for name in cfg.probes:
        if ":" in name:
            out.append(probes_mod.load(name))
        elif name in by_name:
            out.append(probes_mod.check_probe(by_name[name]))
        elif name in measure.OPT_IN:
            if name == "gauss_newton":
                _check_gauss_newton(cfg, task)
            out.append(measure.opt_in(name, settings, task, chunk_size=cfg.chunk_size))
        else:
            raise RunDirError(f"this run's probe {name!r} was passed as a Python object; pass it again "
                              f"(samedge.fit(..., probes=[...], resume=True))")
    return tuple(out)


def _check_gauss_newton(cfg: RunConfig, task: Task | None) -> None:
    """Refuse the Gauss-Newton probe where the task's outputs are not those of the measured loss."""
    if cfg.measure_mode == "eval":
        raise ConfigError("--probe gauss_newton measures the loss the task's output_fn gives (train mode); "
                          "it does not take --measure-mode eval")
    if task is not None and task.chunk_dependent and cfg.chunk_size:
        from samedge import sharding

        if sharding.is_sharded(task):
            raise ConfigError("--probe gauss_newton: this task's loss depends on the chunking and its batch is "
                              "split over devices; run it on one device (--devices 1) or with --chunk-size 0")


class _State(NamedTuple):
    params: Any
    opt_state: Any
    mstate: measure.MeasureState
    rows: list
    done: int
    elapsed: float
    resumed_from: int | None
    model_state: Any = None


def _start(cfg, task, optimizer, m, init_measure, store, resume) -> _State:
    """The run's starting state: fresh from the seed, or the checkpoint in ``store`` when resuming."""
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    model_state = task.init_state(jax.random.PRNGKey(cfg.seed)) if task.stateful else None
    opt_state = optimizer.init(params)
    mstate = init_measure(params)
    state = _State(params, opt_state, mstate, [], 0, 0.0, None, model_state)
    if resume and store is not None:
        ckpt = checkpoint.load(store.path, params, opt_state, mstate.carries, model_state)
        if ckpt is not None:
            if ckpt.seed != cfg.seed:
                raise RunDirError(f"{store.path}: checkpoint seed {ckpt.seed} differs from the config's {cfg.seed}")
            if ckpt.measure is not None:
                mstate = mstate._replace(carries=ckpt.measure)
            else:  # format 1: one block of vectors; the guard's memory is in the rows
                try:
                    mstate = measure.from_vectors(m, mstate, ckpt.vectors, ckpt.rows)
                except RunDirError as exc:
                    raise RunDirError(f"{store.path}: {exc}") from None
            state = _State(ckpt.params, ckpt.opt_state, mstate, list(ckpt.rows), ckpt.step, ckpt.elapsed_s, ckpt.step,
                           ckpt.model_state)
        store.rewrite(state.rows)
    return state


def evaluate(task: Task, params, model_state=None) -> dict:
    """The task's test metrics at ``params`` (and, for a task with state, its state: BatchNorm's
    running statistics, as a model is tested).

    >>> from samedge import tasks
    >>> t = tasks.make_task("q", lambda k: {"w": jnp.ones(2)}, lambda p, b: jnp.sum(p["w"] ** 2), jnp.ones(1),
    ...                     evaluate=lambda p: {"norm": float(jnp.sum(p["w"] ** 2))})
    >>> evaluate(t, {"w": jnp.ones(2)})
    {'norm': 2.0}
    """
    return task.evaluate(params, model_state) if task.stateful else task.evaluate(params)


def _natural(key: str):
    """``outlier_2`` before ``outlier_10``: digits compare as numbers."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def _row(values, step, measure_s, started, optimizer, evaluation) -> dict:
    # a jitted function returns its dict with sorted keys; put numbered columns in numeric order
    row = {"step": step, "time_s": None} | {k: _scalar(values[k]) for k in sorted(values, key=_natural)}
    if optimizer.edge is None:  # no known edge: the columns stay empty, never a made-up edge
        row |= {"edge": None, "ratio": None}
    row["measure_s"] = measure_s
    row |= evaluation
    row["time_s"] = time.perf_counter() - started
    return row


def train(cfg: RunConfig, task: Task, store: RunStore | None = None, *, progress: bool = True,
          on_row: Callable[[dict], None] | None = None, resume: bool = False,
          optimizer: steps.Optimizer | None = None, probes=(),
          on_losses: Callable[[int, np.ndarray], None] | None = None) -> dict:
    """Run ``cfg`` on ``task``, writing rows to ``store``; returns the summary (with ``status``).

    Args:
      cfg: the run's settings.
      task: the task.
      store: the run folder, or ``None`` (nothing written).
      progress: draw a progress bar.
      on_row: called with each row as it is written.
      resume: continue from the checkpoint in ``store`` (from step 0 if it has none); its rows
        replace ``metrics.csv``, which may hold rows written after it.
      optimizer: the optimizer object, when ``cfg.custom_optimizer`` (else built from the registry).
      probes: the :class:`~samedge.probes.Probe` objects that ``cfg.probes`` names without an import
        path (see :func:`resolve_probes`).
      on_losses: called as ``on_losses(first_step, losses)`` after each compiled chunk of steps, with
        the training loss before each step of it (``losses[i]`` at step ``first_step + i``), those of
        a chunk that diverged included.

    Returns:
      The summary: ``status`` (``completed``, ``diverged`` or ``interrupted``), the final figures
      and the second-half ratio statistics (:func:`samedge.analysis.summarize`), ``steps_done``,
      ``wall_time_s``, ``measure_time_s`` and ``measure_share``.
    """
    optimizer = optimizer if optimizer is not None else build_optimizer(cfg)
    m, init_measure, measure_fn = _make_measure(cfg, task, optimizer, resolve_probes(
        cfg, probes, task=task, settings=measure_settings(cfg, optimizer)))
    state = _start(cfg, task, optimizer, m, init_measure, store, resume)
    params, opt_state, mstate, rows, done = state.params, state.opt_state, state.mstate, state.rows, state.done
    points = schedule(cfg.steps, cfg.measure_every)
    evals = set(schedule(cfg.steps, cfg.eval_every))
    if state.resumed_from is not None:
        points = [p for p in points if p > state.resumed_from]  # earlier rows are in ``rows``
    last_checkpoint, reason, status = done, None, "completed"
    bar = _progress_bar(cfg, progress)
    bar.update(done)
    started = time.perf_counter() - state.elapsed
    try:
        with StopSignals() as stop:
            for seg in trajectory(task, optimizer, params, opt_state, points, start=done,
                                  model_state=state.model_state, seed=cfg.seed):
                bar.update(len(seg.losses))
                if len(seg.losses) and on_losses is not None:
                    on_losses(done, seg.losses)
                if len(seg.losses):
                    reason = _divergence(seg.losses, seg.params, rows, cfg.diverge_factor, done)
                    if reason is not None:
                        status = "diverged"
                        break
                done = seg.step
                t0 = time.perf_counter()
                values, mstate = measure_fn(seg.params, task.data, jnp.asarray(seg.step), mstate, seg.opt_state,
                                            seg.model_state)
                values = jax.device_get(values)  # syncs
                measure_s = time.perf_counter() - t0
                row = _row(values, seg.step, measure_s, started, optimizer,
                           evaluate(task, seg.params, seg.model_state) if seg.step in evals else {})
                if not math.isfinite(row["loss"]) or (rows and row["loss"] > cfg.diverge_factor * rows[0]["loss"]):
                    status, reason = "diverged", f"measured loss {row['loss']:.4g} at step {seg.step}"
                    break
                rows.append(row)
                if store is not None:
                    store.append(row)
                    final = seg.step == cfg.steps
                    due = cfg.checkpoint_every and seg.step - last_checkpoint >= cfg.checkpoint_every
                    if not final and (due or stop.requested):
                        checkpoint.save(store.path, checkpoint.Checkpoint(
                            seg.step, seg.params, seg.opt_state, mstate.carries, rows,
                            time.perf_counter() - started, cfg.seed, model_state=seg.model_state))
                        last_checkpoint = seg.step
                if on_row is not None:
                    on_row(row)
                bar.set_postfix_str(_postfix(row), refresh=True)
                if stop.requested and seg.step != cfg.steps:
                    status, reason = "interrupted", f"{stop.requested} at step {seg.step}"
                    break
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as exc:
        bar.close()
        if store is not None:
            store.finish("failed", analysis.summarize(rows) | {"error": f"{type(exc).__name__}: {exc}"})
        raise
    bar.close()
    return _finish(cfg, store, status, reason, rows, done, started, last_checkpoint, state.resumed_from)


def _finish(cfg, store, status, reason, rows, done, started, last_checkpoint, resumed_from) -> dict:
    wall = time.perf_counter() - started
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
        return store.finish(status, summary)
    return {"status": status} | summary


def _postfix(row) -> str:
    text = f"loss {row['loss']:.4g}  lambda_max {row['lambda_max']:.4g}"
    if row.get("edge") is not None:
        text += f"  edge {row['edge']:.4g}"
    return text


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


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _scalar(value):
    value = np.asarray(value)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def _progress_bar(cfg: RunConfig, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, disable=not enabled, unit="step", dynamic_ncols=True,
                desc=f"{cfg.task} {cfg.describe()}")


def spectra_along_run(cfg: RunConfig, task: Task, at_steps, *, num_probes: int = 8, num_matvecs: int = 40):
    """Train ``cfg`` on ``task`` along :func:`trajectory` and yield the SLQ spectrum at ``at_steps``.

    Args:
      cfg, task: the run.
      at_steps: the steps at which to take the spectrum.
      num_probes, num_matvecs: SLQ's probes and Lanczos steps per probe (:func:`samedge.spectrum.slq`).

    Returns:
      An iterator of :class:`samedge.spectrum.Spectrum`, one per step as it is reached (the Hessian
      of the task's measurement batch; the edge is the optimizer's at the gradient there). Stops
      early if the loss becomes non-finite.
    """
    from jax.flatten_util import ravel_pytree

    from samedge import curvature, spectrum

    optimizer = build_optimizer(cfg)
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    model_state = task.init_state(jax.random.PRNGKey(cfg.seed)) if task.stateful else None
    opt_state = optimizer.init(params)
    n = ravel_pytree(params)[0].shape[0]

    @jax.jit
    def slq_at(params, opt_state, data, step):
        batch = task.measure_batch_fn(data, step)
        loss_fn = lambda p: task.loss_fn(p, batch)  # noqa: E731
        matvec, _ = curvature.flat_hvp(loss_fn, params)
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0x51C)
        nodes, weights = spectrum.slq(matvec, n, key, num_probes=num_probes, num_matvecs=num_matvecs)
        edge = optimizer.edge(jax.grad(loss_fn)(params), opt_state) if optimizer.edge is not None else jnp.nan
        return nodes, weights, edge

    points = sorted(set(int(s) for s in at_steps))
    for seg in trajectory(task, optimizer, params, opt_state, points, model_state=model_state, seed=cfg.seed):
        if len(seg.losses) and not np.all(np.isfinite(seg.losses)):
            return
        nodes, weights, edge = slq_at(seg.params, seg.opt_state, task.data, jnp.asarray(seg.step))
        yield spectrum.to_spectrum(seg.step, nodes, weights, edge)
