"""Probes: the measurement's quantities, one room each, and the interface for your own.

A probe is a pair of pure functions in a :class:`Probe`, in the manner of optax:

- ``init(params, start) -> carry``: the probe's state before the first measurement; ``start`` is
  ``(rows, n)`` random unit vectors drawn for it (``rows`` as the probe declares; ``(0, n)`` for
  none), the usual beginning of a warm-started eigenvector;
- ``measure(ctx, carry, key) -> (columns, carry)``: at one point, its columns (a dict of scalar
  arrays, one ``metrics.csv`` column each) and its next carry. ``ctx`` (:class:`Context`) holds what
  probes share: the point, the batch, the loss and gradient, the Hessian-vector product, the
  optimizer and its state, the data, the Krylov workspace, the settings, and the columns and new
  carries of the probes that ran before it (``ctx.previous`` has every probe's carry as the call
  began). ``key`` is this probe's own PRNG key (the measurement's key folded with the probe's name).
  A probe that builds a Krylov basis in ``ctx.workspace`` (``curvature.lanczos(..., workspace=
  ctx.workspace)``) returns the workspace it got back as a third value, ``(columns, carry,
  workspace)``, so that the next probe reuses the same memory in place; it then declares
  ``workspace_iters``, the most matvecs of such a run (the workspace is sized for the largest).

:func:`samedge.measurement` runs its built-in probes (chosen by
:class:`~samedge.measure.MeasureSettings` and the optimizer) in a fixed order, then yours
(``probes=...``), inside one jitted program; a column name may appear only once. The built-in
ones, each in a module of its own with its cost in HVPs in its docstring:
:mod:`~samedge.probes.topk` (lambda_max, the top-k, the guard), :mod:`~samedge.probes.adaptive`
(preconditioned sharpness, the step's radius), :mod:`~samedge.probes.stochastic` (batch sharpness,
the full batch), :mod:`~samedge.probes.edge` (edge and ratio), :mod:`~samedge.probes.alignment`,
:mod:`~samedge.probes.ascent` (lambda_max at the ascent point), :mod:`~samedge.probes.outliers`.
Three more are opt-in (:data:`samedge.measure.OPT_IN`, :func:`samedge.measure.opt_in`; ``--probe layers``
and so on): where the sharpness
lives, :mod:`~samedge.probes.layers` (the Hessian's diagonal blocks per layer and the top vector's mass
in each), :mod:`~samedge.probes.gauss_newton` (the Gauss-Newton part's top eigenvalue) and
:mod:`~samedge.probes.trace` (Hutchinson's trace).

Column names are letters, digits, ``_``, ``.`` and ``-``, in ``/``-separated parts
(``lambda_max/Dense_0``): the part before the first ``/`` names a family of columns, which trackers
group (TensorBoard's and W&B's sections); a probe's name has no ``/``.

Your own probe, the curvature along the gradient ``g^T H g / g^T g`` (one HVP, no carry):

>>> import jax, jax.numpy as jnp
>>> def measure_fn(ctx, carry, key):
...     g = ctx.flat_grad
...     return {"grad_curvature": g @ ctx.hvp(g) / (g @ g)}, carry
>>> probe = Probe("grad_curvature", lambda params, start: (), measure_fn)
>>> from samedge import measurement, optimizers
>>> h = jnp.diag(jnp.array([3.0, 1.0]))
>>> m = measurement(lambda w, b: 0.5 * w @ h @ w, optimizers.build("gd", 0.1), probes=[probe])
>>> w = jnp.array([1.0, 1.0])
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> round(float(row["grad_curvature"]), 4)  # (9*3 + 1*1) / (9 + 1)
2.8
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jax.flatten_util import ravel_pytree

from samedge import curvature
from samedge.steps import global_norm

__all__ = ["Probe", "Context", "context", "probe_key", "warm_start", "top_eigen", "warm_top", "load",
           "check_columns", "check_probe"]


class Probe(NamedTuple):
    """A quantity of the measurement: see the module docstring.

    Attributes:
      name: names the probe's carry and its key; letters, digits, ``_``, ``.`` and ``-``, unique
        within a measurement.
      init: ``(params, start) -> carry``; ``start`` is ``(rows, n)`` random unit vectors.
      measure: ``(ctx, carry, key) -> (columns, carry)`` or ``(columns, carry, workspace)``; jittable.
      rows: how many random unit start vectors ``init`` receives.
      workspace_iters: the most matvecs of a Lanczos run the probe builds in ``ctx.workspace`` (0: none).
    """

    name: str
    init: Callable[[Any, jax.Array], Any]
    measure: Callable[..., tuple]
    rows: int = 0
    workspace_iters: int = 0


class Context(NamedTuple):
    """What the probes of one measurement share (the arrays are traced inside its jitted program).

    Attributes:
      params: the point ``w`` (in the measurement's dtype).
      batch: the measured batch.
      loss: ``L(w)`` on it.
      grad: ``grad L(w)``, a pytree like ``params``.
      flat_grad: ``(n,)`` the same, raveled (``jax.flatten_util.ravel_pytree``): the flat vectors' dtype.
      loss_fn: ``(params, batch) -> scalar``, the loss as one jitted unit.
      hvp: ``v -> H v`` on flat ``(n,)`` vectors, exact (forward-over-reverse), at ``(params, batch)``.
      optimizer: the :class:`~samedge.steps.Optimizer` (its edge, ascent point, preconditioner).
      opt_state: its state, or ``None``.
      data: the task's data (for probes that draw batches of their own), or ``None``.
      settings: the :class:`~samedge.measure.MeasureSettings`.
      key: the measurement's PRNG key (the built-in probes fold their own salts into it).
      cast: ``tree -> tree`` in the measurement's dtype (for batches a probe draws itself).
      workspace: the Krylov workspace (:func:`samedge.curvature.krylov_workspace`) or ``None``.
      columns: the columns so far: ``loss``, ``grad_norm``, ``acc``, then the earlier probes'.
      carries: the new carries of the probes that ran before this one, by name.
      previous: every probe's carry as this call began, by name.
    """

    params: Any
    batch: Any
    loss: jax.Array
    grad: Any
    flat_grad: jax.Array
    loss_fn: Callable
    hvp: Callable
    optimizer: Any
    opt_state: Any
    data: Any
    settings: Any
    key: jax.Array
    cast: Callable
    workspace: jax.Array | None
    columns: Mapping[str, jax.Array]
    carries: Mapping[str, Any]
    previous: Mapping[str, Any]


_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_COLUMN = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")  # /-separated parts: a family, then its member


def context(loss_fn: Callable, params, batch, optimizer, settings, key, *, opt_state=None, data=None,
            cast: Callable | None = None, workspace=None, previous: Mapping | None = None) -> Context:
    """The :class:`Context` of a measurement at ``(params, batch)``: the loss, its gradient and the
    Hessian-vector product there; its columns start with ``loss`` and ``grad_norm``. The measurement
    builds its own with it; call it to try a probe on its own (``probe.measure(ctx, carry, key)``).

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: the point, a pytree of float arrays.
      batch: the batch.
      optimizer: the :class:`~samedge.steps.Optimizer`.
      settings: the :class:`~samedge.measure.MeasureSettings`.
      key: the measurement's PRNG key.
      opt_state: the optimizer's state, or ``None``.
      data: the task's data, or ``None``.
      cast: ``tree -> tree`` into the measurement's dtype (default: unchanged).
      workspace: a Krylov workspace, or ``None``.
      previous: the probes' carries as the call begins (default: none).

    Returns:
      The :class:`Context`, ``carries`` empty.

    >>> from samedge import optimizers, measure
    >>> ctx = context(lambda w, b: 2.0 * w @ w, jnp.array([1.0, 0.0]), None, optimizers.build("gd", 0.1),
    ...               measure.MeasureSettings(), jax.random.PRNGKey(0))
    >>> float(ctx.loss), ctx.hvp(jnp.array([1.0, 1.0])).tolist(), float(ctx.columns["grad_norm"])
    (2.0, [4.0, 4.0], 4.0)
    """
    loss, grad = jax.value_and_grad(loss_fn)(params, batch)
    hvp, _ = curvature.flat_hvp(lambda p: loss_fn(p, batch), params)
    return Context(params, batch, loss, grad, ravel_pytree(grad)[0], loss_fn, hvp, optimizer, opt_state, data,
                   settings, key, cast or (lambda tree: tree), workspace,
                   {"loss": loss, "grad_norm": global_norm(grad)}, {}, dict(previous or {}))


def probe_key(key: jax.Array, name: str) -> jax.Array:
    """A probe's own key: ``key`` folded with a checksum of its name (stable across runs and machines).

    Args:
      key: the measurement's key.
      name: the probe's name.

    Returns:
      A PRNG key, independent of other names' keys.

    >>> k = jax.random.PRNGKey(0)
    >>> bool(jnp.all(probe_key(k, "a") == probe_key(k, "a"))), bool(jnp.all(probe_key(k, "a") == probe_key(k, "b")))
    (True, False)
    """
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def warm_start(v: jax.Array, key: jax.Array, noise: float) -> jax.Array:
    """``v / ||v|| + noise * u``, ``u`` a random unit vector drawn from ``key``: a warm start that still
    has a component along every direction for Lanczos to amplify.

    Args:
      v: ``(n,)`` the previous eigenvector estimate (any nonzero scale).
      key: a PRNG key.
      noise: the random part's weight (``MeasureSettings.start_noise``).

    Returns:
      ``(n,)`` the start vector (in the default float dtype; cast it to the measurement's).

    >>> v0 = warm_start(jnp.array([2.0, 0.0, 0.0]), jax.random.PRNGKey(0), 0.0)
    >>> v0.tolist()
    [1.0, 0.0, 0.0]
    """
    u = jax.random.normal(key, v.shape)
    return v / jnp.linalg.norm(v) + noise * u / jnp.linalg.norm(u)


def top_eigen(ctx: Context, matvec: Callable, v0: jax.Array, *, k: int = 1, tol=None, workspace=None):
    """Lanczos for the top-``k`` eigenpairs of ``matvec`` at the settings of ``ctx`` (its tolerance,
    HVP budget, minimum Krylov steps and ``max_basis``), in ``workspace`` (default ``ctx.workspace``).

    Args:
      ctx: the :class:`Context`.
      matvec: ``(n,) -> (n,)``, a symmetric operator (``ctx.hvp``, or one built on it).
      v0: ``(n,)`` the start vector.
      k: eigenpairs wanted.
      tol: the relative residual (a number or a function of the Ritz values; default the settings').
      workspace: the basis buffer (default ``ctx.workspace``; ``None`` allocates one).

    Returns:
      :class:`samedge.curvature.Eigen`; its ``workspace`` is the buffer to hand on.
    """
    s = ctx.settings
    return curvature.lanczos(matvec, v0, k=k, max_iters=s.max_hvps, tol=s.tol if tol is None else tol,
                             min_iters=s.min_hvps, workspace=ctx.workspace if workspace is None else workspace,
                             max_basis=s.max_basis or None)


def warm_top(ctx: Context, matvec: Callable, vector: jax.Array, salt: int):
    """The top eigenpair of ``matvec`` by Lanczos in ``ctx.workspace``, warm-started from a probe's
    carried ``vector`` plus a random part (:func:`warm_start`, weight ``start_noise``, drawn from the
    measurement's key folded with ``salt``).

    Args:
      ctx: the :class:`Context`.
      matvec: ``(n,) -> (n,)``, symmetric.
      vector: ``(n,)`` the previous eigenvector estimate.
      salt: the probe's own number, so that its random part differs from other probes'.

    Returns:
      :class:`samedge.curvature.Eigen` (one pair; its ``workspace`` to hand on).
    """
    v0 = warm_start(vector, jax.random.fold_in(ctx.key, salt), ctx.settings.start_noise)
    return top_eigen(ctx, matvec, v0.astype(ctx.flat_grad.dtype))


def check_columns(name: str, columns: Mapping, taken: Mapping) -> None:
    """Refuse a probe's columns that are not scalars or that another probe already wrote.

    Args:
      name: the probe (named in the error).
      columns: its columns.
      taken: the columns so far.

    Raises:
      :class:`samedge.errors.ConfigError`, one line naming the probe and the column.
    """
    from samedge.errors import ConfigError

    if not isinstance(columns, Mapping):
        raise ConfigError(f"probe {name!r} returned {type(columns).__name__} for its columns; expected a dict")
    for col, value in columns.items():
        if not isinstance(col, str) or not _COLUMN.match(col):
            raise ConfigError(f"probe {name!r}: column name {col!r} must be letters, digits, _, . or -, in parts "
                              f"joined by /")
        if col in taken:
            raise ConfigError(f"probe {name!r}: column {col!r} is written by an earlier probe; rename it")
        if jnp.ndim(value) != 0:
            raise ConfigError(f"probe {name!r}: column {col!r} has shape {jnp.shape(value)}; a column is a scalar")


def check_probe(probe) -> "Probe":
    """``probe`` if it is a :class:`Probe` with a valid name, else a one-line ConfigError."""
    from samedge.errors import ConfigError

    if not isinstance(probe, Probe):
        raise ConfigError(f"a probe must be a samedge.probes.Probe (name, init, measure), got {type(probe).__name__}")
    if not isinstance(probe.name, str) or not _NAME.match(probe.name):
        raise ConfigError(f"probe name {probe.name!r} must be letters, digits, _, . or -")
    if not (isinstance(probe.rows, int) and probe.rows >= 0 and isinstance(probe.workspace_iters, int)
            and probe.workspace_iters >= 0):
        raise ConfigError(f"probe {probe.name!r}: rows and workspace_iters must be integers >= 0")
    return probe


def load(name: str) -> Probe:
    """The probe ``package.module:ATTR`` names (the CLI's ``--probe``).

    Args:
      name: an import path, ``package.module:ATTR``, to a :class:`Probe`.

    Returns:
      The probe; a one-line :class:`samedge.errors.ConfigError` when it cannot be loaded or is none.
    """
    from samedge import checks
    from samedge.errors import ConfigError

    if not isinstance(name, str) or ":" not in name:
        raise ConfigError(f"--probe expects package.module:PROBE, got {name!r}")
    obj = checks.load_object(name, "probe")
    if not isinstance(obj, Probe):
        raise ConfigError(f"probe {name!r}: {name.replace(':', '.')} is not a samedge.probes.Probe")
    return check_probe(obj)

