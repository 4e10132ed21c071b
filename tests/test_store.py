"""The run folder: its lock (one writing process at a time, released at the end or on death),
atomic writes that a crash leaves whole, the summary file, and the configuration diff."""

from __future__ import annotations

import json
import math
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


def test_write_summary_puts_status_first_and_writes_non_finite_floats_as_strings(tmp_path):
    summary = {"final_loss": float("nan"), "edge": float("inf"), "low": float("-inf"), "steps": 10,
               "acc": 0.5, "note": None}
    written = store.write_summary(tmp_path, "diverged", summary)
    assert written == {"status": "diverged", "final_loss": "nan", "edge": "inf", "low": "-inf", "steps": 10,
                       "acc": 0.5, "note": None}
    assert list(written) == ["status", *summary]  # status first, then the summary's order
    text = (tmp_path / store.SUMMARY).read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("}\n")
    assert json.loads(text) == written and list(json.loads(text)) == list(written)
    assert store.run_status(tmp_path) is None  # no config.json: a summary alone is no run
    assert math.isnan(summary["final_loss"])  # the caller's mapping is left as it was


def test_finish_writes_the_summary_of_write_summary(tmp_path):
    run = store.RunStore.create(tmp_path / "run", CONFIG)
    written = run.finish("completed", {"final_loss": float("nan")})
    assert written == {"status": "completed", "final_loss": "nan"}
    assert store.read_json(tmp_path / "run" / store.SUMMARY) == written
    assert store.run_status(tmp_path / "run") == "completed"
    assert store.in_use(tmp_path / "run") is None


def test_write_json_atomic_indents_and_writes_numpy_scalars_as_values(tmp_path):
    import numpy as np

    store.write_json_atomic(tmp_path / "a.json", {"b": np.float32(0.5), "a": np.int64(3), "c": [1]})
    text = (tmp_path / "a.json").read_text()
    assert text == '{\n  "b": 0.5,\n  "a": 3,\n  "c": [\n    1\n  ]\n}\n'
    assert not (tmp_path / "a.json.tmp").exists()


@pytest.mark.parametrize("write", ["write_bytes_atomic", "write_json_atomic"])
def test_a_write_that_dies_half_way_leaves_the_old_file_whole(tmp_path, monkeypatch, write):
    target = tmp_path / "file.json"
    old = {"step": 10, "rows": list(range(50))}
    new = {"step": 20, "rows": list(range(100))}

    def put(data):
        if write == "write_bytes_atomic":
            store.write_bytes_atomic(target, json.dumps(data).encode())
        else:
            store.write_json_atomic(target, data)

    put(old)
    before = target.read_bytes()

    def dies_half_way(f, data):
        f.write(data[: len(data) // 2])
        f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        put(new)
    assert target.read_bytes() == before and json.loads(before) == old
    assert (tmp_path / "file.json.tmp").stat().st_size > 0  # the half-written temporary file
    monkeypatch.undo()
    put(new)  # the stale temporary file is no obstacle
    assert json.loads(target.read_bytes()) == new
    assert not (tmp_path / "file.json.tmp").exists()


def test_write_bytes_atomic_takes_a_write_of_its_own(tmp_path):
    seen = []
    store.write_bytes_atomic(tmp_path / "x", b"abc", write=lambda f, data: (seen.append(data), f.write(data)))
    assert seen == [b"abc"] and (tmp_path / "x").read_bytes() == b"abc"


def test_differences_name_the_keys_that_differ():
    import numpy as np

    saved = {"lr": 0.1, "steps": 100, "layers": [8, 8], "gone": 1, "same_none": None, "data_source": "a"}
    current = {"lr": 0.2, "steps": np.int64(100), "layers": (8, 8), "new": None, "same_none": None,
               "data_source": "b"}
    changed = store._differences(saved, current, ignore=("data_source",))
    # steps (a numpy scalar) and layers (a tuple) compare as they read back from JSON: equal.
    assert changed == [("gone", 1, None), ("lr", 0.1, 0.2), ("new", None, None)]
    assert [k for k, _, _ in store._differences(saved, current)] == ["data_source", "gone", "lr", "new"]
    assert store._differences(saved, dict(saved)) == []


def test_require_same_config_and_reopen_name_what_differs(tmp_path):
    run = tmp_path / "run"
    created = store.RunStore.create(run, {"run": {"task": "mnist", "seed": 0, "lr": 0.1},
                                          "task_info": {"n_params": 10, "n_train": 5, "data_source": "x"}})
    created.close()
    store.require_same_config(run, {"task": "mnist", "seed": 0, "lr": 0.1})
    with pytest.raises(RunDirError, match=r"another configuration \(lr 0.1 there, 0.2 here, seed 0 there, 1 here\)"):
        store.require_same_config(run, {"task": "mnist", "seed": 1, "lr": 0.2})
    store.RunStore.reopen(run, {"n_params": 10, "n_train": 5, "data_source": "y"}).close()  # source aside
    with pytest.raises(RunDirError, match=r"differ from the run's \(n_params 10 then, 11 now\)$"):
        store.RunStore.reopen(run, {"n_params": 11, "n_train": 5})
    assert store.in_use(run) is None  # the refused reopen let the lock go


def test_create_and_check_out_share_the_write_probe(tmp_path):
    # A folder where the probe file cannot be made (a folder of its name is in the way; this works
    # for root too, unlike a read-only folder) is refused by both, before any run file is written.
    run = tmp_path / "run"
    blocker = run / f".samedge-write-test-{os.getpid()}"
    (blocker / "inside").mkdir(parents=True)
    with pytest.raises(RunDirError, match=f"cannot write to {run}: "):
        store.check_out(run, CONFIG["run"])
    with pytest.raises(RunDirError, match=f"cannot write to {run}: "):
        store.check_out(run / "sub" / "run", CONFIG["run"])  # probed in the nearest existing folder
    with pytest.raises(RunDirError, match=f"cannot write to {run}: "):
        store.RunStore.create(run, CONFIG)
    assert sorted(p.name for p in run.iterdir()) == [blocker.name]
    (blocker / "inside").rmdir()
    blocker.rmdir()
    store.RunStore.create(run, CONFIG).close()
    assert sorted(p.name for p in run.iterdir()) == [store.LOCK, store.CONFIG]


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
