"""The CIFAR-10 task: presets, the built task against the raw data, config errors, and the CLI on bad
input (one line, exit 2, no run folder)."""

from __future__ import annotations

import json
import pickle
import re

import jax
import numpy as np
import pytest

from samedge import cli, config, tasks
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
])
def test_bad_settings_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tasks.make_task_config("cifar10", overrides)


def test_built_task_against_the_raw_data(data_dir):
    task = tasks.build_task("cifar10", tasks.make_task_config("cifar10", TINY), data_dir=data_dir)
    x, y = task.data
    assert x.shape == (16, 32, 32, 3) and y.shape == (16, 10)
    assert task.info["n_train"] == 16 and task.info["n_test"] == 40
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
