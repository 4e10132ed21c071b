"""The CIFAR ResNet-18's SGD step and HVP inside a compiled loop, with XLA's convolution and with the
patch-product form (``models.resnet``), on the CPU.

For each width, on one batch of random CIFAR-sized images: (i) a ``lax.scan`` of SGD steps, each the
gradient of the softmax cross-entropy in train mode (BatchNorm on the batch's statistics, running
statistics carried through the scan), and (ii) a ``lax.fori_loop`` of Hessian-vector products
(forward over reverse, ``jax.jvp`` of ``jax.grad``, train-mode BatchNorm, running statistics not
kept), each normalised as in power iteration. Both jitted; the compile (the first call) is excluded
and the best of ``--repeat`` runs is kept. Prints a table of seconds per step and per HVP, then one
line of JSON with the same figures and the ratios XLA / patches. Run from the checkout root:
``PYTHONPATH=src python benchmarks/resnet_conv.py [--widths 8 16] [--images 128] [--steps 5]``.
On two CPU cores the defaults take about 18 minutes, most of it XLA's convolution at width 16
(``--repeat 1`` takes about half).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import optax

from samedge.models.resnet import ResNet


def best_of(f, *args, repeat=3):
    """(best seconds of ``repeat`` runs, seconds of the first call: compile and one run)."""
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        runs.append(time.perf_counter() - start)
    return min(runs), first


def measure(variables, x, labels, width: int, patches: bool, steps: int, repeat: int) -> dict:
    model = ResNet(width=width, patches=patches)

    def train_loss(params, stats, x, labels):
        logits, updates = model.apply({"params": params, "batch_stats": stats}, x, use_running_average=False,
                                      mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    @jax.jit
    def sgd_chunk(params, stats, x, labels):
        def step(carry, _):
            params, stats = carry
            (loss, stats), grad = jax.value_and_grad(train_loss, has_aux=True)(params, stats, x, labels)
            return (jax.tree.map(lambda p, g: p - 0.01 * g, params, grad), stats), loss

        return jax.lax.scan(step, (params, stats), None, length=steps)

    @jax.jit
    def hvp_loop(params, stats, x, labels):
        loss = lambda p: train_loss(p, stats, x, labels)[0]  # the updated statistics are dropped

        def body(_, v):
            hv = jax.jvp(jax.grad(loss), (params,), (v,))[1]
            norm = jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(hv)))
            return jax.tree.map(lambda a: a / norm, hv)

        return jax.lax.fori_loop(0, steps, body, jax.tree.map(jnp.ones_like, params))

    args = (variables["params"], variables["batch_stats"], x, labels)
    sgd, sgd_first = best_of(sgd_chunk, *args, repeat=repeat)
    hvp, hvp_first = best_of(hvp_loop, *args, repeat=repeat)
    return {"sgd_step_s": sgd / steps, "hvp_s": hvp / steps,
            "sgd_compile_s": sgd_first - sgd, "hvp_compile_s": hvp_first - hvp}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    x = jax.random.normal(jax.random.PRNGKey(0), (args.images, 32, 32, 3))  # (N, 32, 32, 3)
    labels = jnp.arange(args.images) % 10  # (N,)
    print(f"{jax.devices()[0].platform}, {args.images} images, {args.steps}-step loops, best of {args.repeat}")
    print(f"{'width':>5} {'form':<14} {'SGD step':>9} {'HVP':>9} {'compile: scan':>14} {'HVP loop':>9}  (seconds)")
    results = {}
    for width in args.widths:
        # One set of parameters for both forms (the names and shapes are the same).
        init = jax.jit(ResNet(width=width).init, static_argnames="use_running_average")
        variables = init(jax.random.PRNGKey(1), x[:1], use_running_average=False)
        r = {}
        for patches in (True, False):
            form = "patches" if patches else "xla"
            r[form] = measure(variables, x, labels, width, patches, args.steps, args.repeat)
            m = r[form]
            print(f"{width:>5} {'patch product' if patches else 'XLA conv':<14} {m['sgd_step_s']:>9.4f} "
                  f"{m['hvp_s']:>9.4f} {m['sgd_compile_s']:>14.2f} {m['hvp_compile_s']:>9.2f}", flush=True)
        r["ratio_sgd_xla_over_patches"] = r["xla"]["sgd_step_s"] / r["patches"]["sgd_step_s"]
        r["ratio_hvp_xla_over_patches"] = r["xla"]["hvp_s"] / r["patches"]["hvp_s"]
        print(f"{width:>5} {'XLA / patches':<14} {r['ratio_sgd_xla_over_patches']:>9.2f} "
              f"{r['ratio_hvp_xla_over_patches']:>9.2f}", flush=True)
        results[f"width_{width}"] = r
    print(json.dumps({"device": jax.devices()[0].platform, "images": args.images, "steps": args.steps,
                      "repeat": args.repeat, **results}))


if __name__ == "__main__":
    main()
