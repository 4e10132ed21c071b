"""Your own JAX training loop, measured by samedge: SAM on a tanh MLP reaches its SAM-edge.

The measurement is a library call you drop into any training loop. Nothing here uses samedge's run
machinery (no ``samedge.fit``, no run folder): the model (a 49 -> 16 -> 16 -> 10 tanh MLP that
samedge does not ship), the data (the first 512 images of real MNIST, read with gzip + NumPy) and
the loop are all in this file. From samedge it takes two things:

- ``samedge.optimizer("sam", lr, rho=rho)``: full-batch SAM with its closed-form SAM-edge attached;
- ``samedge.measurement(loss_fn, optimizer)``: ``init(params, key)`` and ``measure(params, batch,
  state, key)``, whose row holds ``lambda_max`` (the Hessian's top |eigenvalue|, by Lanczos on exact
  Hessian-vector products), ``edge`` (SAM's edge at the current gradient), ``gd_edge`` = 2/eta and
  ``ratio`` = lambda_max / edge.

The loss is the paper's: square loss on one-hot targets, averaged over all N x 10 entries. With
eta = 1 and rho = 0.005 the Hessian sharpens while the SAM-edge falls with the gradient norm; they
meet near step 350 and rise together from there: the median of lambda_max / edge over the second
half of the run is within 1% of 1 (the bands of the test: 10%).

At three steps the measured lambda_max is checked against every eigenvalue of the dense Hessian
(``jax.hessian`` on the raveled parameters, ``numpy.linalg.eigvalsh``). Everything runs in float64,
cheap at 1,242 parameters; to train in float32 instead, drop the ``jax_enable_x64`` line and cast
parameters and batch to float64 under ``jax.enable_x64(True)`` for the check points only.

Run it from the repository root (about 15 s on two CPU cores):

    JAX_PLATFORMS=cpu python examples/own_loop.py --out /tmp/own_loop

The figure goes to ``<out>/own_loop.png``; the last line printed is one JSON object with
``ratio_median`` and ``dense_relerr`` (the largest relative difference between the measured and the
dense lambda_max). MNIST is read from ``$SAMEDGE_DATA_DIR/mnist``, else ``../shared/data/mnist``
beside the checkout.
"""

import argparse
import gzip
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from jax.flatten_util import ravel_pytree

import samedge

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# -- settings ----------------------------------------------------------------------------------
N_TRAIN = 512  # the first 512 training images, full batch
POOL = 4  # 4 x 4 average pooling: 28 x 28 -> 7 x 7 = 49 inputs
WIDTH = 16  # two tanh hidden layers: 49 -> 16 -> 16 -> 10, 1,242 parameters
LR = 1.0  # step size eta (2/eta = 2)
RHO = 0.005  # SAM radius
STEPS = 1000
MEASURE_EVERY = 25  # the measurement costs a few gradients plus a handful of warm-started HVPs
DENSE_AT = (0, STEPS // 2, STEPS)  # where the float64 measurement meets the dense Hessian
SEED = 0


# -- data --------------------------------------------------------------------------------------
def data_dir() -> Path:
    env = os.environ.get("SAMEDGE_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_idx(path: Path, header: int) -> np.ndarray:
    """The unsigned bytes of an IDX file after its ``header`` bytes (16 for images, 8 for labels)."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


def load_mnist(n: int, pool: int = POOL, folder: Path | None = None):
    """``(x, y)``: the first ``n`` training images average-pooled, scaled to [0, 1] and centred per
    pixel (N, (28/pool)**2), and their one-hot labels (N, 10)."""
    folder = (folder or data_dir()) / "mnist"
    images = read_idx(folder / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:n]
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz", 8)[:n]
    side = 28 // pool
    x = images.reshape(n, side, pool, side, pool).mean((2, 4)).reshape(n, side * side) / 255.0
    x = x - x.mean(axis=0)
    y = np.eye(10)[labels]
    return x, y


# -- model and loss ----------------------------------------------------------------------------
@partial(jax.jit, static_argnums=1)  # one compile, not one per eager op
def init_params(key, sizes):
    """A list of dense layers ``{"w": (m, n), "b": (n,)}``, LeCun-normal weights, zero biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (m, n)) / jnp.sqrt(m), "b": jnp.zeros(n)}
            for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, batch):
    """Square loss on one-hot targets, the mean over all N x 10 entries (as the paper)."""
    x, y = batch
    return jnp.mean((mlp(params, x) - y) ** 2)


def accuracy_fn(params, batch):
    x, y = batch
    return jnp.mean(jnp.argmax(mlp(params, x), -1) == jnp.argmax(y, -1))


# -- the run -----------------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "samedge-own_loop"),
                        help="folder for own_loop.png (default: %(default)s)")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jax.config.update("jax_enable_x64", True)  # float64 throughout: cheap here, and the dense check wants it

    batch = tuple(jnp.asarray(a) for a in load_mnist(N_TRAIN))
    params = init_params(jax.random.PRNGKey(SEED), (batch[0].shape[1], WIDTH, WIDTH, 10))
    flat, unravel = ravel_pytree(params)

    optimizer = samedge.optimizer("sam", LR, rho=RHO)  # full-batch SAM, its SAM-edge attached
    settings = samedge.MeasureSettings(tol=1e-6)  # in float64 Lanczos can be held to 1e-6 residuals
    measurement = samedge.measurement(loss_fn, optimizer, settings, accuracy_fn=accuracy_fn)

    @jax.jit
    def train_step(params, opt_state, batch):
        grad_fn = jax.value_and_grad(lambda p: loss_fn(p, batch))
        return optimizer.update(params, opt_state, grad_fn)  # -> (params, opt_state, loss)

    @jax.jit
    def dense_hessian(params, batch):
        """The whole (n_params, n_params) Hessian of the full-batch loss."""
        return jax.hessian(lambda f: loss_fn(unravel(f), batch))(ravel_pytree(params)[0])

    init_key, key = jax.random.split(jax.random.PRNGKey(SEED + 1))
    opt_state = optimizer.init(params)
    mstate = measurement.init(params, init_key)
    rows, checks = [], []
    for step in range(STEPS + 1):
        if step % MEASURE_EVERY == 0 or step == STEPS:
            row, mstate = measurement.measure(params, batch, mstate, jax.random.fold_in(key, step))
            rows.append({"step": step} | {k: float(v) for k, v in row.items()})
            if step in DENSE_AT:  # every eigenvalue of the dense Hessian, against Lanczos' top one
                dense = np.abs(np.linalg.eigvalsh(np.asarray(dense_hessian(params, batch)))).max()
                checks.append({"step": step, "lambda_max": rows[-1]["lambda_max"], "dense": float(dense),
                               "relerr": abs(rows[-1]["lambda_max"] - dense) / dense})
            print(f"step {step:5d}  loss {row['loss']:.4f}  acc {row['acc']:.3f}  "
                  f"lambda_max {row['lambda_max']:.4f}  edge {row['edge']:.4f}  ratio {row['ratio']:.3f}")
        if step < STEPS:
            params, opt_state, _ = train_step(params, opt_state, batch)

    second_half = [r["ratio"] for r in rows if r["step"] >= STEPS / 2]
    ratio_median = float(np.median(second_half))
    dense_relerr = max(c["relerr"] for c in checks)

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["lambda_max"] for r in rows], label=r"$\lambda_{\max}$ (Lanczos)")
    ax.plot(steps, [r["edge"] for r in rows], "--", label="SAM-edge")
    ax.axhline(2 / LR, color="gray", linestyle=":", label=r"$2/\eta$")
    ax.plot([c["step"] for c in checks], [c["dense"] for c in checks], "kx", label="dense Hessian (float64)")
    ax.set(xlabel="step", ylabel="curvature",
           title=f"SAM on a tanh MLP, eta={LR:g}, rho={RHO:g}: median ratio {ratio_median:.3f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "own_loop.png", dpi=120)

    print(json.dumps({"ratio_median": ratio_median, "dense_relerr": dense_relerr, "n_params": int(flat.size),
                      "steps": STEPS, "lr": LR, "rho": RHO, "n_train": N_TRAIN, "dense_checks": checks,
                      "figure": str(out / "own_loop.png"), "wall_s": round(time.perf_counter() - started, 2)}))


if __name__ == "__main__":
    main()
