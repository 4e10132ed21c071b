"""The trace of the Hessian by Hutchinson's estimator: the other summary of the spectrum.

For ``z`` with independent Rademacher entries (+-1, each with probability 1/2), ``E[z^T H z] =
tr(H)`` and ``Var[z^T H z] = 2 sum_{i != j} H_ij^2 = 2 (||H||_F^2 - sum_i H_ii^2)`` (Hutchinson 1989;
the smallest variance of any i.i.d. probe distribution). The probe draws ``z_1, z_2, ...`` and stops
when the standard error of the mean, ``s / sqrt(n)`` (``s`` the sample standard deviation), is at most
``rel_se x |mean|``, after at least ``min_samples``, or at ``max_samples`` (a trace near 0, a saddle's,
never meets a relative rule). Columns: ``trace`` (the mean of ``z_i^T H z_i``), ``trace_se`` (its
standard error) and ``trace_n`` (the samples drawn). The draws come from the probe's own key: the
same measurement key gives the same estimate.

Cost: one HVP a sample, ``min_samples`` to ``max_samples`` (10 to 100 by default). No carry, no
workspace.

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers
>>> h = jnp.diag(jnp.array([3.0, 1.0, 0.5, -0.5]))   # diagonal: z^T H z = tr(H) for every z
>>> m = measurement(lambda w, b: 0.5 * w @ h @ w, optimizers.build("gd", 0.1), probes=[trace()])
>>> w = jnp.ones(4)
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> float(row["trace"]), float(row["trace_se"]), int(row["trace_n"])
(4.0, 0.0, 10)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from samedge.probes import Context, Probe

__all__ = ["trace", "hutchinson", "NAME"]

NAME = "trace"


def hutchinson(matvec, n: int, key, *, rel_se: float = 0.05, min_samples: int = 10, max_samples: int = 100,
               dtype=jnp.float32) -> dict:
    """Hutchinson's estimate of ``tr(A)`` with Rademacher vectors, stopped on its relative standard error.

    The running mean and sum of squared deviations are Welford's (one pass, stable); the ``i``-th
    vector is drawn from ``fold_in(key, i)``, so a longer run extends a shorter one's samples.

    Args:
      matvec: ``(n,) -> (n,)``, symmetric.
      n: the dimension.
      key: a PRNG key.
      rel_se: stop once ``se <= rel_se x |mean|`` (0: run to ``max_samples``).
      min_samples: samples drawn at least (at least 2: a standard error needs two).
      max_samples: samples drawn at most.
      dtype: the vectors' dtype.

    Returns:
      ``{"trace": mean, "trace_se": s / sqrt(n_samples), "trace_n": n_samples}`` (scalars).

    >>> a = jnp.array([[2.0, 1.0], [1.0, 3.0]])   # z^T A z = 5 + 2 z_1 z_2: 3 or 7, variance 4
    >>> out = hutchinson(lambda v: a @ v, 2, jax.random.PRNGKey(0), rel_se=0.0, max_samples=400)
    >>> est, se, n = float(out["trace"]), float(out["trace_se"]), int(out["trace_n"])
    >>> abs(est - 5.0) < 3 * se, round(se * 20, 1), n   # se = s/sqrt(400), s -> 2
    (True, 2.0, 400)
    """
    if not 2 <= min_samples <= max_samples:
        raise ValueError(f"need 2 <= min_samples <= max_samples, got {min_samples}, {max_samples}")

    def cond(state):
        i, mean, m2 = state
        se = jnp.sqrt(m2 / jnp.maximum(i - 1, 1) / jnp.maximum(i, 1))
        met = (i >= min_samples) & (se <= rel_se * jnp.abs(mean))
        return (i < max_samples) & ~met

    def body(state):
        i, mean, m2 = state
        z = jax.random.rademacher(jax.random.fold_in(key, i), (n,), dtype)
        x = z @ matvec(z)
        delta = x - mean
        mean = mean + delta / (i + 1)
        return i + 1, mean, m2 + delta * (x - mean)

    zero = jnp.zeros((), dtype)
    i, mean, m2 = jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), zero, zero))
    return {"trace": mean, "trace_se": jnp.sqrt(m2 / (i - 1) / i), "trace_n": i}


def trace(*, rel_se: float = 0.05, min_samples: int = 10, max_samples: int = 100) -> Probe:
    """The trace probe, named ``trace`` (see the module docstring).

    Args:
      rel_se: the relative standard error at which sampling stops.
      min_samples: samples drawn at least (>= 2).
      max_samples: samples drawn at most: the cost cap, in HVPs.

    Returns:
      The :class:`~samedge.probes.Probe` (no carry).

    Alone, on ``0.5 w'Aw`` with ``A = [[2, 1], [1, 3]]``: ``z'Az`` is 3 or 7, the trace 5.

    >>> from samedge import measure, optimizers, probes
    >>> a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    >>> ctx = probes.context(lambda w, b: 0.5 * w @ a @ w, jnp.ones(2), None, optimizers.build("gd", 0.1),
    ...                      measure.MeasureSettings(), jax.random.PRNGKey(0))
    >>> columns, _ = trace(rel_se=0.02, max_samples=2000).measure(ctx, (), jax.random.PRNGKey(1))
    >>> est, se = float(columns["trace"]), float(columns["trace_se"])
    >>> abs(est - 5.0) < 3 * se, se <= 0.02 * abs(est), int(columns["trace_n"]) < 2000
    (True, True, True)
    """
    if not (rel_se >= 0 and 2 <= min_samples <= max_samples):
        from samedge.errors import ConfigError

        raise ConfigError(f"trace: need rel_se >= 0 and 2 <= min_samples <= max_samples, got {rel_se}, "
                          f"{min_samples}, {max_samples}")

    def measure(ctx: Context, carry, key):
        n = ctx.flat_grad.shape[0]
        return hutchinson(ctx.hvp, n, key, rel_se=rel_se, min_samples=min_samples, max_samples=max_samples,
                          dtype=ctx.flat_grad.dtype), carry

    return Probe(NAME, lambda params, start: (), measure)
