"""The measurement at a check point, as one compiled program.

At a check point it computes, on the task's measurement batch: loss, accuracy, gradient and its
norm, the top-k Hessian eigenpairs by Lanczos (warm-started from the previous ones), the active
edge of the optimizer, 2/eta, their ratio, the alignments of the gradient and of the gradient the
step descends along with the top eigenvector, and for SAM (rho > 0) the top eigenvalue at the
ascent point ``w + rho g/||g||`` (``w + rho g`` for USAM). Each eigenvalue comes with its HVP count
and relative residual. With ``track_fraction > 0`` it also tracks every eigenvalue above that
fraction of the active edge (:func:`samedge.curvature.lanczos_above`, warm-started from the vectors
tracked at the previous check point), logging how many there are and the HVPs spent.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from samedge import curvature, edges
from samedge.config import RunConfig
from samedge.steps import Optimizer, ascent_point_fn, global_norm
from samedge.tasks import Task


def initial_vectors(params, k: int, seed: int) -> jax.Array:
    """``(k, n)`` random unit start vectors for the first measurement, from the run's seed."""
    n = ravel_pytree(params)[0].shape[0]
    v = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 0x5A3), (k, n))
    return v / jnp.linalg.norm(v, axis=1, keepdims=True)


def num_vectors(cfg: RunConfig) -> int:
    """Rows of the vectors carried between measurements: top-k, then the adaptively tracked ones."""
    return cfg.topk + (cfg.track_max if cfg.track_fraction > 0 else 0)


def make_measure(task: Task, optimizer: Optimizer, cfg: RunConfig) -> Callable:
    """A jitted ``measure(params, data, step, vectors) -> (row, vectors)``.

    ``vectors`` is the ``(k, n)`` previous eigenvector estimate: the start of the next Lanczos run.
    ``row`` is a dict of scalar arrays (see module docstring).
    """
    k = cfg.topk
    # The ascent point of SAM-type steps (normalised for sam/sam_momentum, w + rho g for usam).
    ascent_fn = ascent_point_fn(cfg.optimizer, cfg.rho)
    measure_sam = cfg.measure_sam_point and ascent_fn is not None and cfg.rho > 0

    def top_eigen(point, batch, v0, k):
        matvec, _ = curvature.flat_hvp(lambda p: task.loss_fn(p, batch), point)
        return curvature.lanczos(matvec, v0, k=k, max_iters=cfg.lanczos_max_iters, tol=cfg.lanczos_tol)

    def measure(params, data, step, vectors):
        batch = task.measure_batch_fn(data, step)
        grad_fn = jax.value_and_grad(task.loss_fn)
        loss, grad = grad_fn(params, batch)
        g_flat = ravel_pytree(grad)[0]
        grad_norm = global_norm(grad)
        # Warm start: the previous eigenvectors together, plus a small seeded random part so that
        # the Krylov space is never trapped in an invariant subspace.
        noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step), vectors.shape[1:])
        v0 = vectors.sum(0) + 0.01 * noise / jnp.linalg.norm(noise)
        eig = top_eigen(params, batch, v0.astype(g_flat.dtype), k)
        lambda_max = jnp.abs(eig.values[0])
        edge = optimizer.edge(grad_norm)
        descent = ravel_pytree(optimizer.gradient_at(params, grad, lambda p: grad_fn(p, batch)))[0]
        row = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lambda_max": lambda_max,
            "edge": edge,
            "gd_edge": jnp.asarray(edges.gd_edge(cfg.lr), loss.dtype),
            "ratio": lambda_max / edge,
            "align_grad": curvature.alignment(g_flat, eig.vectors[0]),
            "align_sam_grad": curvature.alignment(descent, eig.vectors[0]),
            "hvps": eig.num_matvecs,
        }
        if task.accuracy_fn is not None:
            row["acc"] = task.accuracy_fn(params, batch)
        for i in range(k):
            row[f"lambda_{i + 1}"] = eig.values[i]
            row[f"resid_{i + 1}"] = eig.residuals[i]
        if measure_sam:
            sam_eig = top_eigen(ascent_fn(params, grad), batch, eig.vectors[0], 1)
            row["lambda_max_sam"] = jnp.abs(sam_eig.values[0])
            row["resid_sam"] = sam_eig.residuals[0]
            row["hvps_sam"] = sam_eig.num_matvecs
        if cfg.track_fraction > 0:
            row_t, tracked = _track_outliers(task, cfg, params, batch, vectors[k:], edge, step)
            return row | row_t, jnp.concatenate([eig.vectors, tracked.astype(eig.vectors.dtype)])
        return row, eig.vectors

    return jax.jit(measure)


def _track_outliers(task: Task, cfg: RunConfig, params, batch, previous, edge, step):
    """Every eigenvalue above ``track_fraction * edge`` (see :func:`curvature.lanczos_above`).

    Warm start: the previously tracked vectors summed (zero rows for none) plus a seeded random part
    of one tenth their weight, so that new outliers enter the Krylov space. Row keys: ``n_outliers``,
    ``hvps_outliers`` (the matvec count), ``outlier_i`` and ``outlier_resid_i`` (NaN when not found).
    """
    matvec, _ = curvature.flat_hvp(lambda p: task.loss_fn(p, batch), params)
    noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), step), previous.shape[1:])
    start = previous.sum(0)  # (n,)
    scale = jnp.maximum(jnp.linalg.norm(start), 1.0)
    v0 = start + 0.1 * scale * noise / jnp.linalg.norm(noise)
    out = curvature.lanczos_above(matvec, v0.astype(previous.dtype), cfg.track_fraction * edge,
                                  k_max=cfg.track_max, max_iters=max(cfg.lanczos_max_iters, cfg.track_max + 8),
                                  tol=cfg.lanczos_tol)
    row = {"n_outliers": out.count, "hvps_outliers": out.num_matvecs}
    for i in range(cfg.track_max):
        row[f"outlier_{i + 1}"] = out.values[i]
        row[f"outlier_resid_{i + 1}"] = out.residuals[i]
    return row, out.vectors
