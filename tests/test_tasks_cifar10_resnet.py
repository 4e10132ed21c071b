"""The cifar10-resnet task: presets, settings, the built task against the data and the model's own
count, its batches (minibatch, augmentation a pure function of (seed, step), the measurement's
unaugmented copy, the fixed measurement set), and a tiny CLI run with the measurement set."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import augment, cli, config, tasks
from samedge.data import cifar10 as cifar_data
from samedge.errors import ConfigError
from samedge.models import resnet
from samedge.tasks import cifar10_resnet as task_mod

TINY = dict(n_train=64, n_test=32, width=2, batch_size=16, measure_set=32)


def _build(data_dir, seed=0, **over):
    return tasks.build_task("cifar10-resnet", tasks.make_task_config("cifar10-resnet", TINY | over),
                            data_dir=data_dir, seed=seed)


def test_presets_follow_foret_et_al_recipe():
    paper = config.resolve("cifar10-resnet", "paper")
    assert paper.optimizer == "sam_momentum" and paper.lr == 0.1 and paper.schedule == "cosine"
    assert paper.hparams == {"rho": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    assert paper.task_config["width"] == 64 and paper.task_config["batch_size"] == 128
    assert paper.steps == 200 * 391 and paper.measure_full_batch and paper.task_config["measure_set"] == 5000
    quick = config.resolve("cifar10-resnet", "quick", optimizer="momentum")
    assert quick.hparams == {"momentum": 0.9, "weight_decay": 5e-4}
    assert config.resolve("cifar10-resnet", "quick", optimizer="sam_momentum", rho=0.1).hparams["rho"] == 0.1
    assert "cifar10-resnet" in tasks.TASKS and "cifar10-resnet" not in tasks.PAPER_TASKS


@pytest.mark.parametrize("overrides, match", [
    (dict(width=0), "width must be a positive integer"),
    (dict(norm="layer"), "norm must be one of batch, none"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(augment="yes"), "augment must be true or false"),
    (dict(measure_set=-1), "measure_set must be an integer >= 0"),
    (dict(n_train=100, batch_size=101), "batch_size 101 exceeds"),
])
def test_bad_settings_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tasks.make_task_config("cifar10-resnet", overrides)


def test_built_task_against_the_data_and_the_model_count(data_dir):
    task = _build(data_dir)
    raw = cifar_data.load(data_dir, n_train=64, n_test=32)
    x, y = task.data
    assert x.shape == (64, 32, 32, 3) and y.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y), raw.train.labels)
    # per-channel standardisation over the training images
    np.testing.assert_allclose(np.asarray(x).mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(x).std(axis=(0, 1, 2)), 1, atol=1e-4)
    assert task.info["n_params"] == resnet.count(2) and task.stateful and task.chunk_dependent
    state = task.init_state(jax.random.PRNGKey(0))
    assert list(state) == ["batch_stats"]
    plain = _build(data_dir, norm="none")
    assert plain.info["n_params"] == resnet.count(2, norm="none") and plain.init_state(jax.random.PRNGKey(0)) == {}
    assert not plain.chunk_dependent
    full = task.full_batch_fn(task.data)
    np.testing.assert_array_equal(np.asarray(full[0]), np.asarray(x[:32]))


def test_batchnorm_task_augmentation_is_a_pure_function_of_seed_and_step(data_dir):
    task, again, other = _build(data_dir), _build(data_dir), _build(data_dir, seed=1)
    b3 = task.batch_fn(task.data, 3)
    np.testing.assert_array_equal(np.asarray(b3[0]), np.asarray(again.batch_fn(again.data, 3)[0]))
    jitted = jax.jit(task.batch_fn)(task.data, jnp.asarray(3))
    np.testing.assert_array_equal(np.asarray(b3[0]), np.asarray(jitted[0]))
    assert not np.array_equal(np.asarray(b3[0]), np.asarray(task.batch_fn(task.data, 4)[0]))
    assert not np.array_equal(np.asarray(b3[0]), np.asarray(other.batch_fn(other.data, 3)[0]))
    # the measurement sees the same minibatch unaugmented; the step's is its crop and flip
    plain = task.measure_batch_fn(task.data, 3)
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(b3[1]))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), tasks.AUGMENT_KEY), 3)
    np.testing.assert_array_equal(np.asarray(augment.crop_flip(plain[0], key)), np.asarray(b3[0]))
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(b3[0]))
    told = _build(data_dir, measure_augmented=True)
    np.testing.assert_array_equal(np.asarray(told.measure_batch_fn(told.data, 3)[0]), np.asarray(b3[0]))


def test_a_tiny_resnet_run_measures_the_step_batch_and_the_measurement_set(tmp_path, data_dir):
    out = tmp_path / "run"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    code = cli.main(["run", "cifar10-resnet", "--optimizer", "sam_momentum", "--rho", "0.05", "--steps", "4",
                     "--measure-every", "2", "--eval-every", "4", "--measure-full-batch", "--chunk-size", "16",
                     "--data-dir", str(data_dir), "--out", str(out), "--no-progress", *sets])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["ratio_count"] >= 1
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"lambda_max_full", "ratio_full", "lambda_max_reg", "lr", "test_acc"} <= set(header)
    saved = json.loads((out / "config.json").read_text())
    assert saved["run"]["chunk_size"] == 16 and saved["task_info"]["model_state"] == ["batch_stats"]
