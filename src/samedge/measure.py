"""The measurement: an optimizer's curvature against its edge, callable from any JAX training loop.

:func:`measurement` returns, in the manner of optax, a pair of pure functions with a NamedTuple
state: ``init(params, key) -> MeasureState`` and ``measure(params, batch, state, key, opt_state)
-> (row, state)``. At a point ``w`` and a batch it computes

- ``loss``, ``grad_norm`` = ||g||, ``g = grad L(w)``, and ``acc`` when an accuracy function is given;
- the top-k eigenpairs of the Hessian ``H = grad^2 L(w)`` by Lanczos on exact (forward-over-reverse)
  Hessian-vector products, warm-started from the previous call's vectors (carried in the state):
  ``lambda_1..k`` (signed, by decreasing magnitude), ``resid_1..k`` = ||H v - lambda v|| / |lambda|,
  ``hvps``, and ``lambda_max`` = |lambda_1|, the operator norm ||H||_2 (the paper's quantity: the
  largest-magnitude eigenvalue, which a negative curvature can be); ``lambda_top`` (with
  ``resid_top``): the largest algebraic eigenvalue, from the same Krylov space;
- the guard (see :class:`MeasureSettings`): ``converged`` (1 when every reported pair met the
  tolerance within the HVP budget), ``crosscheck_lambda`` (|lambda| of a cold random-start Lanczos
  run stopped at ``crosscheck_tol``, a lower bound of lambda_max up to that tolerance, run on to
  ``tol`` when it is the larger; NaN when none was taken), ``hvps_crosscheck`` and ``certified`` (converged, and no larger
  eigenvalue found by the cross-check when one was taken);
- ``edge``: the optimizer's edge of stability at ``g`` and its state (absent when the optimizer
  has no known edge), ``gd_edge`` = 2/eta (when eta is one number), ``ratio`` = lambda_max / edge;
- ``align_grad`` = |cos(g, v_1)| and ``align_sam_grad`` = |cos(d, v_1)| with ``d`` the gradient the
  step descends along (the ascent point's gradient for SAM);
- optionally ``lambda_max_sam`` (with ``resid_sam``, ``hvps_sam``) at the optimizer's ascent point,
  and every eigenvalue above ``track_fraction`` x edge (``n_outliers``, ``outlier_i`` ...).

Why a guard. Lanczos stopped on a residual proves closeness to *an* eigenvalue, not to the largest:
a warm start that (nearly) lacks the new top direction, after the top eigenvectors exchanged
between two calls, can meet the tolerance on the old one within 2-3 HVPs. No Krylov method can rule
out an eigenvalue its start vector lacks; the guard makes a miss rare (a real random part in the
start, a minimum number of Krylov steps) and visible (a cold random-start cross-check whenever
lambda or the top vector jumps, and ``crosscheck_every`` calls after the last cold run at the
latest; a larger eigenvalue found
there is adopted, and the row is marked uncertified).

``measure`` is jitted once per settings: calling it again with new parameters, batches, states or
keys of the same shapes does not recompile. Random draws come only from the ``key`` passed in. Its
matrix products run at full float32 precision on accelerators (``jax.default_matmul_precision
("highest")``, scoped to the measurement; training keeps the default), and ``dtype="float64"``
measures in float64 (on CPU; needs ``jax.config.update("jax_enable_x64", True)``).

>>> import jax, jax.numpy as jnp
>>> from samedge import optimizers
>>> h = jnp.diag(jnp.array([3.0, 1.0, 0.5]))
>>> loss = lambda w, batch: 0.5 * w["x"] @ h @ w["x"]
>>> m = measurement(loss, optimizers.build("gd", 0.5))
>>> w = {"x": jnp.ones(3)}
>>> state = m.init(w, jax.random.PRNGKey(0))
>>> row, state = m.measure(w, None, state, jax.random.PRNGKey(1))
>>> round(float(row["lambda_max"]), 4), float(row["edge"]), round(float(row["ratio"]), 4)
(3.0, 4.0, 0.75)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from samedge import checks, curvature, edges
from samedge.steps import Optimizer, global_norm

__all__ = ["MeasureSettings", "MeasureState", "Measurement", "measurement", "initial_vectors", "calls_since_cold",
           "split_workspace"]


@dataclass(frozen=True)
class MeasureSettings:
    """What a measurement computes and how hard it tries.

    Attributes:
      topk: eigenpairs of the Hessian reported (``lambda_1..k``).
      tol: Lanczos stops when each of them has relative residual <= ``tol``.
      max_hvps: most Hessian-vector products one Lanczos run may spend (its basis size).
      track_fraction: 0 = off; else also every eigenvalue above this fraction of the edge.
      track_max: most eigenvalues tracked that way.
      ascent_point: also ``lambda_max_sam`` at the optimizer's ascent point (if it has one).
      min_hvps: Krylov steps spent at least before the residual may stop Lanczos (see
        :func:`samedge.curvature.lanczos`): 8 find a larger eigenvalue the warm start lacks on the
        constructed swap operator; the quick tasks spend 12-19 anyway.
      start_noise: weight of the random unit vector added to the (unit) warm start. It gives every
        direction a component of about ``start_noise / sqrt(n)`` for Lanczos to amplify; the
        warm start's own accuracy costs about one HVP more at 0.1 than at 0.01.
      crosscheck_every: a cold random-start Lanczos run once this many calls have passed since the
        last cold run (0: never), so that a miss lasts at most that many calls; also whenever
        lambda_max changes by more than ``jump`` relative, or the new top vector's |cos| with the
        previous one falls below ``align_jump`` (such a run restarts the count).
      crosscheck_tol: the residual at which the cold run stops. Its top Ritz value is a lower bound
        of the largest eigenvalue, so a value above ``lambda_max * (1 + 2 tol)`` proves a miss at
        any ``crosscheck_tol``; the looser it is, the smaller the miss it can overlook (about
        ``crosscheck_tol`` relative: at 1e-2 a miss of a few percent is found, one of 0.5% may
        not be). A cold run whose Ritz value passes that bound runs on to ``tol``. At 1e-2 a
        cold run costs 8-13 HVPs on the quick MNIST benchmark against 17-23 at 1e-3.
      jump, align_jump: the thresholds above.
      dtype: ``None`` (the parameters' own) or ``"float64"``.
      batch_sharpness: 0 = off; else at most this many fresh minibatches for the batch sharpness
        (:mod:`samedge.batch_sharpness`: mean and ratio-of-means of ``q_B``, the per-batch edge)
        and ``lambda_max_full``, the top eigenvalue of the full batch's Hessian (needs ``data``).
      batch_sharpness_rel_se: stop the batches once the relative standard error is this small.
    """

    topk: int = 1
    tol: float = 1e-3
    max_hvps: int = 64
    track_fraction: float = 0.0
    track_max: int = 12
    ascent_point: bool = False
    min_hvps: int = 8
    start_noise: float = 0.1
    crosscheck_every: int = 10
    crosscheck_tol: float = 1e-2
    jump: float = 0.25
    align_jump: float = 0.3
    dtype: str | None = None
    batch_sharpness: int = 0
    batch_sharpness_rel_se: float = 0.01

    @property
    def num_vectors(self) -> int:
        """Rows of the vectors carried between calls: top-k, then the adaptively tracked ones."""
        return self.topk + (self.track_max if self.track_fraction > 0 else 0)

    def validate(self) -> "MeasureSettings":
        from samedge.errors import ConfigError

        if not (isinstance(self.topk, int) and 1 <= self.topk <= self.max_hvps):
            raise ConfigError(f"topk must be an integer in [1, max_hvps={self.max_hvps}], got {self.topk!r}")
        if not self.tol > 0:
            raise ConfigError(f"tol must be > 0, got {self.tol!r}")
        if not self.crosscheck_tol > 0:
            raise ConfigError(f"crosscheck_tol must be > 0, got {self.crosscheck_tol!r}")
        if not 0 <= self.track_fraction < 1:
            raise ConfigError(f"track_fraction must be in [0, 1), got {self.track_fraction!r}")
        if not (isinstance(self.crosscheck_every, int) and self.crosscheck_every >= 0):
            raise ConfigError(f"crosscheck_every must be an integer >= 0, got {self.crosscheck_every!r}")
        if self.dtype not in (None, "float32", "float64"):
            raise ConfigError(f"the measurement dtype must be float32 or float64, got {self.dtype!r}")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ConfigError("a float64 measurement needs 64-bit JAX: jax.config.update('jax_enable_x64', True) "
                              "before anything else (the CLI does it for --measure-dtype float64)")
        return self


class MeasureState(NamedTuple):
    """What one measurement hands the next: ``vectors``, ``(num_vectors, n)`` eigenvector estimates
    (the warm start of the next Lanczos runs); ``count``, the calls since the last cold start (0
    before the first call, which starts from random vectors; 1 after it or after a cross-check:
    :func:`calls_since_cold` rebuilds it from a run's rows); ``lambda_prev``, the last lambda_max
    (NaN before the first): the guard's memory; ``workspace``, the buffer every
    Lanczos run of the measurement builds its Krylov basis in (:func:`samedge.curvature.krylov_workspace`;
    its contents carry nothing), handed from call to call so that a donating caller reuses its
    memory in place (``None``: each run allocates its own)."""

    vectors: jax.Array
    count: jax.Array | int = 0
    lambda_prev: jax.Array | float = float("nan")
    workspace: jax.Array | None = None


class Measurement(NamedTuple):
    """``init(params, key) -> MeasureState`` and ``measure(params, batch, state, key, opt_state=None)
    -> (row, MeasureState)``; see :func:`measurement`."""

    init: Callable[[Any, jax.Array], MeasureState]
    measure: Callable[..., tuple[dict, MeasureState]]
    settings: MeasureSettings


def split_workspace(state: MeasureState) -> tuple[MeasureState, jax.Array | None]:
    """``(state without its workspace, workspace)``, for a jitted call that donates the workspace
    alone (``donate_argnums``) and leaves the rest of the state the caller's.

    An old state passed again has a workspace already donated to the call that returned a newer
    one: it gets a fresh buffer of the same shape (the contents never matter).

    Args:
      state: a :class:`MeasureState`.

    Returns:
      The state with ``workspace=None``, and the workspace to pass (and donate) beside it.

    >>> rest, ws = split_workspace(MeasureState(jnp.ones((1, 3)), workspace=jnp.zeros((8, 3))))
    >>> rest.workspace is None, ws.shape
    (True, (8, 3))
    """
    ws = state.workspace
    if isinstance(ws, jax.Array) and not isinstance(ws, jax.core.Tracer) and ws.is_deleted():
        ws = jnp.zeros(ws.shape, ws.dtype)
    return state._replace(workspace=None), ws


def calls_since_cold(rows) -> int:
    """:attr:`MeasureState.count` after the measurements ``rows`` (dicts with ``hvps_crosscheck``;
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


def initial_vectors(params, k: int, key) -> jax.Array:
    """``(k, n)`` random unit start vectors for the first measurement.

    Args:
      params: the parameter pytree (gives ``n`` and the dtype).
      k: number of vectors.
      key: a PRNG key.

    Returns:
      A ``(k, n)`` array of unit rows.

    >>> initial_vectors({"a": jnp.zeros(3)}, 2, jax.random.PRNGKey(0)).shape
    (2, 3)
    """
    flat = ravel_pytree(params)[0]
    v = jax.random.normal(key, (k, flat.shape[0]))
    return (v / jnp.linalg.norm(v, axis=1, keepdims=True)).astype(flat.dtype)


def measurement(loss_fn: Callable, optimizer: Optimizer, settings: MeasureSettings | None = None, *,
                accuracy_fn: Callable | None = None, batch_fn: Callable | None = None,
                full_batch_fn: Callable | None = None) -> Measurement:
    """The measurement of ``optimizer``'s curvature and edge on ``loss_fn``.

    Args:
      loss_fn: ``(params, batch) -> scalar``; params a pytree of float32 or float64 arrays.
      optimizer: a :class:`samedge.steps.Optimizer` (from :func:`samedge.optimizers.build`, or your
        own around any optax base): gives the edge, 2/eta, the descent gradient and the ascent point.
      settings: :class:`MeasureSettings` (default: top-1, tolerance 1e-3, at most 64 HVPs).
      accuracy_fn: ``(params, batch) -> scalar`` reported as ``acc``, or ``None``.
      batch_fn: ``(data, step) -> batch``, the training scheme's minibatches (batch sharpness).
      full_batch_fn: ``data -> batch``, the full batch (``lambda_max_full``).

    Returns:
      A :class:`Measurement`. ``init(params, key)`` draws random unit start vectors.
      ``measure(params, batch, state, key, opt_state=None)`` returns the row (a dict of scalar
      arrays, see the module docstring) and the new state; ``opt_state`` is what the optimizer's
      edge reads besides the gradient (``None`` is fine for the built-in optimizers). Lanczos' warm
      start is the previous vectors summed plus a random unit vector of weight ``start_noise``
      drawn from ``key``. The state's ``workspace`` is donated to the call and comes back in the
      new state (the same memory): keep using the returned state; an old one passed again gets a
      fresh workspace. Inside your own ``jax.jit``, donate the workspace there to get the same reuse
      (:func:`split_workspace`).
    """
    settings = (settings or MeasureSettings()).validate()
    k = settings.topk
    has_edge = optimizer.edge is not None
    has_lr = optimizer.lr is not None
    at_ascent = settings.ascent_point and optimizer.ascent_point is not None
    has_pre = optimizer.preconditioner is not None
    has_lin = optimizer.linear_step is not None
    has_full = settings.batch_sharpness > 0 and full_batch_fn is not None
    if settings.batch_sharpness and batch_fn is None:
        from samedge.errors import ConfigError

        raise ConfigError("batch sharpness needs the training scheme's batch_fn (measurement(..., batch_fn=...))")
    # warm-start rows after the top-k: preconditioned, linear step, full batch
    n_extra = int(has_pre) + int(has_lin) + int(has_full)
    tracked_from = k + n_extra
    # The loss (and accuracy) as jitted units: the measurement differentiates the loss at four
    # places (gradient, the HVPs of Lanczos and of the cross-check, the ascent gradient); jitted,
    # its Python (a flax model's apply) is traced once instead of at each, which halves the
    # tracing and lowering of the measurement's program (0.6 s -> 0.25 s on quick MNIST: a run
    # with its program in the persistent compilation cache pays them at its first measurement).
    loss_fn = jax.jit(loss_fn)
    accuracy_fn = None if accuracy_fn is None else jax.jit(accuracy_fn)
    grad_fn = jax.value_and_grad(loss_fn)

    def top_eigen(point, batch, v0, k, ws, tol=settings.tol):
        matvec, _ = curvature.flat_hvp(lambda p: loss_fn(p, batch), point)
        return curvature.lanczos(matvec, v0, k=k, max_iters=settings.max_hvps, tol=tol,
                                 min_iters=settings.min_hvps, workspace=ws)

    def cast(tree):
        if settings.dtype is None:
            return tree
        dtype = jnp.dtype(settings.dtype)
        return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def measure(params, batch, state, key, opt_state, data):
        with jax.default_matmul_precision("highest"):  # full float32 products on accelerators
            return _measure(cast(params), cast(batch), state, key, opt_state, data)

    def _measure(params, batch, state, key, opt_state, data):
        vectors = state.vectors
        loss, grad = grad_fn(params, batch)
        g_flat = ravel_pytree(grad)[0]
        grad_norm = global_norm(grad)
        # Warm start: the previous eigenvectors together (unit), plus a random part of weight
        # start_noise, so that every direction has a component for Lanczos to amplify.
        noise = jax.random.normal(key, vectors.shape[1:])
        warm = vectors[:k].sum(0) + vectors[tracked_from:].sum(0)
        v0 = warm / jnp.linalg.norm(warm) + settings.start_noise * noise / jnp.linalg.norm(noise)
        eig, guard = _main_and_guard(params, batch, v0.astype(g_flat.dtype), state, key)
        ws = eig.workspace
        # calls since the last cold run, this one included: 1 after a cross-check (or the first call)
        since_cold = jnp.where(guard["hvps_crosscheck"] > 0, 1, state.count + 1).astype(jnp.asarray(state.count).dtype)
        lambda_max = jnp.abs(eig.values[0])
        descent = ravel_pytree(optimizer.gradient_at(params, grad, lambda p: grad_fn(p, batch), opt_state))[0]
        row = {"loss": loss, "grad_norm": grad_norm, "lambda_max": lambda_max}
        edge = None
        if has_edge:
            edge = jnp.asarray(optimizer.edge(grad, opt_state), loss.dtype)
            row["edge"] = edge
        if has_lr:
            row["gd_edge"] = jnp.asarray(edges.gd_edge(optimizer.lr), loss.dtype)
        extra_rows, extra_vectors, ws = _adaptive(params, batch, grad, vectors, key, opt_state, g_flat.dtype, ws)
        row |= extra_rows
        if settings.batch_sharpness:
            stochastic_rows, full_vectors, ws = _stochastic(params, vectors, key, opt_state, data, g_flat.dtype, ws)
            row |= stochastic_rows
            extra_vectors = extra_vectors + full_vectors
        # the optimizer's own sharpness: lambda_max(P^-1 H) for an adaptive one, else lambda_max(H)
        sharpness = row.get("precond_sharpness", lambda_max)
        if has_edge:
            row["ratio"] = sharpness / edge
            if has_pre:
                row["precond_edge"], row["precond_ratio"] = edge, row["ratio"]
        row |= {
            "align_grad": curvature.alignment(g_flat, eig.vectors[0]),
            "align_sam_grad": curvature.alignment(descent, eig.vectors[0]),
            "hvps": eig.num_matvecs,
        }
        if accuracy_fn is not None:
            row["acc"] = accuracy_fn(params, batch)
        for i in range(k):
            row[f"lambda_{i + 1}"] = eig.values[i]
            row[f"resid_{i + 1}"] = eig.residuals[i]
        row |= guard | {"lambda_top": eig.top_value, "resid_top": eig.top_residual}
        if at_ascent:
            sam_eig = top_eigen(optimizer.ascent_point(params, grad, opt_state), batch, eig.vectors[0], 1, ws)
            ws = sam_eig.workspace
            row["lambda_max_sam"] = jnp.abs(sam_eig.values[0])
            row["resid_sam"] = sam_eig.residuals[0]
            row["hvps_sam"] = sam_eig.num_matvecs
        new_vectors = jnp.concatenate([eig.vectors.astype(vectors.dtype)] + extra_vectors)
        if settings.track_fraction > 0 and has_edge:
            row_t, tracked, ws = _track_outliers(loss_fn, settings, params, batch, vectors[tracked_from:], edge,
                                                 jax.random.fold_in(key, 1), ws)
            row |= row_t
            new_vectors = jnp.concatenate([new_vectors, tracked.astype(vectors.dtype)])
        elif settings.track_fraction > 0:
            new_vectors = jnp.concatenate([new_vectors, vectors[tracked_from:]])
        return row, MeasureState(new_vectors, since_cold, lambda_max.astype(jnp.result_type(float)), ws)

    def _adaptive(params, batch, grad, vectors, key, opt_state, dtype, ws):
        """The preconditioned sharpness ``lambda_max(P^{-1/2} H P^{-1/2})`` (= that of ``P^{-1} H``) with
        ``P`` read from the optimizer state, and the linearised step's radius, each by a warm-started
        Lanczos run on HVPs composed with the diagonal scaling."""
        if not (has_pre or has_lin):
            return {}, [], ws
        if opt_state is None:
            from samedge.errors import ConfigError

            raise ConfigError(f"{optimizer.name}'s measurement reads its optimizer state: pass opt_state")
        hvp, _ = curvature.flat_hvp(lambda p: loss_fn(p, batch), params)
        row, out, i = {}, [], k

        def lanczos_from(matvec, v, salt, ws):
            noise = jax.random.normal(jax.random.fold_in(key, salt), v.shape)
            v0 = v / jnp.linalg.norm(v) + settings.start_noise * noise / jnp.linalg.norm(noise)
            return curvature.lanczos(matvec, v0.astype(dtype), k=1, max_iters=settings.max_hvps,
                                     tol=settings.tol, min_iters=settings.min_hvps, workspace=ws)

        if has_pre:
            s = 1.0 / jnp.sqrt(ravel_pytree(optimizer.preconditioner(opt_state, grad))[0])
            e = lanczos_from(lambda v: s * hvp(s * v), vectors[i], 3, ws)
            ws = e.workspace
            row |= {"precond_sharpness": jnp.abs(e.values[0]), "resid_precond": e.residuals[0],
                    "hvps_precond": e.num_matvecs}
            out.append(e.vectors[:1].astype(vectors.dtype))
            i += 1
        if has_lin:
            matvec, eta_eff = optimizer.linear_step(hvp, grad, opt_state)
            e = lanczos_from(matvec, vectors[i], 4, ws)
            ws = e.workspace
            mu = e.values[0]
            row |= {"step_radius": jnp.abs(1 - eta_eff * mu), "step_mu": mu, "resid_step": e.residuals[0],
                    "hvps_step": e.num_matvecs}
            out.append(e.vectors[:1].astype(vectors.dtype))
        return row, out, ws

    def _stochastic(params, vectors, key, opt_state, data, dtype, ws):
        """Batch sharpness over fresh minibatches and lambda_max of the full batch's Hessian."""
        from samedge import batch_sharpness

        if data is None:
            from samedge.errors import ConfigError

            raise ConfigError("batch sharpness draws fresh minibatches from the data: pass measure(..., data=...)")
        sample = batch_sharpness.from_batch_fn(batch_fn, data)
        euclidean = has_edge and not has_pre  # an adaptive edge bounds lambda(P^-1 H), not q_B
        row = batch_sharpness.estimate(
            loss_fn, params, lambda k: cast(sample(k)), jax.random.fold_in(key, 5),
            max_batches=settings.batch_sharpness, rel_se=settings.batch_sharpness_rel_se,
            min_batches=min(10, settings.batch_sharpness),
            edge_fn=(lambda g: optimizer.edge(g, opt_state)) if euclidean else None)
        if not has_full:
            return row, [], ws
        full = cast(full_batch_fn(data))
        i = k + int(has_pre) + int(has_lin)
        noise = jax.random.normal(jax.random.fold_in(key, 6), vectors.shape[1:])
        v0 = vectors[i] / jnp.linalg.norm(vectors[i]) + settings.start_noise * noise / jnp.linalg.norm(noise)
        e = top_eigen(params, full, v0.astype(dtype), 1, ws)
        row |= {"lambda_max_full": jnp.abs(e.values[0]), "resid_full": e.residuals[0], "hvps_full": e.num_matvecs}
        return row, [e.vectors[:1].astype(vectors.dtype)], e.workspace

    def _main_and_guard(params, batch, v0, state, key):
        """The warm-started run, the cross-check (when due) and the guard's columns; a larger
        eigenvalue the cross-check finds is adopted.

        Both runs are passes of one loop around one Lanczos program (pass 0 warm, pass 1 cold,
        taken only when due or after a jump), so the measurement's program holds its Lanczos loop
        once: it compiles, loads from the persistent cache and traces faster than with a second copy.
        """
        n, dtype = v0.shape[0], v0.dtype
        cold_v0 = jax.random.normal(jax.random.fold_in(key, 2), (n,), dtype)
        first = state.count == 0  # the first call starts from random vectors: itself a cold start
        every = settings.crosscheck_every
        due = (state.count >= every) if every else jnp.asarray(False)  # calls since the last cold run
        ws0 = state.workspace
        if ws0 is None:
            ws0 = curvature.krylov_workspace(n, settings.max_hvps, dtype)
        rank = jnp.arange(k)

        def one_pass(carry):
            p, ws, main, cold, take = carry
            is_cold = p == 1
            # the cold run is loose while its Ritz value stays at or below the bound (a value above it
            # is a larger eigenvalue: a proven miss, run on to the measurement's own tolerance); it
            # reports one pair, so the others' tolerance is infinite
            bound = jnp.where(is_cold, jnp.abs(main.values[0]) * (1 + 2 * settings.tol), jnp.inf)
            below = jnp.where(is_cold, settings.crosscheck_tol, settings.tol)

            def tol(theta):
                t = jnp.where(jnp.abs(theta) > bound, settings.tol, below)
                return jnp.where(is_cold & (rank > 0), jnp.inf, t)

            e = top_eigen(params, batch, jnp.where(is_cold, cold_v0, v0), k, ws, tol)
            fields = e._replace(workspace=None)
            main = jax.tree.map(lambda new, old: jnp.where(is_cold, old, new), fields, main)
            cold = jax.tree.map(lambda new, old: jnp.where(is_cold, new, old), fields, cold)
            lam = jnp.abs(e.values[0])
            align_prev = curvature.alignment(e.vectors[0], state.vectors[0].astype(dtype))
            jumped = (jnp.abs(lam / state.lambda_prev - 1) > settings.jump) | (align_prev < settings.align_jump)
            take = jnp.where(is_cold, take, ~first & (due | jumped))
            return p + 1, e.workspace, main, cold, take

        real = jnp.zeros((), dtype)
        zeros = curvature.Eigen(jnp.zeros((k,), dtype), jnp.zeros((k, n), dtype), jnp.zeros((k,), dtype),
                                jnp.zeros((), jnp.int32), real, real)
        _, ws, main, cold, take = jax.lax.while_loop(
            lambda c: (c[0] == 0) | ((c[0] == 1) & c[4]), one_pass,
            (jnp.asarray(0), ws0, zeros, zeros, jnp.asarray(False)))
        nan = jnp.asarray(jnp.nan, main.values.dtype)
        value = jnp.where(take, cold.values[0], nan)
        hvps = jnp.where(take, cold.num_matvecs, 0)
        larger = take & (jnp.abs(value) > jnp.abs(main.values[0]) * (1 + 2 * settings.tol))
        eig = main._replace(
            values=main.values.at[0].set(jnp.where(larger, value, main.values[0])),
            vectors=main.vectors.at[0].set(jnp.where(larger, cold.vectors[0], main.vectors[0])),
            residuals=main.residuals.at[0].set(jnp.where(larger, cold.residuals[0], main.residuals[0])),
            workspace=ws if state.workspace is not None else None,
        )
        converged = jnp.all(eig.residuals <= settings.tol)
        return eig, {
            "converged": converged.astype(jnp.int32),
            "crosscheck_lambda": jnp.abs(value),
            "hvps_crosscheck": hvps,
            "certified": (converged & ~larger).astype(jnp.int32),
        }

    # the most matvecs of any of the measurement's Lanczos runs: the workspace's size
    workspace_iters = _outlier_iters(settings) if settings.track_fraction > 0 else settings.max_hvps

    def measure_ws(params, batch, state, workspace, key, opt_state, data):
        return measure(params, batch, state._replace(workspace=workspace), key, opt_state, data)

    # the workspace is donated (reused in place); the rest of the state stays the caller's
    compiled = jax.jit(measure_ws, donate_argnums=3)
    checked: set = set()

    def measure_call(params, batch, state: MeasureState, key, opt_state=None, data=None):
        signature = (jax.tree.structure(params), tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params)))
        if signature not in checked:  # once per parameter structure: a trace, no compute
            checks.float_params(params)
            checks.scalar_loss(loss_fn, params, batch)
            checked.add(signature)
        rest, ws = split_workspace(state)
        return compiled(params, batch, rest, ws, key, opt_state, data)

    def init(params, key) -> MeasureState:
        checks.float_params(params)
        vectors = initial_vectors(cast(params), settings.num_vectors + n_extra, key)
        return MeasureState(vectors, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.nan, jnp.result_type(float)),
                            curvature.krylov_workspace(vectors.shape[1], workspace_iters, vectors.dtype))

    return Measurement(init, measure_call, settings)


def _track_outliers(loss_fn, settings: MeasureSettings, params, batch, previous, edge, key, ws=None):
    """Every eigenvalue above ``track_fraction * edge`` (see :func:`curvature.lanczos_above`).

    Warm start: the previously tracked vectors summed (zero rows for none) plus a random part of
    one tenth their weight, so that new outliers enter the Krylov space. Row keys: ``n_outliers``,
    ``hvps_outliers`` (the matvec count), ``outlier_i`` and ``outlier_resid_i`` (NaN when not found).
    """
    matvec, _ = curvature.flat_hvp(lambda p: loss_fn(p, batch), params)
    noise = jax.random.normal(key, previous.shape[1:])
    start = previous.sum(0)  # (n,)
    scale = jnp.maximum(jnp.linalg.norm(start), 1.0)
    v0 = start + 0.1 * scale * noise / jnp.linalg.norm(noise)
    out = curvature.lanczos_above(matvec, v0.astype(previous.dtype), settings.track_fraction * edge,
                                  k_max=settings.track_max,
                                  max_iters=_outlier_iters(settings), tol=settings.tol, workspace=ws)
    row = {"n_outliers": out.count, "hvps_outliers": out.num_matvecs}
    for i in range(settings.track_max):
        row[f"outlier_{i + 1}"] = out.values[i]
        row[f"outlier_resid_{i + 1}"] = out.residuals[i]
    return row, out.vectors, out.workspace


def _outlier_iters(settings: MeasureSettings) -> int:
    return max(settings.max_hvps, settings.track_max + 8)
