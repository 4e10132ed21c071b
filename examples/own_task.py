"""The tanh MLP of own_loop.py as a samedge task: your own model through the whole run machinery.

``make_task(config)`` builds a :class:`samedge.Task` from plain functions with ``samedge.make_task``:
the model (49 -> 16 -> 16 -> 10 tanh MLP on 4 x 4 average-pooled MNIST), its square loss on one-hot
targets, its accuracy and the training data (full batch: every step sees all ``n_train`` images).
``samedge.fit`` then does what a built-in task gets: the run folder with ``config.json``,
``metrics.csv`` (one row per measurement), ``summary.json`` (``ratio_median``: the median of
lambda_max / SAM-edge over the second half of the run), the figures and the checkpoints. With
own_loop.py's settings (eta = 1, rho = 0.005, 1,000 full-batch steps; here in float32, fit's
default) SAM sits at its SAM-edge: the median ratio is 1.004.

Run it from the repository root (about 20 s on two CPU cores):

    JAX_PLATFORMS=cpu python examples/own_task.py --out /tmp/own_task

The last line printed is one JSON object with ``ratio_median`` and the run folder. The same factory
works from the command line, where ``--set KEY=VALUE`` sets the fields of ``OwnConfig`` and the
factory's ``presets`` (below) give the run's defaults, the settings of this file:

    samedge run examples.own_task:make_task --out /tmp/own_task_cli --set n_train=512

(run from the repository root: ``package.module:factory`` is imported from the current folder).

MNIST is read from ``--data-dir`` (the CLI), else ``$SAMEDGE_DATA_DIR``, else ``../shared/data``
beside the checkout.
"""

import argparse
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import samedge
from samedge.data import mnist
from samedge.tasks import Preset

# -- the run's settings (the task's own are in OwnConfig) ---------------------------------------
LR = 1.0  # step size eta (2/eta = 2)
RHO = 0.005  # SAM radius
STEPS = 1000
MEASURE_EVERY = 25
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # beside the checkout


@dataclass(frozen=True)
class OwnConfig:
    """The task's settings; ``samedge run ... --set n_train=256`` sets them from the CLI."""

    n_train: int = 512  # the first n_train MNIST training images, full batch
    pool: int = 4  # pool x pool average pooling: 28 x 28 -> 7 x 7 = 49 inputs
    width: int = 16  # the two tanh hidden layers


def mlp(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def make_task(config: OwnConfig = OwnConfig(), data_dir=None) -> samedge.Task:
    """The tanh MLP on the first ``config.n_train`` MNIST images, square loss, full batch."""
    if data_dir is None:
        data_dir = os.environ.get("SAMEDGE_DATA_DIR") or SHARED_DATA
    raw = mnist.load(data_dir)  # the official IDX files in <data_dir>/mnist
    train = raw.train  # uint8 images (60000, 28, 28) and labels (60000,)
    n, p, side = config.n_train, config.pool, 28 // config.pool
    x = train.images[:n].reshape(n, side, p, side, p).mean((2, 4)).reshape(n, side * side) / 255.0
    x = (x - x.mean(axis=0)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[train.labels[:n]]
    sizes = (side * side, config.width, config.width, 10)

    def init_params(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return [{"w": jax.random.normal(k, (m, d)) / jnp.sqrt(m), "b": jnp.zeros(d)}
                for k, m, d in zip(keys, sizes[:-1], sizes[1:])]

    def loss_fn(params, batch):  # square loss on one-hot targets, mean over all N x 10 entries
        inputs, targets = batch
        return jnp.mean((mlp(params, inputs) - targets) ** 2)

    def accuracy_fn(params, batch):
        inputs, targets = batch
        return jnp.mean(jnp.argmax(mlp(params, inputs), -1) == jnp.argmax(targets, -1))

    return samedge.make_task("own_mlp", init_params, loss_fn, (x, y), accuracy_fn=accuracy_fn, config=config,
                             info={"n_train": n, "data_source": raw.source})


# What `samedge run examples.own_task:make_task` uses when no flag says otherwise.
make_task.presets = {"default": Preset(
    name="default", description="the tanh MLP at its SAM-edge", task={}, steps=STEPS, measure_every=MEASURE_EVERY,
    eval_every=STEPS, lr={"*": LR}, hparams={"rho": RHO}, run={"measure_sam_point": False})}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "samedge-own_task"),
                        help="the run folder, replaced if it exists (default: %(default)s)")
    out = parser.parse_args().out
    task = make_task()
    summary = samedge.fit(task, "sam", lr=LR, rho=RHO, steps=STEPS, measure_every=MEASURE_EVERY,
                          measure_sam_point=False,  # lambda_max at the ascent point: not needed here
                          out=out, overwrite=True, progress=False)
    print(json.dumps({"ratio_median": summary["ratio_median"], "status": summary["status"], "run": str(out),
                      "n_params": task.info["n_params"], "steps": STEPS, "lr": LR, "rho": RHO,
                      "final_lambda_max": summary.get("final_lambda_max"), "final_edge": summary.get("final_edge"),
                      "train_s": round(summary["wall_time_s"], 2)}))


if __name__ == "__main__":
    main()
