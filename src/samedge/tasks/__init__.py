"""Tasks: a model, a data set, a loss and the batches a step sees, plus named presets.

Each task module (``tasks/mnist.py``, ``tasks/cifar10.py``, ``tasks/shakespeare.py``) defines

- ``Config``: a frozen dataclass of the task's own settings (model sizes, number of examples...);
- ``PRESETS``: a dict of :class:`Preset` (``quick`` for 2 CPU cores, ``paper`` for the paper);
- ``build(config, *, data_dir, seed, allow_fallback) -> Task``.

Modules are imported only when their task is asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from samedge.errors import ConfigError

TASKS = ("mnist", "cifar10", "shakespeare")


@dataclass(frozen=True)
class Preset:
    """A named override of a task's settings and the run's schedule."""

    name: str
    description: str
    task: Mapping[str, Any]  # overrides of the task's Config
    steps: int
    measure_every: int
    eval_every: int
    lr: Mapping[str, float]  # default step size for each optimizer ("*" for the rest)
    rho: float  # default SAM radius
    grid_lr: tuple[float, ...]  # the sweep grid
    grid_rho: tuple[float, ...]
    run: Mapping[str, Any] = field(default_factory=dict)  # other RunConfig defaults

    def default_lr(self, optimizer: str) -> float:
        return self.lr.get(optimizer, self.lr["*"])


@dataclass
class Task:
    """Everything the training loop and the measurements need, as pure functions over arrays.

    ``batch_fn(data, step)`` and ``measure_batch_fn(data, step)`` are jittable and depend only on
    the step index, so a run's data order is a function of its seed and step (exact resume).
    """

    name: str
    config: Any
    init_params: Callable[[Any], Any]  # PRNG key -> params
    loss_fn: Callable[[Any, Any], Any]  # (params, batch) -> mean loss
    accuracy_fn: Callable[[Any, Any], Any] | None  # (params, batch) -> accuracy, or None
    data: Any  # training data, a pytree of device arrays
    batch_fn: Callable[[Any, Any], Any]
    measure_batch_fn: Callable[[Any, Any], Any]
    evaluate: Callable[[Any], dict]  # params -> {"test_loss": .., "test_acc": ..}
    info: dict = field(default_factory=dict)  # data source, sizes, number of parameters


def task_module(name: str):
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return importlib.import_module(f"samedge.tasks.{name}")


def get_preset(task: str, preset: str) -> Preset:
    presets = task_module(task).PRESETS
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r} for task {task}; choose one of {', '.join(presets)}")
    return presets[preset]


def make_task_config(task: str, overrides: Mapping[str, Any]):
    """The task's Config with ``overrides`` applied; unknown keys and wrong types are errors."""
    cls = task_module(task).Config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {task} setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    config = cls(**overrides)
    if hasattr(config, "validate"):
        config.validate()
    return config


def build_task(task: str, config, *, data_dir=None, seed: int = 0, allow_fallback: bool = False) -> Task:
    return task_module(task).build(config, data_dir=data_dir, seed=seed, allow_fallback=allow_fallback)
