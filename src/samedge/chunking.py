"""Data larger than memory: a loss over a batch computed in chunks of its examples, exactly.

:func:`chunked_mean` turns ``fn(params, batch)``, a mean over the batch's leading (example) axis,
into the same mean computed ``chunk_size`` examples at a time inside one compiled loop::

    L(w) = (1/N) sum_i l_i(w) = (1/N) [ sum_{j < m} c * L_j(w) + r * L_tail(w) ],

``L_j`` the mean over the ``j``-th run of ``c`` consecutive examples, ``m = N // c`` of them, and
``L_tail`` the mean over the last ``r = N - m c`` (an uneven last chunk, computed on its own: no
example dropped, none padded). Every quantity samedge derives from the loss by automatic
differentiation is then chunked as well, exactly (to rounding): the gradient of a step (both of
SAM's), the HVPs of every Lanczos run, the preconditioned operator, the full batch's Hessian, batch
sharpness's batches.

Why differentiate through the loop. Two ways give chunked gradients and HVPs: a loop of per-chunk
gradients (and, separately, of per-chunk HVPs), or reverse-mode through one loop of per-chunk losses.
The second keeps one definition (the loss) for every derivative samedge takes, including SAM's
gradient at the ascent point and forward-over-reverse HVPs, and with the chunk's body
rematerialised (``jax.checkpoint``) its backward pass stores per chunk only the loop's carry (a
scalar) and index, then recomputes the chunk's activations: peak memory is one chunk's activations
(and its tangents for an HVP) whatever ``N``. Without ``jax.checkpoint`` reverse-mode would keep
every chunk's residuals, as much as one pass. ``benchmarks/chunks.py`` measures both.

With several devices (``--devices``) the batch is split over them first and each pass takes
``chunk_size`` examples on every device: the batch ``(N, ...)`` is viewed as ``(d, N/d, ...)``
(its split axis first, so no example moves between devices) and chunked along the second axis.

>>> import jax, jax.numpy as jnp
>>> loss = lambda w, b: jnp.mean((b[:, 0] * w - b[:, 1]) ** 2)
>>> data = jnp.stack([jnp.arange(10.0), jnp.ones(10)], axis=1)   # 10 examples: chunks of 4, 4, 2
>>> one, chunked = jax.value_and_grad(loss)(0.5, data), jax.value_and_grad(chunked_mean(loss, 4))(0.5, data)
>>> [round(float(a), 4) for a in one] == [round(float(b), 4) for b in chunked]
True
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["chunked_mean", "chunked_with_state", "chunk_task", "for_run", "leading", "check_mean_loss"]


def leading(batch) -> int:
    """The size of the batch's leading (example) axis: that of its first leaf.

    >>> leading((jnp.zeros((5, 2)), jnp.zeros(5)))
    5
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("an empty batch has no examples to chunk")
    return int(jnp.shape(leaves[0])[0])


def chunked_mean(fn: Callable[[Any, Any], Any], chunk_size: int, *, groups: int = 1,
                 remat: bool = True) -> Callable[[Any, Any], Any]:
    """``fn``'s mean over a batch, computed ``chunk_size`` examples at a time (see the module docstring).

    Args:
      fn: ``(params, batch) -> scalar``, a mean over the batch's leading axis (every leaf of the
        batch has that axis).
      chunk_size: examples per pass (per group); 0 or at least the batch: one pass, ``fn`` itself.
      groups: the batch is ``groups`` equal blocks (the devices it is split over); each pass takes
        ``chunk_size`` examples of every block. A batch that does not divide into them is one pass.
      remat: recompute each chunk's activations in the backward pass (``jax.checkpoint``): memory of
        one chunk; ``False`` keeps every chunk's residuals (for measuring the difference).

    Returns:
      ``(params, batch) -> scalar``, equal to ``fn`` to rounding for a mean loss, jittable and
      differentiable to any order.

    >>> f = chunked_mean(lambda w, b: jnp.mean(w * b ** 2), 3)
    >>> round(float(f(2.0, jnp.arange(7.0))), 5)   # 2 * mean(0, 1, 4, ..., 36): chunks 3, 3, a tail of 1
    26.0
    """
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")

    def take(blocks, start, size):  # (groups * size, ...): the same run of examples from every block
        return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1).reshape(
            groups * size, *x.shape[2:]), blocks)

    def piece(params, blocks, start):
        return fn(params, take(blocks, start, chunk_size))

    # the slice is taken inside the rematerialised body: the backward pass keeps the loop index per
    # chunk, not the chunk (which would add up to a second copy of the data)
    body = jax.checkpoint(piece) if remat else piece

    def wrapped(params, batch):
        n = leading(batch)
        sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(batch)}
        if len(sizes) > 1:
            from samedge.errors import ConfigError

            raise ConfigError(f"--chunk-size {chunk_size}: every leaf of the batch must hold the examples on its "
                              f"leading axis; the leaves have {len(sizes)} different ones "
                              f"({', '.join(str(jnp.shape(x)) for x in jax.tree.leaves(batch))})")
        if chunk_size == 0 or n % groups or n // groups <= chunk_size:
            return fn(params, batch)
        per = n // groups  # examples of each group
        blocks = jax.tree.map(lambda x: x.reshape(groups, per, *x.shape[1:]), batch)
        m, r = divmod(per, chunk_size)

        def step(j, total):
            return total + body(params, blocks, j * chunk_size)

        total = jax.lax.fori_loop(1, m, step, body(params, blocks, 0)) * (chunk_size / per)
        if r:
            total = total + fn(params, take(blocks, m * chunk_size, r)) * (r / per)
        return total

    return wrapped


def chunked_with_state(fn: Callable, chunk_size: int, *, groups: int = 1) -> Callable:
    """A model-with-state step loss ``fn(params, state, batch, key) -> (loss, state)`` over chunks.

    Each chunk ``j`` is a pass from the same ``state`` with the key ``fold_in(key, j)`` (its own
    dropout draws): the loss is the chunks' mean weighted by their sizes, as in
    :func:`chunked_mean`, and so is the state returned (its floating-point leaves; the others come
    from the first chunk). For BatchNorm's running statistics ``s' = m s + (1 - m) b_j`` this is
    ``m s + (1 - m) mean_j b_j``: each chunk normalises with its own statistics (ghost batch norm)
    and the running statistics move toward their mean.

    Args:
      fn: ``(params, state, batch, key) -> (loss, state)``.
      chunk_size: examples per pass (per group); 0 or at least the batch: ``fn`` itself.
      groups: as in :func:`chunked_mean`.

    Returns:
      ``(params, state, batch, key) -> (loss, state)``, differentiable in ``params`` (``has_aux``).

    >>> f = lambda w, s, b, k: (jnp.mean(w * b), s * 0.5 + 0.5 * jnp.mean(b))
    >>> loss, state = chunked_with_state(f, 2)(1.0, 0.0, jnp.arange(6.0), jax.random.PRNGKey(0))
    >>> float(loss), float(state)   # chunk means 0.5, 2.5, 4.5: the state moves to half their mean
    (2.5, 1.25)
    """
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")

    def wrapped(params, state, batch, key):
        n = leading(batch)
        if chunk_size == 0 or n % groups or n // groups <= chunk_size:
            return fn(params, state, batch, key)
        per = n // groups
        blocks = jax.tree.map(lambda x: x.reshape(groups, per, *x.shape[1:]), batch)
        m, r = divmod(per, chunk_size)

        def piece(params, blocks, j, size):
            return fn(params, state, _take(blocks, j * chunk_size, size, groups), jax.random.fold_in(key, j))

        body = jax.checkpoint(lambda p, b, j: piece(p, b, j, chunk_size))

        def weighted(out, w):
            loss, st = out
            return loss * w, jax.tree.map(lambda x: x * w if jnp.issubdtype(x.dtype, jnp.floating) else x, st)

        def add(a, b):
            return a[0] + b[0], jax.tree.map(lambda x, y: x + y if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                             a[1], b[1])

        w = chunk_size / per
        total = jax.lax.fori_loop(1, m, lambda j, acc: add(acc, weighted(body(params, blocks, j), w)),
                                  weighted(body(params, blocks, 0), w))
        if r:
            total = add(total, weighted(piece(params, blocks, m, r), r / per))
        return total

    return wrapped


def _take(blocks, start, size, groups):
    """``(groups * size, ...)``: the run of ``size`` examples from ``start`` of every block."""
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1).reshape(
        groups * size, *x.shape[2:]), blocks)


def check_mean_loss(loss_fn: Callable, params, batch, chunk_size: int, *, rtol: float = 1e-5) -> None:
    """Refuse a loss that is not a mean over the batch's examples, before a chunked run.

    The loss and its gradient over the first ``2 * chunk_size`` examples of ``batch``, in two
    chunks, against one pass over the same examples.

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: parameters to check at.
      batch: a batch (its first ``2 * chunk_size`` examples are used; all of it if fewer).
      chunk_size: the chunk size of the run.
      rtol: the relative tolerance (1e-5: float32 rounding over a few thousand examples).

    Raises:
      :class:`samedge.errors.ConfigError` in one line saying which differs and by how much.

    >>> check_mean_loss(lambda w, b: jnp.mean(w * b), 1.0, jnp.arange(8.0), 2)
    >>> check_mean_loss(lambda w, b: jnp.sum(w * b), 1.0, jnp.arange(8.0), 2)
    Traceback (most recent call last):
    ...
    samedge.errors.ConfigError: --chunk-size 2: the loss is not a mean over the batch's examples (over 4 examples, the loss in two chunks is 3 and in one pass 6: relative difference 0.5); ...
    """
    from samedge.errors import ConfigError

    n = min(leading(batch), 2 * chunk_size)
    part = jax.tree.map(lambda x: x[:n], batch)
    one = jax.jit(jax.value_and_grad(loss_fn))(params, part)
    two = jax.jit(jax.value_and_grad(chunked_mean(loss_fn, -(-n // 2))))(params, part)
    for what, a, b in (("loss", one[0], two[0]), ("gradient", one[1], two[1])):
        a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(a)])
        b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(b)])
        scale = float(jnp.max(jnp.abs(a)))
        diff = float(jnp.max(jnp.abs(a - b)))
        if not diff <= rtol * max(scale, 1e-30):
            shown = (f"is {float(b[0]):.6g} and in one pass {float(a[0]):.6g}" if what == "loss"
                     else f"differs from one pass by {diff:.3g} (largest entry {scale:.3g})")
            raise ConfigError(
                f"--chunk-size {chunk_size}: the loss is not a mean over the batch's examples (over {n} examples, "
                f"the {what} in two chunks {shown}: relative difference {diff / max(scale, 1e-30):.3g}); "
                f"make it a mean, declare the task chunk_dependent if that is on purpose, or run without --chunk-size")


def chunk_task(task, chunk_size: int, *, groups: int = 1, check: bool = True, seed: int = 0):
    """``task`` with its loss and accuracy computed in chunks (:func:`chunked_mean`), checked first.

    Everything a run derives from ``task.loss_fn`` (every step's gradients, the measurement's HVPs,
    the full batch, batch sharpness) is then chunked. ``task.evaluate`` is the task's own and stays
    as it is.

    Args:
      task: a :class:`~samedge.tasks.Task`.
      chunk_size: examples per pass (0: ``task`` itself).
      groups: the devices the batch will be split over (chunks are taken within each).
      check: check on the first batch that the loss is a mean (:func:`check_mean_loss`), unless the
        task declares ``chunk_dependent``.
      seed: the parameters the check runs at (``task.init_params(PRNGKey(seed))``).

    Returns:
      The chunked task (``info`` unchanged: the chunk size is a property of the machine). A task
      with model state has its ``train_loss_fn`` chunked by :func:`chunked_with_state` and its
      ``eval_loss_fn`` by :func:`chunked_mean` too.

    >>> from samedge import tasks
    >>> t = tasks.make_task("line", lambda k: {"w": jnp.zeros(2)},
    ...                     lambda p, b: jnp.mean((b[:, 0] * p["w"][0] + p["w"][1] - b[:, 1]) ** 2), jnp.ones((8, 2)))
    >>> float(chunk_task(t, 3).loss_fn({"w": jnp.zeros(2)}, t.data))
    1.0
    """
    import dataclasses

    if not chunk_size:
        return task
    if check and not task.chunk_dependent:
        params = task.init_params(jax.random.PRNGKey(seed))
        check_mean_loss(task.loss_fn, params, task.batch_fn(task.data, 0), chunk_size)
    accuracy = task.accuracy_fn
    stateful = {}
    if task.stateful:
        evaluate3 = task.eval_loss_fn

        def eval_loss(params, state, batch):
            return chunked_mean(lambda p, b: evaluate3(p, state, b), chunk_size, groups=groups)(params, batch)

        stateful = dict(train_loss_fn=chunked_with_state(task.train_loss_fn, chunk_size, groups=groups),
                        eval_loss_fn=None if evaluate3 is None else eval_loss)
    return dataclasses.replace(
        task, loss_fn=chunked_mean(task.loss_fn, chunk_size, groups=groups),
        accuracy_fn=None if accuracy is None else chunked_mean(accuracy, chunk_size, groups=groups, remat=False),
        **stateful)


def for_run(task, chunk_size: int, devices: int | None = None, *, seed: int = 0):
    """The task a run trains: chunked (:func:`chunk_task`) within each device's share of the batch,
    then split over the devices (:func:`samedge.sharding.for_run`). A task already split is chunked
    as a whole (``groups=1``).

    Args:
      task: the task.
      chunk_size: examples per pass and device (0: one pass).
      devices: the device count (``--devices``; ``None``: every device).
      seed: where the mean-loss check runs (``init_params(PRNGKey(seed))``).

    Returns:
      The task to train.
    """
    from samedge import sharding

    groups = 1 if sharding.is_sharded(task) else len(sharding.devices_for(devices))
    return sharding.for_run(chunk_task(task, chunk_size, groups=groups, seed=seed), devices)
