"""Every Hessian eigenvalue above a fraction of the edge: the outliers, tracked from call to call.

Columns: ``n_outliers`` (how many were found above ``track_fraction x edge``), ``hvps_outliers``,
``outlier_i`` and ``outlier_resid_i`` for ``i = 1..track_max`` (NaN when not found), by
:func:`samedge.curvature.lanczos_above` at tolerance ``tol``. It reads the ``edge`` column (from
:mod:`~samedge.probes.edge`); for an optimizer without an edge it reports nothing and keeps its carry.

Warm start: the previously tracked vectors (its carry, ``track_max`` rows; zero rows for none)
summed, plus a random part of one tenth their weight (at least 0.1), so that new outliers enter the
Krylov space. The top-k probe adds the same vectors to its own warm start. Cost: one Lanczos run of at
most ``max(max_hvps, track_max + 8)`` HVPs.

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers, MeasureSettings
>>> h = jnp.diag(jnp.array([3.5, 3.0, 2.5, 0.5, 0.1]))
>>> s = MeasureSettings(track_fraction=0.5, track_max=4)
>>> m = measurement(lambda w, b: 0.5 * w @ h @ w, optimizers.build("gd", 0.5), s)  # edge 4: above 2
>>> w = jnp.ones(5)
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> int(row["n_outliers"]), [round(float(row[f"outlier_{i}"]), 3) for i in (1, 2, 3)]
(3, [3.5, 3.0, 2.5])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from samedge import curvature
from samedge.probes import Context, Probe

__all__ = ["outliers", "max_iters"]


def max_iters(settings) -> int:
    """The HVP budget of the outliers' Lanczos run: enough for ``track_max`` pairs and a margin."""
    return max(settings.max_hvps, settings.track_max + 8)


def outliers(settings) -> Probe:
    """The outliers probe, named ``outliers`` (see the module docstring).

    Args:
      settings: the measurement's :class:`~samedge.measure.MeasureSettings` (``track_fraction``,
        ``track_max``, ``tol``, ``max_hvps``).

    Returns:
      The :class:`~samedge.probes.Probe` (``track_max`` start rows).
    """

    def measure(ctx: Context, previous, key):
        edge = ctx.columns.get("edge")
        if edge is None:
            return {}, previous
        noise = jax.random.normal(jax.random.fold_in(ctx.key, 1), previous.shape[1:])
        start = previous.sum(0)  # (n,)
        scale = jnp.maximum(jnp.linalg.norm(start), 1.0)
        v0 = start + 0.1 * scale * noise / jnp.linalg.norm(noise)
        out = curvature.lanczos_above(ctx.hvp, v0.astype(previous.dtype), settings.track_fraction * edge,
                                      k_max=settings.track_max, max_iters=max_iters(settings), tol=settings.tol,
                                      workspace=ctx.workspace, max_basis=settings.max_basis or None)
        columns = {"n_outliers": out.count, "hvps_outliers": out.num_matvecs}
        for i in range(settings.track_max):
            columns[f"outlier_{i + 1}"] = out.values[i]
            columns[f"outlier_resid_{i + 1}"] = out.residuals[i]
        return columns, out.vectors.astype(previous.dtype), out.workspace

    return Probe("outliers", lambda params, start: start, measure, rows=settings.track_max,
                 workspace_iters=max_iters(settings))
