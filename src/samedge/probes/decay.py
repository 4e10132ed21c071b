"""The curvature the step sees under coupled weight decay: ``lambda_max(H + wd D)``.

With coupled decay (GD, momentum, Nesterov and the SAM family with ``weight_decay > 0``) the step
descends ``L(w) + (1/2) w' (wd D) w`` (``D`` the 0/1 decay mask), whose Hessian is ``H + wd D``.
Columns: ``lambda_max_reg`` = ``||H + wd D||_2``, ``resid_reg``, ``hvps_reg``; the optimizer's ``edge`` refers to
it and the :mod:`~samedge.probes.edge` probe's ``ratio`` is ``lambda_max_reg / edge``. ``lambda_max``
stays the loss's own. With ``D = I`` it is ``lambda_max(H) + wd`` when the top eigenvalue is positive;
with a mask it is not, which is why it is measured.

Carry: the previous top vector of ``H + wd D``, the warm start. Cost: one Lanczos run (``min_hvps`` to
``max_hvps`` HVPs) in the measurement's workspace.

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers
>>> loss = lambda w, b: 0.5 * (3.0 * w["k"][0, 0] ** 2 + 1.0 * w["k"][0, 1] ** 2 + 4.0 * w["b"][0] ** 2)
>>> w = {"k": jnp.ones((1, 2)), "b": jnp.ones(1)}
>>> m = measurement(loss, optimizers.build("gd", 0.1, weight_decay=2.0))   # decays k, not the bias b
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> round(float(row["lambda_max"]), 4), round(float(row["lambda_max_reg"]), 4), round(float(row["ratio"]), 4)
(4.0, 5.0, 0.25)
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from samedge.probes import Context, Probe, warm_top

__all__ = ["decay"]


def decay(settings) -> Probe:
    """The decayed curvature, a probe named ``decay`` (see the module docstring); the measurement runs
    it when the optimizer has coupled decay (``Optimizer.decay``).

    Args:
      settings: the measurement's :class:`~samedge.measure.MeasureSettings`.

    Returns:
      The :class:`~samedge.probes.Probe` (one start row).
    """

    def measure(ctx: Context, carry, key):
        d = ravel_pytree(ctx.optimizer.decay(ctx.params))[0].astype(ctx.flat_grad.dtype)  # wd D, diagonal
        e = warm_top(ctx, lambda v: ctx.hvp(v) + d * v, carry[0], 7)
        columns = {"lambda_max_reg": jnp.abs(e.values[0]), "resid_reg": e.residuals[0], "hvps_reg": e.num_matvecs}
        return columns, e.vectors[:1].astype(carry.dtype), e.workspace

    return Probe("decay", lambda params, start: start, measure, rows=1, workspace_iters=settings.max_hvps)
