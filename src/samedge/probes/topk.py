"""The top-k eigenpairs of the Hessian, warm-started, with the guard: the measurement's main probe.

Columns: ``lambda_1..k`` (signed, by decreasing magnitude), ``resid_1..k`` =
``||H v - lambda v|| / |lambda|``, ``hvps``, ``lambda_max`` = ``|lambda_1| = ||H||_2`` (the paper's quantity), ``lambda_top``
and ``resid_top`` (the largest algebraic eigenvalue of the same Krylov space), the guard's
``converged``, ``crosscheck_lambda``, ``hvps_crosscheck``, ``certified``, and with a bounded basis
(``max_basis``) ``restarts``, the thick restarts of both runs.

Warm start: the previous top-k vectors and the tracked outliers' (``ctx.previous["outliers"]``)
summed, unit, plus a random unit vector of weight ``start_noise`` (:func:`samedge.probes.warm_start`).

The guard. Lanczos stopped on a residual proves closeness to *an* eigenvalue, not to the largest:
a warm start that (nearly) lacks the new top direction, after the top eigenvectors exchanged
between two calls, can meet the tolerance on the old one within 2-3 HVPs. No Krylov method can rule
out an eigenvalue its start vector lacks; the guard makes a miss rare (a random part in the start,
at least ``min_hvps`` Krylov steps) and visible: a cold random-start cross-check whenever lambda or
the top vector jumps, and ``crosscheck_every`` calls after the last cold run at the latest; a larger
eigenvalue found there is adopted, and the row is marked uncertified. The carry holds the guard's
memory: ``count``, the calls since the last cold run, and ``lambda_prev``.

Cost: one Lanczos run (6-20 HVPs warm on the quick tasks, at least ``min_hvps``, at most
``max_hvps``), plus a cold one when due (8-13 at ``crosscheck_tol`` 1e-2).

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers
>>> h = jnp.diag(jnp.array([3.0, -5.0, 1.0]))
>>> m = measurement(lambda w, b: 0.5 * w @ h @ w, optimizers.build("gd", 0.1))
>>> w = jnp.ones(3)
>>> row, state = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> round(float(row["lambda_1"]), 4), round(float(row["lambda_max"]), 4), round(float(row["lambda_top"]), 4)
(-5.0, 5.0, 3.0)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from samedge import curvature
from samedge.probes import Context, Probe, top_eigen, warm_start

__all__ = ["TopkCarry", "topk", "calls_since_cold"]

NAME = "topk"


class TopkCarry(NamedTuple):
    """``vectors``: ``(k, n)`` the top-k eigenvector estimates; ``count``: the calls since the last cold
    run (0 before the first call, which starts from random vectors; 1 after it or after a
    cross-check); ``lambda_prev``: the last lambda_max (NaN before the first)."""

    vectors: jax.Array
    count: jax.Array | int = 0
    lambda_prev: jax.Array | float = float("nan")


def calls_since_cold(rows) -> int:
    """:attr:`TopkCarry.count` after the measurements ``rows`` (dicts with ``hvps_crosscheck``;
    the first row is a cold start): the calls since the last cold run, as resuming a run needs it.

    Args:
      rows: the run's rows so far, oldest first.

    Returns:
      ``len(rows) - i`` for the last row ``i`` that ran a cross-check (or the first row); 0 for none.

    >>> calls_since_cold([{"hvps_crosscheck": 0}, {"hvps_crosscheck": 12}, {"hvps_crosscheck": 0}])
    2
    """
    last = 0
    for i, row in enumerate(rows):
        if (row.get("hvps_crosscheck") or 0) > 0:
            last = i
    return len(rows) - last if rows else 0


def topk(settings) -> Probe:
    """The top-k probe at ``settings`` (:class:`~samedge.measure.MeasureSettings`: ``topk``, ``tol``,
    ``max_hvps``, ``min_hvps``, ``start_noise`` and the guard's ``crosscheck_*``, ``jump``, ``align_jump``).

    Args:
      settings: the measurement's settings.

    Returns:
      The :class:`~samedge.probes.Probe` named ``topk`` (``settings.topk`` start rows).
    """
    k = settings.topk

    def init(params, start) -> TopkCarry:
        return TopkCarry(start, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.nan, jnp.result_type(float)))

    def measure(ctx: Context, carry: TopkCarry, key):
        vectors = carry.vectors
        dtype = ctx.flat_grad.dtype
        tracked = ctx.previous.get("outliers")

        def warm_v0():  # built inside the run's loop, when needed: no n-vector is held across it
            warm = vectors.sum(0) + (tracked.sum(0) if tracked is not None else jnp.zeros_like(vectors[0]))
            return warm_start(warm, ctx.key, settings.start_noise).astype(dtype)

        eig, guard = _main_and_guard(ctx, settings, warm_v0, carry)
        # calls since the last cold run, this one included: 1 after a cross-check (or the first call)
        since_cold = jnp.where(guard["hvps_crosscheck"] > 0, 1, carry.count + 1).astype(jnp.asarray(carry.count).dtype)
        lambda_max = jnp.abs(eig.values[0])
        columns = {"lambda_max": lambda_max, "hvps": eig.num_matvecs,
                   "lambda_top": eig.top_value, "resid_top": eig.top_residual} | guard
        for i in range(k):
            columns[f"lambda_{i + 1}"] = eig.values[i]
            columns[f"resid_{i + 1}"] = eig.residuals[i]
        new = TopkCarry(eig.vectors.astype(vectors.dtype), since_cold, lambda_max.astype(jnp.result_type(float)))
        return columns, new, eig.workspace

    return Probe(NAME, init, measure, rows=k, workspace_iters=settings.max_hvps)


def _main_and_guard(ctx: Context, settings, warm_v0, carry: TopkCarry):
    """The warm-started run, the cross-check (when due) and the guard's columns; a larger
    eigenvalue the cross-check finds is adopted.

    Both runs are passes of one loop around one Lanczos program (pass 0 warm from ``warm_v0()``, pass 1
    cold, taken only when due or after a jump), so the measurement's program holds its Lanczos loop
    once: it compiles, loads from the persistent cache and traces faster than with a second copy.
    Each pass draws its start inside the loop and the cold pass writes an adopted vector straight
    into the main result, so the loop holds one ``(k, n)`` block besides the Lanczos run's own.
    """
    k = settings.topk
    n, dtype = carry.vectors.shape[1], ctx.flat_grad.dtype
    first = carry.count == 0  # the first call starts from random vectors: itself a cold start
    every = settings.crosscheck_every
    due = (carry.count >= every) if every else jnp.asarray(False)  # calls since the last cold run
    ws0 = ctx.workspace
    if ws0 is None:
        ws0 = curvature.krylov_workspace(n, settings.max_hvps, dtype, settings.max_basis)
    rank = jnp.arange(k)
    bump = 1 + 2 * settings.tol  # a cold value this much above the main one is a proven miss

    def one_pass(state):
        p, ws, main, cold, take, larger = state
        is_cold = p == 1
        # the cold run is loose while its Ritz value stays at or below the bound (a value above it is
        # a larger eigenvalue: a proven miss, run on to the measurement's own tolerance); it reports
        # one pair, so the others' tolerance is infinite
        bound = jnp.where(is_cold, jnp.abs(main.values[0]) * bump, jnp.inf)
        below = jnp.where(is_cold, settings.crosscheck_tol, settings.tol)

        def tol(theta):
            t = jnp.where(jnp.abs(theta) > bound, settings.tol, below)
            return jnp.where(is_cold & (rank > 0), jnp.inf, t)

        v0 = jax.lax.cond(is_cold, lambda: jax.random.normal(jax.random.fold_in(ctx.key, 2), (n,), dtype), warm_v0)
        e = top_eigen(ctx, ctx.hvp, v0, k=k, tol=tol, workspace=ws)
        # pass 0 fills the main result; pass 1 keeps its top pair's numbers and, when it proves a miss,
        # puts its pair in the main result's first place
        adopt = is_cold & (jnp.abs(e.values[0]) > jnp.abs(main.values[0]) * bump)
        fields = e._replace(workspace=None)
        main = jax.tree.map(lambda new, old: jnp.where(is_cold, old, new), fields, main)
        main = main._replace(values=main.values.at[0].set(jnp.where(adopt, e.values[0], main.values[0])),
                             vectors=main.vectors.at[0].set(jnp.where(adopt, e.vectors[0], main.vectors[0])),
                             residuals=main.residuals.at[0].set(jnp.where(adopt, e.residuals[0], main.residuals[0])))
        cold = jax.tree.map(lambda new, old: jnp.where(is_cold, new, old),
                            (e.values[0], e.num_matvecs, e.restarts), cold)
        lam = jnp.abs(e.values[0])
        align_prev = curvature.alignment(e.vectors[0], carry.vectors[0].astype(dtype))
        jumped = (jnp.abs(lam / carry.lambda_prev - 1) > settings.jump) | (align_prev < settings.align_jump)
        take = jnp.where(is_cold, take, ~first & (due | jumped))
        return p + 1, e.workspace, main, cold, take, larger | adopt

    real = jnp.zeros((), dtype)
    count = jnp.zeros((), jnp.int32)
    zeros = curvature.Eigen(jnp.zeros((k,), dtype), jnp.zeros((k, n), dtype), jnp.zeros((k,), dtype),
                            count, real, real, None, count, count)
    _, ws, eig, (value, hvps, restarts), take, larger = jax.lax.while_loop(
        lambda c: (c[0] == 0) | ((c[0] == 1) & c[4]), one_pass,
        (jnp.asarray(0), ws0, zeros, (real, count, count), jnp.asarray(False), jnp.asarray(False)))
    eig = eig._replace(workspace=ws if ctx.workspace is not None else None)
    converged = jnp.all(eig.residuals <= settings.tol)
    guard = {
        "converged": converged.astype(jnp.int32),
        "crosscheck_lambda": jnp.where(take, jnp.abs(value), jnp.nan),
        "hvps_crosscheck": jnp.where(take, hvps, 0),
        "certified": (converged & ~larger).astype(jnp.int32),
    }
    if settings.max_basis:  # thick restarts of the bounded basis, the cross-check's included
        guard["restarts"] = eig.restarts + jnp.where(take, restarts, 0)
    return eig, guard
