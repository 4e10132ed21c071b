"""lambda_max at the optimizer's ascent point (SAM's ``w + rho g/||g||``): the curvature its step feels.

Columns: ``lambda_max_sam`` = ``|lambda_1|`` of the Hessian at the ascent point, ``resid_sam``,
``hvps_sam``. Warm-started from the top eigenvector at ``w`` (``ctx.carries["topk"]``), without a
random part: the two points are close. Cost: one Lanczos run at the ascent point (about as many HVPs
as the top-k probe's warm run). No carry.

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers, MeasureSettings
>>> loss = lambda w, b: 0.25 * jnp.sum(w ** 4)  # Hessian diag(3 w^2)
>>> m = measurement(loss, optimizers.build("sam", 0.1, rho=0.5), MeasureSettings(ascent_point=True))
>>> w = jnp.array([1.0, 0.5])
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> g = w ** 3
>>> a = w + 0.5 * g / jnp.linalg.norm(g)
>>> bool(jnp.isclose(row["lambda_max_sam"], 3 * a[0] ** 2, rtol=1e-3))
True
"""

from __future__ import annotations

import jax.numpy as jnp

from samedge import curvature
from samedge.probes import Context, Probe, top_eigen

__all__ = ["ascent_point"]


def ascent_point(settings) -> Probe:
    """The ascent-point probe, named ``ascent_point`` (see the module docstring).

    Args:
      settings: the measurement's :class:`~samedge.measure.MeasureSettings`.

    Returns:
      The :class:`~samedge.probes.Probe`.
    """

    def measure(ctx: Context, carry, key):
        point = ctx.optimizer.ascent_point(ctx.params, ctx.grad, ctx.opt_state)
        matvec, _ = curvature.flat_hvp(lambda p: ctx.loss_fn(p, ctx.batch), point)
        e = top_eigen(ctx, matvec, ctx.carries["topk"].vectors[0])
        columns = {"lambda_max_sam": jnp.abs(e.values[0]), "resid_sam": e.residuals[0], "hvps_sam": e.num_matvecs}
        return columns, carry, e.workspace

    return Probe("ascent_point", lambda params, start: (), measure, workspace_iters=settings.max_hvps)
