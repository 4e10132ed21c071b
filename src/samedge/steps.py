"""Optimizer steps of two shapes, around any optax base, as small pure factories.

An :class:`Optimizer` is a named tuple of pure functions, in the manner of optax:

- ``init(params) -> state``: the base's state;
- ``update(params, state, grad_fn) -> (params, state, loss)`` where ``grad_fn(params)`` returns
  ``(loss, grad)`` on the current batch (for stochastic SAM both gradients of one step use the same
  minibatch because the caller closes ``grad_fn`` over it), and ``loss`` is the loss at ``params``
  before the step;
- ``gradient_at(params, grad, grad_fn, state=None) -> grad``: the gradient the step feeds its base
  (the gradient at the ascent point for SAM), given ``grad = grad L(params)`` already taken;
- ``edge(grad, state) -> scalar`` or ``None``: the optimizer's edge of stability at the current
  gradient (a pytree, ``grad L(w)``) and optimizer state (see :mod:`samedge.edges`), or ``None``
  when no closed form is known; then measurements report lambda and leave the edge empty;
- ``ascent_point(params, grad, state=None) -> params`` or ``None``: where the step takes its gradient
  (``state``, the optimizer state, for ascents in a preconditioner's geometry);
- ``lr``: the step size eta when it is one number (for 2/eta), else ``None``;
- ``preconditioner(state, grad) -> P`` or ``None``: an adaptive optimizer's diagonal preconditioner,
  the one its next step divides by (the measurement's preconditioned sharpness reads it);
- ``linear_step(hvp, grad, state) -> (matvec, eta_eff)`` or ``None``: for a step without a closed
  form edge, a symmetric operator whose top eigenvalue ``mu`` makes the linearised step unstable at
  ``eta_eff mu = 2`` (the measurement reports ``step_radius = |1 - eta_eff mu|``);
- ``decay(params) -> wd D`` or ``None``: coupled weight decay's diagonal as a pytree like ``params``
  (the step descends ``L(w) + (1/2) w' wd D w``; the measurement reports ``lambda_max_reg``, the top
  eigenvalue of ``H + wd D``, and the edge refers to it);
- ``lr_at(state) -> eta_t`` or ``None``: under a learning-rate schedule (``lr`` is then ``None``), the
  step size of the next update at optimizer state ``state``.

The two shapes: :func:`descent` feeds ``g = grad L(w)`` to the base (GD, heavy ball, Adam ...);
:func:`ascent` feeds ``grad L(a(w, g))`` for an ascent point ``a`` computed from ``g`` on the same
batch (SAM ``a = w + rho g/||g||``, USAM ``a = w + rho g``). :func:`sam` and :func:`usam` are
:func:`ascent` with those points. The built-in optimizers with their closed-form edges are entries
of :mod:`samedge.optimizers` built from these.

>>> import jax, jax.numpy as jnp, optax
>>> opt = sam(optax.sgd(0.1), rho=0.05)           # SAM around plain SGD (no edge attached)
>>> loss = lambda w: 0.5 * jnp.sum(w ** 2)
>>> w, state, value = opt.update(jnp.ones(2), opt.init(jnp.ones(2)), jax.value_and_grad(loss))
>>> [round(float(x), 4) for x in w], float(value), opt.edge is None
([0.8965, 0.8965], 1.0, True)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["Optimizer", "descent", "ascent", "sam", "usam", "sam_ascent_point", "usam_ascent_point",
           "global_norm"]

Params = Any
GradFn = Callable[[Params], tuple[jax.Array, Params]]
EdgeFn = Callable[[Params, Any], jax.Array]


class Optimizer(NamedTuple):
    """An optimizer as pure functions (see the module docstring for each field)."""

    name: str
    init: Callable[[Params], Any]
    update: Callable[[Params, Any, GradFn], tuple[Params, Any, jax.Array]]
    edge: EdgeFn | None
    gradient_at: Callable[..., Params]
    ascent_point: Callable[..., Params] | None = None
    lr: Any = None
    preconditioner: Callable[[Any, Params], Params] | None = None
    linear_step: Callable | None = None
    decay: Callable[[Params], Params] | None = None
    lr_at: Callable[[Any], jax.Array] | None = None


def global_norm(tree) -> jax.Array:
    """Euclidean norm of a pytree taken as one flat vector: ``sqrt(sum_leaves sum x**2)``.

    Args:
      tree: a pytree of arrays.

    Returns:
      A scalar array.

    >>> float(global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}))
    5.0
    """
    return jnp.sqrt(sum(jnp.vdot(x, x).real for x in jax.tree.leaves(tree)))


def sam_ascent_point(params, grad, rho):
    """SAM's ascent point ``w + rho g / ||g||``; a zero gradient gives ``w`` (not NaN, unlike optax.contrib).

    Args:
      params: the point ``w``, a pytree.
      grad: ``g = grad L(w)``, a pytree like ``params``.
      rho: the radius (may be traced).

    Returns:
      A pytree like ``params``.

    >>> [round(float(x), 6) for x in sam_ascent_point(jnp.zeros(2), jnp.array([3.0, 4.0]), 1.0)]
    [0.6, 0.8]
    """
    norm = global_norm(grad)
    scale = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda w, g: w + (scale * g).astype(w.dtype), params, grad)


def usam_ascent_point(params, grad, rho):
    """Unnormalised SAM's ascent point ``w + rho g`` (no division, so no zero-gradient case).

    Args:
      params: the point ``w``, a pytree.
      grad: ``g = grad L(w)``, a pytree like ``params``.
      rho: the radius (may be traced).

    Returns:
      A pytree like ``params``.

    >>> [float(x) for x in usam_ascent_point(jnp.zeros(2), jnp.array([3.0, 4.0]), 0.5)]
    [1.5, 2.0]
    """
    return jax.tree.map(lambda w, g: w + (rho * g).astype(w.dtype), params, grad)


def _descend(base: optax.GradientTransformation):
    def apply(params, state, grad):
        updates, state = base.update(grad, state, params)
        return optax.apply_updates(params, updates), state

    return apply


def _check_base(base) -> None:
    if not (hasattr(base, "init") and hasattr(base, "update")):
        raise TypeError(f"base must be an optax.GradientTransformation (with init and update), "
                        f"got {type(base).__name__}")


def descent(base: optax.GradientTransformation, *, name: str = "descent", edge: EdgeFn | None = None,
            lr=None, preconditioner=None, linear_step=None, decay=None, lr_at=None) -> Optimizer:
    """A step that feeds ``g = grad L(w)`` to ``base``: ``w' = w + base.update(g)``.

    Args:
      base: any ``optax.GradientTransformation`` (``optax.sgd(0.1)``, ``optax.adam(1e-3)`` ...).
      name: a label for tables and figures.
      edge: ``edge(grad, state) -> scalar``, the edge of stability, or ``None`` (no known edge).
      lr: the step size, when it is one number (gives the 2/eta column), else ``None``.

    Returns:
      An :class:`Optimizer` without an ascent point.

    >>> opt = descent(optax.sgd(0.5), lr=0.5)
    >>> w, _, _ = opt.update(jnp.ones(1), opt.init(jnp.ones(1)), jax.value_and_grad(lambda w: jnp.sum(w ** 2)))
    >>> float(w[0])                                    # 1 - 0.5 * 2
    0.0
    """
    _check_base(base)
    descend = _descend(base)

    def update(params, state, grad_fn):
        loss, grad = grad_fn(params)
        params, state = descend(params, state, grad)
        return params, state, loss

    def gradient_at(params, grad, grad_fn, state=None):
        return grad

    return Optimizer(name, base.init, update, edge, gradient_at, None, lr, preconditioner, linear_step, decay, lr_at)


def ascent(base: optax.GradientTransformation, ascent_point: Callable[..., Params], *,
           name: str = "ascent", edge: EdgeFn | None = None, lr=None, preconditioner=None,
           linear_step=None, decay=None, lr_at=None) -> Optimizer:
    """A step that feeds ``grad L(a(w, g))`` to ``base``, with ``g = grad L(w)`` on the same batch.

    Args:
      base: any ``optax.GradientTransformation``.
      ascent_point: ``(params, grad) -> point``, e.g. :func:`sam_ascent_point` with a radius bound,
        or ``(params, grad, state) -> point`` when it reads the optimizer state.
      name: a label for tables and figures.
      edge: ``edge(grad, state) -> scalar``, or ``None`` (no known edge).
      lr: the step size when it is one number, else ``None``.

    Returns:
      An :class:`Optimizer` whose ``gradient_at`` is the gradient at the ascent point. A step costs
      two gradients.

    >>> opt = ascent(optax.sgd(0.1), lambda w, g: w + g)   # USAM with rho = 1
    >>> w, _, _ = opt.update(jnp.ones(1), opt.init(jnp.ones(1)), jax.value_and_grad(lambda w: jnp.sum(w ** 2)))
    >>> round(float(w[0]), 6)                          # 1 - 0.1 * 2 * (1 + 2)
    0.4
    """
    _check_base(base)
    descend = _descend(base)
    point = ascent_point if _takes_state(ascent_point) else (lambda p, g, state=None: ascent_point(p, g))

    def gradient_at(params, grad, grad_fn, state=None):
        return grad_fn(point(params, grad, state))[1]

    def update(params, state, grad_fn):
        loss, grad = grad_fn(params)
        params, state = descend(params, state, gradient_at(params, grad, grad_fn, state))
        return params, state, loss

    return Optimizer(name, base.init, update, edge, gradient_at, point, lr, preconditioner, linear_step, decay,
                     lr_at)


def _takes_state(fn) -> bool:
    import inspect

    try:
        return len(inspect.signature(fn).parameters) >= 3
    except (TypeError, ValueError):
        return False


def sam(base: optax.GradientTransformation, rho, *, name: str | None = None, edge: EdgeFn | None = None,
        lr=None) -> Optimizer:
    """SAM around any base: feeds ``grad L(w + rho g/||g||)`` to ``base``.

    With ``base = optax.sgd(eta)`` this is ``w' = w - eta grad L(w + rho g/||g||)``, whose edge is
    :func:`samedge.edges.sam_edge` (the registry entry ``"sam"`` attaches it); around other bases
    (momentum, Adam) pass ``edge`` if you know one, else none is reported.

    Args:
      base: any ``optax.GradientTransformation``.
      rho: the radius.
      name: a label (default ``sam``); edge, lr: as in :func:`ascent`.

    Returns:
      An :class:`Optimizer`.

    >>> opt = sam(optax.adam(1e-3), rho=0.05)
    >>> opt.name, opt.edge is None
    ('sam', True)
    """
    return ascent(base, lambda p, g: sam_ascent_point(p, g, rho), name=name or sam.__name__, edge=edge, lr=lr)


def usam(base: optax.GradientTransformation, rho, *, name: str | None = None, edge: EdgeFn | None = None,
         lr=None) -> Optimizer:
    """Unnormalised SAM around any base: feeds ``grad L(w + rho g)`` to ``base``.

    Args:
      base: any ``optax.GradientTransformation``.
      rho: the radius.
      name, edge, lr: as in :func:`ascent`.

    Returns:
      An :class:`Optimizer`.

    >>> usam(optax.sgd(0.1), rho=0.5).ascent_point(jnp.zeros(1), jnp.ones(1))[0].item()
    0.5
    """
    return ascent(base, lambda p, g: usam_ascent_point(p, g, rho), name=name or usam.__name__, edge=edge,
                  lr=lr)
