"""The run configuration: one typed dataclass, resolved from a task preset plus explicit overrides.

Every run saves its fully resolved config (``config.json``); a preset only supplies defaults, and
the optimizer registry (:mod:`samedge.optimizers`) its hyperparameters and their defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from samedge import optimizers, tasks
from samedge.errors import ConfigError


MEASURE_MODES = ("train", "eval")  # RunConfig.measure_mode


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run; saved whole as the ``run`` part of its ``config.json``.

    >>> cfg = RunConfig(optimizer="sam", lr=0.1, hparams={"rho": 0.05}).validate()
    >>> cfg.hparams["rho"], cfg.to_dict()["hparams"]
    (0.05, {'rho': 0.05})
    """

    task: str = "mnist"  # a built-in task, an entry point of the group samedge.tasks, or module:factory
    preset: str | None = "quick"  # the task's named settings; None when the task was passed as an object
    optimizer: str = optimizers.DEFAULT  # a name of samedge.optimizers (or package.module:ENTRY)
    lr: float | None = 0.1  # step size eta (None only for a custom optimizer object without one)
    hparams: Mapping[str, float] = field(default_factory=dict)  # the optimizer's own (rho, momentum...)
    steps: int = 1000  # number of optimizer steps
    measure_every: int = 25  # measure curvature every K steps (and at the first and last step)
    eval_every: int = 250  # test metrics every this many steps (a multiple of measure_every is best)
    seed: int = 0  # initialisation (and minibatch order) seed; recorded, never taken from the clock
    topk: int = 1  # eigenpairs tracked at each measurement
    lanczos_max_iters: int = 64  # most Hessian-vector products one Lanczos run may spend
    lanczos_tol: float = 1e-3  # stop when every tracked pair has ||Hv - lam v|| / |lam| <= tol
    measure_sam_point: bool = True  # also measure lambda_max at the ascent point (optimizers with one)
    # Checkpoint at the first measurement point at least this many steps after the previous one
    # (0: only on SIGINT/SIGTERM). 250 loses at most a few minutes of a paper-sized run, and a
    # checkpoint (parameters + eigenvectors, a few MB for the paper's MLP) costs far less than that.
    checkpoint_every: int = 250
    # Stop as diverged when a step's loss exceeds this multiple of the initial loss: edge-of-stability
    # spikes stay within a few times the running loss, a blow-up passes 1000x within a few steps.
    diverge_factor: float = 1000.0
    track_fraction: float = 0.0  # 0 = off; else also track every eigenvalue above this fraction of the edge
    track_max: int = 12  # most eigenvalues tracked that way (the square loss on 10 classes shows ~10 outliers)
    # a cold random-start Lanczos cross-check this many measurements after the last cold run at the
    # latest, and on a jump (0: only on a jump);
    # see samedge.measure.MeasureSettings
    crosscheck_every: int = 10
    measure_dtype: str = "float32"  # "float64": measure in float64 (CPU; training stays float32)
    # also batch sharpness over fresh minibatches and lambda_max of the full batch (samedge.batch_sharpness)
    batch_sharpness: bool = False
    # also lambda_max of the task's full batch (its fixed measurement set, e.g. cifar10-resnet's), and
    # ratio_full against the edge, without batch sharpness
    measure_full_batch: bool = False
    # examples per pass when a batch is larger (0: one pass): the loss, every gradient and HVP are then
    # computed over chunks inside the compiled program, exactly (samedge.chunking). A property of the
    # machine, not of the experiment: a run may resume with another (config.json records each).
    chunk_size: int = 0
    # most rows of the Krylov basis (0: unbounded, up to lanczos_max_iters + 1): memory max_basis x n
    # floats; a full basis restarts thick (samedge.curvature.lanczos); see samedge.measure.MeasureSettings
    max_basis: int = 0
    # which parameters weight decay reaches (samedge.optimizers.decay_mask_fn): "weights" (two or more
    # dimensions: no biases, no normalisation scales; the common practice) or "all"
    decay_mask: str = "weights"
    # the step size over the run (samedge.schedules): constant, cosine (to 0 at the last step) or step
    # (x 0.1 at half and three quarters), after a linear warmup from 0 over warmup_steps
    schedule: str = "constant"
    warmup_steps: int = 0
    # a task with model state (BatchNorm): the function measured. "train": the statistics of the batch
    # measured, as the step sees them, dropout off; "eval": the running statistics as constants
    measure_mode: str = "train"
    # more measurement probes, run after the built-in ones: the opt-in ones by name (layers,
    # gauss_newton, trace: samedge.measure.OPT_IN), package.module:PROBE import paths, or plain names of
    # Probe objects passed to samedge.fit (resuming such a run needs them again; they win over an opt-in name)
    probes: tuple[str, ...] = ()
    task_config: Mapping[str, Any] = field(default_factory=dict)  # the task's Config, resolved
    # True when the optimizer was passed as a Python object (samedge.fit): ``optimizer`` is then only
    # its name, and resuming needs the same object again.
    custom_optimizer: bool = False

    def __post_init__(self):
        if isinstance(self.probes, list):  # from JSON, which has no tuples
            object.__setattr__(self, "probes", tuple(self.probes))

    def validate(self) -> "RunConfig":
        """Check every setting (one-line :class:`ConfigError` naming the flag); returns ``self``."""
        if not self.custom_optimizer:
            entry = optimizers.get(self.optimizer)
            missing = [h.name for h in entry.hypers if not h.quiet and h.name not in self.hparams]
            if missing:
                raise ConfigError(f"{self.optimizer} needs {', '.join(missing)}")
            optimizers.resolve_hparams(self.optimizer, self.hparams)
        if self.lr is not None or not self.custom_optimizer:
            _number("lr", self.lr, lambda v: v > 0, "must be > 0")
        _number("lanczos_tol", self.lanczos_tol, lambda v: v > 0, "must be > 0")
        _number("track_fraction", self.track_fraction, lambda v: 0 <= v < 1, "must be in [0, 1)")
        _integer("track_max", self.track_max, 1)
        _integer("crosscheck_every", self.crosscheck_every, 0)
        if self.measure_dtype not in ("float32", "float64"):
            raise ConfigError(f"--measure-dtype must be float32 or float64, got {self.measure_dtype!r}")
        for name in ("steps", "measure_every", "eval_every", "topk", "lanczos_max_iters"):
            _integer(name, getattr(self, name), 1)
        _integer("seed", self.seed, 0)
        _integer("checkpoint_every", self.checkpoint_every, 0)
        _integer("chunk_size", self.chunk_size, 0)
        _integer("max_basis", self.max_basis, 0)
        from samedge import schedules

        if self.schedule not in schedules.SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(schedules.SCHEDULES)}, got {self.schedule!r}")
        _integer("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"--warmup-steps ({self.warmup_steps}) must be fewer than --steps ({self.steps})")
        if self.measure_mode not in MEASURE_MODES:
            raise ConfigError(f"--measure-mode must be one of {', '.join(MEASURE_MODES)}, got {self.measure_mode!r}")
        if self.decay_mask not in optimizers.DECAY_MASKS:
            raise ConfigError(f"--decay-mask must be one of {', '.join(optimizers.DECAY_MASKS)}, got {self.decay_mask!r}")
        if self.max_basis and self.max_basis < self.topk + 5:
            raise ConfigError(f"--max-basis must be 0 (unbounded) or at least topk + 5 = {self.topk + 5}, "
                              f"got {self.max_basis}")
        if self.max_basis and self.track_fraction > 0 and self.max_basis < self.track_max + 5:
            raise ConfigError(f"--max-basis {self.max_basis} is too small to track {self.track_max} eigenvalues: "
                              f"needs at least track_max + 5 = {self.track_max + 5}")
        _number("diverge_factor", self.diverge_factor, lambda v: v > 1, "must be > 1")
        if self.topk > self.lanczos_max_iters:
            raise ConfigError(f"topk ({self.topk}) must not exceed lanczos_max_iters ({self.lanczos_max_iters})")
        if not isinstance(self.batch_sharpness, bool):
            raise ConfigError(f"batch_sharpness must be true or false, got {self.batch_sharpness!r}")
        if not isinstance(self.measure_sam_point, bool):
            raise ConfigError(f"measure_sam_point must be true or false, got {self.measure_sam_point!r}")
        if isinstance(self.probes, str) or not all(isinstance(p, str) and p for p in self.probes):
            raise ConfigError(f"probes must be a list of package.module:PROBE names, got {self.probes!r}")
        if len(set(self.probes)) != len(self.probes):
            raise ConfigError(f"--probe: {', '.join(sorted({p for p in self.probes if self.probes.count(p) > 1}))} "
                              f"given twice")
        for name in self.probes:
            if ":" in name:  # an import path: load it now, before any data is read
                from samedge import probes

                probes.load(name)
        if self.preset is not None:  # None: the task was passed as a Python object (samedge.fit)
            tasks.make_task_config(self.task, self.task_config)
        return self

    def to_dict(self) -> dict:
        """The settings as plain JSON-able values (``config.json``'s ``run`` part)."""
        return dataclasses.asdict(self) | {"task_config": dict(self.task_config), "hparams": dict(self.hparams),
                                           "probes": list(self.probes)}

    def describe(self) -> str:
        """``sam lr=0.1 rho=0.1``: the optimizer and its settings in one label."""
        if self.custom_optimizer:
            return f"{self.optimizer}" + (f" lr={self.lr:g}" if self.lr is not None else "")
        return optimizers.describe(self.optimizer, self.lr, self.hparams)


def _number(name, value, ok, why):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"--{name.replace('_', '-')} {why}, got {value!r}")


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


def resolve(task: str, preset: str | None = None, *, task_overrides: Mapping[str, Any] | None = None,
            hparams: Mapping[str, Any] | None = None, **overrides) -> RunConfig:
    """The preset's defaults for ``task``, then ``overrides`` (``None`` values are ignored).

    Args:
      task: a task name (see :func:`samedge.tasks.task_source`).
      preset: the task's preset (``None``: its first, ``quick`` for the built-in tasks).
      task_overrides: settings of the task's own Config.
      hparams: the optimizer's hyperparameters; they may also be given as keywords (``rho=0.1``).
      **overrides: any other :class:`RunConfig` field.

    Returns:
      The validated :class:`RunConfig`. Unknown keys, and hyperparameters the optimizer does not
      have, are errors; nothing is read from disk.

    >>> resolve("mnist", "quick", optimizer="sam", rho=0.3).hparams
    {'rho': 0.3}
    """
    p = tasks.get_preset(task, preset)
    hyper_names = set(optimizers.all_hypers())
    chosen = overrides.get("optimizer") or p.run.get("optimizer", optimizers.DEFAULT)
    if isinstance(chosen, str):  # an entry from a user's module has its own hyperparameters
        hyper_names |= set(optimizers.get(chosen).hyper_names)
    given = {k: v for k, v in overrides.items() if v is not None}
    hp = {k: given.pop(k) for k in list(given) if k in hyper_names} | dict(hparams or {})
    known = {f.name for f in dataclasses.fields(RunConfig)} - {"task", "preset", "task_config", "hparams",
                                                               "custom_optimizer"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    optimizer = given.get("optimizer", p.run.get("optimizer", optimizers.DEFAULT))
    base = dict(optimizer=optimizer, steps=p.steps, measure_every=p.measure_every, eval_every=p.eval_every)
    base |= {k: v for k, v in p.run.items() if k != "optimizer"}
    if "lr" not in given:
        base["lr"] = p.default_lr(optimizer if isinstance(optimizer, str) else "")
    task_config = dict(p.task) | dict(task_overrides or {})
    own = optimizers.get(optimizer).hyper_names if isinstance(optimizer, str) else ()
    hp = {k: v for k, v in p.hparams.items() if k in own} | hp
    cfg = RunConfig(task=task, preset=p.name, task_config=task_config,
                    hparams=optimizers.resolve_hparams(optimizer, hp),
                    **(base | given))
    return cfg.validate()


def defaults() -> dict:
    """Each :class:`RunConfig` setting that has a default, with it, as ``config.json`` holds it: a
    folder written before a setting existed reads as its default.

    >>> defaults()["max_basis"], defaults()["probes"]
    (0, [])
    """
    out = {}
    for f in dataclasses.fields(RunConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out | {"probes": list(out.get("probes", ()))}


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a saved ``config.json`` (its ``run`` part); unknown keys are errors.

    Folders written before the registry (``rho`` and ``momentum`` as fields) are read too: the
    values the optimizer has become its ``hparams``.
    """
    data = dict(data)
    if "hparams" not in data and isinstance(data.get("optimizer"), str):
        old = {k: data.pop(k) for k in (optimizers.RHO.name, optimizers.MOMENTUM.name) if k in data}
        names = optimizers.get(data["optimizer"]).hyper_names
        data["hparams"] = {k: v for k, v in old.items() if k in names}
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in config")
    return RunConfig(**data).validate()
