"""The CIFAR-10 task: presets, the built task against the raw data, config errors, the CLI on bad
input (one line, exit 2, no run folder), and minibatches (``batch_size``): the sampler
(:func:`samedge.tasks.minibatch_indices`: without replacement, deterministic, uniform), the built
minibatch task, and exact resume of minibatch training."""

from __future__ import annotations

import json
import pickle
import re

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import cli, config, optimizers, tasks, train
from samedge.data import cifar10 as cifar_data
from samedge.errors import ConfigError
from samedge.tasks import cifar10 as cifar_task

TINY = dict(n_train=16, n_test=40, blocks=1, convs_per_block=1, base_channels=2)


def test_presets():
    paper = cifar_task.PRESETS["paper"]
    assert paper.task["n_train"] == 1000 and paper.task["base_channels"] == 16
    assert (paper.task["blocks"], paper.task["convs_per_block"]) == (2, 1)
    assert paper.grid_lr == (0.0003, 0.001, 0.003, 0.01)
    assert paper.grid["rho"] == (0.0, 0.1, 0.3, 1.0)
    quick_gd = config.resolve("cifar10", "quick", optimizer="gd")
    quick_sam = config.resolve("cifar10", "quick", optimizer="sam")
    assert quick_sam.hparams["rho"] == 0.1 and quick_sam.lr < quick_gd.lr
    assert quick_gd.task_config["n_train"] <= paper.task["n_train"]
    assert config.resolve("cifar10", "paper").task_config["n_test"] is None  # the whole test batch


@pytest.mark.parametrize("overrides, match", [
    (dict(n_train=0), "n_train must be a positive integer"),
    (dict(base_channels=2.5), "base_channels must be a positive integer"),
    (dict(n_test=True), "n_test must be a positive integer"),
    (dict(blocks=6), "blocks must be at most 5"),
    (dict(width=3), "unknown cifar10 setting"),
    (dict(batch_size=-1), "batch_size must be an integer >= 0"),
    (dict(batch_size=2.5), "batch_size must be an integer >= 0"),
    (dict(batch_size=True), "batch_size must be an integer >= 0"),
    (dict(batch_size=1001), "batch_size 1001 exceeds the 1000 training examples"),
    (dict(n_train=16, batch_size=17), "batch_size 17 exceeds the 16 training examples"),
])
def test_bad_settings_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tasks.make_task_config("cifar10", overrides)


def test_built_task_against_the_raw_data(data_dir):
    task = tasks.build_task("cifar10", tasks.make_task_config("cifar10", TINY), data_dir=data_dir)
    x, y = task.data
    assert x.shape == (16, 32, 32, 3) and y.shape == (16, 10)
    assert task.info["n_train"] == 16 and task.info["n_test"] == 40
    # Full batch is the default: every step and every measurement see the whole training set, and
    # the task_info a resumed run is checked against is as before minibatches existed.
    assert cifar_task.Config().batch_size == 0
    assert task.batch_fn(task.data, 7) is task.data and task.measure_batch_fn is task.batch_fn
    assert "batch_size" not in task.info
    # 1 block of 2 channels: conv 9*3*2 + 2, LayerNorm 2 + 2, dense 16*16*2*10 + 10.
    assert task.info["n_params"] == 56 + 4 + 5130
    # Independent truth: labels straight from the (checksummed) shared batches.
    raw = cifar_data.load(data_dir, n_train=16, n_test=40)
    np.testing.assert_array_equal(np.argmax(np.asarray(y), 1), raw.train.labels)
    params = task.init_params(jax.random.PRNGKey(0))
    model_out = np.asarray(jax.jit(lambda p, x: cifar_task.CNN(blocks=1, base_channels=2).apply(p, x))(params, x))
    onehot = np.eye(10)[raw.train.labels]
    assert float(task.loss_fn(params, task.data)) == pytest.approx(np.mean((model_out - onehot) ** 2), rel=1e-5)
    # Test metrics: the test images go through the training mean, and accuracy is argmax agreement.
    (_, _), (x_test, _) = cifar_data.preprocess(raw)
    test_out = np.asarray(cifar_task.CNN(blocks=1, base_channels=2).apply(params, x_test))
    metrics = task.evaluate(params)
    assert metrics["test_acc"] == pytest.approx(np.mean(test_out.argmax(1) == raw.test.labels))
    assert metrics["test_loss"] == pytest.approx(np.mean((test_out - np.eye(10)[raw.test.labels]) ** 2), rel=1e-5)


def test_a_tiny_run_records_test_accuracy(tmp_path, data_dir):
    out = tmp_path / "run"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    code = cli.main(["run", "cifar10", "--optimizer", "sam", "--steps", "2", "--measure-every", "1",
                     "--eval-every", "2", "--data-dir", str(data_dir), "--out", str(out), "--no-progress",
                     *sets])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    tests = [r.split(",")[header.index("test_acc")] for r in rows[1:]]
    assert len(tests) == 3 and tests[1] == "" and 0 <= float(tests[0]) <= 1 and 0 <= float(tests[2]) <= 1
    assert summary["final_test_acc"] == pytest.approx(float(tests[2]), abs=1e-6)


def _bad_data_dir(tmp_path, payload: bytes):
    folder = tmp_path / "bad" / "cifar10" / cifar_data.FOLDER
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(payload)
    (folder / "test_batch").write_bytes(payload)
    return tmp_path / "bad"


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo should-never-run",))


@pytest.mark.parametrize("case, match", [
    ("too_many", "asked for 10001 training examples"),
    ("malicious", "refused global"),
    ("not_pickle", "not a readable CIFAR-10 pickle|not a safe CIFAR-10 pickle"),
])
def test_cli_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, data_dir, capfd, case, match):
    out = tmp_path / "run"
    if case == "too_many":
        args = ["--data-dir", str(data_dir), "--set", "n_train=10001"]
    else:
        payload = pickle.dumps(_Evil()) if case == "malicious" else b"\x00\x01 not a pickle"
        args = ["--data-dir", str(_bad_data_dir(tmp_path, payload))]
    code = cli.main(["run", "cifar10", "--out", str(out), "--no-progress", *args])
    captured = capfd.readouterr()  # file-descriptor level: os.system's echo would land here
    assert code == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("samedge: error:")
    assert re.search(match, captured.err)
    assert "should-never-run" not in captured.out + captured.err
    assert not out.exists()  # failed before the run folder was created: nothing that looks complete


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def draws(key, n, b, steps):
    """The indices of steps 0 .. steps - 1, one compiled program."""
    return jax.vmap(lambda t: tasks.minibatch_indices(key, t, n, b))(jnp.arange(steps))


def test_the_minibatch_sampler_draws_without_replacement_deterministically():
    key = jax.random.PRNGKey(11)
    idx = np.asarray(draws(key, 10, 6, 2000))
    assert idx.shape == (2000, 6) and idx.dtype == np.int32 and idx.min() >= 0 and idx.max() < 10
    assert all(len(set(row)) == 6 for row in idx.tolist())  # no example twice within a batch
    np.testing.assert_array_equal(idx, np.asarray(draws(key, 10, 6, 2000)))  # a function of (key, step) ...
    np.testing.assert_array_equal(idx[123], np.asarray(tasks.minibatch_indices(key, 123, 10, 6)))  # ... eager too
    assert len({tuple(sorted(r)) for r in idx[:50].tolist()}) > 40  # and the steps differ
    other = np.asarray(draws(jax.random.PRNGKey(12), 10, 6, 2000))
    assert (np.sort(other, 1) != np.sort(idx, 1)).any(1).mean() > 0.9  # another seed, other batches


def test_the_minibatch_sampler_is_uniform_over_subsets_and_examples():
    # Chi-square against the uniform distribution (fixed keys, so deterministic); thresholds are
    # the 0.999 quantiles: 36.12 for 14 degrees of freedom, 85.35 for 49.
    key = jax.random.PRNGKey(5)
    pairs = np.sort(np.asarray(draws(key, 6, 2, 3000)), 1)
    subsets = list(itertools.combinations(range(6), 2))
    counts = np.array([np.sum((pairs[:, 0] == a) & (pairs[:, 1] == b)) for a, b in subsets])
    expected = 3000 / len(subsets)
    assert counts.sum() == 3000 and np.sum((counts - expected) ** 2 / expected) < 36.12
    counts = np.bincount(np.asarray(draws(key, 50, 7, 2000)).ravel(), minlength=50)
    expected = 2000 * 7 / 50
    assert np.sum((counts - expected) ** 2 / expected) < 85.35


def test_a_minibatch_cifar10_task(data_dir):
    settings = TINY | dict(batch_size=4)
    task = tasks.build_task("cifar10", tasks.make_task_config("cifar10", settings), data_dir=data_dir, seed=3)
    x, y = task.data
    assert task.info["batch_size"] == 4 and task.info["n_train"] == 16
    xb, yb = task.batch_fn(task.data, 5)
    assert xb.shape == (4, 32, 32, 3) and yb.shape == (4, 10)
    # The batch is 4 distinct training images with their own labels.
    rows = [int(np.flatnonzero(np.all(np.asarray(x) == np.asarray(xi), axis=(1, 2, 3)))[0]) for xi in xb]
    assert len(set(rows)) == 4
    np.testing.assert_array_equal(np.asarray(y)[rows], np.asarray(yb))
    # The measurement at a step is taken on that step's own minibatch; batches are functions of
    # (seed, step), traced or not, and the same in a rebuilt task (exact resume).
    assert task.measure_batch_fn is task.batch_fn
    again = tasks.build_task("cifar10", tasks.make_task_config("cifar10", settings), data_dir=data_dir, seed=3)
    traced = jax.jit(task.batch_fn)(task.data, jnp.asarray(5))
    for a, b, c in zip(task.batch_fn(task.data, 5), again.batch_fn(again.data, 5), traced):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    seed_4 = tasks.build_task("cifar10", tasks.make_task_config("cifar10", settings), data_dir=data_dir, seed=4)
    labels = lambda t, k: np.asarray(k.batch_fn(k.data, t)[1])  # noqa: E731
    assert any(not np.array_equal(labels(t, task), labels(t, seed_4)) for t in range(5))
    # batch_size = n_train is the whole set, in order: full batch.
    whole_config = tasks.make_task_config("cifar10", TINY | dict(batch_size=16))
    whole = tasks.build_task("cifar10", whole_config, data_dir=data_dir)
    assert whole.batch_fn(whole.data, 2) is whole.data and "batch_size" not in whole.info


def test_minibatch_training_resumes_exactly_and_follows_the_step_batches():
    """Through the training loop's compiled chunks: steps 0-3 in one chunk, or 1 then 3 (a resume at
    step 1), or plain SGD in Python over ``batch_fn(data, t)`` give the same parameters."""
    import flax.linen as nn

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 12)]
    task = tasks.full_batch_classification("toy", None, nn.Dense(3), (x, y), (x, y), source="synthetic",
                                           batch_size=4, seed=1)
    opt = optimizers.build("gd", 0.5)
    p0 = task.init_params(jax.random.PRNGKey(0))
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (the chunks donate their inputs)
    whole, _, losses = train.make_chunk(task, opt, 4)(copy(p0), opt.init(p0), task.data, jnp.asarray(0))
    p1, s1, _ = train.make_chunk(task, opt, 1)(copy(p0), opt.init(p0), task.data, jnp.asarray(0))
    resumed, _, _ = train.make_chunk(task, opt, 3)(p1, s1, task.data, jnp.asarray(1))
    @jax.jit
    def sgd_step(params, t):
        loss, grad = jax.value_and_grad(task.loss_fn)(params, task.batch_fn(task.data, t))
        return jax.tree.map(lambda p, g: p - 0.5 * g, params, grad), loss

    manual = p0
    for t in range(4):
        manual, loss = sgd_step(manual, t)
        assert float(losses[t]) == pytest.approx(float(loss), rel=1e-5)
    for a, b, c in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), jax.tree.leaves(manual)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)
