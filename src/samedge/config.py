"""The run configuration: one typed dataclass, resolved from a task preset plus explicit overrides.

Every run saves its fully resolved config (``config.json``); a preset only supplies defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from samedge import tasks
from samedge.errors import ConfigError

OPTIMIZERS = ("gd", "sam", "momentum", "nesterov", "usam", "sam_momentum")
# beta when --momentum is not given: 0.9 is the common choice for the momentum optimizers.
DEFAULT_MOMENTUM = {"momentum": 0.9, "nesterov": 0.9, "sam_momentum": 0.9}
# USAM's rho multiplies the raw gradient, not a unit vector, so the preset's SAM radius does not carry
# over: on quick MNIST lr 0.5 with rho 0.1 stays at 0.87 x its edge after 1000 steps, rho 0.5 sits at it.
DEFAULT_RHO = {"usam": 0.5}


@dataclass(frozen=True)
class RunConfig:
    task: str = "mnist"
    preset: str = "quick"
    optimizer: str = "sam"  # one of OPTIMIZERS
    lr: float = 0.1  # step size eta
    rho: float = 0.1  # SAM radius (ignored by optimizers without an ascent step)
    momentum: float = 0.0  # beta, for the momentum optimizers
    steps: int = 1000  # number of optimizer steps
    measure_every: int = 25  # measure curvature every K steps (and at the first and last step)
    eval_every: int = 250  # test metrics every this many steps (a multiple of measure_every is best)
    seed: int = 0  # initialisation (and minibatch order) seed; recorded, never taken from the clock
    topk: int = 1  # eigenpairs tracked at each measurement
    lanczos_max_iters: int = 64  # most Hessian-vector products one Lanczos run may spend
    lanczos_tol: float = 1e-3  # stop when every tracked pair has ||Hv - lam v|| / |lam| <= tol
    measure_sam_point: bool = True  # also measure lambda_max at the SAM ascent point (rho > 0)
    # Checkpoint at the first measurement point at least this many steps after the previous one
    # (0: only on SIGINT/SIGTERM). 250 loses at most a few minutes of a paper-sized run, and a
    # checkpoint (parameters + eigenvectors, a few MB for the paper's MLP) costs far less than that.
    checkpoint_every: int = 250
    # Stop as diverged when a step's loss exceeds this multiple of the initial loss: edge-of-stability
    # spikes stay within a few times the running loss, a blow-up passes 1000x within a few steps.
    diverge_factor: float = 1000.0
    track_fraction: float = 0.0  # 0 = off; else also track every eigenvalue above this fraction of the edge
    track_max: int = 12  # most eigenvalues tracked that way (the square loss on 10 classes shows ~10 outliers)
    task_config: Mapping[str, Any] = field(default_factory=dict)  # the task's Config, resolved

    def validate(self) -> "RunConfig":
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        _number("lr", self.lr, lambda v: v > 0, "must be > 0")
        _number("rho", self.rho, lambda v: v >= 0, "must be >= 0")
        _number("momentum", self.momentum, lambda v: 0 <= v < 1, "must be in [0, 1)")
        _number("lanczos_tol", self.lanczos_tol, lambda v: v > 0, "must be > 0")
        _number("track_fraction", self.track_fraction, lambda v: 0 <= v < 1, "must be in [0, 1)")
        _integer("track_max", self.track_max, 1)
        for name in ("steps", "measure_every", "eval_every", "topk", "lanczos_max_iters"):
            _integer(name, getattr(self, name), 1)
        _integer("seed", self.seed, 0)
        _integer("checkpoint_every", self.checkpoint_every, 0)
        _number("diverge_factor", self.diverge_factor, lambda v: v > 1, "must be > 1")
        if self.topk > self.lanczos_max_iters:
            raise ConfigError(f"topk ({self.topk}) must not exceed lanczos_max_iters ({self.lanczos_max_iters})")
        if not isinstance(self.measure_sam_point, bool):
            raise ConfigError(f"measure_sam_point must be true or false, got {self.measure_sam_point!r}")
        tasks.make_task_config(self.task, self.task_config)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"task_config": dict(self.task_config)}


def _number(name, value, ok, why):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"--{name.replace('_', '-')} {why}, got {value!r}")


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


def resolve(task: str, preset: str = "quick", *, task_overrides: Mapping[str, Any] | None = None,
            **overrides) -> RunConfig:
    """The preset's defaults for ``task``, then ``overrides`` (``None`` values are ignored).

    Unknown keys are errors; the result is validated before any data is read.
    """
    p = tasks.get_preset(task, preset)
    known = {f.name for f in dataclasses.fields(RunConfig)} - {"task", "preset", "task_config"}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    optimizer = given.get("optimizer", p.run.get("optimizer", "sam"))
    base = dict(
        optimizer=optimizer,
        lr=p.default_lr(optimizer) if isinstance(optimizer, str) else None,
        rho=DEFAULT_RHO.get(optimizer, p.rho) if isinstance(optimizer, str) else p.rho,
        momentum=DEFAULT_MOMENTUM.get(optimizer, 0.0) if isinstance(optimizer, str) else None,
        steps=p.steps,
        measure_every=p.measure_every,
        eval_every=p.eval_every,
    ) | dict(p.run)
    task_config = dict(p.task) | dict(task_overrides or {})
    cfg = RunConfig(task=task, preset=preset, task_config=task_config, **(base | given))
    return cfg.validate()


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a saved ``config.json`` (its ``run`` part); unknown keys are errors."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in config")
    return RunConfig(**dict(data)).validate()
