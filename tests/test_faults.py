"""The fault suite: every bad input a user can give, through the CLI (``samedge.cli.main``).

Each case asserts the exit code, a substring of the one-line message, that no traceback was
printed, that no run folder claims success (no ``summary.json`` with status ``completed``), and
for configuration and output-folder faults that they were caught before any data was read.
The kill, signal and crash-during-checkpoint faults are in ``test_resume.py``; checkpoint file
faults and the divergence rules in ``test_checkpoint.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import http.server
import json
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from samedge import cli, config, tasks
from samedge.data import mnist as mnist_data
from samedge.store import RunStore

IMAGES, LABELS = "images", "labels"


def _no_success(root: Path) -> None:
    for summary in Path(root).rglob("summary.json"):
        assert json.loads(summary.read_text()).get("status") != "completed", summary


def _fails(argv, capsys, root, needle, code=2):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert needle in err, err
    # One error line, the last one (a download may log its attempt above it), and no traceback.
    lines = err.splitlines()
    assert lines[-1].startswith("samedge: error: ") and err.count("samedge: error") == 1, err
    assert "Traceback" not in err, err
    _no_success(root)
    return err


@pytest.fixture
def no_data_read(monkeypatch):
    """Fails the test if a task's data is loaded (the fault should be caught before)."""

    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the fault was reported")

    monkeypatch.setattr(tasks, "build_task", refuse)


# --- configuration -------------------------------------------------------------------------------
CONFIG_FAULTS = [
    (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["--lr", "nan"], "--lr must be > 0, got nan"),
    (["--rho", "-0.1"], "--rho must be >= 0"),
    (["--optimizer", "momentum", "--momentum", "1"], "--momentum must be in [0, 1)"),
    # A setting the optimizer does not have is refused, not recorded as if it meant something.
    (["--optimizer", "gd", "--rho", "0.1"], "gd has no rho (its settings: lr, weight_decay)"),
    (["--momentum", "0.9"], "sam has no momentum (its settings: lr, rho, weight_decay)"),
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--measure-every", "-3"], "--measure-every must be an integer >= 1"),
    (["--topk", "0"], "--topk must be an integer >= 1"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--checkpoint-every", "-5"], "--checkpoint-every must be an integer >= 0, got -5"),
    (["--diverge-factor", "0.5"], "--diverge-factor must be > 1, got 0.5"),
    (["--optimizer", "adamw"], "unknown optimizer 'adamw'"),
    (["--preset", "huge"], "unknown preset 'huge' for task mnist"),
    (["--set", "bogus=1"], "unknown mnist setting(s) bogus"),
    (["--set", "width=abc"], "mnist width must be a positive integer, got 'abc'"),
    (["--set", "depth=0"], "mnist depth must be a positive integer, got 0"),
    (["--set", "width"], "--set expects KEY=VALUE, got 'width'"),
]


@pytest.mark.parametrize("extra,needle", CONFIG_FAULTS, ids=[" ".join(c[0]) for c in CONFIG_FAULTS])
def test_bad_config_values(extra, needle, tmp_path, capsys, no_data_read):
    _fails(["run", "mnist", "--out", str(tmp_path / "run"), *extra], capsys, tmp_path, needle)
    assert not (tmp_path / "run").exists()


def test_unknown_task(tmp_path, capsys, no_data_read):
    _fails(["run", "imagenet", "--out", str(tmp_path / "run")], capsys, tmp_path,
           "unknown task 'imagenet'; choose one of mnist")


def test_unparsable_number_is_an_argparse_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "mnist", "--lr", "fast", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --lr: invalid float value: 'fast'" in err and "Traceback" not in err


CONFIG_FILE_FAULTS = [
    (None, "file not found"),
    ("{'lr': 0.1}", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2"),
    ("[0.1, 0.2]", "expected a JSON object of settings, got list"),
    ('{"lr": 0.1, "learning_rate": 0.2}', "unknown setting(s) learning_rate"),
    ('{"steps": 1.5}', "--steps must be an integer >= 1, got 1.5"),
    ('{"lr": "0.1"}', "--lr must be > 0, got '0.1'"),
    ('{"measure_sam_point": "yes"}', "measure_sam_point must be true or false, got 'yes'"),
    ('{"topk": 5, "lanczos_max_iters": 3}', "topk (5) must not exceed lanczos_max_iters (3)"),
    ('{"task": "cifar10"}', "is for task 'cifar10', the command line asks for 'mnist'"),
    ('{"task_config": {"width": -3}}', "mnist width must be a positive integer, got -3"),
    ('{"task_config": {"heads": 2}}', "unknown mnist setting(s) heads"),
    ('{"task_config": 5}', "task_config must be an object, got int"),
    ('{"preset": "giant"}', "unknown preset 'giant'"),
]


@pytest.mark.parametrize("content,needle", CONFIG_FILE_FAULTS, ids=[n for _, n in CONFIG_FILE_FAULTS])
def test_bad_config_file(content, needle, tmp_path, capsys, no_data_read):
    path = tmp_path / "settings.json"
    if content is not None:
        path.write_text(content)
    _fails(["run", "mnist", "--config", str(path), "--out", str(tmp_path / "run")], capsys, tmp_path, needle)


def test_config_file_values_apply_and_flags_override_them(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"optimizer": "gd", "lr": 0.5, "steps": 30, "task_config": {"width": 8}}')
    args = cli.build_parser().parse_args(["run", "mnist", "--config", str(path), "--steps", "40"])
    cfg = cli._resolve(args, "mnist")
    assert (cfg.optimizer, cfg.lr, cfg.steps, cfg.task_config["width"]) == ("gd", 0.5, 40, 8)
    # A run's own config.json reproduces it.
    RunStore.create(tmp_path / "r", {"run": cfg.to_dict(), "task_info": {}})
    args = cli.build_parser().parse_args(["run", "mnist", "--config", str(tmp_path / "r" / "config.json")])
    assert cli._resolve(args, "mnist") == cfg


# --- data files ------------------------------------------------------------------------------------
def _idx(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


def _mnist_folder(root: Path, n_train=40, n_test=20, **replace) -> Path:
    """A small MNIST in the official layout; ``replace`` maps file name -> bytes written instead."""
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, magic, array in (("images-idx3", 0x803, images), ("labels-idx1", 0x801, labels)):
            name = f"{prefix}-{kind}-ubyte.gz"
            (folder / name).write_bytes(replace.get(name, gzip.compress(_idx(magic, array))))
    return root


TINY = ["--set", "n_train=40", "--set", "n_test=20", "--set", "width=8", "--steps", "2", "--measure-every", "1"]
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
GOOD_IMAGES = gzip.compress(_idx(0x803, np.zeros((40, 28, 28), np.uint8)))
DATA_FAULTS = [
    ({TRAIN_IMAGES: GOOD_IMAGES[: len(GOOD_IMAGES) // 2]}, "train-images-idx3-ubyte.gz: truncated (the gzip stream ends early)"),
    ({TRAIN_IMAGES: b"this is not gzip"}, "train-images-idx3-ubyte.gz: not a readable gzip file"),
    ({TRAIN_IMAGES: gzip.compress(b"\x00\x00")}, "train-images-idx3-ubyte.gz: truncated (2 bytes, no IDX header)"),
    ({TRAIN_IMAGES: gzip.compress(_idx(0x801, np.zeros((40, 28, 28), np.uint8)))},
     "wrong magic number 0x00000801, expected 0x00000803"),
    ({TRAIN_IMAGES: gzip.compress(_idx(0x803, np.zeros((40, 28, 28), np.uint8))[:-100])},
     "wrong size: header promises 31360 bytes of data (40, 28, 28), file holds 31260"),
    ({TRAIN_IMAGES: gzip.compress(_idx(0x803, np.zeros((40, 20, 20), np.uint8)))},
     "train images (40, 20, 20) do not match labels (40,)"),
    ({TRAIN_LABELS: gzip.compress(_idx(0x801, np.zeros(39, np.uint8)))}, "train images (40, 28, 28) do not match labels (39,)"),
    ({TRAIN_LABELS: gzip.compress(_idx(0x801, np.full(40, 12, np.uint8)))}, "train labels outside 0..9"),
]


@pytest.mark.parametrize("replace,needle", DATA_FAULTS, ids=[n.split(": ")[-1][:40] for _, n in DATA_FAULTS])
def test_bad_data_files(replace, needle, tmp_path, capsys):
    data = _mnist_folder(tmp_path / "data", **replace)
    _fails(["run", "mnist", *TINY, "--data-dir", str(data), "--out", str(tmp_path / "run"), "--no-progress"],
           capsys, tmp_path, needle)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_missing_data_file_says_where_it_looked(tmp_path, capsys):
    data = _mnist_folder(tmp_path / "data")
    (data / "mnist" / TRAIN_LABELS).unlink()
    err = _fails(["run", "mnist", *TINY, "--data-dir", str(data), "--out", str(tmp_path / "run")], capsys, tmp_path,
                 f"{data / 'mnist' / TRAIN_LABELS} not found (looked in {data / 'mnist'} given by --data-dir)")
    assert "put the official files there" in err


def test_more_examples_asked_than_the_data_holds(tmp_path, capsys):
    data = _mnist_folder(tmp_path / "data")
    _fails(["run", "mnist", "--set", "n_train=100", "--data-dir", str(data), "--out", str(tmp_path / "run")],
           capsys, tmp_path, "asked for 100 training examples, the data holds 40")


@pytest.fixture
def local_mirror(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/mirror``, set as the only MNIST mirror; no
    data folder configured, so the loader must download (into the test's own cache)."""
    root = tmp_path / "mirror"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    real = mnist_data.remote_files
    monkeypatch.setattr(mnist_data, "remote_files", lambda base_urls=None: real((url,)))
    monkeypatch.delenv("SAMEDGE_DATA_DIR", raising=False)
    monkeypatch.delenv("SAMEDGE_OFFLINE", raising=False)  # downloads allowed: from 127.0.0.1 only
    import pooch

    # pooch's logger keeps the stderr of the first test that used it, which pytest then closes.
    monkeypatch.setattr(pooch.get_logger(), "disabled", True)
    yield root, url
    server.shutdown()
    server.server_close()


def test_checksum_mismatch_names_file_expected_and_found(local_mirror, tmp_path, capsys):
    import hashlib

    root, url = local_mirror
    _mnist_folder(tmp_path / "fake")
    for name in mnist_data.FILES:
        (root / name).write_bytes((tmp_path / "fake" / "mnist" / name).read_bytes())
    found = hashlib.md5((root / TRAIN_IMAGES).read_bytes()).hexdigest()
    err = _fails(["run", "mnist", *TINY, "--out", str(tmp_path / "run")], capsys, tmp_path,
                 f"{url}{TRAIN_IMAGES}: checksum mismatch for {TRAIN_IMAGES}: "
                 f"expected {mnist_data.FILES[TRAIN_IMAGES]}, found {found}")
    assert "MNIST not found in" in err and "put the four official *.gz files" in err
    assert not any((tmp_path / "cache").rglob(TRAIN_IMAGES))  # the bad download was not kept


def test_unreachable_download_says_where_it_looked_and_what_to_do(local_mirror, tmp_path, capsys):
    _fails(["run", "mnist", *TINY, "--out", str(tmp_path / "run")], capsys, tmp_path,
           f"MNIST not found in {tmp_path / 'cache' / 'mnist'} (cache), and could not download")
    err_dirs = list((tmp_path / "cache").rglob("*.gz"))
    assert err_dirs == []


# --- the output folder -----------------------------------------------------------------------------
def _existing_run(out: Path, status: str | None, **overrides) -> list[str]:
    """A run folder as the CLI would leave it, for ``mnist`` with ``overrides``; returns its flags."""
    flags = ["--lr", "0.1", "--steps", "30", *[a for k, v in overrides.items() for a in (f"--{k}", str(v))]]
    args = cli.build_parser().parse_args(["run", "mnist", *flags])
    store = RunStore.create(out, {"run": cli._resolve(args, "mnist").to_dict(), "task_info": {}})
    if status is not None:
        store.finish(status, {})
    return ["run", "mnist", *flags, "--out", str(out)]


def test_another_configuration_in_the_folder_is_refused(tmp_path, capsys, no_data_read):
    argv = _existing_run(tmp_path / "run", None)
    argv[argv.index("--lr") + 1] = "0.2"
    for extra in ([], ["--resume"]):
        _fails(argv + extra, capsys, tmp_path, "holds a run with another configuration (lr 0.1 there, 0.2 here)")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"]["lr"] == 0.1  # untouched


@pytest.mark.parametrize("status", [None, "interrupted", "failed"])
def test_same_configuration_unfinished_says_resume(status, tmp_path, capsys, no_data_read):
    out = tmp_path / "run"
    argv = _existing_run(out, status)
    err = _fails(argv, capsys, tmp_path, f"continue it with `samedge resume {out}` (or --resume)")
    assert f"holds an unfinished run of this configuration ({status or 'unfinished'})" in err


def test_same_configuration_completed_needs_overwrite(tmp_path, capsys, no_data_read):
    argv = _existing_run(tmp_path / "run", None)
    RunStore(tmp_path / "run").finish("completed", {})
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a run of this configuration, completed; pass --overwrite" in err
    assert cli.main(argv + ["--resume"]) == 0  # nothing to resume: said, not an error
    assert "already completed; nothing to resume" in capsys.readouterr().out


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys, no_data_read):
    _fails(["run", "mnist", "--out", str(tmp_path / "run"), "--resume", "--overwrite"], capsys, tmp_path,
           "--resume and --overwrite contradict each other")


def test_out_is_a_file(tmp_path, capsys, no_data_read):
    (tmp_path / "run").write_text("")
    _fails(["run", "mnist", "--out", str(tmp_path / "run")], capsys, tmp_path, "exists and is not a folder")


def test_out_below_a_file_cannot_be_created(tmp_path, capsys, no_data_read):
    (tmp_path / "file").write_text("")
    _fails(["run", "mnist", "--out", str(tmp_path / "file" / "run")], capsys, tmp_path,
           f"cannot create {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the folder-below-a-file case covers it")
def test_unwritable_out(tmp_path, capsys, no_data_read):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        _fails(["run", "mnist", "--out", str(locked / "run")], capsys, tmp_path, f"cannot write to {locked}")
    finally:
        locked.chmod(0o700)


# --- resume of a folder that cannot be resumed ------------------------------------------------------
def test_resume_of_no_folder(tmp_path, capsys):
    _fails(["resume", str(tmp_path / "nothing")], capsys, tmp_path, "no such run folder")


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    _fails(["resume", str(tmp_path)], capsys, tmp_path, "holds no run (config.json not found)")


def test_resume_with_a_corrupt_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"run": {"lr": 0.1,')
    _fails(["resume", str(tmp_path)], capsys, tmp_path, "config.json: unreadable")


def test_resume_with_an_edited_config(tmp_path, capsys):
    _existing_run(tmp_path / "run", "interrupted")
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    saved["run"]["lr"] = -2
    path.write_text(json.dumps(saved))
    _fails(["resume", str(tmp_path / "run")], capsys, tmp_path, "--lr must be > 0, got -2")
    saved["run"]["lr"], saved["run"]["nesterov"] = 0.1, True
    path.write_text(json.dumps(saved))
    _fails(["resume", str(tmp_path / "run")], capsys, tmp_path, "unknown setting(s) nesterov in config")


def test_resume_when_the_model_changed_is_refused(tmp_path, capsys):
    data = _mnist_folder(tmp_path / "data")
    base = ["run", "mnist", "--set", "n_train=40", "--set", "n_test=20", "--set", "width=8", "--out", str(tmp_path / "run")]
    cfg = cli._resolve(cli.build_parser().parse_args(base), "mnist")
    info = {"data_source": "x", "n_train": 40, "n_test": 20, "n_params": 12345}
    RunStore.create(tmp_path / "run", {"run": cfg.to_dict(), "task_info": info})
    hidden = cfg.task_config["depth"] - 2  # hidden-to-hidden layers of the preset's MLP, width 8
    _fails(["resume", str(tmp_path / "run"), "--data-dir", str(data)], capsys, tmp_path,
           f"the task's data or model differ from the run's (n_params 12345 then, {784 * 8 + 8 + hidden * (8 * 8 + 8) + 8 * 10 + 10} now)")


def test_resume_with_a_corrupt_checkpoint(tmp_path, capsys):
    data = _mnist_folder(tmp_path / "data")
    argv = ["run", "mnist", "--set", "n_train=40", "--set", "n_test=20", "--set", "width=8", "--out", str(tmp_path / "run")]
    cfg = cli._resolve(cli.build_parser().parse_args(argv), "mnist")
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", cfg.task_config), data_dir=data)
    RunStore.create(tmp_path / "run", {"run": cfg.to_dict(), "task_info": task.info})
    (tmp_path / "run" / "checkpoint.msgpack").write_bytes(b"\x81\xa6format")
    _fails(["resume", str(tmp_path / "run"), "--data-dir", str(data)], capsys, tmp_path,
           "checkpoint.msgpack: unreadable checkpoint")


def test_traceback_on_request(tmp_path, no_data_read):
    with pytest.raises(config.ConfigError, match="--lr must be > 0"):
        cli.main(["--traceback", "run", "mnist", "--lr", "-1", "--out", str(tmp_path / "run")])


# --- a run that diverges --------------------------------------------------------------------------
def test_divergence_stops_the_run_keeps_rows_and_a_finite_checkpoint(tmp_path, capsys, data_dir):
    from flax import serialization

    from samedge.store import read_metrics

    out = tmp_path / "run"
    # GD at lr 12 is far beyond 2/lambda_max (lambda_max ~1.3 here): the loss blows up within a few steps.
    rc = cli.main(["run", "mnist", "--optimizer", "gd", "--lr", "12", "--set", "n_train=256", "--set", "n_test=256",
                   "--set", "width=32", "--set", "depth=4", "--set", "activation=relu", "--steps", "40", "--measure-every", "2", "--checkpoint-every", "2",
                   "--eval-every", "40", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"])
    assert rc == 0  # diverging is a result, not an error: a sweep goes on
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged", summary
    rows = read_metrics(out)
    blown = float(summary["diverged_reason"].rsplit("loss ", 1)[1].split()[0])  # "... loss X at step N"
    assert blown > 1000 * rows[0]["loss"]  # the default diverge_factor
    assert all(np.isfinite(r["loss"]) and r["loss"] <= 1000 * rows[0]["loss"] for r in rows)
    assert len(rows) >= 2 and rows[-1]["step"] < summary["steps_done"] < 40
    # The last checkpoint is the last kept row's, with finite parameters.
    raw = serialization.msgpack_restore((out / "checkpoint.msgpack").read_bytes())
    assert raw["step"] == summary["checkpoint_step"] == rows[-1]["step"]
    assert all(np.isfinite(np.asarray(x)).all() for x in _leaves(raw["params"]))
    assert cli.main(["resume", str(out)]) == 0
    assert "already diverged; nothing to resume" in capsys.readouterr().out


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]


@pytest.mark.parametrize("status", [None, "interrupted"])
def test_weight_decay_an_old_run_folder_is_still_this_configuration(status, tmp_path, capsys, no_data_read):
    """A config.json written before weight decay, its mask and the bounded basis existed (no such keys,
    hparams without weight_decay) is the same configuration as today's defaults: the run is offered to
    resume, not refused as another, and keeps its folder name."""
    from samedge import config, run

    out = tmp_path / "run"
    argv = _existing_run(out, status, optimizer="sam", rho=0.1)
    saved = json.loads((out / "config.json").read_text())
    for key in ("decay_mask", "max_basis"):
        del saved["run"][key]
    assert "weight_decay" not in saved["run"]["hparams"]
    (out / "config.json").write_text(json.dumps(saved))
    err = _fails(argv, capsys, tmp_path, f"continue it with `samedge resume {out}` (or --resume)")
    assert "another configuration" not in err
    old = config.from_dict(saved["run"])
    assert run.run_name(old) == "mnist-sam-lr0.1-rho0.1-s0" and old.decay_mask == "weights" and old.max_basis == 0
    decayed = dataclasses.replace(old, hparams={"rho": 0.1, "weight_decay": 5e-4}, decay_mask="all")
    assert run.run_name(decayed) == "mnist-sam-lr0.1-rho0.1-wd0.0005-decayall-s0"
