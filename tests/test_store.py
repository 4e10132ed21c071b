"""The run folder's lock: one writing process at a time, released at the end or on death."""

from __future__ import annotations

import os
import subprocess
import sys
import socket
import textwrap
from pathlib import Path

import pytest

from samedge import store
from samedge.errors import RunDirError, RunInUseError

SRC = str(Path(__file__).resolve().parents[1] / "src")
CONFIG = {"run": {"task": "mnist", "seed": 0}}


def test_second_writer_in_this_process_is_refused_until_the_first_finishes(tmp_path):
    first = store.RunStore.create(tmp_path / "run", CONFIG)
    with pytest.raises(RunInUseError, match=f"pid {os.getpid()}"):
        store.RunStore.create(tmp_path / "run", CONFIG, overwrite=True)
    with pytest.raises(RunInUseError):
        store.RunStore.reopen(tmp_path / "run")
    first.append({"step": 0, "loss": 1.0})
    first.finish("completed", {})
    again = store.RunStore.create(tmp_path / "run", CONFIG, overwrite=True)
    assert not (tmp_path / "run" / store.METRICS).exists()  # overwrite replaced the old run
    again.close()
    store.RunStore.reopen(tmp_path / "run").close()


def test_in_use_names_another_process_and_not_this_one(tmp_path):
    run = tmp_path / "run"
    assert store.in_use(run) is None  # no folder
    mine = store.RunStore.create(run, CONFIG)
    assert store.in_use(run) is None  # held by this very process: not "another"
    mine.close()
    holder = _hold_lock_in_child(run)
    try:
        assert store.in_use(run) == f"pid {holder.pid} on {socket.gethostname()}"
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}"):
            store.check_out(run, CONFIG["run"], overwrite=True)
        with pytest.raises(RunInUseError):
            store.RunStore.create(run, CONFIG, overwrite=True)
        assert (run / store.CONFIG).exists()  # nothing was removed
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its process: the folder is free again.
    assert store.in_use(run) is None
    store.RunStore.reopen(run).close()


def test_record_failure_leaves_a_folder_in_use_alone(tmp_path):
    from samedge import sweep

    run = tmp_path / "run"
    store.RunStore.create(run, CONFIG).close()
    holder = _hold_lock_in_child(run)
    try:
        summary = sweep.record_failure(run, "worker died")
        assert summary["status"] == "failed" and "in use" in summary["error"]
        assert not (run / store.SUMMARY).exists()
    finally:
        holder.kill()
        holder.wait()
    assert sweep.record_failure(run, "worker died")["status"] == "failed"
    assert (run / store.SUMMARY).exists()


def test_create_refuses_a_run_made_while_it_waited_for_nothing(tmp_path):
    # Without overwrite an existing run is refused (before and after taking the lock).
    store.RunStore.create(tmp_path / "run", CONFIG).close()
    with pytest.raises(RunDirError, match="already holds a run"):
        store.RunStore.create(tmp_path / "run", CONFIG)
    assert store.in_use(tmp_path / "run") is None


def _hold_lock_in_child(run: Path) -> subprocess.Popen:
    """A separate process that reopens ``run`` (taking its lock) and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        from samedge import store
        s = store.RunStore.reopen({str(run)!r})
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": SRC})
    assert proc.stdout.readline().strip() == "locked"  # "" if the child died first
    return proc
