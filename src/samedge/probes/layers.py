"""Where in the network the sharpness lives: the Hessian's diagonal block of each layer.

The parameters fall into blocks ``b`` (one per module by default: a leaf's pytree path less its own
name, with Flax's top-level ``params`` dropped, so ``params/Dense_0/kernel`` and ``.../bias`` are
the block ``Dense_0``; or a grouping of your own, :func:`block_names`). For each block, with ``P_b``
the projection on its coordinates and ``H_bb = P_b H P_b`` the diagonal block of the Hessian:

- ``lambda_max/<b>`` = ``||H_bb||_2``, the largest-magnitude eigenvalue of the block (Lanczos on
  ``v -> P_b H P_b v`` from a start inside the block, so its Krylov space stays there): the
  sharpness the layer would have if every other layer were frozen. Cauchy's interlacing bounds
  it by the whole Hessian's: ``lambda_max/<b> <= lambda_max``;
- ``mass/<b>`` = ||P_b v_1||^2, the share of the top eigenvector ``v_1`` of ``H`` (the top-k
  probe's, already computed: no HVP) in the block; the shares sum to 1;

and ``resid_layers`` (the largest relative residual of the blocks' runs; converged when <= the
tolerance) and ``hvps_layers`` (their HVPs). Block names are reduced to letters, digits, ``_``,
``.`` and ``-``; the columns ``lambda_max/<b>`` group under ``lambda_max`` in TensorBoard.

Carry: one ``(1, n)`` row holding each block's previous top vector in its own coordinates (the
blocks are disjoint), the warm start of the next call (plus a random part of weight
``start_noise``, inside the block). Cost: one warm-started Lanczos run per block, each at least
``min_hvps`` (8) and at most ``max_hvps`` HVPs of the whole network (a block's HVP is a full one,
masked): about ``8-20 x B`` HVPs for ``B`` blocks (the quick MNIST MLP: 8 blocks). All the runs are
one Lanczos program in a loop over the blocks, in the measurement's workspace.

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers, MeasureSettings
>>> h = jnp.array([[3.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 5.0]])   # blocks a = (0, 1), b = (2,)
>>> flat = lambda w: jnp.concatenate([w["a"]["w"], w["b"]["w"]])
>>> loss = lambda w, batch: 0.5 * flat(w) @ h @ flat(w)
>>> w = {"a": {"w": jnp.ones(2)}, "b": {"w": jnp.ones(1)}}
>>> block_names(w)
['a', 'b']
>>> m = measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(tol=1e-6), probes=[layers()])
>>> row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> [round(float(row[k]), 4) for k in ("lambda_max/a", "lambda_max/b", "lambda_max")]   # 3, 5, 4 + sqrt 2
[3.0, 5.0, 5.4142]
>>> round(float(row["mass/a"]), 4), round(float(row["mass/b"]), 4)   # (1, 1 + sqrt 2) normalised
(0.1464, 0.8536)
"""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp

from samedge.probes import Context, Probe, top_eigen

__all__ = ["layers", "block_names", "block_of", "NAME"]

NAME = "layers"


def _part(key) -> str:
    """One pytree path entry as text: a dict key, an attribute, a sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def block_of(path, group: int | Callable | None = None) -> str:
    """The block a parameter leaf belongs to, from its pytree path.

    Args:
      path: the leaf's path (``jax.tree_util`` keys) or a tuple of strings.
      group: ``None``: the module, the path less its last entry (the leaf's own name); an int ``d``:
        the first ``d`` entries (coarser: ``1`` makes a ResNet's basic block one block); a callable:
        ``parts -> name`` on the path as a tuple of strings. A leading ``params`` (Flax's collection)
        is dropped first when more follows.

    Returns:
      The block's name, its parts joined by ``.`` and reduced to letters, digits, ``_``, ``.`` and
      ``-`` (``params`` for a bare array).

    >>> block_of(("params", "Dense_0", "kernel")), block_of(("params", "Block_1", "Conv_0", "kernel"), 1)
    ('Dense_0', 'Block_1')
    >>> block_of(("w1",)), block_of(("enc", "attn out", "w"), lambda parts: parts[1])
    ('w1', 'attn_out')
    """
    parts = tuple(p if isinstance(p, str) else _part(p) for p in path)
    if len(parts) > 1 and parts[0] == "params":
        parts = parts[1:]
    if callable(group):
        name = str(group(parts))
    elif group is None:
        name = ".".join(parts[:-1] or parts)
    else:
        name = ".".join(parts[: max(int(group), 1)])
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "params"


def _natural(name: str):
    """Sort key that puts ``Dense_2`` before ``Dense_10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", name)]


def _layout(params, group):
    """``(names, leaf_block, sizes)``: the blocks in natural order, each leaf's block index (in the
    order ``ravel_pytree`` lays the leaves out) and each leaf's size."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    of_leaf = [block_of(path, group) for path, _ in leaves]
    sizes = [int(jnp.size(leaf)) for _, leaf in leaves]
    names = sorted({b for b, s in zip(of_leaf, sizes) if s}, key=_natural)
    index = {b: i for i, b in enumerate(names)}
    return names, [index.get(b, 0) for b in of_leaf], sizes


def block_names(params, group: int | Callable | None = None) -> list[str]:
    """The blocks of ``params`` (:func:`block_of` on every leaf), in natural order (``Dense_2``
    before ``Dense_10``); leaves of one name are one block.

    Args:
      params: the parameter pytree (arrays or shapes).
      group: as in :func:`block_of`.

    Returns:
      The block names: the ``<b>`` of the ``lambda_max/<b>`` and ``mass/<b>`` columns.

    >>> import jax.numpy as jnp
    >>> k = jnp.ones((2, 2))
    >>> p = {"params": {"Dense_10": {"kernel": k}, "Dense_2": {"bias": jnp.ones(2), "kernel": k}}}
    >>> block_names(p), block_names(p, lambda parts: parts[-1])
    (['Dense_2', 'Dense_10'], ['bias', 'kernel'])
    """
    return _layout(params, group)[0]


def layers(settings=None, *, group: int | Callable | None = None) -> Probe:
    """The per-layer probe, named ``layers`` (see the module docstring).

    Args:
      settings: the measurement's :class:`~samedge.measure.MeasureSettings` (``None``: the Lanczos
        runs still use the measurement's settings; the workspace is then sized by the top-k probe's,
        which runs at the same ``max_hvps``).
      group: the blocks (:func:`block_of`): ``None`` one per module, an int the first that many path
        entries, or ``parts -> name``.

    Returns:
      The :class:`~samedge.probes.Probe` (one start row).

    Alone, on ``0.5 w'Hw`` with ``H = diag(4, 1)`` in the block ``a`` and ``2`` in ``b``: the blocks'
    top eigenvalues are 4 and 2.

    >>> import jax, jax.numpy as jnp
    >>> from samedge import measure, optimizers, probes
    >>> w = {"a": jnp.ones(2), "b": jnp.ones(1)}
    >>> loss = lambda w, batch: 2.0 * w["a"][0] ** 2 + 0.5 * w["a"][1] ** 2 + w["b"][0] ** 2
    >>> ctx = probes.context(loss, w, None, optimizers.build("gd", 0.1), measure.MeasureSettings(), jax.random.PRNGKey(0))
    >>> p = layers(group=lambda parts: parts[0])
    >>> columns, carry = p.measure(ctx, p.init(w, jnp.ones((1, 3)) / 3 ** 0.5), jax.random.PRNGKey(1))
    >>> round(float(columns["lambda_max/a"]), 4), round(float(columns["lambda_max/b"]), 4), carry.shape
    (4.0, 2.0, (1, 3))
    """

    def measure(ctx: Context, carry, key):
        names, leaf_block, sizes = _layout(ctx.params, group)
        dtype = ctx.flat_grad.dtype
        n = ctx.flat_grad.shape[0]
        # (n,) each coordinate's block, in ravel_pytree's layout, built in the program (no big constant)
        ids = jnp.concatenate([jnp.full((s,), b, jnp.int32) for b, s in zip(leaf_block, sizes) if s])
        noise = ctx.settings.start_noise
        count = len(names)

        def one(b, state):
            ws, vec, lam, res, hvps = state
            inside = ids == b
            mask = inside.astype(dtype)

            def start():  # the block's previous vector, unit, plus a random unit part inside the block
                c = mask * vec
                u = mask * jax.random.normal(jax.random.fold_in(key, b), (n,), dtype)
                cn, un = jnp.linalg.norm(c), jnp.linalg.norm(u)
                warm = c / jnp.where(cn > 0, cn, 1) + noise * u / un
                return jnp.where(cn > 0, warm, u / un)

            e = top_eigen(ctx, lambda v: mask * ctx.hvp(mask * v), start(), workspace=ws)
            return (e.workspace, jnp.where(inside, e.vectors[0], vec), lam.at[b].set(jnp.abs(e.values[0])),
                    res.at[b].set(e.residuals[0]), hvps.at[b].set(e.num_matvecs))

        zeros = jnp.zeros((count,), dtype)
        ws, vec, lam, res, hvps = jax.lax.fori_loop(
            0, count, one, (ctx.workspace, carry[0].astype(dtype), zeros, zeros, jnp.zeros((count,), jnp.int32)))
        columns = {f"lambda_max/{name}": lam[i] for i, name in enumerate(names)}
        top = ctx.carries.get("topk")
        if top is not None:  # the top eigenvector's mass in each block: no HVP
            v1 = top.vectors[0].astype(dtype)
            share = jax.ops.segment_sum(v1 * v1, ids, num_segments=count) / (v1 @ v1)
            columns |= {f"mass/{name}": share[i] for i, name in enumerate(names)}
        columns |= {"resid_layers": jnp.max(res), "hvps_layers": jnp.sum(hvps)}
        new = vec[None].astype(carry.dtype)
        return (columns, new, ws) if ctx.workspace is not None else (columns, new)

    iters = settings.max_hvps if settings is not None else 0
    return Probe(NAME, lambda params, start: start, measure, rows=1, workspace_iters=iters)
