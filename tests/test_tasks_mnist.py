"""The MNIST task's model options (activation, init_scale) against independent computations, their
config errors, and the quick preset's grid and defaults."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import config, tasks
from samedge.errors import ConfigError
from samedge.models.mlp import MLP
from samedge.tasks import mnist as mnist_task

X = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)


def kernels(params):
    p = params["params"]
    return [p[f"Dense_{i}"]["kernel"] for i in range(len(p))], [p[f"Dense_{i}"]["bias"] for i in range(len(p))]


class PaperMLP(nn.Module):
    """The MLP as it was before the options: ReLU, Glorot-normal kernels."""

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.glorot_normal()
        for _ in range(2):
            x = nn.relu(nn.Dense(7, kernel_init=init)(x))
        return nn.Dense(3, kernel_init=init)(x)


def test_defaults_are_the_paper_mlp_bit_for_bit():
    key = jax.random.PRNGKey(3)
    ours = MLP(width=7, depth=3, num_outputs=3).init(key, X)
    theirs = PaperMLP().init(key, X)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("scale", [0.25, 0.8, 3.0])
def test_init_scale_multiplies_every_initial_weight(scale):
    key = jax.random.PRNGKey(1)
    base_w, base_b = kernels(MLP(width=16, depth=4, num_outputs=10).init(key, X))
    w, b = kernels(MLP(width=16, depth=4, num_outputs=10, init_scale=scale).init(key, X))
    for k0, k in zip(base_w, w):  # same draws, standard deviation times `scale`
        np.testing.assert_allclose(np.asarray(k), scale * np.asarray(k0), rtol=1e-5, atol=1e-7)
    assert all(not np.any(np.asarray(bias)) for bias in b + base_b)  # biases stay zero


def test_init_scale_gives_the_glorot_std_times_scale():
    # Closed form: a truncated normal (at 2 std) rescaled to variance scale**2 * 2 / (fan_in + fan_out).
    scale, fan_in, fan_out = 1.7, 600, 400
    params = MLP(width=fan_out, depth=2, num_outputs=10, init_scale=scale).init(
        jax.random.PRNGKey(0), jnp.zeros((1, fan_in)))
    kernel = np.asarray(params["params"]["Dense_0"]["kernel"])
    expected = scale * math.sqrt(2.0 / (fan_in + fan_out))
    assert kernel.std() == pytest.approx(expected, rel=0.01)  # 240,000 draws: ~0.2% sampling error
    assert np.abs(kernel).max() <= 2 * expected / 0.87962566103423978 * (1 + 1e-6)  # truncated at 2 sigma


def gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))


NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
    "gelu": gelu_tanh,  # flax's nn.gelu is the tanh approximation by default
}


@pytest.mark.parametrize("activation", sorted(NUMPY_ACTIVATIONS))
def test_forward_pass_matches_numpy(activation):
    model = MLP(width=9, depth=4, num_outputs=10, activation=activation, init_scale=1.3)
    params = model.init(jax.random.PRNGKey(2), X)
    # non-zero biases, so that a wrong bias placement would show
    params = jax.tree.map(lambda a: a + 0.1 if a.ndim == 1 else a, params)
    w, b = kernels(params)
    h = X.astype(np.float64)
    for k, c in zip(w[:-1], b[:-1]):
        h = NUMPY_ACTIVATIONS[activation](h @ np.asarray(k, np.float64) + np.asarray(c, np.float64))
    expected = h @ np.asarray(w[-1], np.float64) + np.asarray(b[-1], np.float64)
    np.testing.assert_allclose(np.asarray(model.apply(params, X)), expected, rtol=1e-5, atol=1e-5)


def test_unknown_activation_refused_by_the_model():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(width=4, depth=2, activation="swish").init(jax.random.PRNGKey(0), X)


@pytest.mark.parametrize("overrides, match", [
    (dict(activation="swish"), "activation must be one of relu, tanh, elu, gelu"),
    (dict(init_scale=0.0), "init_scale must be a positive number"),
    (dict(init_scale=-1.0), "init_scale must be a positive number"),
    (dict(init_scale=float("nan")), "init_scale must be a positive number"),
    (dict(init_scale=True), "init_scale must be a positive number"),
    (dict(init_scale="big"), "init_scale must be a positive number"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tasks.make_task_config("mnist", overrides)


def test_set_values_are_converted():
    cfg = tasks.make_task_config("mnist", {"init_scale": "2", "activation": "tanh"})
    assert cfg.init_scale == 2.0 and isinstance(cfg.init_scale, float) and cfg.activation == "tanh"
    assert tasks.make_task_config("mnist", {"init_scale": 1}).init_scale == 1.0


def test_paper_preset_keeps_the_paper_model():
    cfg = config.resolve("mnist", "paper")
    task_cfg = tasks.make_task_config("mnist", cfg.task_config)
    assert (task_cfg.activation, task_cfg.init_scale, task_cfg.width, task_cfg.depth) == ("relu", 1.0, 1000, 4)


def test_quick_demo_lr_is_one_of_the_grid_and_shared():
    p = mnist_task.PRESETS["quick"]
    gd, sam = config.resolve("mnist", "quick", optimizer="gd"), config.resolve("mnist", "quick", optimizer="sam")
    assert gd.lr == sam.lr and gd.lr in p.grid_lr  # the demo compares GD and SAM at one eta of the grid
    assert p.grid["rho"] == (0.0, 0.1, 0.3, 1.0)
    assert p.steps % p.measure_every == 0 and p.eval_every % p.measure_every == 0


def test_quick_preset_starts_gd_well_below_its_edge(data_dir):
    """lambda_max at step 0 of the quick model (seed 0) is at most 0.6 of 2/eta for every grid eta,
    so the GD runs of the sweep show progressive sharpening before they reach 2/eta."""
    from jax.flatten_util import ravel_pytree

    from samedge import curvature

    p = mnist_task.PRESETS["quick"]
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", p.task), data_dir=data_dir)
    params = task.init_params(jax.random.PRNGKey(0))
    matvec, n = curvature.flat_hvp(lambda q: task.loss_fn(q, task.data), params)
    eig = curvature.lanczos(matvec, jax.random.normal(jax.random.PRNGKey(1), (n,)), k=1, max_iters=40, tol=1e-4)
    lam0 = float(eig.top_value)
    assert 0.2 <= lam0  # the read-out bias alone gives 2/C = 0.2 under the mean over N x C entries
    assert max(p.grid_lr) * lam0 / 2 <= 0.6, (lam0, p.grid_lr)
