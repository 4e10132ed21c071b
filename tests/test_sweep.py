"""Sweeps: the grid, the CPU shares, skip/continue, failures recorded, and one real local sweep whose
run folders match a plain in-process run of the same config."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from samedge import cli, config, sweep
from samedge.errors import RunDirError
from samedge.store import RunStore, read_json, read_metrics

TINY = dict(n_train=256, n_test=256, width=32)  # a few seconds of compute per run
TINY_RUN = dict(steps=30, measure_every=10, eval_every=30)


def test_quick_grid_is_lr_by_rho_with_rho0_as_gd():
    p = __import__("samedge.tasks", fromlist=["x"]).get_preset("mnist", "quick")
    cfgs = sweep.expand_grid("mnist", "quick")
    assert len(cfgs) == len(p.grid_lr) * len(p.grid["rho"])
    assert {(c.optimizer, c.lr, c.hparams.get("rho", 0.0)) for c in cfgs} == {
        ("gd" if rho == 0 else "sam", lr, rho) for lr in p.grid_lr for rho in p.grid["rho"]}
    assert all(c.steps == p.steps and dict(c.task_config) == dict(p.task) for c in cfgs)
    names = [sweep.run_name(c) for c in cfgs]
    assert len(set(names)) == len(names)


def test_grid_lists_seeds_and_gd_collapse():
    cfgs = sweep.expand_grid("mnist", "quick", optimizers=["gd", "sam"], lrs=[0.1, 0.2], rho=[0.0, 0.5],
                             seeds=[0, 3], task_overrides=TINY, steps=7)
    # per seed and lr: gd once (rho ignored, and sam at rho 0 is the same gd run), sam at rho 0.5
    assert sorted((c.seed, c.lr, c.optimizer, c.hparams.get("rho", 0.0)) for c in cfgs) == sorted(
        (s, lr, o, r) for s in (0, 3) for lr in (0.1, 0.2) for o, r in (("gd", 0.0), ("sam", 0.5)))
    assert all(c.steps == 7 and c.task_config["width"] == 32 for c in cfgs)


@pytest.mark.parametrize("workers,cpus", [(1, [0, 1]), (2, [0, 1]), (2, [0, 1, 2, 3, 4]), (3, [0, 1])])
def test_cpu_slots_share_the_cpus(workers, cpus):
    slots = sweep.cpu_slots(workers, cpus)
    assert len(slots) == workers and all(slots)
    if workers <= len(cpus):  # disjoint, covering, sizes differing by at most one
        assert sorted(c for s in slots for c in s) == cpus
        assert max(map(len, slots)) - min(map(len, slots)) <= 1
    else:
        assert all(len(s) == 1 for s in slots)


def test_run_state_and_other_config_refused(tmp_path):
    cfg = config.resolve("mnist", "quick", task_overrides=TINY, **TINY_RUN)
    path = tmp_path / "run"
    assert sweep.run_state(path, cfg) == "new"
    store = RunStore.create(path, {"run": cfg.to_dict()})
    assert sweep.run_state(path, cfg) == "unfinished"
    for status, state in (("interrupted", "unfinished"), ("failed", "unfinished"),
                          ("diverged", "finished"), ("completed", "finished")):
        store.finish(status, {})
        assert sweep.run_state(path, cfg) == state
    other = config.resolve("mnist", "quick", task_overrides=TINY, **(TINY_RUN | {"steps": 31}))
    with pytest.raises(RunDirError, match="another configuration"):
        sweep.run_state(path, other)


# Runners for the local backend: module-level so a spawned worker can import them.
def fake_runner(cfg, path, *, data_dir=None):
    """Records the call and the thread limit it ran under, then finishes the run as completed."""
    store = RunStore.create(path, {"run": cfg.to_dict()}, overwrite=True)
    (path / "ran").write_text(json.dumps({"cpus": sorted(os.sched_getaffinity(0)),
                                          "xla": os.environ.get("XLA_FLAGS", "")}))
    if cfg.lr == 0.5:
        raise RuntimeError("boom at lr 0.5")
    if cfg.lr == 0.7:
        os._exit(9)  # the worker process dies without a word
    return store.finish("completed", {"steps_done": cfg.steps})


def test_failures_are_recorded_and_finished_runs_skipped(tmp_path):
    cfgs = sweep.expand_grid("mnist", "quick", lrs=[0.1, 0.5, 0.7], rho=[0.1], task_overrides=TINY, **TINY_RUN)
    logs = []
    results = sweep.run_sweep(cfgs, tmp_path, workers=2, runner=fake_runner, log=logs.append)
    status = {n: s["status"] for n, s in results.items()}
    assert status == {"mnist-sam-lr0.1-rho0.1-s0": "completed", "mnist-sam-lr0.5-rho0.1-s0": "failed",
                      "mnist-sam-lr0.7-rho0.1-s0": "failed"}
    assert "RuntimeError: boom at lr 0.5" in read_json(tmp_path / "mnist-sam-lr0.5-rho0.1-s0/summary.json")["error"]
    assert "exited with code 9" in read_json(tmp_path / "mnist-sam-lr0.7-rho0.1-s0/summary.json")["error"]
    assert sum(line.startswith("[") for line in logs) == 3 and logs[-1].startswith("[3/3]")
    shares = sweep.cpu_slots(2)  # two disjoint halves of this machine's CPUs
    for name in results:
        ran = json.loads((tmp_path / name / "ran").read_text())
        assert ran["cpus"] in shares and "--xla_cpu_multi_thread_eigen=false" in ran["xla"]
    # Again: the completed run is skipped, the failed ones are run again (and fail again).
    for name in results:
        (tmp_path / name / "ran").unlink()
    again = sweep.run_sweep(cfgs, tmp_path, workers=2, runner=fake_runner, log=logs.append)
    assert {n: s["status"] for n, s in again.items()} == status
    assert not (tmp_path / "mnist-sam-lr0.1-rho0.1-s0/ran").exists()
    assert (tmp_path / "mnist-sam-lr0.5-rho0.1-s0/ran").exists()
    assert "1 finished already, 2 to run" in logs[4]


def test_local_sweep_cli_runs_match_a_plain_run(tmp_path, data_dir, capsys):
    from samedge import tasks, train

    out = tmp_path / "D"
    args = ["sweep", "mnist", "--lr", "0.1", "--rho", "0,0.1", "--workers", "2", "--out", str(out),
            "--data-dir", str(data_dir), "--steps", "30", "--measure-every", "10", "--eval-every", "30"]
    args += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(args) == 0
    assert "2/2 runs finished" in capsys.readouterr().out
    for name in ("mnist-gd-lr0.1-s0", "mnist-sam-lr0.1-rho0.1-s0"):
        assert read_json(out / name / "summary.json")["status"] == "completed"
        assert (out / name / "sharpness.png").exists()
    # The sweep's SAM run against the same config trained here, in this process, on all CPUs.
    cfg = config.resolve("mnist", "quick", optimizer="sam", lr=0.1, rho=0.1, task_overrides=TINY, **TINY_RUN)
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", cfg.task_config), data_dir=data_dir)
    rows = []
    train.train(cfg, task, None, progress=False, on_row=rows.append)
    swept = read_metrics(out / "mnist-sam-lr0.1-rho0.1-s0")
    assert [r["step"] for r in swept] == [r["step"] for r in rows] == [0, 10, 20, 30]
    for key in ("loss", "lambda_max", "edge"):
        np.testing.assert_allclose([r[key] for r in swept], [r[key] for r in rows], rtol=1e-4)
    # A second time: nothing left to run.
    assert cli.main(args) == 0
    assert "2 finished already, 0 to run" in capsys.readouterr().out


def test_reproduce_sweeps_each_task_then_reports(tmp_path, data_dir, capsys):
    out = tmp_path / "R"
    args = ["reproduce", "--tasks", "mnist", "--lr", "0.2", "--rho", "0.1", "--steps", "10",
            "--measure-every", "5", "--eval-every", "10", "--out", str(out), "--data-dir", str(data_dir)]
    args += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "total wall time" in printed
    assert read_json(out / "mnist" / "mnist-sam-lr0.2-rho0.1-s0" / "summary.json")["status"] == "completed"
    lines = (out / "summary.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("mnist/mnist-sam-lr0.2-rho0.1-s0,mnist,quick,sam,0.2,0.1,rho=0.1,0,completed,10,")
    assert (out / "report.html").exists() and (out / "figures" / "sharpness_mnist_quick_s0.pdf").exists()


def test_an_optimizer_set_outside_the_grid_sweeps_at_its_own_step_size():
    """Adam's preset step size (1e-3) is not one of the quick MNIST grid's: a sweep without --lr runs
    it there, with a notice, while SAM still takes the grid; --lr overrides both."""
    p = __import__("samedge.tasks", fromlist=["x"]).get_preset("mnist", "quick")
    notices = []
    cfgs = sweep.expand_grid("mnist", "quick", optimizers=["sam", "adam"], rho=[0.1], notice=notices.append)
    assert sorted(c.lr for c in cfgs if c.optimizer == "adam") == [p.default_lr("adam")] == [1e-3]
    assert sorted(c.lr for c in cfgs if c.optimizer == "sam") == sorted(p.grid_lr)
    assert any("adam runs at the quick preset's step size 0.001" in n for n in notices)
    given = sweep.expand_grid("mnist", "quick", optimizers=["sam", "adam"], lrs=[0.2], rho=[0.1], notice=print)
    assert sorted((c.optimizer, c.lr) for c in given) == [("adam", 0.2), ("sam", 0.2)]


def test_an_optimizer_whose_rho_default_is_off_the_grid_keeps_it():
    """SAM's default rho (0.1) is one of the quick grid's: SAM takes the grid; SAM over Adam's (0.01) is
    not: it runs at 0.01, said so; --rho overrides."""
    notices = []
    cfgs = sweep.expand_grid("mnist", "quick", optimizers=["sam", "sam_adam"], lrs=[0.001], notice=notices.append)
    assert sorted(c.hparams["rho"] for c in cfgs if c.optimizer == "sam_adam") == [0.01]
    assert sorted(c.hparams.get("rho", 0.0) for c in cfgs if c.optimizer in ("sam", "gd")) == [0.0, 0.1, 0.3, 1.0]
    assert any("sam_adam runs at its rho 0.01" in n for n in notices)
    given = sweep.expand_grid("mnist", "quick", optimizers=["sam_adam"], lrs=[0.001], rho=[0.3], notice=print)
    assert [c.hparams["rho"] for c in given] == [0.3]
