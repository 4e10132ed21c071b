"""Sweeps: a grid of runs (step size x SAM radius x seed), each an ordinary run folder under one
sweep folder, run by local worker processes or by Ray tasks.

The grid. Each optimizer is swept over the step sizes and over its own hyperparameters (its
registry entry in :mod:`samedge.optimizers` says which it has): the values given, else the task
preset's grid for that hyperparameter (``grid``) when the optimizer's default is one of its values,
else that default; the step sizes given, else the
preset's grid (``grid_lr``) for an optimizer the preset sets at one of its values, else that
optimizer's own preset step size (Adam at 1e-3 is not swept over SAM's 0.4 and 0.5). Values of a
hyperparameter an optimizer does not have are ignored for it, with a notice (so ``--optimizer
momentum --rho 0.1,0.3`` is one run, said so, never two runs merged under one name). A grid point
that the registry says is another optimizer exactly is run as that one: SAM at ``rho = 0`` takes
exactly the GD step, w' = w - eta grad L(w), and its SAM-edge is 2/eta, so the run is recorded under
its honest name (``mnist-gd-lr0.1-s0``) and the report puts it in the rho = 0 column.

Skip and continue. A run folder whose ``summary.json`` says ``completed`` or ``diverged`` is finished
and skipped when the sweep is run again; any other folder (no summary, ``interrupted``, ``failed``) is
continued by :func:`continue_run`. A folder that holds a *different* configuration is refused
(:class:`~samedge.errors.RunDirError`), never silently replaced.

Backends. ``local``: N spawned worker processes, one run each at a time, each pinned to its own share
of the CPUs (``sched_setaffinity``) with XLA's CPU thread pool limited before JAX is imported, so N
parallel runs do not fight over cores. ``ray``: one Ray task per run with its CPU/GPU request and
``max_retries``, so a run whose worker process dies is started again; the run folders must be on a
file system every Ray node sees. Either way a run that raises or whose worker dies is recorded as
``failed`` (with the error) in its ``summary.json`` and the sweep goes on.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from samedge import config as config_mod
from samedge import jit_cache, tasks
from samedge import optimizers as registry
from samedge.errors import ConfigError
from samedge.run import execute, run_name
from samedge.store import SUMMARY, in_use, read_json, require_same_config, run_status, write_json_atomic, write_summary

FINISHED = ("completed", "diverged")  # statuses a re-run of the sweep skips
WORKER_FILE = "worker.json"  # who ran (or is running) this folder: pid, host, CPUs, attempt start


@dataclass(frozen=True)
class Job:
    """One grid point: the run's resolved config and its folder."""

    cfg: config_mod.RunConfig
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def expand_grid(task: str, preset: str | None = None, *, optimizers: Sequence[str] | None = None,
                lrs: Sequence[float] | None = None, hparams: Mapping[str, Sequence[float]] | None = None,
                seeds: Sequence[int] = (0,), task_overrides=None, notice: Callable[[str], None] = print,
                batch_sizes: Sequence[int] | None = None, **run_overrides) -> list[config_mod.RunConfig]:
    """The resolved configs of the grid ``optimizers x lrs x (each optimizer's hyperparameters) x seeds``.

    Args:
      task, preset: the task and its preset, whose :meth:`~samedge.tasks.Preset.sweep_values` fills
        the step sizes and hyperparameter values not given: the grid's, or an optimizer's own where
        the preset sets it outside the grid.
      optimizers: optimizer names (default ``sam``).
      lrs: step sizes.
      hparams: ``{hyperparameter: values}``; hyperparameter lists may also be keywords (``rho=[0.1]``).
      seeds: seeds.
      batch_sizes: minibatch sizes (a task setting; each its own grid point and run folder).
      task_overrides: task settings for every run.
      notice: called with a line for each list an optimizer ignores.
      **run_overrides: other RunConfig settings for every run.

    Returns:
      The configs, duplicates (same run name) dropped; a point the registry maps to another
      optimizer (SAM at rho = 0 is GD) is resolved as that one.

    >>> [(c.optimizer, dict(c.hparams)) for c in expand_grid("mnist", "quick", lrs=[0.1], rho=[0, 0.3])]
    [('gd', {}), ('sam', {'rho': 0.3})]
    """
    p = tasks.get_preset(task, preset)
    hyper_names = set(registry.all_hypers())
    for name in optimizers or [registry.DEFAULT]:  # entries from a user's module have their own
        hyper_names |= set(registry.get(name).hyper_names)
    lists = {k: list(v) for k, v in (hparams or {}).items()}
    lists |= {k: list(run_overrides.pop(k)) for k in list(run_overrides) if k in hyper_names}
    names = list(optimizers or [registry.DEFAULT])
    seeds = list(seeds) or [0]
    # each optimizer's values on each axis: those given, else the preset's (Preset.sweep_values: the grid,
    # or the optimizer's own value where it lies outside the grid; Adam does not run at SAM's etas)
    plan: dict[str, dict[str, list[float]]] = {}
    for name in names:
        entry = registry.get(name)
        for h in sorted(set(lists) - set(entry.hyper_names)):
            notice(f"sweep: {entry.name} has no {h}; its runs ignore the {h} values given")
        axes = {"lr": [float(x) for x in lrs] if lrs else list(p.sweep_lrs(name))}
        if not axes["lr"]:
            raise ConfigError(f"the {task} {p.name} preset has no sweep grid; pass --lr")
        for h, h_default in entry.defaults().items():
            own = p.hparams.get(h, h_default)
            axes[h] = [float(x) for x in lists[h]] if h in lists else list(p.sweep_values(h, own) or (own,))
        for axis, values in axes.items():
            grid = list(p.grid_lr if axis == "lr" else p.grid.get(axis, ()))
            given = bool(lrs) if axis == "lr" else axis in lists
            if grid and not given and values != grid:
                where = (f"the {p.name} preset's step size {values[0]:g}, not the grid's" if axis == "lr"
                         else f"its {axis} {values[0]:g}, not the {p.name} grid's")
                notice(f"sweep: {entry.name} runs at {where} {', '.join(f'{x:g}' for x in grid)} "
                       f"(pass --{axis.replace('_', '-')} to choose)")
        plan[name] = axes
    out, seen = [], set()
    all_lrs = list(dict.fromkeys(x for axes in plan.values() for x in axes["lr"]))
    for seed, batch, lr, name in itertools.product(seeds, list(batch_sizes or [None]), all_lrs, names):
        if lr not in plan[name]["lr"]:
            continue
        overrides = dict(task_overrides or {}) | ({} if batch is None else {"batch_size": int(batch)})
        entry = registry.get(name)
        for values in itertools.product(*(plan[name][h] for h in entry.hyper_names)):
            hp = {h: float(v) for h, v in zip(entry.hyper_names, values)}
            name_, hp = entry.equivalent(hp) or (name, hp)
            cfg = config_mod.resolve(task, p.name, task_overrides=overrides, hparams=hp,
                                     **(run_overrides | dict(optimizer=name_, lr=float(lr), seed=int(seed))))
            key = run_name(cfg)
            if key not in seen:
                seen.add(key)
                out.append(cfg)
    return out


def jobs_for(configs: Iterable[config_mod.RunConfig], out) -> list[Job]:
    """One :class:`Job` per config, its folder ``out/<run name>``."""
    return [Job(cfg, Path(out) / run_name(cfg)) for cfg in configs]


def run_state(path: Path, cfg: config_mod.RunConfig | None = None) -> str:
    """``new`` (no run yet), ``finished`` (completed or diverged) or ``unfinished``.

    With ``cfg``, a folder holding another configuration raises :class:`RunDirError`.
    """
    status = run_status(path)
    if status is None:
        return "new"
    if cfg is not None:
        require_same_config(path, cfg.to_dict(), remedy=f"delete {path} to run this grid point afresh, "
                                                      f"or give the sweep another --out",
                            defaults=config_mod.defaults())
    return "finished" if status in FINISHED else "unfinished"


def continue_run(cfg, path: Path, *, data_dir=None, trackers=()) -> dict:
    """Carry on an unfinished run from its last checkpoint (from step 0 if it has none); ``trackers``:
    the ``--log`` specs that watch it (:mod:`samedge.trackers`)."""
    return execute(cfg, path, data_dir=data_dir, resume=True, progress=False, log=trackers)


def train_point(cfg, path: Path, *, data_dir=None, trackers=()) -> dict:
    """The default runner: a new run, or :func:`continue_run` for an unfinished one; ``trackers``: the
    ``--log`` specs that watch it."""
    if run_state(path, cfg) == "unfinished":
        return continue_run(cfg, path, data_dir=data_dir, trackers=trackers)
    return execute(cfg, path, data_dir=data_dir, overwrite=False, progress=False, log=trackers)


def record_failure(path: Path, error: str) -> dict:
    """Write ``summary.json`` as ``failed`` with ``error`` (and what the metrics so far say)."""
    from samedge import analysis
    from samedge.store import read_metrics

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    holder = in_use(path)
    if holder is not None:  # a live process still writes this run: leave its files alone
        return {"status": "failed", "error": f"{error} (run folder in use by {holder}; not recorded)"}
    try:
        rows = read_metrics(path)
    except Exception:  # a half-written metrics file must not hide the real error
        rows = []
    return write_summary(path, "failed", {"error": error} | analysis.summarize(rows))


def run_job(cfg, path, *, data_dir=None, runner: Callable | None = None, cpus=None, trackers=()) -> dict:
    """Run one grid point in this process and return its summary; never raises for a failed run.

    Writes ``worker.json`` (pid, host, CPUs) first, so a supervisor can find the process. ``trackers``
    (``--log`` specs) reach the runner as its ``trackers`` keyword when there are any.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / WORKER_FILE, {
        "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
        "cpus": sorted(cpus if cpus is not None else _affinity()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    })
    if run_state(path, cfg) == "finished":  # e.g. a retried task whose first attempt got this far
        return read_json(path / SUMMARY)
    try:
        watch = {"trackers": list(trackers)} if trackers else {}  # a runner of one's own need not take them
        return (runner or train_point)(cfg, path, data_dir=data_dir, **watch)
    except BaseException as exc:  # recorded, not raised: one bad grid point must not stop the sweep
        summary = read_json(path / SUMMARY) if (path / SUMMARY).exists() else {}
        if summary.get("status") != "failed":
            summary = record_failure(path, f"{type(exc).__name__}: {exc}")
        return summary


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS: no affinity API
        return set(range(os.cpu_count() or 1))


def cpu_slots(workers: int, cpus: Iterable[int] | None = None) -> list[list[int]]:
    """Split the usable CPUs into ``workers`` contiguous shares (shared round-robin when too few)."""
    cpus = sorted(cpus if cpus is not None else _affinity())
    if workers <= len(cpus):
        size, extra = divmod(len(cpus), workers)
        out, start = [], 0
        for i in range(workers):
            n = size + (1 if i < extra else 0)
            out.append(cpus[start:start + n])
            start += n
        return out
    return [[cpus[i % len(cpus)]] for i in range(workers)]


def limit_threads(cpus: Sequence[int]) -> None:
    """Pin this process to ``cpus`` and size XLA's CPU threading to them. Call before importing JAX."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    n = str(len(cpus))
    flags = os.environ.get("XLA_FLAGS", "")
    # XLA sizes its CPU thread pool from the affinity mask; Eigen's multi-threaded kernels would
    # still spread over it, so they are turned off. (XLA has no thread-count flag: an unknown
    # --flag is fatal and a bare token is read as a file name, so nothing else goes in here.)
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n


def _local_main(cfg, path, cpus, data_dir, runner, trackers=()) -> None:
    # The first thing a spawned worker does, before anything imports JAX.
    limit_threads(cpus)
    jit_cache.enable()
    summary = run_job(cfg, path, data_dir=data_dir, runner=runner, cpus=cpus, trackers=trackers)
    sys.exit(0 if summary.get("status") in FINISHED else 1)


def _finish_dead(job: Job, error: str) -> dict:
    """The run's own summary if its worker wrote one (any status), else ``failed`` with ``error``."""
    try:
        return read_json(job.path / SUMMARY)
    except (OSError, ValueError):
        return record_failure(job.path, error)


def run_local(jobs: Sequence[Job], *, workers: int = 1, data_dir=None, runner=None,
              on_done: Callable[[Job, dict], None] | None = None, trackers=()) -> dict[str, dict]:
    """Run ``jobs`` in ``workers`` spawned processes (a fresh one per run), each on its CPU share
    (``trackers``: the ``--log`` specs that watch each run)."""
    import multiprocessing as mp
    from collections import deque
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    slots = cpu_slots(workers)
    queue, free, running, results = deque(jobs), list(range(workers)), {}, {}
    try:
        while queue or running:
            while queue and free:
                slot, job = free.pop(0), queue.popleft()
                proc = ctx.Process(target=_local_main, args=(job.cfg, job.path, slots[slot], data_dir, runner,
                                                             tuple(trackers)),
                                   name=f"samedge-{job.name}")
                proc.start()
                running[proc.sentinel] = (proc, slot, job)
            for sentinel in wait(list(running)):
                proc, slot, job = running.pop(sentinel)
                proc.join()
                summary = _finish_dead(job, f"worker process exited with code {proc.exitcode}")
                results[job.name] = summary
                free.append(slot)
                if on_done:
                    on_done(job, summary)
    finally:
        for proc, _, _ in running.values():  # interrupted: children got the SIGINT too; make sure
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    return results


def _ray_main(cfg, path, data_dir, runner, trackers=()) -> dict:
    jit_cache.enable()  # per machine: the folder name carries the host and its CPU
    return run_job(cfg, path, data_dir=data_dir, runner=runner, trackers=trackers)


def run_ray(jobs: Sequence[Job], *, address=None, cpus_per_run: float = 1, gpus_per_run: float = 0,
            max_retries: int = 3, data_dir=None, runner=None, num_cpus: int | None = None,
            on_done: Callable[[Job, dict], None] | None = None, trackers=()) -> dict[str, dict]:
    """One Ray task per job (``num_cpus``/``num_gpus`` per run, ``max_retries`` on a dead worker;
    ``trackers``: the ``--log`` specs that watch each run, started on the node that runs it).

    Attaches to the cluster at ``address``, to a Ray already initialised in this process, or starts
    a local one (with ``num_cpus``); a cluster started here is shut down at the end.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'samedge[ray]'") from None
    started = False
    if not ray.is_initialized():
        kw = dict(address=address) if address else dict(num_cpus=num_cpus)
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
        started = True
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries)(_ray_main)
        pending = {task.remote(job.cfg, str(job.path.resolve()), data_dir, runner, tuple(trackers)): job
                   for job in jobs}
        results = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    summary = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries used up, node lost, ...
                    summary = _finish_dead(job, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                results[job.name] = summary
                if on_done:
                    on_done(job, summary)
        return results
    finally:
        if started:
            ray.shutdown()


def run_sweep(configs: Sequence[config_mod.RunConfig], out, *, backend: str = "local", workers: int = 1,
              data_dir=None, runner=None, log: Callable[[str], None] = print, trackers=(),
              **backend_options) -> dict[str, dict]:
    """Run every config not finished yet under ``out``; returns ``{run name: summary}`` for all.

    Finished runs are skipped (their summaries are returned as they are). ``log`` prints the
    progress lines; ``trackers`` are the ``--log`` specs (strings, :mod:`samedge.trackers`) that
    watch every run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = jobs_for(configs, out)
    results, todo = {}, []
    for job in jobs:
        if run_state(job.path, job.cfg) == "finished":
            results[job.name] = read_json(job.path / SUMMARY)
        else:
            # An old ``failed``/``interrupted`` summary must not stand for this new attempt.
            (job.path / SUMMARY).unlink(missing_ok=True)
            todo.append(job)
    total = len(jobs)
    log(f"sweep: {total} runs in {out}; {total - len(todo)} finished already, {len(todo)} to run "
        f"({backend}, {workers if backend == 'local' else 'ray'} worker{'s' if workers != 1 else ''})")
    t0 = time.perf_counter()
    count = [total - len(todo)]

    def on_done(job, summary):
        count[0] += 1
        med = summary.get("ratio_median")
        detail = (f"median lambda_max/edge {med:.3f} (n={summary.get('ratio_count', '?')})"
                  if isinstance(med, (int, float)) else summary.get("error", ""))
        took = summary.get("wall_time_s")
        log(f"[{count[0]}/{total}] {job.name}: {summary.get('status')} {detail}; "
            + (f"run {took:.0f} s, " if isinstance(took, (int, float)) else "")
            + f"sweep {time.perf_counter() - t0:.0f} s so far")

    if not todo:
        pass
    elif backend == "local":
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        results |= run_local(todo, workers=workers, data_dir=data_dir, runner=runner, on_done=on_done,
                             trackers=trackers)
    elif backend == "ray":
        results |= run_ray(todo, data_dir=data_dir, runner=runner, on_done=on_done, trackers=trackers,
                           **backend_options)
    else:
        raise ConfigError(f"unknown backend {backend!r}; choose local or ray")
    return {job.name: results[job.name] for job in jobs}
