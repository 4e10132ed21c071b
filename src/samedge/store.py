"""The run directory: ``config.json``, ``metrics.csv``, ``summary.json`` and the figures.

``config.json`` is written when a run starts, each measurement appends one flushed row to
``metrics.csv``, and ``summary.json`` is written only when the run ends (completed, diverged,
interrupted or failed): a folder without ``summary.json``, or whose status is not ``completed``,
never looks like a finished run.

A process writing a run folder holds an exclusive lock on its ``.lock`` file (``flock``; released
by :meth:`RunStore.finish`, :meth:`RunStore.close`, or the process's death), so a second process
(another ``samedge run --overwrite``, a ``resume``, a sweep retry) is refused with
:class:`~samedge.errors.RunInUseError` instead of writing the same files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Mapping

from samedge.errors import RunDirError, RunInUseError

CONFIG, METRICS, SUMMARY = "config.json", "metrics.csv", "summary.json"
CHECKPOINT = "checkpoint.msgpack"  # written by samedge.checkpoint; removed with the run on --overwrite
LOCK = ".lock"  # flock-ed by the process writing the run; holds "pid N on HOST"
# The columns every run has first, in this order; the rest follow as the measurement gives them.
LEADING = ("step", "time_s", "loss", "acc", "grad_norm", "lambda_max", "edge", "gd_edge", "ratio",
           "align_grad", "align_sam_grad")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("samedge", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value):
    """JSON has no NaN: non-finite floats become strings 'nan', 'inf', '-inf'."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _acquire(path: Path):
    """``(file, None)``: the open ``.lock`` of ``path``, exclusively locked; ``(None, holder)`` when
    another open lock holds it (``holder`` as written in the file); ``(None, None)`` where ``fcntl``
    is missing (Windows: no locking)."""
    try:
        import fcntl
    except ImportError:
        return None, None
    f = open(path / LOCK, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "an unknown process"
        f.close()
        return None, holder
    return f, None


def _in_use_error(path: Path, holder: str) -> RunInUseError:
    return RunInUseError(f"{path} is being written by another samedge process ({holder}); "
                         f"wait for it to end or stop it")


def _try_lock(path: Path):
    """The open, exclusively locked ``.lock`` file of ``path``, now naming this process;
    :class:`RunInUseError` if another process holds it. None where there is no locking."""
    f, holder = _acquire(path)
    if holder is not None:
        raise _in_use_error(path, holder)
    if f is not None:
        f.seek(0)
        f.truncate()
        f.write(_me() + "\n")
        f.flush()
    return f


def in_use(path) -> str | None:
    """Who else holds the lock of the run folder ``path`` (``"pid N on HOST"``), or None. This very
    process (a store not yet closed, e.g. while an error unwinds) is not "else"."""
    path = Path(path)
    if not (path / LOCK).exists():
        return None
    try:
        f, holder = _acquire(path)
    except OSError:
        return None
    if f is not None:
        f.close()
    return None if holder == _me() else holder


class RunStore:
    """Writes one run's folder. Create it with :meth:`create` or :meth:`reopen`; it holds the
    folder's lock until :meth:`finish` or :meth:`close`."""

    def __init__(self, path: Path, lock=None):
        self.path = Path(path)
        self._columns: list[str] | None = None
        self._lock = lock

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @classmethod
    def create(cls, path, config: Mapping, *, overwrite: bool = False) -> "RunStore":
        """Make ``path`` for a new run and write ``config.json``.

        An existing folder that holds a run is refused unless ``overwrite`` (then its run files are
        replaced); an empty existing folder is fine.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a folder")
        if (path / CONFIG).exists() and not overwrite:
            raise RunDirError(f"{path} already holds a run; choose another --out, or pass --overwrite")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(f"cannot write to {path}: {exc.strerror or exc}") from None
        store = cls(path, _try_lock(path))
        if (path / CONFIG).exists() and not overwrite:  # made by a process that got here first
            store.close()
            raise RunDirError(f"{path} already holds a run; choose another --out, or pass --overwrite")
        for name in (METRICS, SUMMARY, CHECKPOINT):
            (path / name).unlink(missing_ok=True)
        write_json_atomic(path / CONFIG, dict(config) | {"versions": package_versions()})
        return store

    @classmethod
    def reopen(cls, path, task_info: Mapping | None = None) -> "RunStore":
        """The store of an existing run, to continue it: its ``summary.json`` goes (the run is
        running again); ``task_info`` (sizes, parameter count) must match what the run recorded."""
        path = Path(path)
        saved = read_run_config(path)
        lock = _try_lock(path)
        if task_info is not None:
            old = {k: v for k, v in saved.get("task_info", {}).items() if k != "data_source"}
            new = {k: v for k, v in json.loads(json.dumps(dict(task_info), default=_json_default)).items()
                   if k != "data_source"}
            if old != new:
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                if lock is not None:
                    lock.close()
                raise RunDirError(f"{path}: the task's data or model differ from the run's "
                                  f"({', '.join(f'{k} {old.get(k)} then, {new.get(k)} now' for k in changed)})")
        (path / SUMMARY).unlink(missing_ok=True)
        return cls(path, lock)

    def rewrite(self, rows) -> None:
        """Replace ``metrics.csv`` by ``rows`` (atomically): on resume, the rows of the checkpoint."""
        tmp = self.path / (METRICS + ".tmp")
        tmp.unlink(missing_ok=True)
        self._columns = None
        target = self.path / METRICS
        for row in rows:
            self._append_to(tmp, row)
        if rows:
            os.replace(tmp, target)
        else:
            target.unlink(missing_ok=True)

    def append(self, row: Mapping) -> None:
        self._append_to(self.path / METRICS, row)

    def _append_to(self, target: Path, row: Mapping) -> None:
        if self._columns is None:
            self._columns = [c for c in LEADING if c in row] + [c for c in row if c not in LEADING]
            with open(target, "w", newline="") as f:
                csv.writer(f).writerow(self._columns)
        with open(target, "a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else _fmt(row[c]) for c in self._columns])
            f.flush()

    def finish(self, status: str, summary: Mapping) -> dict:
        """Write ``summary.json`` and release the folder."""
        data = {"status": status} | {k: _clean(v) for k, v in summary.items()}
        write_json_atomic(self.path / SUMMARY, data)
        self.close()
        return data


def read_run_config(path) -> dict:
    """``config.json`` of the run in ``path``; a missing or unreadable one is a :class:`RunDirError`."""
    source = Path(path) / CONFIG
    if not source.is_file():
        raise RunDirError(f"{path} holds no run ({CONFIG} not found)")
    try:
        data = read_json(source)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{source}: unreadable ({exc}); pass --overwrite to start the run afresh") from None
    if not isinstance(data, dict) or not isinstance(data.get("run"), dict):
        raise RunDirError(f"{source}: not a samedge run configuration (no \"run\" object)")
    return data


def run_status(path) -> str | None:
    """``None`` (no run), ``"unfinished"`` (no summary: running or killed), or the summary's status."""
    path = Path(path)
    if not (path / CONFIG).exists():
        return None
    try:
        return str(read_json(path / SUMMARY).get("status", "unfinished"))
    except (OSError, ValueError, AttributeError):
        return "unfinished"


def check_out(path, run_config: Mapping, *, overwrite: bool = False, resume: bool = False) -> bool:
    """Decide, before any compute, what to do with the run folder ``path``; True means resume.

    A folder without a run is used as is (it is created later). A run of another configuration is
    refused unless ``overwrite``. A run of the same configuration is continued with ``resume``;
    without it an unfinished or interrupted one is refused with the command that continues it,
    and a finished one is refused unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a folder; choose another --out")
    holder = in_use(path)
    if holder is not None:
        raise _in_use_error(path, holder)
    status = run_status(path)
    if status is None or overwrite:
        _check_writable(path)
        return False
    require_same_config(path, run_config)
    if resume:
        if status in ("completed", "diverged"):
            raise RunDirError(f"{path} holds a run of this configuration that already {status}; "
                              f"nothing to resume (pass --overwrite to run it again)")
        _check_writable(path)
        return True
    if status == "completed":
        raise RunDirError(f"{path} already holds a run of this configuration, completed; "
                          f"pass --overwrite to run it again")
    raise RunDirError(f"{path} holds an unfinished run of this configuration ({status}); continue it with "
                      f"`samedge resume {path}` (or --resume), or pass --overwrite to start again")


def require_same_config(path, run_config: Mapping) -> None:
    """Refuse (:class:`RunDirError`) when the run in ``path`` has another configuration, naming the
    settings that differ."""
    saved = read_run_config(path)["run"]
    wanted = json.loads(json.dumps(dict(run_config), default=_json_default))
    if saved != wanted:
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        detail = ", ".join(f"{k} {saved.get(k)!r} there, {wanted.get(k)!r} here" for k in changed[:4])
        raise RunDirError(f"{path} holds a run with another configuration ({detail}); "
                          f"choose another --out, or pass --overwrite to replace it")


def _check_writable(path: Path) -> None:
    """Refuse a folder that cannot be created or written, before any data is read."""
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise RunDirError(f"cannot create {path}: {probe_dir} is not a folder")
    probe = probe_dir / f".samedge-write-test-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot write to {probe_dir}: {exc.strerror or exc}") from None


def _fmt(value):
    if isinstance(value, float):
        return repr(value)
    return value


def read_metrics(path) -> list[dict]:
    """``metrics.csv`` as a list of dicts of floats (``None`` for empty cells)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        out.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items()})
    for r in out:
        r["step"] = int(r["step"])
    return out
