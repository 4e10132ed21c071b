"""The optimizer's edge of stability and where the curvature stands against it.

Columns: ``edge``, the optimizer's edge at the gradient ``g`` and its state (absent when the optimizer
has no known edge); ``gd_edge`` = 2/eta (when eta is one number); ``ratio`` = the optimizer's own
sharpness over its edge: ``precond_sharpness`` (from the :mod:`~samedge.probes.adaptive` probe) for an
adaptive optimizer, ``lambda_max_reg`` (:mod:`~samedge.probes.decay`) under coupled weight decay, else
``lambda_max`` (from :mod:`~samedge.probes.topk`); ``ratio_full`` = ``lambda_max_full`` (the full
batch's, :mod:`~samedge.probes.stochastic`) over the same edge, for a Euclidean one; for an adaptive one also
``precond_edge`` and ``precond_ratio`` (the same numbers under names that say so). Under a
learning-rate schedule also ``lr`` = eta_t, the step size of the update from the point measured,
and every edge at it (empty where eta_t = 0). No HVPs, no carry.

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers
>>> m = measurement(lambda w, b: 1.5 * w @ w, optimizers.build("gd", 0.5))
>>> w = jnp.ones(2)
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> float(row["edge"]), float(row["gd_edge"]), round(float(row["ratio"]), 4)
(4.0, 4.0, 0.75)
"""

from __future__ import annotations

import jax.numpy as jnp

from samedge import edges
from samedge.probes import Context, Probe

__all__ = ["edge"]


def edge() -> Probe:
    """The edge probe, named ``edge`` (see the module docstring); it runs after the sharpness probes.

    Returns:
      The :class:`~samedge.probes.Probe`.
    """

    def measure(ctx: Context, carry, key):
        opt, dtype, columns = ctx.optimizer, ctx.loss.dtype, {}
        if opt.lr_at is not None:  # a schedule: the step size of the step measured; no edge where it is 0
            eta = jnp.asarray(opt.lr_at(ctx.opt_state), dtype)
            columns["lr"] = eta
            columns["gd_edge"] = edges.at_step_size(eta, edges.gd_edge)
        elif opt.lr is not None:
            columns["gd_edge"] = jnp.asarray(edges.gd_edge(opt.lr), dtype)
        if opt.edge is None:
            return columns, carry
        value = jnp.asarray(opt.edge(ctx.grad, ctx.opt_state), dtype)
        # the optimizer's own sharpness: lambda_max(P^-1 H) for an adaptive one, lambda_max(H + wd D)
        # under coupled weight decay, else lambda_max(H)
        sharpness = ctx.columns.get("precond_sharpness",
                                    ctx.columns.get("lambda_max_reg", ctx.columns.get("lambda_max")))
        columns["edge"] = value
        if "lambda_max_full" in ctx.columns and opt.preconditioner is None:  # the measurement set's
            columns["ratio_full"] = ctx.columns["lambda_max_full"] / value
        if sharpness is not None:
            columns["ratio"] = sharpness / value
            if opt.preconditioner is not None:
                columns["precond_edge"], columns["precond_ratio"] = value, columns["ratio"]
        return columns, carry

    return Probe("edge", lambda params, start: (), measure)
