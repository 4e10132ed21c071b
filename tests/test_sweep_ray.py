"""The Ray backend on a local 2-CPU cluster: a worker SIGKILLed while its run is under way is retried,
and every run of the sweep ends completed with all its measurements (none lost)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install -e '.[ray]' to run these")

from samedge import sweep  # noqa: E402
from samedge.store import read_json, read_metrics  # noqa: E402

TINY = dict(n_train=256, n_test=256, width=32)
STEPS = 30


def _kill_first_run_under_way(out, names, killed, stop):
    """SIGKILL the worker of the first run that has started training (its config.json is written)."""
    while not stop.is_set():
        for name in names:
            path = out / name
            if (path / "config.json").exists() and (path / sweep.WORKER_FILE).exists():
                try:
                    pid = read_json(path / sweep.WORKER_FILE)["pid"]
                except (OSError, ValueError, KeyError):
                    continue  # being written
                os.kill(pid, signal.SIGKILL)
                killed.update(name=name, pid=pid)
                return
        time.sleep(0.05)


def test_ray_sweep_retries_a_killed_worker_and_loses_no_run(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token written under $HOME for a local test
    # Ray starts workers at niceness 15: on a shared, busy CI machine they would barely get a core.
    monkeypatch.setenv("RAY_worker_niceness", "0")
    out = tmp_path / "D"
    cfgs = sweep.expand_grid("mnist", "quick", lrs=[0.1], rho=[0.0, 0.1, 0.3], task_overrides=TINY,
                             steps=STEPS, measure_every=10, eval_every=STEPS)
    names = [sweep.run_name(c) for c in cfgs]
    killed, stop = {}, threading.Event()
    killer = threading.Thread(target=_kill_first_run_under_way, args=(out, names, killed, stop), daemon=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu", "SAMEDGE_DATA_DIR": str(data_dir)}})
    try:
        killer.start()
        results = sweep.run_sweep(cfgs, out, backend="ray", data_dir=str(data_dir), max_retries=2,
                                  log=lambda line: None)
    finally:
        stop.set()
        ray.shutdown()
    assert killed, "no worker was killed: the test did not test a retry"
    assert {n: s["status"] for n, s in results.items()} == {n: "completed" for n in names}
    for name in names:
        rows = read_metrics(out / name)
        assert [r["step"] for r in rows] == [0, 10, 20, 30]  # one clean set of rows, no duplicates
        assert read_json(out / name / "summary.json")["steps_done"] == STEPS
    # The killed run was run again by another worker process.
    assert read_json(out / killed["name"] / sweep.WORKER_FILE)["pid"] != killed["pid"]
