"""Checks of what a user hands the library, each failing with one line that names the culprit.

Shapes and dtypes are read with ``jax.eval_shape``: nothing is computed, so a check costs a trace.

>>> import jax.numpy as jnp
>>> float_params({"w": jnp.zeros(2)})
>>> float_params({"w": jnp.zeros(2, jnp.int32)})
Traceback (most recent call last):
...
samedge.errors.ConfigError: parameter leaf ['w'] has dtype int32: parameters must be floating-point arrays (split the float parameters out of your model, e.g. nnx.split(model, nnx.Param) or eqx.partition(model, eqx.is_inexact_array), and close the rest over in the loss)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from samedge.errors import ConfigError, one_line

__all__ = ["float_params", "scalar_loss", "traceable_batch", "callable_name", "load_object"]

_SPLIT_HINT = ("split the float parameters out of your model, e.g. nnx.split(model, nnx.Param) or "
               "eqx.partition(model, eqx.is_inexact_array), and close the rest over in the loss")


def callable_name(fn) -> str:
    """``module.qualname`` of ``fn`` for messages (its repr when it has none)."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if name and module else repr(fn)


def float_params(params) -> None:
    """Refuse parameters that are not a pytree of floating-point arrays.

    Args:
      params: a pytree (or its ``jax.eval_shape``).

    Returns:
      None; :class:`ConfigError` naming the first bad leaf by its path.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise ConfigError("the parameters have no array leaves")
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path) or "(the root)"
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not hasattr(leaf, "shape"):
            raise ConfigError(f"parameter leaf {where} is a {type(leaf).__name__}, not an array; {_SPLIT_HINT}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ConfigError(f"parameter leaf {where} has dtype {np.dtype(dtype).name}: parameters must be "
                              f"floating-point arrays ({_SPLIT_HINT})")


def scalar_loss(loss_fn: Callable, params, batch) -> None:
    """Refuse a loss whose value at ``(params, batch)`` is not a floating-point scalar.

    Args:
      loss_fn: ``(params, batch) -> loss``.
      params, batch: example arguments (arrays or their shapes).

    Returns:
      None; :class:`ConfigError` saying the shape and dtype found.

    >>> scalar_loss(lambda p, b: p * b, jnp.ones(3), 2.0)
    Traceback (most recent call last):
    ...
    samedge.errors.ConfigError: the loss must return a float scalar, got shape (3,) and dtype float32 (from samedge.checks.<lambda>)
    """
    try:
        out = jax.eval_shape(loss_fn, params, batch)
    except Exception as exc:
        raise ConfigError(f"the loss {callable_name(loss_fn)} fails on the parameters and a batch: "
                          f"{type(exc).__name__}: {one_line(exc, 200)}") from None
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        what = f"shape {shape} and dtype {np.dtype(dtype).name}" if dtype is not None else type(out).__name__
        raise ConfigError(f"the loss must return a float scalar, got {what} (from {callable_name(loss_fn)})")


def traceable_batch(batch_fn: Callable, data, what: str = "batch_fn") -> Any:
    """The shape of ``batch_fn(data, 0)`` traced with a traced step; refuse a function JAX cannot trace.

    Args:
      batch_fn: ``(data, step) -> batch``.
      data: the data it reads.
      what: its role, for the message.

    Returns:
      The batch's ``jax.ShapeDtypeStruct`` pytree.

    >>> traceable_batch(lambda d, s: d[s % 2], jnp.arange(4.0)).shape
    ()
    """
    try:
        return jax.eval_shape(batch_fn, data, jnp.asarray(0))
    except Exception as exc:
        raise ConfigError(f"{what} {callable_name(batch_fn)} cannot be traced by JAX with a traced step "
                          f"(it must be a pure function of (data, step) made of jax.numpy operations): "
                          f"{type(exc).__name__}: {one_line(exc, 200)}") from None



def load_object(path: str, what: str):
    """The object named ``"package.module:ATTR"`` (a user's task factory or optimizer entry).

    Args:
      path: ``package.module:ATTR``.
      what: its role, for messages (``task``, ``optimizer``).

    Returns:
      The attribute; :class:`ConfigError` in one line when the module cannot be imported or has no
      such attribute.

    >>> load_object("samedge.edges:gd_edge", "edge")(0.5)
    4.0
    """
    import importlib

    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"{what} {path!r}: cannot import {module_name} ({type(exc).__name__}: {one_line(exc, 200)})"
                          ) from None
    if not hasattr(module, attr):
        raise ConfigError(f"{what} {path!r}: {module_name} has no {attr}")
    return getattr(module, attr)
