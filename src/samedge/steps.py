"""Optimizer steps as small pure factories: GD, and SAM wrapping a base step.

An :class:`Optimizer` is a named tuple of pure functions, in the manner of optax:

- ``init(params) -> state``
- ``update(params, state, grad_fn) -> (params, state, loss)`` where ``grad_fn(params)`` returns
  ``(loss, grad)`` on the current batch (for stochastic SAM both gradients of one step use the same
  minibatch because the caller closes ``grad_fn`` over it), and ``loss`` is the loss at ``params``
  before the step;
- ``edge(grad_norm)``: the optimizer's edge of stability at the current gradient norm
  (see :mod:`samedge.edges`);
- ``gradient_at(params, grad, grad_fn) -> grad``: the gradient the step actually descends along
  (the SAM gradient for SAM), given ``grad = grad L(params)`` already taken; used by the
  measurements for alignments and by the SAM-type steps themselves.

The descent itself is an optax transformation (plain SGD here), so momentum variants differ only
in the base they wrap.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from samedge import edges

__all__ = [
    "Optimizer", "gd", "sam", "sam_ascent_point", "global_norm",
    "momentum", "nesterov", "usam", "sam_momentum", "usam_ascent_point", "ascent_point_fn",
]

Params = Any
GradFn = Callable[[Params], tuple[jax.Array, Params]]


class Optimizer(NamedTuple):
    name: str
    init: Callable[[Params], Any]
    update: Callable[[Params, Any, GradFn], tuple[Params, Any, jax.Array]]
    edge: Callable[[jax.Array], jax.Array]
    gradient_at: Callable[[Params, Params, GradFn], Params]


def global_norm(tree) -> jax.Array:
    """Euclidean norm of a pytree taken as one flat vector."""
    return jnp.sqrt(sum(jnp.vdot(x, x).real for x in jax.tree.leaves(tree)))


def sam_ascent_point(params, grad, rho):
    """``w + rho * g / ||g||``; a zero gradient means no offset (not NaN, unlike optax.contrib)."""
    norm = global_norm(grad)
    scale = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda w, g: w + (scale * g).astype(w.dtype), params, grad)


def usam_ascent_point(params, grad, rho):
    """``w + rho * g``: the ascent point of unnormalised SAM (no division, so no zero-gradient case)."""
    return jax.tree.map(lambda w, g: w + (rho * g).astype(w.dtype), params, grad)


def _descend(base: optax.GradientTransformation):
    def apply(params, state, grad):
        updates, state = base.update(grad, state, params)
        return optax.apply_updates(params, updates), state

    return apply


# Every step is one of two shapes: it descends along grad L(w) through an optax base (which may
# keep a velocity), or along the gradient at an ascent point computed from g = grad L(w) on the
# same batch. Hyperparameters may be traced arrays (samedge.theory vmaps over them).


def _plain(name: str, base: optax.GradientTransformation, edge) -> Optimizer:
    """A step that descends along ``grad L(w)`` through ``base`` (which may keep a velocity)."""
    descend = _descend(base)

    def update(params, state, grad_fn):
        loss, grad = grad_fn(params)
        params, state = descend(params, state, grad)
        return params, state, loss

    def gradient_at(params, grad, grad_fn):
        return grad

    return Optimizer(name, base.init, update, edge, gradient_at)


def _ascending(name: str, base: optax.GradientTransformation, ascent, edge) -> Optimizer:
    """A step that feeds ``grad L(ascent(w, g))`` to ``base``; ``g = grad L(w)`` on the same batch."""
    descend = _descend(base)

    def gradient_at(params, grad, grad_fn):
        return grad_fn(ascent(params, grad))[1]

    def update(params, state, grad_fn):
        loss, grad = grad_fn(params)
        params, state = descend(params, state, gradient_at(params, grad, grad_fn))
        return params, state, loss

    return Optimizer(name, base.init, update, edge, gradient_at)


def gd(lr) -> Optimizer:
    """Gradient descent ``w' = w - lr * grad L(w)``; edge ``2 / lr``."""
    return _plain("gd", optax.sgd(lr), lambda grad_norm: edges.gd_edge(lr) + 0.0 * grad_norm)


def sam(lr, rho) -> Optimizer:
    """SAM ``w' = w - lr * grad L(w + rho g/||g||)`` with ``g = grad L(w)``; edge :func:`edges.sam_edge`.

    With ``rho = 0`` the ascent point is ``w`` itself and the step equals :func:`gd` exactly.
    """
    return _ascending("sam", optax.sgd(lr), lambda p, g: sam_ascent_point(p, g, rho),
                      lambda grad_norm: edges.sam_edge(lr, rho, grad_norm))


def momentum(lr, beta) -> Optimizer:
    """Heavy ball ``v' = beta v + grad L(w); w' = w - lr v'`` (``optax.sgd(lr, momentum=beta)``).

    Edge :func:`edges.momentum_edge` ``(2 + 2 beta)/lr``. ``gradient_at`` is ``grad L(w)``, the
    gradient fed to the velocity (the velocity itself is state, not a gradient).
    """
    return _plain("momentum", optax.sgd(lr, momentum=beta),
                  lambda grad_norm: edges.momentum_edge(lr, beta) + 0.0 * grad_norm)


def nesterov(lr, beta) -> Optimizer:
    """Nesterov momentum in optax's form: ``v' = g + beta v; w' = w - lr (g + beta v')``, ``g = grad L(w)``.

    Edge :func:`edges.nesterov_edge` ``(2 + 2 beta)/(lr (1 + 2 beta))``, derived for exactly this form.
    """
    return _plain("nesterov", optax.sgd(lr, momentum=beta, nesterov=True),
                  lambda grad_norm: edges.nesterov_edge(lr, beta) + 0.0 * grad_norm)


def usam(lr, rho) -> Optimizer:
    """Unnormalised SAM ``w' = w - lr grad L(w + rho grad L(w))``; edge :func:`edges.usam_edge` (constant)."""
    return _ascending("usam", optax.sgd(lr), lambda p, g: usam_ascent_point(p, g, rho),
                      lambda grad_norm: edges.usam_edge(lr, rho) + 0.0 * grad_norm)


def sam_momentum(lr, rho, beta) -> Optimizer:
    """SAM feeding heavy ball: ``v' = beta v + grad L(w + rho g/||g||); w' = w - lr v'``.

    Edge :func:`edges.sam_momentum_edge`; ``gradient_at`` is the SAM gradient fed to the velocity.
    """
    return _ascending("sam_momentum", optax.sgd(lr, momentum=beta), lambda p, g: sam_ascent_point(p, g, rho),
                      lambda grad_norm: edges.sam_momentum_edge(lr, rho, beta, grad_norm))


_BUILDERS = {
    "gd": lambda lr, rho, beta: gd(lr),
    "sam": lambda lr, rho, beta: sam(lr, rho),
    "momentum": lambda lr, rho, beta: momentum(lr, beta),
    "nesterov": lambda lr, rho, beta: nesterov(lr, beta),
    "usam": lambda lr, rho, beta: usam(lr, rho),
    "sam_momentum": lambda lr, rho, beta: sam_momentum(lr, rho, beta),
}


def build(name: str, lr, rho=0.0, momentum=0.0) -> Optimizer:
    """The optimizer called ``name`` (see :data:`samedge.config.OPTIMIZERS`)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown optimizer {name!r}")
    return _BUILDERS[name](lr, rho, momentum)


def ascent_point_fn(name: str, rho) -> Callable | None:
    """``(params, grad) -> ascent point`` of the optimizer called ``name``, or None if it has none."""
    if name in ("sam", "sam_momentum"):
        return lambda params, grad: sam_ascent_point(params, grad, rho)
    if name == "usam":
        return lambda params, grad: usam_ascent_point(params, grad, rho)
    return None
