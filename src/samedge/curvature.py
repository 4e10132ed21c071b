"""Curvature of a loss: exact Hessian-vector products, Lanczos, power iteration, alignment.

Operators act on flat vectors (a parameter pytree raveled with ``jax.flatten_util``), so the
eigen-solvers are plain linear algebra and can be checked against a dense ``jnp.linalg.eigh``.
Hessian-vector products are forward-over-reverse (``jax.jvp`` of ``jax.grad``): exact up to
floating point, never finite differences.

Lanczos is written here rather than taken from matfree or SciPy because a measurement must be
one compiled program that stops on a residual: ``matfree.decomp.tridiag_sym`` runs a fixed number
of matvecs per compiled function and SciPy's ``eigsh`` crosses to the host at every matvec. The
implementation below is checked against dense ``eigh`` and against matfree in the tests. It keeps
its basis semi-orthogonal by partial reorthogonalisation (Simon, "The Lanczos algorithm with partial
reorthogonalization", Math. Comp. 1984; PROPACK's method): a Gram-Schmidt pass over the basis, the
memory-bound part of an iteration, runs only on the steps that need it.
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
    "basis_size",
    "power_iteration",
    "alignment",
    "dense_hessian",
]

Matvec = Callable[[jax.Array], jax.Array]


class Eigen(NamedTuple):
    """Eigenpairs found by an iterative solver.

    Attributes:
        values: (k,) eigenvalue estimates, sorted by decreasing ``|value|`` (``which="LM"``) or value.
        vectors: (k, n) unit eigenvector estimates.
        residuals: (k,) relative residuals ``||A v - value v|| / |value|``.
        num_matvecs: () int, matrix-vector products spent.
        top_value: () the largest algebraic Ritz value of the same Krylov space (:func:`lanczos` only).
        top_residual: () its relative residual (converged only when <= the tolerance).
        workspace: the basis buffer after the run, when one was passed in (:func:`krylov_workspace`): hand it
          to the next run.
        restarts: () int, thick restarts of a bounded basis (:func:`lanczos` only).
        reorths: () int, Gram-Schmidt passes over the whole basis (:func:`lanczos` only): every matvec's with
          ``reorth="full"``, only those the orthogonality estimate calls for with ``"partial"``.
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    num_matvecs: jax.Array
    top_value: jax.Array | None = None
    top_residual: jax.Array | None = None
    workspace: jax.Array | None = None
    restarts: jax.Array | None = None
    reorths: jax.Array | None = None


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


_BLOCK = 8  # basis rows per tile: a Gram-Schmidt pass touches the rows in use, not the whole buffer
_CHUNK = 1 << 20  # columns per tile: 8 x 2^20 floats (32 MB) is the largest scratch a pass over the basis makes


def _over_columns(n: int, width: int, fn: Callable, carry, gate=None):
    """``fn(start, width, carry)`` over the column chunks ``[start, start + width)`` of ``0..n``.

    The full chunks run in a ``fori_loop`` (``start`` traced) and a shorter last one with its own
    static width; a single chunk (``n <= width``) is one call with ``start = 0``, static. ``gate``: a
    traced bool; when False no chunk runs (a dynamic trip count of 0, so that a rarely needed pass,
    the restart's rotation, costs nothing on the other steps and needs no ``lax.cond``).
    """
    width = min(width, n)
    full, rest = divmod(n, width)
    if gate is None:
        if full == 1 and rest == 0:
            return fn(0, n, carry)
        carry = jax.lax.fori_loop(0, full, lambda c, x: fn(c * width, width, x), carry)
        return fn(full * width, rest, carry) if rest else carry
    on = gate.astype(jnp.int32)
    carry = jax.lax.fori_loop(0, on * full, lambda c, x: fn(c * width, width, x), carry)
    if rest:
        carry = jax.lax.fori_loop(0, on, lambda _, x: fn(full * width, rest, x), carry)
    return carry


def _row_block(rows: int, b, last):
    """Row block ``b`` of a basis of ``rows`` rows: its first row ``r0`` (the last block is shifted
    back to fit) and the mask of its rows that are new to this block and at most ``last``."""
    size = min(_BLOCK, rows)
    r0 = jnp.minimum(b * size, rows - size)
    idx = r0 + jnp.arange(size)
    return r0, (idx >= b * size) & (idx <= last)


def _tile(basis, r0, ok, start, width):
    """Rows ``r0..r0+size`` of ``basis`` in columns ``[start, start + width)``, rows not ``ok`` as 0
    (whatever they held: the rows past the run's last are never read, even NaN)."""
    size = ok.shape[0]
    at = (jnp.asarray(r0, jnp.int32), jnp.asarray(start, jnp.int32))
    return jnp.where(ok[:, None], jax.lax.dynamic_slice(basis, at, (size, width)), 0.0)


def _orthogonalise(w, basis, last):
    """``w`` minus its projection on basis rows ``0..last``: one pass of Gram-Schmidt, classical within
    a block of rows and block by block (each block sees ``w`` with the earlier blocks removed).

    It follows the three-term recurrence, which removes the two large components first (together
    the two passes of "twice is enough"). Memory-bound, it touches only the blocks that hold rows
    ``0..last`` and reads each tile (a block of rows in a chunk of columns) twice, once for the
    coefficients and once to subtract; the scratch is one tile, never a block of whole rows.
    """
    rows, n = basis.shape

    def block(b, w):
        r0, ok = _row_block(rows, b, last)

        def coefficients(start, width, c):
            return c + _tile(basis, r0, ok, start, width) @ jax.lax.dynamic_slice_in_dim(w, start, width)

        def subtract(start, width, w):
            part = jax.lax.dynamic_slice_in_dim(w, start, width) - _tile(basis, r0, ok, start, width).T @ c
            return jax.lax.dynamic_update_slice_in_dim(w, part, start, 0)

        c = _over_columns(n, _CHUNK, coefficients, jnp.zeros(ok.shape, w.dtype))
        return _over_columns(n, _CHUNK, subtract, w)

    return jax.lax.fori_loop(0, last // min(_BLOCK, rows) + 1, block, w)


def _combine(basis, coeffs, last):
    """``coeffs[:last+1].T @ basis[:last+1]``, ``(k, n)``: the vectors with coordinates ``coeffs (m, k)``
    (``m <= rows``) in basis rows ``0..last``, chunk by chunk of columns (scratch: one tile)."""
    rows, n = basis.shape
    size = min(_BLOCK, rows)
    pad = jnp.zeros((rows, coeffs.shape[1]), basis.dtype).at[: coeffs.shape[0]].set(coeffs[:rows])

    def chunk(start, width, out):
        def block(b, acc):
            r0, ok = _row_block(rows, b, last)
            c_b = jnp.where(ok[:, None], jax.lax.dynamic_slice_in_dim(pad, r0, size), 0.0)
            return acc + c_b.T @ _tile(basis, r0, ok, start, width)

        part = jax.lax.fori_loop(0, jnp.maximum(last, 0) // size + 1, block,
                                 jnp.zeros((coeffs.shape[1], width), basis.dtype))
        return jax.lax.dynamic_update_slice_in_dim(out, part, start, 1)

    return _over_columns(n, _CHUNK, chunk, jnp.zeros((coeffs.shape[1], n), basis.dtype))


def _rotate(basis, rotation, last, gate):
    """``basis[:last+1] <- rotation[:last+1].T @ basis[:last+1]`` in place, chunk by chunk of columns
    (scratch: ``rows x width`` with ``width`` chosen so that it is one tile's worth of floats), when
    ``gate``; rows past ``last`` are read as 0."""
    rows, n = basis.shape
    ok = jnp.arange(rows) <= last

    def chunk(start, width, basis):
        at = (jnp.asarray(0, jnp.int32), jnp.asarray(start, jnp.int32))
        part = jnp.where(ok[:, None], jax.lax.dynamic_slice(basis, at, (rows, width)), 0.0)
        return jax.lax.dynamic_update_slice(basis, rotation.T @ part, at)

    return _over_columns(n, max(1, _BLOCK * _CHUNK // rows), chunk, basis, gate=gate)


class _Krylov(NamedTuple):
    """The state of a (thick-restarted) Lanczos run.

    ``j`` columns of the projected matrix are built in this cycle (rows ``0..j-1`` of the basis hold
    their vectors, row ``j`` the next one); ``t`` is the projected matrix, dense, ``(mt + 1) x (mt +
    1)``: tridiagonal after a cold start, an arrowhead in its first ``keep + 1`` rows after a restart
    (:func:`_restart`), with ``t[j, j - 1]`` the residual coefficient ``beta``; ``arrow``, the column
    whose step follows a restart (-1: none); ``total`` matvecs, ``restarts`` and full Gram-Schmidt
    passes (``reorths``) so far.
    """

    j: jax.Array
    basis: jax.Array
    t: jax.Array
    arrow: jax.Array
    total: jax.Array
    restarts: jax.Array
    reorths: jax.Array


class _Ritz(NamedTuple):
    """Eigen-decomposition of the leading ``(j+1) x (j+1)`` block of ``t`` inside an ``mt x mt`` array.

    The zero padding adds exact zero eigenvalues whose eigenvectors live on the padding; they are
    told apart by where their mass sits (``live``). ``abs_resid`` is ``|beta s_j|``, which equals
    ``||A y - theta y||`` for the Ritz vector ``y`` (no matvec needed), after a restart too.
    """

    theta: jax.Array  # (mt,)
    s: jax.Array  # (mt, mt)
    live: jax.Array  # (mt,) bool
    abs_resid: jax.Array  # (mt,)


def _ritz(t, j) -> _Ritz:
    mt = t.shape[0] - 1
    live_rows = jnp.arange(mt) <= j
    theta, s = jnp.linalg.eigh(jnp.where(live_rows[:, None] & live_rows[None, :], t[:mt, :mt], 0.0))
    live = jnp.sum(jnp.where(live_rows[:, None], s**2, 0.0), axis=0) > 0.5
    return _Ritz(theta, s, live, jnp.abs(t[j + 1, j] * s[j]))


def basis_rows(max_iters: int) -> int:
    """Rows of the Krylov basis an unbounded Lanczos run of ``max_iters`` matvecs stores: ``max_iters +
    1`` rounded up to whole blocks of rows; the first dimension of its ``workspace``.

    >>> basis_rows(64)
    72
    """
    return -(-(max_iters + 1) // _BLOCK) * _BLOCK


def krylov_workspace(n: int, max_iters: int = 64, dtype=jnp.float32, max_basis: int | None = None) -> jax.Array:
    """A buffer for the Krylov basis of Lanczos runs of at most ``max_iters`` matvecs on ``(n,)``
    vectors (``max_basis`` rows when the basis is bounded), to pass as ``lanczos(..., workspace=...)``
    and hand from run to run.

    An unbounded run's basis is ``basis_rows(max_iters) x n`` floats (96 MB for 64 matvecs on 335k
    parameters); a bounded one's ``max_basis x n``. Allocated afresh in every call of a compiled
    measurement, that memory comes from the operating system each time (a buffer that large is
    mapped, not pooled), and its page faults cost about as much as two HVPs; carried between calls
    and donated (``jax.jit(..., donate_argnums=...)``), the same pages are reused in place. Its
    contents never matter.

    >>> krylov_workspace(5, max_iters=10).shape, krylov_workspace(5, max_iters=10, max_basis=6).shape
    ((16, 5), (6, 5))
    """
    return jnp.zeros((basis_size(max_iters, max_basis), n), dtype)


def basis_size(max_iters: int, max_basis: int | None = None) -> int:
    """Rows of the basis a Lanczos run stores: ``max_basis`` when it bounds the run (fewer than
    :func:`basis_rows` of ``max_iters``), else ``basis_rows(max_iters)``.

    >>> basis_size(64), basis_size(64, 16), basis_size(8, 16)
    (72, 16, 16)
    """
    return basis_rows(max_iters) if not max_basis else min(max_basis, basis_rows(max_iters))


def _keep_count(mt: int, want: int) -> int:
    """Ritz vectors a thick restart keeps of a full cycle of ``mt``: the ``want`` ones asked for and
    at least half the basis (more kept = fewer new directions per cycle, but a better start; half is
    the usual balance, Wu & Simon 2000), leaving at least 2 new rows per cycle."""
    return max(1, min(mt - 2, max(want + 2, mt // 2)))


def _restart(krylov: _Krylov, ritz: _Ritz, keep_score: Callable, keep: int, gate) -> _Krylov:
    """A thick restart when ``gate``: keep the ``keep`` Ritz pairs of highest ``keep_score(theta)``.

    With ``S`` their ``(mt, keep)`` eigenvectors of the projected matrix ``T``, ``theta`` their Ritz
    values and ``q`` the next Lanczos vector (row ``j``), the basis becomes ``[Q S, q]`` (rotated in
    place) and ``A Q S = Q S diag(theta) + q (beta S[j-1])^T`` makes the new projected matrix the
    arrowhead ``[[diag(theta), b], [b^T, .]]`` with ``b = beta S[j-1, :]``: the Lanczos relation holds
    again, and the next step (column ``keep``) removes ``b`` with a second Gram-Schmidt pass.
    """
    j, basis, t = krylov.j, krylov.basis, krylov.t
    rows = basis.shape[0]
    mt = t.shape[0] - 1
    score = jnp.where(ritz.live, keep_score(ritz.theta), -jnp.inf)
    order = jnp.argsort(-score)[:keep]
    s_keep = ritz.s[:, order]  # (mt, keep)
    b = t[j, j - 1] * s_keep[j - 1]  # (keep,) the arrow
    rotation = jnp.zeros((rows, rows), basis.dtype).at[:mt, :keep].set(s_keep).at[j, keep].set(1.0)
    basis = _rotate(basis, rotation, j, gate)
    idx = jnp.arange(keep)
    arrowhead = (jnp.zeros_like(t).at[idx, idx].set(ritz.theta[order]).at[keep, idx].set(b).at[idx, keep].set(b))
    return krylov._replace(j=jnp.where(gate, keep, j), basis=basis, t=jnp.where(gate, arrowhead, t),
                           arrow=jnp.where(gate, keep, krylov.arrow),
                           restarts=krylov.restarts + gate.astype(krylov.restarts.dtype))


def _omega(prev: jax.Array, cur: jax.Array, t: jax.Array, j, beta, noise) -> jax.Array:
    """An estimate of ``|q_{j+1} . q_k|``, ``k = 0..j+1``, the orthogonality of the next Lanczos vector to
    the basis, from the estimates ``cur`` (for ``q_j``) and ``prev`` (``q_{j-1}``) and the projected
    matrix ``t`` alone (Simon 1984): no pass over the basis.

    Every basis vector satisfies ``A q_k = sum_i t[i, k] q_i`` up to rounding (three terms after a cold
    start; for a Ritz vector kept by a thick restart, ``theta_k q_k`` plus the arrow's ``b_k q_keep``),
    and the new one ``beta_{j+1} q_{j+1} = A q_j - alpha_j q_j - beta_j q_{j-1}``; the symmetry of ``A``
    then gives, for ``k < j``,

        beta_{j+1} omega_{j+1,k} = (T omega_j)_k - alpha_j omega_{j,k} - beta_j omega_{j-1,k}

    plus the rounding of one step, modelled as ``noise = eps ||A||`` with the sign of the sum (so that
    it never cancels); ``omega_{j+1,j}`` is that rounding alone (the three-term recurrence keeps
    neighbours orthogonal) and ``omega_{j+1,j+1} = 1``. ``beta``: ``beta_{j+1}``, the norm of the new
    vector before it is normalised. Arrays of length ``mt + 1``, zero past ``j + 1``; ``t`` holds
    ``alpha_j`` and not yet ``beta_{j+1}``.
    """
    k = jnp.arange(cur.shape[0])
    total = t @ cur - t[j, j] * cur - t[j, jnp.maximum(j - 1, 0)] * jnp.where(j > 0, prev, 0.0)
    safe = jnp.where(beta > 0, beta, 1.0)
    new = (total + jnp.where(total >= 0, noise, -noise)) / safe
    return jnp.where(k < j, new, jnp.where(k == j, noise / safe, jnp.where(k == j + 1, 1.0, 0.0)))


def _run_lanczos(matvec: Matvec, v0: jax.Array, m: int, stop: Callable[[_Ritz, jax.Array, jax.Array], jax.Array],
                 basis: jax.Array | None = None, *, max_basis: int | None = None,
                 keep_score: Callable | None = None, want: int = 1, reorth: str = "partial") -> _Krylov:
    """Lanczos with reorthogonalisation until ``stop(ritz, j, total)`` holds after a matvec, ``m``
    matvecs are spent, or the Krylov space is invariant. One ``lax.while_loop``.

    ``basis``: the buffer the Krylov basis is built in (any contents; at least :func:`basis_size`
    rows), or ``None`` for a fresh one. Rows past the current one are never read (their tiles are
    masked), so nothing needs clearing. ``max_basis``: when fewer rows than the ``m + 1`` an
    unbounded run needs, each time the basis is full the run restarts thick (:func:`_restart`),
    keeping the ``_keep_count`` Ritz pairs of highest ``keep_score(theta)``, the ``want`` wanted
    among them. ``reorth``: ``"full"``, a Gram-Schmidt pass over the basis after every matvec;
    ``"partial"``, only when the estimate :func:`_omega` of the new vector's orthogonality exceeds
    ``sqrt(eps)``, and then at that step and the next (Simon 1984: semi-orthogonality keeps the
    projected matrix exact to rounding, so the Ritz values, the residuals and the stopping test are
    those of full reorthogonalisation up to ``eps ||A||``). A bounded basis also passes on the step
    that fills it (the vector a restart keeps is then orthogonal to rounding) and, twice, on the step
    after a restart (the arrow's components); the estimate starts afresh there.
    """
    if reorth not in ("partial", "full"):
        raise ValueError(f"reorth must be 'partial' or 'full', got {reorth!r}")
    n = v0.shape[0]
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps
    rows = basis_size(m, max_basis)
    if basis is None:
        basis = jnp.zeros((rows, n), dtype)
    elif basis.shape[0] < rows or basis.shape[1:] != (n,) or basis.dtype != dtype:
        raise ValueError(f"workspace of shape {basis.shape} and dtype {basis.dtype}: need ({rows} or more rows, "
                         f"{n}) of {dtype} for {m} matvecs" + (f" in {max_basis} rows" if max_basis else ""))
    rows = basis.shape[0] if not max_basis else rows
    mt = min(m, rows - 1)  # columns of the projected matrix a cycle builds
    bounded = mt < m  # a cycle can fill before the budget is spent: restarts compiled in
    if bounded and keep_score is None:
        raise ValueError("a bounded basis needs keep_score")
    keep = _keep_count(mt, want) if bounded else 0
    if bounded and mt < want + 3:
        raise ValueError(f"a basis of {rows} rows is too small for {want} wanted Ritz pairs: need at least {want + 4}")
    partial = reorth == "partial"
    level = jnp.sqrt(eps)  # semi-orthogonality

    def cond(state):
        krylov, done, _ = state
        return (krylov.total < m) & ~done

    def body(state):
        krylov, _, (prev, cur, force) = state
        j, basis, t = krylov.j, krylov.basis, krylov.t
        q = basis[j]
        w = matvec(q)
        alpha = jnp.vdot(q, w)
        beta_prev = jnp.where(j > 0, t[j, jnp.maximum(j - 1, 0)], 0.0)
        w = w - alpha * q - beta_prev * basis[jnp.maximum(j - 1, 0)]  # three-term recurrence
        t = t.at[j, j].set(alpha)
        older = jnp.arange(mt + 1) < j  # the rows the estimate tracks
        if partial:
            # ||A|| from the projected matrix's rows (Gershgorin), for the rounding of one step
            norm_a = jnp.max(jnp.sum(jnp.abs(t), axis=1))
            new = _omega(prev, cur, t, j, jnp.linalg.norm(w), eps * norm_a)
            again = force | (jnp.max(jnp.where(older, jnp.abs(new), 0.0)) > level)
            if bounded:  # the step after a restart (the arrow) and the one that fills the basis
                again = again | (j == krylov.arrow) | (j + 1 == mt)
        else:
            again = jnp.asarray(True)
        # after a restart the arrow's components are removed by a second pass
        passes = again.astype(jnp.int32) + (j == krylov.arrow).astype(jnp.int32)
        w = jax.lax.fori_loop(0, passes, lambda _, w: _orthogonalise(w, basis, j), w)
        beta = jnp.linalg.norm(w)
        t = t.at[j + 1, j].set(beta).at[j, j + 1].set(beta)
        invariant = beta <= 10 * eps * jnp.maximum(jnp.abs(alpha), 1.0)
        basis = basis.at[j + 1].set(jnp.where(invariant, 0.0, w / jnp.where(invariant, 1.0, beta)))
        krylov = krylov._replace(j=j + 1, basis=basis, t=t, total=krylov.total + 1,
                                 reorths=krylov.reorths + passes.astype(krylov.reorths.dtype))
        if partial:  # after a pass the new vector is orthogonal to rounding: its estimate starts afresh
            prev, cur, force = cur, jnp.where(again & older, eps, new), again & ~force  # then one more pass (Simon)
        ritz = _ritz(t, j)
        done = invariant | stop(ritz, j, krylov.total)
        if bounded:
            gate = (j + 1 == mt) & ~done & (krylov.total < m)
            krylov = _restart(krylov, ritz, keep_score, keep, gate)
            if partial:  # the kept vector q_keep was orthogonalised when it was made; the step after
                # the restart passes twice, so the estimate it would use does not matter
                idx = jnp.arange(cur.shape[0])
                fresh = jnp.where(idx < keep, eps, jnp.where(idx == keep, 1.0, 0.0)).astype(cur.dtype)
                prev, cur = jnp.where(gate, jnp.zeros_like(prev), prev), jnp.where(gate, fresh, cur)
                force = force & ~gate
        return krylov, done, (prev, cur, force)

    basis = basis.at[0].set(v0 / jnp.linalg.norm(v0))
    zero = jnp.asarray(0, jnp.int32)  # counters int32 with or without x64: callers carry them in loops
    init = _Krylov(zero, basis, jnp.zeros((mt + 1, mt + 1), dtype), jnp.asarray(-1, jnp.int32), zero, zero, zero)
    omega0 = jnp.zeros((mt + 1,), dtype).at[0].set(1.0)
    krylov, _, _ = jax.lax.while_loop(cond, body, (init, jnp.asarray(False), (jnp.zeros_like(omega0), omega0,
                                                                               jnp.asarray(False))))
    return krylov


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
    max_basis: int | None = None,
    reorth: str = "partial",
) -> Eigen:
    """Top-``k`` eigenpairs of a symmetric operator by Lanczos with partial reorthogonalisation,
    restarted thick when its basis is bounded.

    Runs until every one of the ``k`` selected Ritz pairs has relative residual
    ``||A y - theta y|| / |theta| <= tol`` or ``max_iters`` matvecs are spent (or the Krylov space
    is invariant). The residual of a Ritz pair is ``|beta_j s_j|`` (the last Lanczos coefficient
    times the last component of the pair's eigenvector in the projected matrix), so the stopping
    test costs no matvec. Everything is one ``lax.while_loop``: jit it and it compiles once.

    With ``max_basis`` rows (fewer than ``max_iters + 1``), a full basis whose pairs have not
    converged is compressed to its best Ritz vectors (about half of it: the ``k`` wanted by ``which``,
    the largest algebraic one and the next ones in that order) plus the next Lanczos vector, and the
    run goes on (thick restart, Wu & Simon 2000): memory ``max_basis x n`` floats whatever the
    matvecs; the Krylov space after a restart is no longer the full one, so it may need more matvecs.

    The basis is kept semi-orthogonal (every ``|q_i . q_k| <= sqrt(eps)``): a cheap recurrence on the
    projected matrix estimates how far the next Lanczos vector has drifted from the basis (Simon 1984),
    and a Gram-Schmidt pass over the basis runs only when it says so (``reorth="partial"``). That is
    enough for the Ritz values and residuals of full reorthogonalisation, to rounding, and skips the
    pass, memory-bound and ~15% of an HVP on a 335k-parameter MLP, on most steps of a short run.

    Args:
      matvec: ``v -> A v`` on vectors of shape ``(n,)``.
      v0: ``(n,)`` start vector, e.g. the previous top eigenvector (warm start); need not be unit.
      k: number of eigenpairs.
      max_iters: most matvecs (unbounded: also the size of the stored basis).
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
      max_basis: most rows of the basis (``None`` or 0: ``max_iters + 1``, no restart); at least ``k + 5``.
      reorth: ``"partial"`` (the default) or ``"full"`` (a Gram-Schmidt pass after every matvec).

    Returns:
      :class:`Eigen`, with the largest algebraic Ritz value and its residual besides the top k, the
      restarts and the Gram-Schmidt passes.

    >>> d = jnp.array([3.0, -5.0, 1.0, 0.5])
    >>> e = lanczos(lambda v: d * v, jnp.ones(4), k=1, tol=1e-6)
    >>> round(float(e.values[0]), 5), round(float(e.top_value), 5)
    (-5.0, 3.0)
    >>> d = jnp.linspace(0.0, 1.0, 200) ** 4
    >>> e = lanczos(lambda v: d * v, jnp.ones(200), tol=1e-6, max_iters=200, max_basis=8)
    >>> round(float(e.values[0]), 5), int(e.restarts) > 0
    (1.0, True)
    """
    if which not in ("LM", "LA"):
        raise ValueError(f"which must be 'LM' or 'LA', got {which!r}")
    if not 1 <= k <= max_iters:
        raise ValueError(f"need 1 <= k <= max_iters, got k={k}, max_iters={max_iters}")
    m = min(max_iters, v0.shape[0])
    k = min(k, m)
    eps = jnp.finfo(v0.dtype).eps
    score = (lambda theta: jnp.abs(theta)) if which == "LM" else (lambda theta: theta)

    def top(ritz):
        key = jnp.where(ritz.live, score(ritz.theta), -jnp.inf)
        order = jnp.argsort(-key)[:k]
        theta = ritz.theta[order]
        return theta, ritz.s[:, order], ritz.abs_resid[order] / jnp.maximum(jnp.abs(theta), eps)

    def stop(ritz, j, total):
        theta, _, resid = top(ritz)
        return (total >= max(k, min(min_iters, m))) & jnp.all(resid <= (tol(theta) if callable(tol) else tol))

    def keep_score(theta):  # the wanted by ``which`` first, and the largest algebraic (``top_value``) kept
        return jnp.where(jnp.arange(theta.shape[0]) == jnp.argmax(theta), jnp.inf, score(theta))

    krylov = _run_lanczos(matvec, v0, m, stop, workspace, max_basis=max_basis, keep_score=keep_score, want=k + 1,
                          reorth=reorth)
    ritz = _ritz(krylov.t, krylov.j - 1)
    theta, s_k, resid = top(ritz)
    i_top = jnp.argmax(jnp.where(ritz.live, ritz.theta, -jnp.inf))
    top_value = ritz.theta[i_top]
    top_resid = ritz.abs_resid[i_top] / jnp.maximum(jnp.abs(top_value), eps)
    return Eigen(theta, _ritz_vectors(krylov, s_k), resid, krylov.total, top_value, top_resid,
                 None if workspace is None else krylov.basis, krylov.restarts, krylov.reorths)


def _ritz_vectors(krylov: _Krylov, s_k: jax.Array) -> jax.Array:
    """``(k, n)`` unit Ritz vectors from the ``(mt, k)`` eigenvectors of the projected matrix.

    Only basis rows ``0 .. j-1`` carry the Ritz vectors, so only their blocks are read (the product
    is memory-bound, and the whole basis of a 64-step run on a 335k-parameter model is 86 MB against
    ~10 MB for a typical warm-started run).
    """
    last = krylov.j - 1  # the last live row
    live = jnp.arange(s_k.shape[0]) <= last
    vectors = _combine(krylov.basis, jnp.where(live[:, None], s_k, 0.0), last)
    eps = jnp.finfo(vectors.dtype).eps
    return vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=1, keepdims=True), eps)


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
    restarts: () int, thick restarts of a bounded basis.
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    count: jax.Array
    num_matvecs: jax.Array
    workspace: jax.Array | None = None
    restarts: jax.Array | None = None


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
    max_basis: int | None = None,
    reorth: str = "partial",
) -> Outliers:
    """Every eigenvalue above ``threshold`` (up to ``k_max`` of them) by Lanczos, growing k as needed.

    Lanczos with partial reorthogonalisation from ``v0`` (warm start: the previous vectors summed,
    plus some noise). After each matvec the Ritz values above ``threshold`` are counted; the run
    stops once (after at least ``min_iters`` matvecs) each of them has relative residual
    ``<= tol`` and the next Ritz value is certified below the threshold: ``theta + |beta s| <
    threshold``, where ``|beta s|`` is its residual norm, which bounds its distance to an
    eigenvalue. ``k_max`` counted pairs, ``max_iters`` matvecs or an invariant Krylov space also stop it.
    Like every Krylov method it can miss an eigenvalue the start vector (nearly) lacks; the noise
    in the start guards against that. ``threshold`` may be traced (e.g. a fraction of the edge).
    ``workspace``, ``max_basis``, ``reorth``: as in :func:`lanczos` (a bounded basis restarts thick keeping the
    largest Ritz values; it needs at least ``k_max + 5`` rows).

    >>> d = jnp.array([5.0, 4.0, 1.0, 0.5, 0.2, 0.1])
    >>> out = lanczos_above(lambda v: d * v, jnp.ones(6), 3.0, k_max=3, max_iters=6, min_iters=1, tol=1e-6)
    >>> int(out.count), [round(float(x), 4) for x in out.values[:2]]
    (2, [5.0, 4.0])
    """
    if not 1 <= k_max <= max_iters:
        raise ValueError(f"need 1 <= k_max <= max_iters, got k_max={k_max}, max_iters={max_iters}")
    m = min(max_iters, v0.shape[0])
    k_max = min(k_max, m)
    eps = jnp.finfo(v0.dtype).eps

    def status(ritz):
        key = jnp.where(ritz.live, ritz.theta, -jnp.inf)
        order = jnp.argsort(-key)[: min(k_max + 1, m)]  # the (k_max + 1) largest live Ritz values
        theta = jnp.where(jnp.isfinite(key[order]), ritz.theta[order], -jnp.inf)  # (k_max + 1,)
        s, abs_resid = ritz.s[:, order], ritz.abs_resid[order]
        above = theta[:k_max] > threshold  # (k_max,) a prefix, theta being sorted
        count = jnp.sum(above)
        rel = abs_resid[:k_max] / jnp.maximum(jnp.abs(theta[:k_max]), eps)
        converged = jnp.all(jnp.where(above, rel <= tol, True))
        if theta.shape[0] > k_max:  # the next candidate must be certified below the threshold
            below = (count == k_max) | (jnp.take(theta, count) + jnp.take(abs_resid, count) < threshold)
        else:
            below = jnp.asarray(True)
        return theta, s, rel, count, converged & below

    krylov = _run_lanczos(matvec, v0, m, lambda ritz, j, total: (total >= min_iters) & status(ritz)[-1], workspace,
                          max_basis=max_basis, keep_score=lambda theta: theta, want=min(k_max + 1, m), reorth=reorth)
    theta, s, rel, count, _ = status(_ritz(krylov.t, krylov.j - 1))
    keep = jnp.arange(k_max) < count  # (k_max,)
    vectors = _ritz_vectors(krylov, s[:, :k_max])  # (k_max, n)
    return Outliers(
        jnp.where(keep, theta[:k_max], jnp.nan),
        jnp.where(keep[:, None], vectors, 0.0),
        jnp.where(keep, rel, jnp.nan),
        count,
        krylov.total,
        None if workspace is None else krylov.basis,
        krylov.restarts,
    )
