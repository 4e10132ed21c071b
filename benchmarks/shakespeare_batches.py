"""Cost of the tiny_shakespeare shuffle inside a scan, per step: the shipped scheme (a Feistel
permutation of all overlapping windows, evaluated at the batch's B positions only) against building
a permutation of the ~N/T disjoint windows with jax.random.permutation (a sort) every step, a sort
permutation of all ~1M overlapping windows, and i.i.d. sampling of starts with fold_in(key, step).
Prints ms per step and the ratios.

    PYTHONPATH=src SAMEDGE_DATA_DIR=/work/shared/data python benchmarks/shakespeare_batches.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from samedge.data import shakespeare as sh


def timed(batch_fn, tokens, steps=500, repeats=3):
    @jax.jit
    def run(tokens):
        def body(acc, s):
            return acc + batch_fn(tokens, s).sum(), None
        return jax.lax.scan(body, jnp.int32(0), jnp.arange(steps))[0]

    run(tokens).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run(tokens).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best / steps


def main():
    tokens_np = sh.encode(sh.split(sh.load().text).train)
    tokens = jnp.asarray(tokens_np)
    n = len(tokens_np)
    key = jax.random.PRNGKey(0)
    for seq_len, batch in ((32, 32), (64, 128)):
        slots = timed(sh.make_batch_fn(n, seq_len, batch, key), tokens)
        offsets = jnp.arange(seq_len + 1)
        m = n // seq_len  # disjoint windows

        def sort_slots(tokens, step):
            perm = jax.random.permutation(jax.random.fold_in(key, step // 100), m - 1)
            starts = seq_len * jax.lax.dynamic_slice_in_dim(perm, (step % 100) * batch, batch)
            return tokens[starts[:, None] + offsets].astype(jnp.int32)

        def iid(tokens, step):
            starts = jax.random.randint(jax.random.fold_in(key, step), (batch,), 0, n - seq_len)
            return tokens[starts[:, None] + offsets].astype(jnp.int32)

        def full_perm(tokens, step):
            perm = jax.random.permutation(jax.random.fold_in(key, step // 1000), n - seq_len)
            starts = jax.lax.dynamic_slice_in_dim(perm, (step % 1000) * batch, batch)
            return tokens[starts[:, None] + offsets].astype(jnp.int32)

        t_iid, t_sort = timed(iid, tokens), timed(sort_slots, tokens, steps=100)
        t_full = timed(full_perm, tokens, steps=10, repeats=1)
        print(f"seq {seq_len} batch {batch} ({n - seq_len} windows): Feistel (shipped) {slots:.3f} ms/step, "
              f"sorted permutation of disjoint windows {t_sort:.3f}, of all windows {t_full:.1f}, iid {t_iid:.3f}; "
              f"sort/Feistel {t_sort / slots:.0f}x, Feistel/iid {slots / t_iid:.1f}x")


if __name__ == "__main__":
    main()
