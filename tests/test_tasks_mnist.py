"""The MNIST task's settings of the model (activation, init_scale): their config errors and
conversions, and the presets: the paper's model kept, the quick grid and defaults, the quick model's
starting sharpness."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from samedge import config, tasks
from samedge.errors import ConfigError
from samedge.tasks import mnist as mnist_task


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


def test_thick_restart_agrees_with_the_unbounded_solver_on_quick_mnist(data_dir):
    """The quick MNIST model after 100 GD steps at the preset's eta: top-3 by Lanczos in a basis of 8
    rows (restarting) and unbounded, from the same start, at tolerance 1e-3: every eigenvalue within it."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from samedge import curvature, optimizers

    p = mnist_task.PRESETS["quick"]
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", p.task), data_dir=data_dir)
    params = task.init_params(jax.random.PRNGKey(0))
    opt = optimizers.build("gd", 0.5)
    state = opt.init(params)
    grad_fn = jax.jit(jax.value_and_grad(lambda q: task.loss_fn(q, task.data)))
    step = jax.jit(lambda w, s: opt.update(w, s, grad_fn)[:2])
    for _ in range(100):
        params, state = step(params, state)
    matvec, n = curvature.flat_hvp(lambda q: task.loss_fn(q, task.data), params)
    v0 = jax.random.normal(jax.random.PRNGKey(1), (n,))
    run = jax.jit(lambda v, b: curvature.lanczos(matvec, v, k=3, max_iters=300, tol=1e-3, max_basis=b),
                  static_argnums=1)
    bounded, unbounded = run(v0, 8), run(v0, None)
    assert int(bounded.restarts) >= 1 and int(unbounded.restarts) == 0
    assert n == ravel_pytree(params)[0].size and int(unbounded.num_matvecs) > 8
    np.testing.assert_allclose(np.asarray(bounded.values), np.asarray(unbounded.values), rtol=1e-3)
    assert np.all(np.asarray(bounded.residuals) <= 1e-3)
