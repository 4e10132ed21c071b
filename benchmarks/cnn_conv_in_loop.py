"""The quick CIFAR-10 CNN's gradient step and HVP inside a compiled loop, with XLA's convolution and
with the patch-product form (``models.cnn``), on the CPU.

XLA:CPU runs its convolution (and ``reduce_window`` pooling) several times slower inside a rolled
loop (``lax.scan`` chunk, Lanczos' ``while_loop``) than outside; the patch form does not. Prints,
for both forms, seconds per gradient step in a rolled and in an unrolled ``lax.scan`` and per HVP
in a rolled loop, and the compile time of the chunk. Run from the checkout root:
``PYTHONPATH=src python benchmarks/cnn_conv_in_loop.py [--steps 5] [--channels 8] [--images 128]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from samedge.models.cnn import CNN


def timed(f, *args, repeat=3):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))  # compile and a first run
    first = time.perf_counter() - start
    best = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        best.append(time.perf_counter() - start)
    return sorted(best)[len(best) // 2], first


def measure(patches: bool, steps: int, channels: int, images: int) -> dict:
    model = CNN(base_channels=channels, patches=patches)
    x = jax.random.normal(jax.random.PRNGKey(0), (images, 32, 32, 3))  # (N, 32, 32, 3)
    y = jax.nn.one_hot(jnp.arange(images) % 10, 10)  # (N, 10)
    params = model.init(jax.random.PRNGKey(1), x[:1])

    def loss(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    def chunk(p, unroll):
        def body(p, i):
            return jax.tree.map(lambda a, b: a - 0.01 * b, p, jax.grad(loss)(p)), None

        return jax.lax.scan(body, p, jnp.arange(steps), unroll=steps if unroll else 1)[0]

    def hvps(p):
        v = jax.tree.map(jnp.ones_like, p)
        body = lambda i, v: jax.tree.map(lambda a: 1e-3 * a, jax.jvp(jax.grad(loss), (p,), (v,))[1])
        return jax.lax.fori_loop(0, steps, body, v)

    out = {}
    for unroll in (False, True):
        s, first = timed(jax.jit(lambda p, u=unroll: chunk(p, u)), params)
        out["unrolled" if unroll else "rolled"] = s / steps
        out[("unrolled" if unroll else "rolled") + "_first"] = first
    out["grad"] = timed(jax.jit(jax.grad(loss)), params)[0]
    out["hvp_in_loop"] = timed(jax.jit(hvps), params)[0] / steps
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--images", type=int, default=128)
    args = parser.parse_args()
    print(f"{jax.devices()[0].platform}, {args.images} images, {args.channels} base channels, {args.steps}-step loops")
    print(f"{'form':<14} {'gradient':>9} {'step, rolled':>13} {'step, unrolled':>15} {'HVP in loop':>12} "
          f"{'compile+run rolled':>19} {'unrolled':>9}  (seconds)")
    for patches in (False, True):
        r = measure(patches, args.steps, args.channels, args.images)
        print(f"{'patch product' if patches else 'XLA conv':<14} {r['grad']:>9.4f} {r['rolled']:>13.4f} "
              f"{r['unrolled']:>15.4f} {r['hvp_in_loop']:>12.4f} {r['rolled_first']:>19.2f} {r['unrolled_first']:>9.2f}")


if __name__ == "__main__":
    main()
