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


def count_params(init_params: Callable) -> int:
    """Number of parameters ``init_params`` makes, from shapes alone (nothing is computed)."""
    import jax
    import numpy as np

    shapes = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def square_loss(logits, targets):
    """Mean over all N x C entries of the squared error, as the paper's code computes it."""
    import jax.numpy as jnp

    return jnp.mean((logits - targets) ** 2)


def full_batch_classification(name: str, config, model, train, test, *, source: str) -> Task:
    """A full-batch task with square loss on one-hot targets (the paper's MNIST and CIFAR-10 setups).

    ``model`` is a flax module mapping ``(N, ...)`` inputs to ``(N, C)`` outputs; ``train`` and
    ``test`` are ``(inputs, one_hot_targets)`` NumPy pairs. Every step and every measurement sees
    the whole training set; test loss and accuracy come from one jitted evaluation.
    """
    import jax
    import jax.numpy as jnp

    def loss_fn(params, batch):
        x, y = batch
        return square_loss(model.apply(params, x), y)

    def accuracy_fn(params, batch):
        x, y = batch
        return jnp.mean(jnp.argmax(model.apply(params, x), -1) == jnp.argmax(y, -1))

    def init_params(key):
        return model.init(key, jnp.zeros((1, *train[0].shape[1:]), jnp.float32))

    @jax.jit
    def evaluate_jit(params, test):
        # The test set is an argument, not a closed-over array: XLA would embed a closed-over
        # array as a constant and spend seconds constant-folding it.
        return {"test_loss": loss_fn(params, test), "test_acc": accuracy_fn(params, test)}

    def full_batch(data, step):
        return data

    test_arrays = tuple(jnp.asarray(a) for a in test)
    return Task(
        name=name,
        config=config,
        init_params=init_params,
        loss_fn=loss_fn,
        accuracy_fn=accuracy_fn,
        data=tuple(jnp.asarray(a) for a in train),
        batch_fn=full_batch,
        measure_batch_fn=full_batch,
        evaluate=lambda params: {k: float(v) for k, v in evaluate_jit(params, test_arrays).items()},
        info={"data_source": source, "n_train": int(train[0].shape[0]), "n_test": int(test[0].shape[0]),
              "n_params": count_params(init_params)},
    )
