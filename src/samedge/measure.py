"""The measurement: an optimizer's curvature against its edge, callable from any JAX training loop.

:func:`measurement` returns, in the manner of optax, a pair of pure functions with a NamedTuple
state: ``init(params, key) -> MeasureState`` and ``measure(params, batch, state, key, opt_state)
-> (row, state)``. At a point ``w`` and a batch it computes

- ``loss``, ``grad_norm`` = ||g||, ``g = grad L(w)``, and ``acc`` when an accuracy function is given;
- the top-k eigenpairs of the Hessian ``H = grad^2 L(w)`` by Lanczos on exact (forward-over-reverse)
  Hessian-vector products, warm-started from the previous call's vectors (carried in the state):
  ``lambda_1..k`` (signed, by decreasing magnitude), ``resid_1..k`` = ||H v - lambda v|| / |lambda|,
  ``hvps``, and ``lambda_max`` = |lambda_1|, the operator norm ||H||_2 (the paper's quantity);
- ``edge``: the optimizer's edge of stability at ``g`` and its state (absent when the optimizer
  has no known edge), ``gd_edge`` = 2/eta (when eta is one number), ``ratio`` = lambda_max / edge;
- ``align_grad`` = |cos(g, v_1)| and ``align_sam_grad`` = |cos(d, v_1)| with ``d`` the gradient the
  step descends along (the ascent point's gradient for SAM);
- optionally ``lambda_max_sam`` (with ``resid_sam``, ``hvps_sam``) at the optimizer's ascent point,
  and every eigenvalue above ``track_fraction`` x edge (``n_outliers``, ``outlier_i`` ...).

``measure`` is jitted once per settings: calling it again with new parameters, batches, states or
keys of the same shapes does not recompile. Random draws come only from the ``key`` passed in.

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

__all__ = ["MeasureSettings", "MeasureState", "Measurement", "measurement", "initial_vectors"]


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
    """

    topk: int = 1
    tol: float = 1e-3
    max_hvps: int = 64
    track_fraction: float = 0.0
    track_max: int = 12
    ascent_point: bool = False

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
        if not 0 <= self.track_fraction < 1:
            raise ConfigError(f"track_fraction must be in [0, 1), got {self.track_fraction!r}")
        return self


class MeasureState(NamedTuple):
    """What one measurement hands the next: ``vectors``, ``(num_vectors, n)`` eigenvector estimates
    (the warm start of the next Lanczos runs)."""

    vectors: jax.Array


class Measurement(NamedTuple):
    """``init(params, key) -> MeasureState`` and ``measure(params, batch, state, key, opt_state=None)
    -> (row, MeasureState)``; see :func:`measurement`."""

    init: Callable[[Any, jax.Array], MeasureState]
    measure: Callable[..., tuple[dict, MeasureState]]
    settings: MeasureSettings


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
                accuracy_fn: Callable | None = None) -> Measurement:
    """The measurement of ``optimizer``'s curvature and edge on ``loss_fn``.

    Args:
      loss_fn: ``(params, batch) -> scalar``; params a pytree of float32 or float64 arrays.
      optimizer: a :class:`samedge.steps.Optimizer` (from :func:`samedge.optimizers.build`, or your
        own around any optax base): gives the edge, 2/eta, the descent gradient and the ascent point.
      settings: :class:`MeasureSettings` (default: top-1, tolerance 1e-3, at most 64 HVPs).
      accuracy_fn: ``(params, batch) -> scalar`` reported as ``acc``, or ``None``.

    Returns:
      A :class:`Measurement`. ``init(params, key)`` draws random unit start vectors.
      ``measure(params, batch, state, key, opt_state=None)`` returns the row (a dict of scalar
      arrays, see the module docstring) and the new state; ``opt_state`` is what the optimizer's
      edge reads besides the gradient (``None`` is fine for the built-in optimizers). Lanczos' warm
      start is the previous vectors summed plus 1% of a random unit vector drawn from ``key``.
    """
    settings = (settings or MeasureSettings()).validate()
    k = settings.topk
    has_edge = optimizer.edge is not None
    has_lr = optimizer.lr is not None
    at_ascent = settings.ascent_point and optimizer.ascent_point is not None
    grad_fn = jax.value_and_grad(loss_fn)

    def top_eigen(point, batch, v0, k):
        matvec, _ = curvature.flat_hvp(lambda p: loss_fn(p, batch), point)
        return curvature.lanczos(matvec, v0, k=k, max_iters=settings.max_hvps, tol=settings.tol)

    def measure(params, batch, state, key, opt_state):
        vectors = state.vectors
        loss, grad = grad_fn(params, batch)
        g_flat = ravel_pytree(grad)[0]
        grad_norm = global_norm(grad)
        # Warm start: the previous eigenvectors together, plus a small random part so that the
        # Krylov space is never trapped in an invariant subspace.
        noise = jax.random.normal(key, vectors.shape[1:])
        v0 = vectors.sum(0) + 0.01 * noise / jnp.linalg.norm(noise)
        eig = top_eigen(params, batch, v0.astype(g_flat.dtype), k)
        lambda_max = jnp.abs(eig.values[0])
        descent = ravel_pytree(optimizer.gradient_at(params, grad, lambda p: grad_fn(p, batch)))[0]
        row = {"loss": loss, "grad_norm": grad_norm, "lambda_max": lambda_max}
        edge = None
        if has_edge:
            edge = jnp.asarray(optimizer.edge(grad, opt_state), loss.dtype)
            row["edge"] = edge
        if has_lr:
            row["gd_edge"] = jnp.asarray(edges.gd_edge(optimizer.lr), loss.dtype)
        if has_edge:
            row["ratio"] = lambda_max / edge
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
        if at_ascent:
            sam_eig = top_eigen(optimizer.ascent_point(params, grad), batch, eig.vectors[0], 1)
            row["lambda_max_sam"] = jnp.abs(sam_eig.values[0])
            row["resid_sam"] = sam_eig.residuals[0]
            row["hvps_sam"] = sam_eig.num_matvecs
        new_vectors = eig.vectors
        if settings.track_fraction > 0 and has_edge:
            row_t, tracked = _track_outliers(loss_fn, settings, params, batch, vectors[k:], edge,
                                             jax.random.fold_in(key, 1))
            row |= row_t
            new_vectors = jnp.concatenate([eig.vectors, tracked.astype(eig.vectors.dtype)])
        elif settings.track_fraction > 0:
            new_vectors = jnp.concatenate([eig.vectors, vectors[k:]])
        return row, MeasureState(new_vectors)

    compiled = jax.jit(measure)
    checked: set = set()

    def measure_call(params, batch, state: MeasureState, key, opt_state=None):
        signature = (jax.tree.structure(params), tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params)))
        if signature not in checked:  # once per parameter structure: a trace, no compute
            checks.float_params(params)
            checks.scalar_loss(loss_fn, params, batch)
            checked.add(signature)
        return compiled(params, batch, state, key, opt_state)

    def init(params, key) -> MeasureState:
        checks.float_params(params)
        return MeasureState(initial_vectors(params, settings.num_vectors, key))

    return Measurement(init, measure_call, settings)


def _track_outliers(loss_fn, settings: MeasureSettings, params, batch, previous, edge, key):
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
                                  max_iters=max(settings.max_hvps, settings.track_max + 8), tol=settings.tol)
    row = {"n_outliers": out.count, "hvps_outliers": out.num_matvecs}
    for i in range(settings.track_max):
        row[f"outlier_{i + 1}"] = out.values[i]
        row[f"outlier_resid_{i + 1}"] = out.residuals[i]
    return row, out.vectors
