"""How the gradients line up with the top eigenvector.

Columns: ``align_grad`` = ``|cos(g, v_1)|``, ``g`` the gradient, and ``align_sam_grad`` = ``|cos(d, v_1)|``,
``d`` the gradient the optimizer's step descends along (the ascent point's gradient for SAM;
``g`` itself for GD), ``v_1`` the top eigenvector from :mod:`~samedge.probes.topk`. Cost: one
gradient at the ascent point (none for GD). No carry.

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers
>>> h = jnp.diag(jnp.array([3.0, 1.0]))
>>> m = measurement(lambda w, b: 0.5 * w @ h @ w, optimizers.build("gd", 0.1))
>>> w = jnp.array([1.0, 0.0])  # the gradient (3, 0) lies along the top eigenvector
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> round(float(row["align_grad"]), 4), round(float(row["align_sam_grad"]), 4)
(1.0, 1.0)
"""

from __future__ import annotations

import jax
from jax.flatten_util import ravel_pytree

from samedge import curvature
from samedge.probes import Context, Probe

__all__ = ["alignment"]


def alignment() -> Probe:
    """The alignment probe, named ``alignment`` (see the module docstring); it reads ``topk``'s vectors.

    Returns:
      The :class:`~samedge.probes.Probe`.
    """

    def measure(ctx: Context, carry, key):
        v1 = ctx.carries["topk"].vectors[0].astype(ctx.flat_grad.dtype)
        grad_fn = jax.value_and_grad(ctx.loss_fn)
        descent = ctx.optimizer.gradient_at(ctx.params, ctx.grad, lambda p: grad_fn(p, ctx.batch), ctx.opt_state)
        columns = {"align_grad": curvature.alignment(ctx.flat_grad, v1),
                   "align_sam_grad": curvature.alignment(ravel_pytree(descent)[0], v1)}
        return columns, carry

    return Probe("alignment", lambda params, start: (), measure)
