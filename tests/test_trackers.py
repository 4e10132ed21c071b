"""Trackers: a run's rows read back from TensorBoard, MLflow and W&B (offline) against metrics.csv.

Every check reads what the tracker's own reader sees, against the run folder's ``metrics.csv``:
TensorBoard through TensorBoard's ``EventAccumulator`` (the reader behind its dashboards, which
honours a purge step), MLflow through ``MlflowClient`` on the run's own SQLite store, W&B through
its offline run's ``.wandb`` transaction log as ``wandb leet inspect --json`` prints it. Nothing here
touches the network: W&B runs with ``WANDB_MODE=offline`` and MLflow on a local file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samedge
from samedge import cli, store, sweep, trackers
from samedge.store import read_json, read_metrics

SETTINGS = dict(lr=0.1, rho=0.05, steps=20, measure_every=5, checkpoint_every=10, progress=False)
STEPS = [0, 5, 10, 15, 20]
TINY_MNIST = ["--set", "n_train=64", "--set", "n_test=32", "--set", "width=8", "--set", "depth=3"]


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _tiny_task():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x, y = jax.random.normal(k1, (64, 6)), jax.random.normal(k2, (64, 1))

    def loss_fn(p, batch):
        x, y = batch
        return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)

    init = lambda k: {"w1": jax.random.normal(k, (6, 8)) / 6 ** 0.5, "w2": jnp.zeros((8, 1))}  # noqa: E731
    return samedge.make_task("tiny", init, loss_fn, (x, y))


@pytest.fixture(scope="module")
def task():
    return _tiny_task()


def _quiet_env(mp, root: Path) -> None:
    """W&B offline with its folders under ``root`` (nothing in the home folder), MLflow's default store."""
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(var, str(root / var.lower()))
    mp.delenv("WANDB_API_KEY", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    _quiet_env(monkeypatch, tmp_path)


def expected(folder) -> dict[str, dict[int, float]]:
    """``metrics.csv`` as column -> step -> value, for the cells a tracker gets (not empty, not NaN)."""
    out: dict[str, dict[int, float]] = {}
    for row in read_metrics(folder):
        for key, value in row.items():
            if key != "step" and value is not None and not math.isnan(value):
                out.setdefault(key, {})[row["step"]] = value
    return out


def tb_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for ``logdir``: tag -> [(step, value)] in file order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_matches_csv(got: dict[str, list[tuple[int, float]]], folder, *, float32: bool) -> None:
    """Each metrics.csv column, at every step it has a value, once and equal (in float32 when the
    tracker stores float32); no point where the csv has none."""
    want = expected(folder)
    for key, by_step in want.items():
        steps = [s for s, _ in got[key]]
        assert steps == sorted(by_step), (key, steps)
        for step, value in got[key]:
            if float32:
                assert np.float32(value) == np.float32(by_step[step]), (key, step, value, by_step[step])
            else:
                assert value == by_step[step], (key, step, value, by_step[step])
    extra = set(got) - set(want) - {trackers.TRAIN_LOSS}
    assert not extra, extra


def assert_train_loss(got: dict[str, list[tuple[int, float]]], folder, steps: int) -> None:
    """``train_loss`` at every step once; at a check point it is the measured loss there (same
    parameters, same full batch, another compiled program)."""
    losses = dict(got[trackers.TRAIN_LOSS])
    assert [s for s, _ in got[trackers.TRAIN_LOSS]] == list(range(steps))
    for row in read_metrics(folder):
        if row["step"] < steps:
            assert losses[row["step"]] == pytest.approx(row["loss"], rel=1e-5)


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """One run of the tiny task watched by every tracker installed (TensorBoard, MLflow, W&B)."""
    pytest.importorskip("tensorboardX")
    root = tmp_path_factory.mktemp("watched")
    log = ["tensorboard"] + [name for name in ("mlflow", "wandb") if _installed(name)]
    with pytest.MonkeyPatch.context() as mp:
        _quiet_env(mp, root)
        summary = samedge.fit(_tiny_task(), "sam", out=root / "run", log=log, **SETTINGS)
    assert summary["status"] == "completed"
    return root / "run"


def test_tensorboard_scalars_equal_metrics_csv(watched):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    got = tb_scalars(watched / "tensorboard")
    assert_matches_csv(got, watched, float32=True)
    assert_train_loss(got, watched, 20)
    acc = EventAccumulator(str(watched / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert {"figures/sharpness", "figures/alignment", "figures/loss"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("figures/sharpness")] == [20]
    # the resolved config, as hyperparameters (the HParams tab) and as text
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["hparams.rho"].number_value == 0.05 and hparams["optimizer"].string_value == "sam"
    assert hparams["steps"].number_value == 20
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert read_json(watched / trackers.RECORD)["tensorboard"] == {"dir": "tensorboard"}


def mlflow_history(folder) -> tuple:
    """``(client, run, {key: [(step, value)]})`` of the run's MLflow run in its own SQLite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}")
    run = client.get_run(read_json(Path(folder) / trackers.RECORD)["mlflow"]["run_id"])
    history = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
               for k in run.data.metrics}
    return client, run, history


def test_mlflow_metrics_equal_metrics_csv(watched):
    pytest.importorskip("mlflow")
    client, run, got = mlflow_history(watched)
    assert_matches_csv(got, watched, float32=False)  # MLflow keeps float64: equal to the csv exactly
    assert_train_loss(got, watched, 20)
    config = read_json(watched / "config.json")["run"]
    assert run.data.params == {k: str(v) for k, v in trackers.flatten(config).items()}
    assert run.data.params["hparams.rho"] == "0.05" and run.info.run_name == "run"
    assert run.info.status == "FINISHED" and run.data.tags["samedge.status"] == "completed"
    figures = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"sharpness.png", "alignment.png", "loss.png"}


def wandb_records(run_file: Path) -> list[dict]:
    """The records of an offline W&B run's ``.wandb`` log, as W&B's own reader prints them."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if done.returncode != 0 and "No such command" in done.stderr:
        pytest.skip("this wandb has no `wandb leet inspect` to read a .wandb file")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def wandb_history(run_file: Path) -> tuple[dict[int, dict], dict]:
    """``({step: merged history item}, run record)`` of an offline run."""
    history: dict[int, dict] = {}
    run = {}
    for record in wandb_records(run_file):
        if record.get("type") == "history":
            item = record["history"]["item"]
            history.setdefault(int(item["_step"]), {}).update(item)
        elif record.get("type") == "run":
            run = record["run"]
    return history, run


def test_wandb_offline_history_equals_metrics_csv(watched):
    """What the offline run's log holds, read by W&B's own reader: every row at its step (float64,
    equal to the csv), the training loss at every step, the config, the figures at the last step.
    What it cannot check: the upload (``wandb sync``), W&B's server and dashboards, the images' pixels."""
    pytest.importorskip("wandb")
    (run_file,) = (watched / "wandb").glob("offline-run-*/run-*.wandb")
    history, run = wandb_history(run_file)
    got = {}
    for step in sorted(history):
        for key, value in history[step].items():
            if not key.startswith("_") and not key.startswith("figures/"):
                got.setdefault(key, []).append((step, value))
    assert_matches_csv(got, watched, float32=False)
    assert_train_loss(got, watched, 20)
    for name in ("sharpness", "alignment", "loss"):  # W&B's image records, flattened by its reader
        assert history[20][f"figures/{name}._type"] == "image-file"
        assert history[20][f"figures/{name}.path"].startswith(f"media/images/figures/{name}_20_")
    assert run["run_id"] == read_json(watched / trackers.RECORD)["wandb"]["id"] and run["display_name"] == "run"
    config = run["config"]["update"]
    assert config["hparams"] == {"rho": 0.05} and config["optimizer"] == "sam" and config["steps"] == 20


def _kill_at(monkeypatch, step: int):
    real = store.RunStore.append

    def dies(self, row):
        real(self, row)
        if row["step"] == step:
            raise RuntimeError("killed")

    monkeypatch.setattr(store.RunStore, "append", dies)
    return real


def test_killed_and_resumed_run_has_each_step_once(tmp_path, monkeypatch, task):
    """Killed after the row of step 15 (checkpoint at 10): the trackers had rows 0-10 and training
    losses 0-14; the resumed run recomputes from 10. TensorBoard shows each step once (the event
    files do hold steps 10-14 twice: the purge at 10 hides the first ones); MLflow holds each once;
    a tracker added at the resume gets the rows up to the checkpoint, then the rest, each once."""
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    log = ["tensorboard"] + [name for name in ("mlflow", "wandb") if _installed(name)]
    out = tmp_path / "cut"
    real = _kill_at(monkeypatch, 15)
    with pytest.raises(RuntimeError, match="killed"):
        samedge.fit(task, "sam", out=out, log=log, **SETTINGS)
    monkeypatch.setattr(store.RunStore, "append", real)
    added = trackers.Memory()
    resumed = samedge.fit(task, "sam", out=out, log=log + [added], resume=True, **SETTINGS)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == 10
    assert [r["step"] for r in read_metrics(out)] == STEPS
    assert sorted(s for s, v in added.steps.items() if "lambda_max" in v) == STEPS
    assert sorted(s for s, v in added.steps.items() if trackers.TRAIN_LOSS in v) == list(range(10, 20))
    assert len(added.sent) == len(set(added.sent)) and added.status == "completed"

    got = tb_scalars(out / "tensorboard")
    assert_matches_csv(got, out, float32=True)
    assert_train_loss(got, out, 20)
    # without the purge the steps would repeat: the two event files hold 10..14 twice
    written: dict[tuple[str, int], int] = {}
    files = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2
    for f in files:
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                written[(value.tag, event.step)] = written.get((value.tag, event.step), 0) + 1
    assert [s for s in range(20) if written[(trackers.TRAIN_LOSS, s)] == 2] == [10, 11, 12, 13, 14]
    assert written[("lambda_max", 10)] == 2 and written[("lambda_max", 15)] == 1

    if "mlflow" in log:
        _, run, history = mlflow_history(out)
        assert_matches_csv(history, out, float32=False)
        assert_train_loss(history, out, 20)
        assert run.info.status == "FINISHED"
    if "wandb" in log:  # offline: a second folder of the same run id, from the checkpoint step on
        first, second = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda f: f.parent.name)
        assert first.name == second.name == f"run-{read_json(out / trackers.RECORD)['wandb']['id']}.wandb"
        history, _ = wandb_history(second)
        assert min(history) == 10 and max(history) == 20 and "lambda_max" in history[10]


class Raises(trackers.Tracker):
    """A tracker that raises at every call."""

    name = "raises"

    def start(self, run):
        raise OSError(28, "No space left on device")

    def scalars(self, step, values):
        raise OSError(28, "No space left on device")

    def close(self, status):
        raise OSError(28, "No space left on device")


class DiesLater(trackers.Tracker):
    """Starts, then raises from its third call on (at close too)."""

    name = "dies-later"

    def __init__(self):
        self.calls = 0

    def scalars(self, step, values):
        self.calls += 1
        if self.calls >= 3:
            raise RuntimeError("connection reset\nby peer")

    def close(self, status):
        raise RuntimeError("still broken")


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "samedge: warning: tracker" in line]


def test_a_tracker_that_raises_at_every_call_leaves_the_run_whole(tmp_path, task, capsys):
    summary = samedge.fit(task, "sam", out=tmp_path / "r", log=[Raises()], **SETTINGS)
    assert summary["status"] == "completed"
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == STEPS and all(r["lambda_max"] > 0 for r in rows)
    (line,) = _warnings(capsys.readouterr().err)
    assert "tracker raises dropped" in line and "No space left on device" in line


def test_failing_trackers_are_dropped_one_line_each_and_the_others_go_on(tmp_path, task, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # not installed
    mem, later = trackers.Memory(), DiesLater()
    summary = samedge.fit(task, "sam", out=tmp_path / "r", log=["tensorboard", later, mem], **SETTINGS)
    assert summary["status"] == "completed"
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 2
    assert "tracker tensorboard dropped" in lines[0] and "pip install 'samedge[tensorboard]'" in lines[0]
    assert "tracker dies-later dropped" in lines[1] and "connection reset by peer" in lines[1]
    assert later.calls == 3
    assert sorted(s for s, v in mem.steps.items() if "lambda_max" in v) == STEPS and mem.status == "completed"
    assert len(mem.figures) == 3 and all(p.suffix == ".png" for p in mem.figures)
    assert [r["step"] for r in read_metrics(tmp_path / "r")] == STEPS


def test_own_loop_sends_measurement_rows(tmp_path):
    """Your own loop: ``trackers.start`` and ``Trackers.log(row, step=t)`` with the measurement's rows."""
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 4))
    loss_fn = lambda p, b: jnp.mean((b @ p["w"]) ** 2)  # noqa: E731
    params = {"w": jnp.ones((4, 1))}
    opt = samedge.optimizer("gd", 0.05)
    m = samedge.measurement(loss_fn, opt, samedge.MeasureSettings())
    state, opt_state = m.init(params, jax.random.PRNGKey(1)), opt.init(params)
    sent = []
    with trackers.start(["tensorboard"], tmp_path / "mine", config={"lr": 0.05}) as log:
        for t in range(3):
            row, state = m.measure(params, x, state, jax.random.PRNGKey(t), opt_state)
            log.log(row, step=10 * t)
            sent.append(trackers.scalars_of(row))
            params, opt_state, loss = opt.update(params, opt_state, jax.value_and_grad(lambda p: loss_fn(p, x)))
    got = tb_scalars(tmp_path / "mine" / "tensorboard")
    assert [s for s, _ in got["lambda_max"]] == [0, 10, 20]
    for key in ("loss", "lambda_max", "grad_norm", "edge"):
        assert [v for _, v in got[key]] == [np.float32(r[key]) for r in sent]


def test_cli_log_flags(tmp_path, data_dir, capsys):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    base = ["run", "mnist", *TINY_MNIST, "--optimizer", "gd", "--lr", "0.1", "--steps", "4", "--measure-every", "2",
            "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]
    assert cli.main(base + ["--log", "neptune"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--log neptune: unknown tracker" in err and not out.exists()
    assert cli.main(base + ["--log", "tensorboard"]) == 0
    assert_matches_csv(tb_scalars(out / "tensorboard"), out, float32=True)
    # --log is no part of the run's identity: the config has no trace of it
    assert "log" not in read_json(out / "config.json")["run"]
    args = cli.build_parser().parse_args(["resume", str(out), "--log", "wandb", "--log", "mlflow=sqlite:///x.db"])
    assert args.log == ["wandb", "mlflow=sqlite:///x.db"]
    sweep_args = cli.build_parser().parse_args(["sweep", "mnist", "--out", "s", "--log", "tensorboard=tb"])
    assert sweep_args.log == ["tensorboard=tb"]


def recording_runner(cfg, path, *, data_dir=None, trackers=()):
    """A sweep runner that records the trackers it was given."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "trackers-given").write_text(json.dumps(list(trackers)))
    return {"status": "completed"}


def plain_runner(cfg, path, *, data_dir=None):
    """A runner of one's own without a ``trackers`` keyword."""
    return {"status": "completed"}


def test_sweep_hands_the_trackers_to_each_run(tmp_path, data_dir):
    """The specs reach the runner through run_job (local workers) and _ray_main (Ray tasks); the
    default runner hands them to execute, whose run is then watched."""
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    from samedge import config

    cfg = config.resolve("mnist", "quick", optimizer="gd", lr=0.1, steps=4, measure_every=2,
                         task_overrides={"n_train": 64, "n_test": 32, "width": 8, "depth": 3})
    sweep.run_job(cfg, tmp_path / "a", runner=recording_runner, trackers=["tensorboard", "mlflow=x"])
    assert json.loads((tmp_path / "a" / "trackers-given").read_text()) == ["tensorboard", "mlflow=x"]
    sweep._ray_main(cfg, tmp_path / "b", None, recording_runner, ("wandb",))
    assert json.loads((tmp_path / "b" / "trackers-given").read_text()) == ["wandb"]
    assert sweep.run_job(cfg, tmp_path / "c", runner=plain_runner)["status"] == "completed"
    summary = sweep.run_job(cfg, tmp_path / "d", data_dir=data_dir, trackers=["tensorboard"])
    assert summary["status"] == "completed"
    assert [s for s, _ in tb_scalars(tmp_path / "d" / "tensorboard")["lambda_max"]] == [0, 2, 4]


def test_wandb_goes_offline_without_a_key(tmp_path, monkeypatch):
    """No ``WANDB_MODE``, no API key, no netrc: offline, decided without touching the network."""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    assert trackers._wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers._wandb_mode() is None  # W&B reads it itself


def test_core_imports_no_tracker_library():
    code = ("import sys, samedge.trackers, samedge.run, samedge.cli, samedge.sweep; "
            "from samedge import trackers; [trackers.make(n) for n in trackers.NAMES]; "
            "print(sorted(m for m in ('tensorboardX', 'tensorboard', 'wandb', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
