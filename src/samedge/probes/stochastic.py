"""The stochastic side: batch sharpness over fresh minibatches, and the full batch's Hessian.

``batch_sharpness``: :func:`samedge.batch_sharpness.estimate` over fresh minibatches of the training
scheme (``batch_fn``) until the relative standard error is ``batch_sharpness_rel_se`` (at least 10,
at most ``settings.batch_sharpness`` batches): ``batch_sharpness`` (mean of ``q_B = g_B'H_B g_B /
||g_B||^2``), its ratio-of-means form, standard errors, ``batch_sharpness_n``, ``batch_grad_norm``,
and, for an optimizer with a Euclidean edge, the per-batch edge and ratio (``sam_batch_*``). Cost:
one gradient and one HVP a batch. No carry.

``full_batch``: ``lambda_max_full``, the top eigenvalue of the full batch's Hessian (``full_batch_fn``;
``resid_full``, ``hvps_full``), warm-started from its own carried vector. Cost: one Lanczos run on
the full batch.

Both draw from the task's data: ``measure(..., data=...)`` is required.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from samedge import batch_sharpness as bs
from samedge import curvature
from samedge.probes import Context, Probe, warm_top

__all__ = ["batch_sharpness", "full_batch"]


def _needs_data(ctx: Context) -> None:
    if ctx.data is None:
        from samedge.errors import ConfigError

        raise ConfigError("batch sharpness draws fresh minibatches from the data: pass measure(..., data=...)")


def batch_sharpness(settings, batch_fn) -> Probe:
    """The batch sharpness probe, named ``batch_sharpness`` (see the module docstring).

    Args:
      settings: the measurement's :class:`~samedge.measure.MeasureSettings` (``batch_sharpness``: the
        most batches; ``batch_sharpness_rel_se``).
      batch_fn: ``(data, step) -> batch``, the training scheme's minibatches.

    Returns:
      The :class:`~samedge.probes.Probe`.
    """

    def measure(ctx: Context, carry, key):
        _needs_data(ctx)
        sample = bs.from_batch_fn(batch_fn, ctx.data)
        opt = ctx.optimizer
        euclidean = opt.edge is not None and opt.preconditioner is None  # an adaptive edge bounds P^-1 H
        columns = bs.estimate(
            ctx.loss_fn, ctx.params, lambda k: ctx.cast(sample(k)), jax.random.fold_in(ctx.key, 5),
            max_batches=settings.batch_sharpness, rel_se=settings.batch_sharpness_rel_se,
            min_batches=min(10, settings.batch_sharpness),
            edge_fn=(lambda g: opt.edge(g, ctx.opt_state)) if euclidean else None)
        return columns, carry

    return Probe("batch_sharpness", lambda params, start: (), measure)


def full_batch(settings, full_batch_fn) -> Probe:
    """The full batch's top eigenvalue, a probe named ``full_batch`` (see the module docstring).

    Args:
      settings: the measurement's :class:`~samedge.measure.MeasureSettings`.
      full_batch_fn: ``data -> batch``, the full batch.

    Returns:
      The :class:`~samedge.probes.Probe`.
    """

    def measure(ctx: Context, carry, key):
        _needs_data(ctx)
        full = ctx.cast(full_batch_fn(ctx.data))
        matvec, _ = curvature.flat_hvp(lambda p: ctx.loss_fn(p, full), ctx.params)
        e = warm_top(ctx, matvec, carry[0], 6)
        columns = {"lambda_max_full": jnp.abs(e.values[0]), "resid_full": e.residuals[0], "hvps_full": e.num_matvecs}
        return columns, e.vectors[:1].astype(carry.dtype), e.workspace

    return Probe("full_batch", lambda params, start: start, measure, rows=1, workspace_iters=settings.max_hvps)
