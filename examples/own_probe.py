"""Your own probe: the curvature along the optimizer's update direction, measured in a plain loop.

A probe is a quantity the measurement computes at each check point, beside lambda_max and the edge
(``samedge.Probe``: a name and two pure functions, ``init(params, start) -> carry`` and
``measure(ctx, carry, key) -> (columns, carry)``). The one here, ``STEP_CURVATURE``, asks how sharp
the loss is along the step the optimizer is about to take:

    step_curvature = u^T H u / u^T u,   u = w_next - w,

with ``w_next`` the optimizer's next iterate from ``(w, opt_state)`` (``ctx.optimizer.update``; for
SAM, u is -eta times the gradient at the ascent point, not along g) and ``H u`` one exact
Hessian-vector product (``ctx.hvp``). It costs the step's gradients (two for SAM) and one HVP, and
carries nothing. For GD on a quadratic the step is stable when ``eta * step_curvature < 2`` along u.

The loop below is own_loop.py's (the same 49 -> 16 -> 16 -> 10 tanh MLP on 512 MNIST images, full-batch
SAM, float64) for 300 steps. At three steps the probe's value is checked against the dense Hessian
(``jax.hessian`` on the raveled parameters) and the step the loop actually took: the last line
printed is one JSON object with ``relerr``, the largest relative difference (float64: ~1e-13).

The same probe from the command line and from ``samedge.fit`` (its columns join ``metrics.csv``):

    python -m samedge run mnist --preset quick --probe examples.own_probe:STEP_CURVATURE
    samedge.fit(task, "sam", probes=[STEP_CURVATURE], ...)

Run it from the repository root (about 10 s on two CPU cores):

    JAX_PLATFORMS=cpu python examples/own_probe.py
"""

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import samedge

LR, RHO = 1.0, 0.005  # own_loop.py's SAM
STEPS, MEASURE_EVERY = 300, 25
DENSE_AT = (0, 150, 300)
SEED = 0


# -- the probe ---------------------------------------------------------------------------------
def _init(params, start):
    return ()  # nothing carried from one measurement to the next


def _measure(ctx, carry, key):
    grad_fn = lambda p: jax.value_and_grad(ctx.loss_fn)(p, ctx.batch)  # noqa: E731
    w_next, _, _ = ctx.optimizer.update(ctx.params, ctx.opt_state, grad_fn)
    u = ravel_pytree(w_next)[0] - ravel_pytree(ctx.params)[0]  # (n,)
    return {"step_curvature": u @ ctx.hvp(u) / (u @ u), "step_norm": jnp.linalg.norm(u)}, carry


STEP_CURVATURE = samedge.Probe("step_curvature", _init, _measure)


# -- the loop ----------------------------------------------------------------------------------
def main():
    started = time.perf_counter()
    jax.config.update("jax_enable_x64", True)  # float64: the dense check is then exact to rounding
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from own_loop import N_TRAIN, WIDTH, init_params, load_mnist, loss_fn  # own_loop.py's model and data

    batch = tuple(jnp.asarray(a) for a in load_mnist(N_TRAIN))
    params = init_params(jax.random.PRNGKey(SEED), (batch[0].shape[1], WIDTH, WIDTH, 10))
    flat, unravel = ravel_pytree(params)

    optimizer = samedge.optimizer("sam", LR, rho=RHO)
    measurement = samedge.measurement(loss_fn, optimizer, samedge.MeasureSettings(tol=1e-6),
                                      probes=[STEP_CURVATURE])

    @jax.jit
    def train_step(params, opt_state):
        return optimizer.update(params, opt_state, jax.value_and_grad(lambda p: loss_fn(p, batch)))

    @jax.jit
    def dense_hessian(params):
        return jax.hessian(lambda f: loss_fn(unravel(f), batch))(ravel_pytree(params)[0])

    init_key, key = jax.random.split(jax.random.PRNGKey(SEED + 1))
    opt_state = optimizer.init(params)
    mstate = measurement.init(params, init_key)
    rows, checks = [], []
    for step in range(STEPS + 1):
        measured = step % MEASURE_EVERY == 0 or step == STEPS
        if measured:
            row, mstate = measurement.measure(params, batch, mstate, jax.random.fold_in(key, step), opt_state)
            rows.append({"step": step} | {k: float(v) for k, v in row.items()})
            print(f"step {step:4d}  loss {row['loss']:.4f}  lambda_max {row['lambda_max']:.4f}  "
                  f"step_curvature {row['step_curvature']:.4f}  edge {row['edge']:.4f}")
        w_before = params
        params, opt_state, _ = train_step(params, opt_state)
        if measured and step in DENSE_AT:  # the step just taken, against the dense Hessian at its start
            u = np.asarray(ravel_pytree(params)[0] - ravel_pytree(w_before)[0])
            dense = float(u @ np.asarray(dense_hessian(w_before)) @ u / (u @ u))
            got = rows[-1]["step_curvature"]
            checks.append({"step": step, "step_curvature": got, "dense": dense, "relerr": abs(got - dense) / abs(dense)})

    relerr = max(c["relerr"] for c in checks)
    print(json.dumps({"relerr": relerr, "dense_checks": checks, "n_params": int(flat.size), "steps": STEPS,
                      "lr": LR, "rho": RHO, "last": rows[-1], "wall_s": round(time.perf_counter() - started, 2)}))


if __name__ == "__main__":
    main()
