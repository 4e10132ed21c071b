"""How much slower the quick CIFAR-10 CNN's gradient step runs inside a rolled ``lax.scan`` (as
``train.make_chunk`` compiles it) than fully unrolled, on the CPU.

Prints seconds per step for both and their ratio. Run from the checkout root:
``PYTHONPATH=src python benchmarks/cnn_scan_unroll.py [--steps 5] [--channels 8] [--images 256]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from samedge.models.cnn import CNN


def per_step(steps: int, channels: int, images: int, unroll: bool) -> float:
    model = CNN(base_channels=channels)
    x = jax.random.normal(jax.random.PRNGKey(0), (images, 32, 32, 3))  # (N, 32, 32, 3)
    y = jax.nn.one_hot(jnp.arange(images) % 10, 10)  # (N, 10)
    params = model.init(jax.random.PRNGKey(1), x[:1])

    def loss(p, data):
        return jnp.mean((model.apply(p, data[0]) - data[1]) ** 2)

    def chunk(p, data):
        def body(p, i):
            g = jax.grad(loss)(p, data)
            return jax.tree.map(lambda a, b: a - 0.01 * b, p, g), None

        return jax.lax.scan(body, p, jnp.arange(steps), unroll=steps if unroll else 1)[0]

    f = jax.jit(chunk)
    jax.block_until_ready(f(params, (x, y)))  # compile
    start = time.perf_counter()
    jax.block_until_ready(f(params, (x, y)))
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    rolled = per_step(args.steps, args.channels, args.images, unroll=False)
    unrolled = per_step(args.steps, args.channels, args.images, unroll=True)
    print(f"{jax.devices()[0].platform}: rolled scan {rolled:.3f} s/step, unrolled {unrolled:.3f} s/step, "
          f"ratio rolled/unrolled {rolled / unrolled:.2f}")


if __name__ == "__main__":
    main()
