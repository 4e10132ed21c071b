"""An adaptive optimizer's own sharpness: the preconditioned Hessian, and the linearised step's radius.

``precond``: for an optimizer with a diagonal preconditioner ``P`` (read from its state: RMSProp,
Adam, SAM over Adam), ``precond_sharpness`` = lambda_max(P^{-1/2} H P^{-1/2}) (= that of ``P^{-1} H``,
similar matrices), the quantity an adaptive edge bounds (Cohen et al. 2022), with ``resid_precond``
and ``hvps_precond``: Lanczos on ``v -> s * H (s * v)``, ``s = P^{-1/2}``.

``step_radius``: for an optimizer whose step has no closed-form edge (SAM's Euclidean ascent over
Adam), the top eigenvalue ``mu`` of its linearised step's operator (``Optimizer.linear_step``) and
``step_radius`` = ``|1 - eta_eff mu|``, 1 at the edge (``step_mu``, ``resid_step``, ``hvps_step``).

Each carries its own eigenvector estimate (one start row) and warm-starts from it (plus a random part
of weight ``start_noise``). Cost: one Lanczos run each (about as many HVPs as the top-k probe's warm
run). Both read the optimizer state: ``measure(..., opt_state=...)`` is required.

>>> import jax, jax.numpy as jnp, optax
>>> from samedge import measurement, optimizers
>>> h = jnp.diag(jnp.array([4.0, 1.0]))
>>> loss = lambda w, b: 0.5 * w @ h @ w
>>> opt = optimizers.build("rmsprop", 0.01)
>>> w = jnp.array([1.0, 1.0])
>>> opt_state = opt.init(w)
>>> m = measurement(loss, opt)
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1), opt_state)
>>> p = jax.flatten_util.ravel_pytree(opt.preconditioner(opt_state, jax.grad(loss)(w, None)))[0]
>>> bool(jnp.isclose(row["precond_sharpness"], jnp.max(jnp.diag(h) / p), rtol=1e-3))
True
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from samedge.probes import Context, Probe, warm_top

__all__ = ["precond", "step_radius"]


def _needs_state(ctx: Context) -> None:
    if ctx.opt_state is None:
        from samedge.errors import ConfigError

        raise ConfigError(f"{ctx.optimizer.name}'s measurement reads its optimizer state: pass opt_state")


def precond(settings) -> Probe:
    """The preconditioned sharpness probe, named ``precond`` (see the module docstring).

    Args:
      settings: the measurement's :class:`~samedge.measure.MeasureSettings`.

    Returns:
      The :class:`~samedge.probes.Probe`.
    """

    def measure(ctx: Context, carry, key):
        _needs_state(ctx)
        s = 1.0 / jnp.sqrt(ravel_pytree(ctx.optimizer.preconditioner(ctx.opt_state, ctx.grad))[0])
        e = warm_top(ctx, lambda v: s * ctx.hvp(s * v), carry[0], 3)
        columns = {"precond_sharpness": jnp.abs(e.values[0]), "resid_precond": e.residuals[0],
                   "hvps_precond": e.num_matvecs}
        return columns, e.vectors[:1].astype(carry.dtype), e.workspace

    return Probe("precond", lambda params, start: start, measure, rows=1, workspace_iters=settings.max_hvps)


def step_radius(settings) -> Probe:
    """The linearised step's radius probe, named ``step_radius`` (see the module docstring).

    Args:
      settings: the measurement's :class:`~samedge.measure.MeasureSettings`.

    Returns:
      The :class:`~samedge.probes.Probe`.
    """

    def measure(ctx: Context, carry, key):
        _needs_state(ctx)
        matvec, eta_eff = ctx.optimizer.linear_step(ctx.hvp, ctx.grad, ctx.opt_state)
        e = warm_top(ctx, matvec, carry[0], 4)
        mu = e.values[0]
        columns = {"step_radius": jnp.abs(1 - eta_eff * mu), "step_mu": mu, "resid_step": e.residuals[0],
                   "hvps_step": e.num_matvecs}
        return columns, e.vectors[:1].astype(carry.dtype), e.workspace

    return Probe("step_radius", lambda params, start: start, measure, rows=1, workspace_iters=settings.max_hvps)
