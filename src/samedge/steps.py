"""Optimizer steps as small pure factories: GD, and SAM wrapping a base step.

An :class:`Optimizer` is a named tuple of pure functions, in the manner of optax:

- ``init(params) -> state``
- ``update(params, state, grad_fn) -> (params, state, loss)`` where ``grad_fn(params)`` returns
  ``(loss, grad)`` on the current batch (for stochastic SAM both gradients of one step use the same
  minibatch because the caller closes ``grad_fn`` over it), and ``loss`` is the loss at ``params``
  before the step;
- ``edge(grad_norm)``: the optimizer's edge of stability at the current gradient norm
  (see :mod:`samedge.edges`);
- ``gradient_at(params, grad_fn) -> grad``: the gradient the step actually descends along
  (the SAM gradient for SAM), used by the measurements for alignments.

The descent itself is an optax transformation (plain SGD here), so momentum variants differ only
in the base they wrap.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from samedge import edges

__all__ = ["Optimizer", "gd", "sam", "sam_ascent_point", "global_norm"]

Params = Any
GradFn = Callable[[Params], tuple[jax.Array, Params]]


class Optimizer(NamedTuple):
    name: str
    init: Callable[[Params], Any]
    update: Callable[[Params, Any, GradFn], tuple[Params, Any, jax.Array]]
    edge: Callable[[jax.Array], jax.Array]
    gradient_at: Callable[[Params, GradFn], Params]


def global_norm(tree) -> jax.Array:
    """Euclidean norm of a pytree taken as one flat vector."""
    return jnp.sqrt(sum(jnp.vdot(x, x).real for x in jax.tree.leaves(tree)))


def sam_ascent_point(params, grad, rho):
    """``w + rho * g / ||g||``; a zero gradient means no offset (not NaN, unlike optax.contrib)."""
    norm = global_norm(grad)
    scale = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda w, g: w + (scale * g).astype(w.dtype), params, grad)


def _descend(base: optax.GradientTransformation):
    def apply(params, state, grad):
        updates, state = base.update(grad, state, params)
        return optax.apply_updates(params, updates), state

    return apply


def gd(lr: float) -> Optimizer:
    """Gradient descent ``w' = w - lr * grad L(w)``; edge ``2 / lr``."""
    base = optax.sgd(lr)
    descend = _descend(base)

    def update(params, state, grad_fn):
        loss, grad = grad_fn(params)
        params, state = descend(params, state, grad)
        return params, state, loss

    def gradient_at(params, grad_fn):
        return grad_fn(params)[1]

    return Optimizer("gd", base.init, update, lambda grad_norm: edges.gd_edge(lr), gradient_at)


def sam(lr: float, rho: float) -> Optimizer:
    """SAM ``w' = w - lr * grad L(w + rho g/||g||)`` with ``g = grad L(w)``; edge :func:`edges.sam_edge`.

    With ``rho = 0`` the ascent point is ``w`` itself and the step equals :func:`gd` exactly.
    """
    base = optax.sgd(lr)
    descend = _descend(base)

    def gradient_at(params, grad_fn):
        _, grad = grad_fn(params)
        return grad_fn(sam_ascent_point(params, grad, rho))[1]

    def update(params, state, grad_fn):
        loss, grad = grad_fn(params)
        _, sam_grad = grad_fn(sam_ascent_point(params, grad, rho))
        params, state = descend(params, state, sam_grad)
        return params, state, loss

    return Optimizer("sam", base.init, update, lambda g: edges.sam_edge(lr, rho, g), gradient_at)


def build(name: str, lr: float, rho: float = 0.0, momentum: float = 0.0) -> Optimizer:
    """The optimizer called ``name`` (see :data:`samedge.config.OPTIMIZERS`)."""
    if name == "gd":
        return gd(lr)
    if name == "sam":
        return sam(lr, rho)
    raise ValueError(f"unknown optimizer {name!r}")
