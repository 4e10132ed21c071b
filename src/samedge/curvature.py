"""Curvature of a loss: exact Hessian-vector products, Lanczos, power iteration, alignment.

Operators act on flat vectors (a parameter pytree raveled with ``jax.flatten_util``), so the
eigen-solvers are plain linear algebra and can be checked against a dense ``jnp.linalg.eigh``.
Hessian-vector products are forward-over-reverse (``jax.jvp`` of ``jax.grad``): exact up to
floating point, never finite differences.

Lanczos is written here rather than taken from matfree or SciPy because a measurement must be
one compiled program that stops on a residual: ``matfree.decomp.tridiag_sym`` runs a fixed number
of matvecs per compiled function and SciPy's ``eigsh`` crosses to the host at every matvec. The
implementation below is checked against dense ``eigh`` and against matfree in the tests.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = [
    "Eigen",
    "flat_hvp",
    "lanczos",
    "krylov_workspace",
    "basis_rows",
    "power_iteration",
    "alignment",
    "dense_hessian",
]

Matvec = Callable[[jax.Array], jax.Array]


class Eigen(NamedTuple):
    """Eigenpairs found by an iterative solver.

    values: (k,) eigenvalue estimates, sorted by decreasing ``|value|`` (``which="LM"``) or value.
    vectors: (k, n) unit eigenvector estimates.
    residuals: (k,) relative residuals ``||A v - value v|| / |value|``.
    num_matvecs: () int, matrix-vector products spent.
    top_value: () the largest algebraic Ritz value of the same Krylov space (:func:`lanczos` only).
    top_residual: () its relative residual (converged only when <= the tolerance).
    workspace: the basis buffer after the run, when one was passed in (:func:`krylov_workspace`): hand it
      to the next run.
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    num_matvecs: jax.Array
    top_value: jax.Array | None = None
    top_residual: jax.Array | None = None
    workspace: jax.Array | None = None


def flat_hvp(loss_fn: Callable, params) -> tuple[Matvec, int]:
    """Exact Hessian-vector product of ``loss_fn`` at ``params`` on flat vectors.

    Returns ``(matvec, n)`` where ``matvec(v) = H v`` for ``v`` of shape ``(n,)``.
    """
    flat, unravel = ravel_pytree(params)
    grad_fn = jax.grad(loss_fn)

    def matvec(v):
        tangent = unravel(v.astype(flat.dtype))
        return ravel_pytree(jax.jvp(grad_fn, (params,), (tangent,))[1])[0]

    return matvec, flat.shape[0]


def dense_hessian(loss_fn: Callable, params) -> jax.Array:
    """The full ``(n, n)`` Hessian of ``loss_fn`` at ``params`` (for tests and tiny models)."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda x: loss_fn(unravel(x)))(flat)


_BLOCK = 8  # basis rows per Gram-Schmidt block: cost grows with the rows in use, not max_iters


def _orthogonalise(w, basis, j):
    # One pass of classical Gram-Schmidt against the stored vectors, after the three-term
    # recurrence has already removed the two large components (together the two passes of "twice
    # is enough"), and only over the blocks that hold rows 0..j: the pass is memory-bound, so
    # touching the unused (zero) rows of a max_iters-sized basis would cost as much as an HVP.
    # basis: (rows, n) with rows a multiple of _BLOCK; rows > j are zero and contribute nothing.
    def one_block(b, w):
        rows = jax.lax.dynamic_slice_in_dim(basis, b * _BLOCK, _BLOCK)  # (_BLOCK, n)
        return w - rows.T @ (rows @ w)

    return jax.lax.fori_loop(0, j // _BLOCK + 1, one_block, w)


class _Krylov(NamedTuple):
    """The state of a Lanczos run: ``j`` matvecs done, the basis and the tridiagonal coefficients."""

    j: jax.Array  # () int
    basis: jax.Array  # (rows, n); rows 0..j hold the Lanczos vectors, the rest are zero
    alphas: jax.Array  # (m,) diagonal of T
    betas: jax.Array  # (m,) off-diagonal of T; betas[j] is the residual coefficient after step j


def _ritz(krylov: _Krylov, j):
    """Eigen-decomposition of the leading ``(j+1) x (j+1)`` block of T inside an ``m x m`` array.

    The zero padding adds exact zero eigenvalues whose eigenvectors live on the padding; they are
    told apart by where their mass sits. Returns ``theta (m,)``, ``s (m, m)`` and ``live (m,)``
    (True for the Ritz pairs of the real block), and the absolute residual norms ``|beta_j s_j|``,
    which equal ``||A y - theta y||`` for the Ritz vector ``y`` (no matvec needed).
    """
    m = krylov.alphas.shape[0]
    idx = jnp.arange(m)
    live_rows = idx <= j
    off = jnp.where(idx[:-1] < j, krylov.betas[:-1], 0.0)
    t = jnp.diag(jnp.where(live_rows, krylov.alphas, 0.0)) + jnp.diag(off, 1) + jnp.diag(off, -1)
    theta, s = jnp.linalg.eigh(t)
    live = jnp.sum(jnp.where(live_rows[:, None], s**2, 0.0), axis=0) > 0.5
    abs_resid = jnp.abs(krylov.betas[j] * s[j])
    return theta, s, live, abs_resid


def basis_rows(max_iters: int) -> int:
    """Rows of the Krylov basis a Lanczos run of ``max_iters`` matvecs stores: ``max_iters + 1``
    rounded up to whole Gram-Schmidt blocks; the first dimension of a ``workspace``.

    >>> basis_rows(64)
    72
    """
    return -(-(max_iters + 1) // _BLOCK) * _BLOCK


def krylov_workspace(n: int, max_iters: int = 64, dtype=jnp.float32) -> jax.Array:
    """A buffer for the Krylov basis of Lanczos runs of at most ``max_iters`` matvecs on ``(n,)``
    vectors, to pass as ``lanczos(..., workspace=...)`` and hand from run to run.

    A run's basis is ``basis_rows(max_iters) x n`` floats (96 MB for 64 matvecs on 335k
    parameters). Allocated afresh in every call of a compiled measurement, that memory comes from
    the operating system each time (a buffer that large is mapped, not pooled), and its page faults
    cost about as much as two HVPs; carried between calls and donated (``jax.jit(...,
    donate_argnums=...)``), the same pages are reused in place. Its contents never matter.

    >>> krylov_workspace(5, max_iters=10).shape
    (16, 5)
    """
    return jnp.zeros((basis_rows(max_iters), n), dtype)


def _run_lanczos(matvec: Matvec, v0: jax.Array, m: int, stop: Callable[[_Krylov, jax.Array], jax.Array],
                 basis: jax.Array | None = None) -> _Krylov:
    """Lanczos with full reorthogonalisation until ``stop(krylov, j)`` holds after matvec ``j + 1``,
    ``m`` matvecs are spent, or the Krylov space is invariant. One ``lax.while_loop``.

    ``basis``: the buffer the Krylov basis is built in (any contents, at least ``basis_rows(m)``
    rows, a multiple of the block), or ``None`` for a fresh one. Its rows are never read before they
    are written: block 0 is cleared at the start and step ``j`` clears row ``j + _BLOCK``, so every
    row of a block is zero or a Lanczos vector by the time :func:`_orthogonalise` (which reads whole
    blocks) reaches it.
    """
    n = v0.shape[0]
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps
    rows = basis_rows(m)
    if basis is None:
        basis = jnp.zeros((rows, n), dtype)
    elif basis.shape[0] < rows or basis.shape[0] % _BLOCK or basis.shape[1:] != (n,) or basis.dtype != dtype:
        raise ValueError(f"workspace of shape {basis.shape} and dtype {basis.dtype}: need ({rows} or more rows, "
                         f"a multiple of {_BLOCK}, {n}) of {dtype} for {m} matvecs")
    last_row = basis.shape[0] - 1

    def cond(state):
        krylov, done = state
        return (krylov.j < m) & ~done

    def body(state):
        (j, basis, alphas, betas), _ = state
        q = basis[j]
        w = matvec(q)
        alpha = jnp.vdot(q, w)
        beta_prev = jnp.where(j > 0, betas[jnp.maximum(j - 1, 0)], 0.0)
        w = w - alpha * q - beta_prev * basis[jnp.maximum(j - 1, 0)]  # three-term recurrence
        w = _orthogonalise(w, basis, j)
        beta = jnp.linalg.norm(w)
        alphas = alphas.at[j].set(alpha)
        betas = betas.at[j].set(beta)
        invariant = beta <= 10 * eps * jnp.maximum(jnp.abs(alpha), 1.0)
        basis = basis.at[j + 1].set(jnp.where(invariant, 0.0, w / jnp.where(invariant, 1.0, beta)))
        # then clear the row a block ahead (after the write, so that XLA updates the basis in place
        # rather than copying it; past the end nothing is cleared)
        ahead = jnp.minimum(j + _BLOCK, last_row)
        basis = basis.at[ahead].set(jnp.where(j + _BLOCK <= last_row, 0.0, basis[ahead]))
        krylov = _Krylov(j + 1, basis, alphas, betas)
        return krylov, invariant | stop(krylov, j)

    start = jnp.zeros((_BLOCK, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    basis = jax.lax.dynamic_update_slice_in_dim(basis, start, 0, axis=0)
    zeros = jnp.zeros((m,), dtype)
    krylov, _ = jax.lax.while_loop(cond, body, (_Krylov(jnp.asarray(0), basis, zeros, zeros), jnp.asarray(False)))
    return krylov


def _ritz_vectors(krylov: _Krylov, s_k: jax.Array) -> jax.Array:
    """``(k, n)`` unit Ritz vectors from the ``(m, k)`` eigenvectors of T after ``krylov.j`` matvecs.

    Only basis rows ``0 .. j-1`` carry the Ritz vectors, so only their blocks are read (like
    :func:`_orthogonalise`: the product is memory-bound, and the whole basis of a 64-step run on a
    335k-parameter model is 86 MB against ~10 MB for a typical warm-started run).
    """
    rows, n = krylov.basis.shape
    last = krylov.j - 1  # the last live row
    live = jnp.arange(s_k.shape[0]) <= last
    s_pad = jnp.zeros((rows, s_k.shape[1]), s_k.dtype).at[: s_k.shape[0]].set(jnp.where(live[:, None], s_k, 0.0))

    def one_block(b, acc):
        basis_b = jax.lax.dynamic_slice_in_dim(krylov.basis, b * _BLOCK, _BLOCK)  # (_BLOCK, n)
        s_b = jax.lax.dynamic_slice_in_dim(s_pad, b * _BLOCK, _BLOCK)  # (_BLOCK, k)
        return acc + s_b.T @ basis_b

    zeros = jnp.zeros((s_k.shape[1], n), krylov.basis.dtype)
    vectors = jax.lax.fori_loop(0, jnp.maximum(last, 0) // _BLOCK + 1, one_block, zeros)
    eps = jnp.finfo(vectors.dtype).eps
    return vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=1, keepdims=True), eps)


def lanczos(
    matvec: Matvec,
    v0: jax.Array,
    *,
    k: int = 1,
    max_iters: int = 64,
    tol: float | Callable[[jax.Array], jax.Array] = 1e-3,
    which: str = "LM",
    min_iters: int = 1,
    workspace: jax.Array | None = None,
) -> Eigen:
    """Top-``k`` eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Runs until every one of the ``k`` selected Ritz pairs has relative residual
    ``||A y - theta y|| / |theta| <= tol`` or ``max_iters`` matvecs are spent (or the Krylov space
    is invariant). The residual of a Ritz pair is ``|beta_j s_j|`` (the last Lanczos coefficient
    times the last component of the pair's eigenvector in the tridiagonal matrix), so the stopping
    test costs no matvec. Everything is one ``lax.while_loop``: jit it and it compiles once.

    Args:
      matvec: ``v -> A v`` on vectors of shape ``(n,)``.
      v0: ``(n,)`` start vector, e.g. the previous top eigenvector (warm start); need not be unit.
      k: number of eigenpairs.
      max_iters: most matvecs; also the size of the stored basis.
      tol: relative residual at which a Ritz pair counts as converged; or a function of the ``(k,)``
        selected Ritz values giving each its tolerance (e.g. loose unless the value exceeds a bound).
      which: ``"LM"`` (largest magnitude: the operator norm comes first) or ``"LA"`` (largest value).
      min_iters: matvecs spent at least before the residual may stop the run. A warm start close to
        an eigenvector meets the tolerance within 2-3 matvecs even when a larger eigenvalue exists
        that the start nearly lacks; a few more Krylov steps let its component grow (on a diagonal
        test operator with eigenvalues 11 and 10 above a bulk in [-0.5, 2], started on the
        eigenvector of 10 plus 1% noise, 8 steps find 11 at n = 2,000 and at n = 200,000).
      workspace: a buffer to build the Krylov basis in (:func:`krylov_workspace`; any contents), returned
        in :attr:`Eigen.workspace`; ``None``: a fresh one each call.

    Returns:
      :class:`Eigen`, with the largest algebraic Ritz value and its residual besides the top k.

    >>> d = jnp.array([3.0, -5.0, 1.0, 0.5])
    >>> e = lanczos(lambda v: d * v, jnp.ones(4), k=1, tol=1e-6)
    >>> round(float(e.values[0]), 5), round(float(e.top_value), 5)
    (-5.0, 3.0)
    """
    if which not in ("LM", "LA"):
        raise ValueError(f"which must be 'LM' or 'LA', got {which!r}")
    if not 1 <= k <= max_iters:
        raise ValueError(f"need 1 <= k <= max_iters, got k={k}, max_iters={max_iters}")
    m = min(max_iters, v0.shape[0])
    k = min(k, m)
    eps = jnp.finfo(v0.dtype).eps

    def top(krylov, j):
        theta, s, live, abs_resid = _ritz(krylov, j)
        key = jnp.where(live, jnp.abs(theta) if which == "LM" else theta, -jnp.inf)
        order = jnp.argsort(-key)[:k]
        return theta[order], s[:, order], abs_resid[order] / jnp.maximum(jnp.abs(theta[order]), eps)

    def stop(krylov, j):
        theta, _, resid = top(krylov, j)
        return (j + 1 >= max(k, min(min_iters, m))) & jnp.all(resid <= (tol(theta) if callable(tol) else tol))

    krylov = _run_lanczos(matvec, v0, m, stop, workspace)
    theta, s_k, resid = top(krylov, krylov.j - 1)
    all_theta, _, live, abs_resid = _ritz(krylov, krylov.j - 1)
    i_top = jnp.argmax(jnp.where(live, all_theta, -jnp.inf))
    top_value = all_theta[i_top]
    top_resid = abs_resid[i_top] / jnp.maximum(jnp.abs(top_value), eps)
    return Eigen(theta, _ritz_vectors(krylov, s_k), resid, krylov.j, top_value, top_resid,
                 None if workspace is None else krylov.basis)


def power_iteration(
    matvec: Matvec, v0: jax.Array, *, max_iters: int = 100, tol: float = 1e-3
) -> Eigen:
    """The baseline: power iteration, stopped when successive estimates change by less than ``tol``.

    Finds the eigenvalue of largest magnitude (k = 1). Each iteration is one matvec; the Rayleigh
    quotient ``v . A v`` is the estimate and the residual is computed from the same product.
    """
    v0 = v0 / jnp.linalg.norm(v0)

    def cond(state):
        i, _, _, _, change = state
        return (i < max_iters) & (change > tol)

    def body(state):
        i, v, lam, _, _ = state
        w = matvec(v)
        new_lam = jnp.vdot(v, w)
        resid = jnp.linalg.norm(w - new_lam * v) / jnp.abs(new_lam)
        change = jnp.abs(new_lam - lam) / jnp.abs(new_lam)
        return i + 1, w / jnp.linalg.norm(w), new_lam, resid, change

    init = (jnp.asarray(0), v0, jnp.asarray(0.0, v0.dtype), jnp.asarray(jnp.inf, v0.dtype),
            jnp.asarray(jnp.inf, v0.dtype))
    i, v, lam, resid, _ = jax.lax.while_loop(cond, body, init)
    return Eigen(lam[None], v[None], resid[None], i)


def alignment(g: jax.Array, v: jax.Array) -> jax.Array:
    """``|<g, v>| / (||g|| ||v||)``, 0 when either vector is zero."""
    denom = jnp.linalg.norm(g) * jnp.linalg.norm(v)
    return jnp.where(denom > 0, jnp.abs(jnp.vdot(g, v)) / jnp.where(denom > 0, denom, 1.0), 0.0)


# --- Adaptive tracking: every eigenvalue above a threshold ---------------------------------------


class Outliers(NamedTuple):
    """The eigenvalues above a threshold, found by :func:`lanczos_above`.

    values: (k_max,) the ``count`` largest Ritz values above the threshold, decreasing; NaN beyond.
    vectors: (k_max, n) their unit Ritz vectors; zero rows beyond ``count``.
    residuals: (k_max,) relative residuals; NaN beyond ``count``.
    count: () int, how many eigenvalues lie above the threshold (at most ``k_max``).
    num_matvecs: () int, matrix-vector products spent.
    workspace: the basis buffer after the run, when one was passed in.
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    count: jax.Array
    num_matvecs: jax.Array
    workspace: jax.Array | None = None


def lanczos_above(
    matvec: Matvec,
    v0: jax.Array,
    threshold,
    *,
    k_max: int = 10,
    max_iters: int = 96,
    min_iters: int = 12,
    tol: float = 1e-3,
    workspace: jax.Array | None = None,
) -> Outliers:
    """Every eigenvalue above ``threshold`` (up to ``k_max`` of them) by Lanczos, growing k as needed.

    Lanczos with full reorthogonalisation from ``v0`` (warm start: the previous vectors summed,
    plus some noise). After each matvec the Ritz values above ``threshold`` are counted; the run
    stops once (after at least ``min_iters`` matvecs) each of them has relative residual
    ``<= tol`` and the next Ritz value is certified below the threshold: ``theta + |beta s| <
    threshold``, where ``|beta s|`` is its residual norm, which bounds its distance to an
    eigenvalue. ``k_max`` counted pairs, ``max_iters`` matvecs or an invariant Krylov space also stop it.
    Like every Krylov method it can miss an eigenvalue the start vector (nearly) lacks; the noise
    in the start guards against that. ``threshold`` may be traced (e.g. a fraction of the edge).
    ``workspace``: as in :func:`lanczos`.
    """
    if not 1 <= k_max <= max_iters:
        raise ValueError(f"need 1 <= k_max <= max_iters, got k_max={k_max}, max_iters={max_iters}")
    m = min(max_iters, v0.shape[0])
    k_max = min(k_max, m)
    eps = jnp.finfo(v0.dtype).eps

    def status(krylov, j):
        theta, s, live, abs_resid = _ritz(krylov, j)
        key = jnp.where(live, theta, -jnp.inf)
        order = jnp.argsort(-key)[: min(k_max + 1, m)]  # the (k_max + 1) largest live Ritz values
        theta = jnp.where(jnp.isfinite(key[order]), theta[order], -jnp.inf)  # (k_max + 1,)
        s, abs_resid = s[:, order], abs_resid[order]
        above = theta[:k_max] > threshold  # (k_max,) a prefix, theta being sorted
        count = jnp.sum(above)
        rel = abs_resid[:k_max] / jnp.maximum(jnp.abs(theta[:k_max]), eps)
        converged = jnp.all(jnp.where(above, rel <= tol, True))
        if theta.shape[0] > k_max:  # the next candidate must be certified below the threshold
            below = (count == k_max) | (jnp.take(theta, count) + jnp.take(abs_resid, count) < threshold)
        else:
            below = jnp.asarray(True)
        return theta, s, rel, count, converged & below

    krylov = _run_lanczos(matvec, v0, m, lambda kr, j: (j + 1 >= min_iters) & status(kr, j)[-1], workspace)
    theta, s, rel, count, _ = status(krylov, krylov.j - 1)
    keep = jnp.arange(k_max) < count  # (k_max,)
    vectors = _ritz_vectors(krylov, s[:, :k_max])  # (k_max, n)
    return Outliers(
        jnp.where(keep, theta[:k_max], jnp.nan),
        jnp.where(keep[:, None], vectors, 0.0),
        jnp.where(keep, rel, jnp.nan),
        count,
        krylov.j,
        None if workspace is None else krylov.basis,
    )
