"""Tasks: a model, a data set, a loss and the batches a step sees, plus named presets.

A task comes from one of three sources (:func:`task_source`):

- a built-in module (``tasks/mnist.py``, ``tasks/cifar10.py``, ``tasks/shakespeare.py``,
  ``tasks/cifar10_resnet.py`` for the task ``cifar10-resnet``), which
  defines ``Config`` (a frozen dataclass of the task's own settings), ``PRESETS`` (``quick`` for 2
  CPU cores, ``paper`` for the paper) and ``build(config, *, data_dir, seed, allow_fallback)``;
- ``"package.module:factory"``, a callable returning a :class:`Task` (built with :func:`make_task`);
  when its first parameter is annotated with a dataclass, that dataclass is the task's Config and
  ``--set KEY=VALUE`` sets its fields; a ``seed`` or ``data_dir`` keyword is passed when it takes one;
- a factory registered by an installed package under the entry-point group ``samedge.tasks``.

Modules are imported only when their task is asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from samedge.errors import ConfigError
from samedge.errors import one_line as errors_one_line

TASKS = ("mnist", "cifar10", "shakespeare", "cifar10-resnet")
PAPER_TASKS = TASKS[:3]  # Long & Bartlett's three, the ones `samedge reproduce` sweeps by default
ENTRY_POINT_GROUP = "samedge.tasks"


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
    grid_lr: tuple[float, ...] = ()  # the sweep grid of step sizes
    grid: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # sweep values of hyperparameters
    run: Mapping[str, Any] = field(default_factory=dict)  # other RunConfig defaults
    # defaults of optimizer hyperparameters (rho ...), for the optimizers that have them
    hparams: Mapping[str, float] = field(default_factory=dict)

    def default_lr(self, optimizer: str) -> float:
        return self.lr.get(optimizer, self.lr["*"])

    def sweep_values(self, axis: str, own: float) -> tuple[float, ...]:
        """The values a sweep takes on ``axis`` when none are given, for an optimizer whose own value is ``own``.

        The grid's (``grid_lr`` for ``"lr"``, else ``grid[axis]``) when ``own`` is one of them (GD
        and SAM on the built-in presets); otherwise ``own`` alone: an optimizer the preset sets
        outside the grid (Adam at eta 1e-3 beside a grid of 0.4 and 0.5; SAM over Adam at rho 0.01
        beside 0.1-1.0) is not swept over values meant for another.

        Args:
          axis: ``"lr"`` or a hyperparameter name.
          own: the optimizer's own value (its preset step size, or its default of the hyperparameter).

        Returns:
          A tuple of values; empty when the preset has no grid on ``axis``.

        >>> p = Preset("p", "", {}, 10, 5, 5, lr={"adam": 1e-3, "*": 0.5}, grid_lr=(0.4, 0.5), grid={"rho": (0.0, 0.1)})
        >>> p.sweep_values("lr", 0.5), p.sweep_values("lr", 1e-3), p.sweep_values("rho", 0.01), p.sweep_values("beta", 0.9)
        ((0.4, 0.5), (0.001,), (0.01,), ())
        """
        grid = tuple(self.grid_lr if axis == "lr" else self.grid.get(axis, ()))
        if not grid:
            return ()
        return grid if own in grid else (own,)

    def sweep_lrs(self, optimizer: str) -> tuple[float, ...]:
        """:meth:`sweep_values` for the step size of ``optimizer`` (its preset step size as ``own``).

        >>> Preset("p", "", {}, 10, 5, 5, lr={"adam": 1e-3, "*": 0.5}, grid_lr=(0.4, 0.5)).sweep_lrs("adam")
        (0.001,)
        """
        return self.sweep_values("lr", self.default_lr(optimizer))


# The one preset of a task that brings none: the run's own defaults, a schedule sized for a
# model of a few thousand parameters on CPU.
DEFAULT_PRESET = Preset(name="default", description="no preset: samedge's defaults", task={}, steps=1000,
                        measure_every=50, eval_every=250, lr={"*": 0.1},
                        # lambda at the ascent point costs a second Lanczos run and no summary uses it
                        run={"measure_sam_point": False})


@dataclass
class Task:
    """Everything the training loop and the measurements need, as pure functions over arrays.

    ``batch_fn(data, step)`` and ``measure_batch_fn(data, step)`` are jittable and depend only on
    the step index, so a run's data order is a function of its seed and step (exact resume).
    Build your own with :func:`make_task`.
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
    # data -> the "full" batch: the whole training set (or, for a stream of text, a fixed set of
    # windows); the measurement of lambda_max_full and batch sharpness (--batch-sharpness) use it
    full_batch_fn: Callable[[Any], Any] | None = None
    # True when the loss depends on how a batch is chunked on purpose (BatchNorm in train mode: its
    # statistics are then per chunk, "ghost batch norm"); a chunked run then skips the check that the
    # loss is a mean, and the chunk size is part of the run's identity (samedge.chunking)
    chunk_dependent: bool = False
    # Model state (BatchNorm's running statistics; None for a stateless task). With it:
    # init_state(key) -> state, the state at initialisation (the key is the one init_params gets);
    # train_loss_fn(params, state, batch, key) -> (loss, state), the step's loss (batch statistics,
    # dropout drawn from ``key``) and the state after it; eval_loss_fn(params, state, batch) -> loss,
    # the loss with the state as constants and dropout off (the measurement's eval mode), or None;
    # ``loss_fn`` is then the measured function of the default (train) mode: batch statistics,
    # dropout off; ``evaluate`` takes ``(params, state)``.
    init_state: Callable[[Any], Any] | None = None
    train_loss_fn: Callable[[Any, Any, Any, Any], Any] | None = None
    eval_loss_fn: Callable[[Any, Any, Any], Any] | None = None
    # The measured loss as outputs plus a loss on them, for the Gauss-Newton probe (--probe
    # gauss_newton): output_fn(params, batch) -> outputs (the logits; with model state, as loss_fn
    # computes them: batch statistics, dropout off) and output_loss(outputs, batch) -> scalar, with
    # output_loss(output_fn(p, b), b) == loss_fn(p, b); None when the task does not give them
    output_fn: Callable[[Any, Any], Any] | None = None
    output_loss: Callable[[Any, Any], Any] | None = None

    @property
    def stateful(self) -> bool:
        """Whether the task's model has state (``init_state`` is set)."""
        return self.init_state is not None


def whole_data(data, step):
    """The default ``batch_fn``: every step sees the whole data set (full batch)."""
    return data


def make_task(name: str, init_params: Callable, loss_fn: Callable, data, *, batch_fn: Callable | None = None,
              measure_batch_fn: Callable | None = None, evaluate: Callable | None = None,
              accuracy_fn: Callable | None = None, config=None, info: Mapping | None = None,
              chunk_dependent: bool = False, init_state: Callable | None = None,
              train_loss_fn: Callable | None = None, eval_loss_fn: Callable | None = None,
              output_fn: Callable | None = None, output_loss: Callable | None = None) -> Task:
    """A :class:`Task` from plain functions, checked before any training.

    Args:
      name: the task's name (run folders, titles).
      init_params: ``key -> params``, a pytree of floating-point arrays.
      loss_fn: ``(params, batch) -> scalar``, the training loss (its mean over the batch).
      data: the training data, any pytree of arrays (put on the device once).
      batch_fn: ``(data, step) -> batch``, jittable, a pure function of the step (so that resume is
        exact); default: the whole data set every step (full batch).
      measure_batch_fn: the batch the Hessian is measured on at a step; default ``batch_fn``.
      evaluate: ``params -> {name: float}``, test metrics at the evaluation cadence; default none.
      accuracy_fn: ``(params, batch) -> scalar``, reported as ``acc`` at each measurement.
      config: the settings the task was built from (recorded), or ``None``.
      info: facts to record in ``config.json`` (sizes, data source).
      chunk_dependent: the loss depends on how a batch is chunked on purpose (BatchNorm in train
        mode); a chunked run (``--chunk-size``) then skips its check that the loss is a mean.
      init_state: for a model with state (BatchNorm's running statistics), ``key -> state``, a
        pytree of arrays (called with the key ``init_params`` gets). Needs ``train_loss_fn``.
      train_loss_fn: ``(params, state, batch, key) -> (loss, state)``: the loss a step descends
        (BatchNorm on the batch's statistics, dropout drawn from ``key``, a pure function of the
        run's seed and the step) and the state after it. ``loss_fn`` stays the function the
        measurement differentiates by default: batch statistics, dropout off.
      eval_loss_fn: ``(params, state, batch) -> loss`` with the state as constants and dropout off
        (``--measure-mode eval``), or ``None``. With a state, ``evaluate`` takes ``(params, state)``.
      output_fn: ``(params, batch) -> outputs`` (a pytree of arrays: the logits), and
      output_loss: ``(outputs, batch) -> scalar``, the loss on them, so that ``output_loss(output_fn(p, b),
        b)`` is ``loss_fn(p, b)``: the Gauss-Newton probe (``--probe gauss_newton``) needs both, and
        they are given together or not at all.

    Returns:
      The :class:`Task`. Integer or non-array parameter leaves, a ``batch_fn`` JAX cannot trace and
      a loss that is not a float scalar are refused here, with one line naming the culprit.

    >>> import jax, jax.numpy as jnp
    >>> t = make_task("line", lambda k: {"w": jnp.zeros(2)},
    ...               lambda p, b: jnp.mean((b[:, 0] * p["w"][0] + p["w"][1] - b[:, 1]) ** 2),
    ...               jnp.ones((8, 2)))
    >>> t.info["n_params"], t.batch_fn is whole_data
    (2, True)
    """
    import jax

    from samedge import checks

    if not isinstance(name, str) or not name:
        raise ConfigError(f"a task needs a non-empty name, got {name!r}")
    for role, fn in (("init_params", init_params), ("loss_fn", loss_fn)):
        if not callable(fn):
            raise ConfigError(f"{role} must be callable, got {type(fn).__name__}")
    batch_fn = batch_fn or whole_data
    measure_batch_fn = measure_batch_fn or batch_fn
    def as_array(path, leaf):
        try:
            return jax.numpy.asarray(leaf)
        except Exception:
            raise ConfigError(f"data leaf {jax.tree_util.keystr(path) or '(the root)'} is a {type(leaf).__name__}, "
                              f"not an array (the data must be a pytree of arrays)") from None

    data = jax.tree_util.tree_map_with_path(as_array, data)
    try:
        shapes = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    except Exception as exc:
        raise ConfigError(f"init_params {checks.callable_name(init_params)} fails on a PRNG key "
                          f"({type(exc).__name__}: {errors_one_line(exc)}); its parameters must be a pytree of "
                          f"floating-point arrays (split the float parameters out of your model, e.g. "
                          f"nnx.split(model, nnx.Param) or eqx.partition(model, eqx.is_inexact_array))") from None
    checks.float_params(shapes)
    batch = checks.traceable_batch(batch_fn, data, "batch_fn")
    checks.traceable_batch(measure_batch_fn, data, "measure_batch_fn")
    checks.scalar_loss(loss_fn, shapes, batch)
    if accuracy_fn is not None:
        checks.scalar_loss(accuracy_fn, shapes, batch)
    _check_state_fns(init_state, train_loss_fn, eval_loss_fn, shapes, batch)
    _check_output_fns(output_fn, output_loss, shapes, batch)

    def no_metrics(params, state=None):
        return {}

    n_params = sum(int(getattr(leaf, "size", 0)) for leaf in jax.tree.leaves(shapes))
    return Task(name=name, config=config, init_params=init_params, loss_fn=loss_fn, accuracy_fn=accuracy_fn,
                data=data, batch_fn=batch_fn, measure_batch_fn=measure_batch_fn,
                evaluate=evaluate or no_metrics, info={"n_params": n_params} | dict(info or {}),
                chunk_dependent=bool(chunk_dependent), init_state=init_state, train_loss_fn=train_loss_fn,
                eval_loss_fn=eval_loss_fn, output_fn=output_fn, output_loss=output_loss)


def _check_output_fns(output_fn, output_loss, shapes, batch) -> None:
    """Refuse outputs given without their loss (or the reverse), or a pair whose composition is not a
    float scalar (shapes only)."""
    from samedge import checks

    if output_fn is None and output_loss is None:
        return
    if not (callable(output_fn) and callable(output_loss)):
        raise ConfigError("output_fn ((params, batch) -> outputs) and output_loss ((outputs, batch) -> loss) "
                          "go together: give both, callable")
    try:
        checks.scalar_loss(lambda p, b: output_loss(output_fn(p, b), b), shapes, batch)
    except ConfigError as exc:
        raise ConfigError(f"output_loss(output_fn(params, batch), batch): {exc}") from None


def _check_state_fns(init_state, train_loss_fn, eval_loss_fn, shapes, batch) -> None:
    """Refuse a model state given by halves, or functions whose outputs do not fit it (shapes only)."""
    import jax

    from samedge import checks

    if init_state is None:
        if train_loss_fn is not None or eval_loss_fn is not None:
            raise ConfigError("train_loss_fn and eval_loss_fn belong to a model with state: give init_state too")
        return
    if not callable(init_state) or not callable(train_loss_fn):
        raise ConfigError("a model with state needs init_state (key -> state) and train_loss_fn "
                          "((params, state, batch, key) -> (loss, state)), both callable")
    key = jax.random.PRNGKey(0)
    try:
        state = jax.eval_shape(init_state, key)
        out = jax.eval_shape(train_loss_fn, shapes, state, batch, key)
    except Exception as exc:
        raise ConfigError(f"train_loss_fn {checks.callable_name(train_loss_fn)} fails on (params, state, batch, "
                          f"key) ({type(exc).__name__}: {errors_one_line(exc)})") from None
    if not (isinstance(out, tuple) and len(out) == 2 and getattr(out[0], "shape", None) == ()):
        raise ConfigError(f"train_loss_fn {checks.callable_name(train_loss_fn)} must return (scalar loss, state)")
    if jax.tree.structure(out[1]) != jax.tree.structure(state) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(state))):
        raise ConfigError(f"train_loss_fn {checks.callable_name(train_loss_fn)} returns a state unlike "
                          f"init_state's (same structure and shapes needed)")
    if eval_loss_fn is not None:
        checks.scalar_loss(lambda p, b: eval_loss_fn(p, state, b), shapes, batch)


@dataclass(frozen=True)
class TaskSource:
    """Where a task comes from: what builds it, its Config dataclass (or None) and its presets."""

    name: str  # as given: "mnist", "pkg.mod:factory" or an entry-point name
    kind: str  # "builtin", "factory" or "entry point"
    config_cls: type | None
    presets: Mapping[str, Preset]
    build: Callable[..., Task]  # (config, *, data_dir, seed, allow_fallback) -> Task


def task_source(name: str) -> TaskSource:
    """The :class:`TaskSource` of ``name``: a built-in task, ``package.module:factory``, or an
    entry point of the group ``samedge.tasks``.

    >>> task_source("mnist").kind, sorted(task_source("mnist").presets)
    ('builtin', ['paper', 'quick'])
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a task name must be a non-empty string, got {name!r}")
    if name in TASKS:
        module = task_module(name)
        return TaskSource(name, "builtin", module.Config, module.PRESETS, module.build)
    if ":" in name:
        from samedge import checks

        return _factory_source(name, "factory", checks.load_object(name, "task"))
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if found:
        try:
            factory = found[0].load()
        except Exception as exc:
            raise ConfigError(f"task {name!r} (entry point {found[0].value}): cannot load it "
                              f"({type(exc).__name__}: {exc})") from None
        return _factory_source(name, "entry point", factory)
    plugins = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS + tuple(plugins))}, "
                      f"or give package.module:factory")


def _factory_source(name: str, kind: str, factory) -> TaskSource:
    if not callable(factory):
        raise ConfigError(f"task {name!r}: {type(factory).__name__} is not callable (expected a factory "
                          f"returning a samedge Task)")
    config_cls, params = None, {}
    try:
        params = inspect.signature(factory).parameters
        hints = typing.get_type_hints(factory)
    except (TypeError, ValueError, NameError):
        hints = {}
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name not in ("seed", "data_dir")]
    if positional:
        hint = hints.get(positional[0].name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            config_cls = hint
    presets = getattr(factory, "presets", None) or {"default": DEFAULT_PRESET}

    def build(config, *, data_dir=None, seed: int = 0, allow_fallback: bool = False) -> Task:
        kwargs = {k: v for k, v in (("seed", seed), ("data_dir", data_dir)) if k in params}
        try:
            task = factory(config, **kwargs) if config_cls is not None else factory(**kwargs)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"task {name!r}: the factory raised {type(exc).__name__}: {exc}") from None
        if not isinstance(task, Task):
            raise ConfigError(f"task {name!r}: the factory returned a {type(task).__name__}, not a samedge "
                              f"Task (build one with samedge.make_task)")
        return task

    return TaskSource(name, kind, config_cls, presets, build)


def safe_name(name: str) -> str:
    """A file-system-safe form of a task name, for run folders.

    >>> safe_name("my_pkg.tasks:make_task")
    'my_pkg.tasks-make_task'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "task"


def task_module(name: str):
    """The module of a built-in task (:class:`ConfigError` for another name)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return importlib.import_module(f"samedge.tasks.{name.replace('-', '_')}")


def get_preset(task: str, preset: str | None = None) -> Preset:
    """The preset ``preset`` of ``task`` (``None``: its first: ``quick`` for the built-in tasks)."""
    presets = task_source(task).presets
    if preset is None:
        return next(iter(presets.values()))
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r} for task {task}; choose one of {', '.join(presets)}")
    return presets[preset]


def make_task_config(task: str, overrides: Mapping[str, Any]):
    """The task's Config with ``overrides`` applied; unknown keys and wrong types are errors.

    Values are converted to the field's type where that loses nothing (``"3"`` or ``3.0`` for an
    ``int`` field, ``1`` for a ``float``).
    """
    source = task_source(task)
    cls = source.config_cls
    if cls is None:
        if overrides:
            raise ConfigError(f"task {task} takes no settings, got {', '.join(sorted(overrides))}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {task} setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    config = cls(**{k: _coerce(v, hints.get(k)) for k, v in overrides.items()})
    if hasattr(config, "validate"):
        config.validate()
    else:  # a user's Config without its own checks: at least the declared types
        for key, kind in hints.items():
            value = getattr(config, key)
            if kind in (int, float, bool, str) and not _is(value, kind):
                raise ConfigError(f"{task} setting {key} must be {kind.__name__}, got {value!r}")
    return config


def _is(value, kind) -> bool:
    return isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))


def _coerce(value, kind):
    """``value`` as ``kind`` where nothing is lost (``1`` for a float field, ``2.0`` or ``"2"`` for an
    int field); anything else unchanged, for the Config's own checks to refuse."""
    if kind is float and _is(value, int):
        return float(value)
    if kind is int and _is(value, float) and value.is_integer():
        return int(value)
    if kind in (int, float) and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            return value
    return value


def build_task(task: str, config, *, data_dir=None, seed: int = 0, allow_fallback: bool = False) -> Task:
    """Build ``task`` from its Config (see :func:`task_source` for where tasks come from)."""
    return task_source(task).build(config, data_dir=data_dir, seed=seed, allow_fallback=allow_fallback)


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


# Folded into the run's seed for the minibatch keys. At or above 2**31 (fold_in takes 32 bits) so
# that it never equals a step index, which other keys of a run are folded with.
MINIBATCH_KEY = 0xB47C_0000


def minibatch_indices(key, step, n: int, batch_size: int):
    """The ``batch_size`` distinct example indices of step ``step``: the positions of the
    ``batch_size`` largest of ``n`` i.i.d. uniform draws keyed by ``fold_in(key, step)``.

    Every step is independent of every other (no epochs): the indices are a uniformly random
    ``batch_size``-subset of ``[0, n)``, without replacement within the batch, and a pure jittable
    function of ``(key, step)`` (``step`` may be traced), so a resumed run sees the same batches.
    Keeping the top ``B`` of ``n`` random keys (``jax.lax.top_k``, ``O(n)``) is exchangeable in the
    ``n`` examples, hence uniform over subsets, and is ~50x cheaper on CPU than
    ``jax.random.permutation(k, n)[:B]`` or ``jax.random.choice(k, n, (B,), replace=False)`` (which
    sort: 44 ms a step against 0.8 ms for n = 60,000, B = 128). The one departure from exact
    uniformity: the float32 uniforms take 2**23 values, and a tie at the cut (probability below
    ``n * 2**-23`` a step, 0.7% at n = 60,000) keeps the lower index.

    Args:
      key: a PRNG key (the task's minibatch key).
      step: the step index, a Python or traced integer.
      n: the number of examples.
      batch_size: ``B``, ``1 <= B <= n``.

    Returns:
      ``(B,)`` int32 indices, distinct, in decreasing order of their keys.

    >>> import jax
    >>> idx = minibatch_indices(jax.random.PRNGKey(0), 3, 10, 4)
    >>> idx.shape, len(set(idx.tolist())), bool((idx < 10).all())
    ((4,), 4, True)
    """
    import jax
    import jax.numpy as jnp

    u = jax.random.uniform(jax.random.fold_in(key, step), (n,), jnp.float32)
    return jax.lax.top_k(u, batch_size)[1].astype(jnp.int32)


def minibatch_fn(n: int, batch_size: int, key) -> Callable:
    """A ``batch_fn(data, step)``: the rows :func:`minibatch_indices` picks, of every leaf of ``data``
    (each leaf's leading axis holds the ``n`` examples).

    >>> import jax, jax.numpy as jnp
    >>> fn = minibatch_fn(6, 2, jax.random.PRNGKey(1))
    >>> x, y = fn((jnp.arange(6) * 10, jnp.arange(6)), 0)
    >>> x.shape, bool((x == 10 * y).all())
    ((2,), True)
    """
    import jax
    import jax.numpy as jnp

    def batch_fn(data, step):
        idx = minibatch_indices(key, step, n, batch_size)
        return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)

    return batch_fn


def check_batch_size(task: str, batch_size, n: int) -> int:
    """``batch_size`` as an int in ``[0, n]`` (0 and ``None``: full batch), else a :class:`ConfigError`."""
    if batch_size is None:
        return 0
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 0:
        raise ConfigError(f"{task} batch_size must be an integer >= 0 (0 = full batch), got {batch_size!r}")
    if batch_size > n:
        raise ConfigError(f"{task} batch_size {batch_size} exceeds the {n} training examples")
    return batch_size


def full_batch_classification(name: str, config, model, train, test, *, source: str,
                              batch_size: int | None = None, seed: int = 0) -> Task:
    """A classification task with square loss on one-hot targets (the paper's MNIST and CIFAR-10
    setups), full batch by default.

    ``model`` is a flax module mapping ``(N, ...)`` inputs to ``(N, C)`` outputs; ``train`` and
    ``test`` are ``(inputs, one_hot_targets)`` NumPy pairs. With ``batch_size`` ``None``, 0 or ``N``
    every step and every measurement sees the whole training set. With ``0 < batch_size < N`` step
    ``t`` trains on the ``batch_size`` examples :func:`minibatch_indices` draws for ``t`` from the
    key ``fold_in(PRNGKey(seed), MINIBATCH_KEY)`` (uniform over subsets, no example twice in a
    batch, each step independent, a pure function of ``(seed, t)``: resume is exact), and the
    measurement at step ``t`` is taken on that same minibatch (the paper's way for its
    Transformer); ``info`` then also records ``batch_size`` and ``batching``. Test loss and
    accuracy come from one jitted evaluation on the whole test set either way.
    """
    import jax
    import jax.numpy as jnp

    n_train = int(train[0].shape[0])
    batch_size = check_batch_size(name, batch_size, n_train)

    def loss_fn(params, batch):
        x, y = batch
        return square_loss(model.apply(params, x), y)

    def output_fn(params, batch):  # (N, C) outputs; loss_fn is output_loss on them
        return model.apply(params, batch[0])

    def output_loss(outputs, batch):
        return square_loss(outputs, batch[1])

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

    info = {"data_source": source, "n_train": n_train, "n_test": int(test[0].shape[0]),
            "n_params": count_params(init_params)}
    if 0 < batch_size < n_train:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), MINIBATCH_KEY)
        batch_fn = minibatch_fn(n_train, batch_size, key)
        # Only minibatch runs record these: a full-batch run's task_info (checked on resume) is as before.
        info |= {"batch_size": batch_size,
                 "batching": "each step an independent uniform subset (top-k of uniform keys); "
                             "measured on the step's own minibatch"}
    else:
        batch_fn = full_batch
    test_arrays = tuple(jnp.asarray(a) for a in test)
    return Task(
        name=name,
        config=config,
        init_params=init_params,
        loss_fn=loss_fn,
        accuracy_fn=accuracy_fn,
        data=tuple(jnp.asarray(a) for a in train),
        batch_fn=batch_fn,
        measure_batch_fn=batch_fn,
        evaluate=lambda params: {k: float(v) for k, v in evaluate_jit(params, test_arrays).items()},
        info=info,
        full_batch_fn=lambda data: data,
        output_fn=output_fn,
        output_loss=output_loss,
    )


# Folded into the run's seed for the augmentation keys (see MINIBATCH_KEY).
AUGMENT_KEY = 0xA060_0000


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of ``(N, C)`` logits against ``(N,)`` integer labels:
    ``(1/N) sum_i [log sum_c exp z_ic - z_{i y_i}]``.

    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)   # log 4
    1.3863
    """
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def stateful_classification(name: str, config, model, train, test, *, source: str, batch_size: int,
                            seed: int = 0, augment: bool = False, measure_augmented: bool = False,
                            measure_set: int = 0, info: Mapping | None = None) -> Task:
    """A classification task with a model with state (BatchNorm) and dropout, cross-entropy loss.

    ``model`` is a flax module called as ``model.apply(variables, x, use_running_average=...,
    deterministic=...)`` (:class:`samedge.models.resnet.ResNet`), whose variables are ``params`` and
    any state collections (``batch_stats``). The task's functions:

    - a step (``train_loss_fn``) normalises with the statistics of its batch, updates the running
      statistics (``s' = m s + (1 - m) b``) and draws dropout from the step's key;
    - the measured function (``loss_fn``, ``accuracy_fn``) normalises with the statistics of the
      batch measured, as a step on it would, with dropout off; it never touches the state;
    - ``eval_loss_fn`` (``--measure-mode eval``) and ``evaluate`` (the test set) use the running
      statistics as constants, dropout off.

    Batches: minibatches of ``batch_size`` (:func:`minibatch_fn`, a pure function of ``(seed, step)``;
    0: the whole training set), augmented when ``augment`` (:func:`samedge.augment.crop_flip`, keyed
    by ``fold_in(fold_in(PRNGKey(seed), AUGMENT_KEY), step)``); the measurement at step ``t`` is on the
    same minibatch without augmentation (with it when ``measure_augmented``). ``full_batch_fn`` is the
    fixed measurement set, the first ``measure_set`` training images unaugmented (0: all of them).
    With BatchNorm the task is ``chunk_dependent``: chunked, each chunk has its own statistics.

    Args:
      name, config: the task's name and Config.
      model: the flax module.
      train, test: ``(images, integer labels)`` NumPy pairs.
      source: where the data came from (recorded).
      batch_size, seed, augment, measure_augmented, measure_set: as above.
      info: more facts to record.

    Returns:
      The :class:`Task`.

    >>> import flax.linen as nn, jax, numpy as np
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x, *, use_running_average, deterministic=True):
    ...         x = nn.BatchNorm(use_running_average=use_running_average)(nn.Dense(4)(x))
    ...         return nn.Dense(2)(nn.relu(x))
    >>> x, y = np.linspace(-1, 1, 24, dtype=np.float32).reshape(8, 3), np.arange(8, dtype=np.int32) % 2
    >>> t = stateful_classification("toy", None, Net(), (x, y), (x, y), source="toy", batch_size=4)
    >>> t.stateful, t.chunk_dependent, list(t.init_state(jax.random.PRNGKey(0)))
    (True, True, ['batch_stats'])
    """
    import jax
    import jax.numpy as jnp

    n_train = int(train[0].shape[0])
    batch_size = check_batch_size(name, batch_size, n_train)
    x0 = jnp.zeros((1, *train[0].shape[1:]), jnp.float32)
    collections, init_params, init_state, train_loss_fn, train_mode_logits, eval_logits = _flax_model_fns(model, x0)

    def output_fn(params, batch):  # the measured loss's logits: batch statistics, dropout off
        return train_mode_logits(params, batch[0])

    def output_loss(logits, batch):
        return cross_entropy(logits, batch[1])

    def loss_fn(params, batch):
        return output_loss(output_fn(params, batch), batch)

    def accuracy_fn(params, batch):
        return jnp.mean(jnp.argmax(output_fn(params, batch), -1) == batch[1])

    def eval_loss_fn(params, state, batch):
        return cross_entropy(eval_logits(params, state, batch[0]), batch[1])

    @jax.jit
    def evaluate_jit(params, state, test):
        logits = eval_logits(params, state, test[0])
        return {"test_loss": cross_entropy(logits, test[1]), "test_acc": jnp.mean(jnp.argmax(logits, -1) == test[1])}

    batch_size, batch_fn, measure_batch_fn = _augmented_minibatches(n_train, batch_size, seed, augment,
                                                                    measure_augmented)
    m = int(measure_set) or n_train
    if not 0 < m <= n_train:
        raise ConfigError(f"{name} measure_set must be in [0, n_train = {n_train}], got {measure_set!r}")

    def full_batch(data):
        return jax.tree.map(lambda a: a[:m], data)

    test_arrays = (jnp.asarray(test[0]), jnp.asarray(test[1]))
    facts = {"data_source": source, "n_train": n_train, "n_test": int(test[0].shape[0]),
             "n_params": count_params(init_params), "batch_size": batch_size, "measure_set": m,
             "model_state": list(collections), "augment": "crop 4 + flip" if augment else "none",
             "measured_on": "the step's minibatch, " + ("augmented" if augment and measure_augmented
                                                        else "unaugmented") + "; dropout off"}
    return Task(
        name=name, config=config, init_params=init_params, loss_fn=loss_fn, accuracy_fn=accuracy_fn,
        data=(jnp.asarray(train[0]), jnp.asarray(train[1])), batch_fn=batch_fn, measure_batch_fn=measure_batch_fn,
        evaluate=lambda params, state: {k: float(v) for k, v in evaluate_jit(params, state, test_arrays).items()},
        info=facts | dict(info or {}), full_batch_fn=full_batch, chunk_dependent=bool(collections),
        init_state=init_state, train_loss_fn=train_loss_fn, eval_loss_fn=eval_loss_fn, output_fn=output_fn,
        output_loss=output_loss)


def _flax_model_fns(model, x0):
    """The model functions of :func:`stateful_classification` from a flax ``model`` and a one-example
    input ``x0``: ``(collections, init_params, init_state, train_loss_fn, train_mode_logits,
    eval_logits)``, ``collections`` the state's variable collections (``batch_stats``; none for a
    model without state)."""
    import jax

    shapes = jax.eval_shape(lambda k: model.init(k, x0, use_running_average=True), jax.random.PRNGKey(0))
    collections = tuple(sorted(k for k in shapes if k != "params"))

    # one compiled program (eager initialisation compiles each random draw apart: ~20 s for ResNet-18
    # on a CPU), shared by the parameters and the state
    init_jit = jax.jit(lambda key: model.init(key, x0, use_running_average=True))

    def init_params(key):
        return init_jit(key)["params"]

    def init_state(key):
        variables = init_jit(key)
        return {k: variables[k] for k in collections}

    def train_loss_fn(params, state, batch, key):
        x, y = batch
        if collections:
            logits, new = model.apply({"params": params, **state}, x, use_running_average=False,
                                      deterministic=False, rngs={"dropout": key}, mutable=list(collections))
            return cross_entropy(logits, y), {k: new[k] for k in collections}
        logits = model.apply({"params": params}, x, use_running_average=False, deterministic=False,
                             rngs={"dropout": key})
        return cross_entropy(logits, y), state

    def train_mode_logits(params, x):  # batch statistics, dropout off; the running statistics discarded
        if collections:
            return model.apply({"params": params}, x, use_running_average=False, deterministic=True,
                               mutable=list(collections))[0]
        return model.apply({"params": params}, x, use_running_average=False, deterministic=True)

    def eval_logits(params, state, x):
        return model.apply({"params": params, **state}, x, use_running_average=True, deterministic=True)

    return collections, init_params, init_state, train_loss_fn, train_mode_logits, eval_logits


def _augmented_minibatches(n_train: int, batch_size: int, seed: int, augment: bool, measure_augmented: bool):
    """``(batch_size, batch_fn, measure_batch_fn)`` of :func:`stateful_classification`: minibatches keyed by
    ``(seed, MINIBATCH_KEY)`` (0 or ``n_train``: the whole set), the step's cropped and flipped when
    ``augment`` (keyed by ``(seed, AUGMENT_KEY)``), the measurement's the same minibatch unaugmented
    unless ``measure_augmented``."""
    import jax

    from samedge import augment as augment_mod

    root = jax.random.PRNGKey(seed)
    if 0 < batch_size < n_train:
        measure_batch_fn = minibatch_fn(n_train, batch_size, jax.random.fold_in(root, MINIBATCH_KEY))
    else:
        batch_size, measure_batch_fn = n_train, whole_data
    batch_fn = measure_batch_fn
    if augment:
        batch_fn = augment_mod.augmented_batch_fn(measure_batch_fn, jax.random.fold_in(root, AUGMENT_KEY))
        if measure_augmented:
            measure_batch_fn = batch_fn
    return batch_size, batch_fn, measure_batch_fn
