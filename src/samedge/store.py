"""The run folder: every file written in it goes through this module.

A run folder holds ``config.json``, ``metrics.csv``, ``summary.json``, ``checkpoint.msgpack`` and the
figures. ``config.json`` is written when a run starts, each measurement appends one flushed row to
``metrics.csv``, and ``summary.json`` is written only when the run ends (completed, diverged,
interrupted or failed; :func:`write_summary`): a folder without ``summary.json``, or whose status
is not ``completed``, never looks like a finished run.

Whole files (``config.json``, ``summary.json``, the checkpoint of :mod:`samedge.checkpoint`) are
written by :func:`write_bytes_atomic`: under a temporary name, flushed to disk, then renamed over
the target (``os.replace`` is atomic), so a crash in the middle of a write leaves the previous file
whole. ``metrics.csv`` is rewritten the same way on resume (without the fsync).

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
from typing import Any, BinaryIO, Callable, Mapping

from samedge.errors import RunDirError, RunInUseError

CONFIG, METRICS, SUMMARY = "config.json", "metrics.csv", "summary.json"
MACHINE_SETTINGS = ("chunk_size",)  # RunConfig fields that are not part of a run's identity
CHECKPOINT = "checkpoint.msgpack"  # written by samedge.checkpoint (through write_bytes_atomic); removed on --overwrite
LOCK = ".lock"  # flock-ed by the process writing the run; holds "pid N on HOST"
# The columns every run has first, in this order; the rest follow as the measurement gives them.
LEADING = ("step", "time_s", "loss", "acc", "grad_norm", "lambda_max", "edge", "gd_edge", "ratio",
           "align_grad", "align_sam_grad")


def package_versions() -> dict:
    """The versions a run records in its ``config.json``.

    Returns:
        ``{"python": ..., "platform": ..., "samedge": ..., "jax": ..., ...}``: the Python version,
        the platform string, and the installed version of each package (``None`` if not installed).
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("samedge", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_bytes_atomic(path: Path, data: bytes, *, write: Callable[[BinaryIO, bytes], None] | None = None) -> None:
    """Replace the file ``path`` by ``data`` atomically.

    ``data`` goes to ``<name>.tmp`` next to ``path``, is flushed and fsync-ed, and the temporary file
    is then renamed over ``path`` (``os.replace``). A crash before the rename leaves the previous
    file whole (and a stale ``.tmp``, which the next write simply overwrites).

    Args:
        path: the file to write.
        data: its whole new content.
        write: the call that puts ``data`` into the open temporary file; ``None`` means
            :func:`_write`. A seam: tests replace it to make a write die half-way.

    Returns:
        None.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        (write or _write)(f, data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write(f: BinaryIO, data: bytes) -> None:
    # A separate function so that the tests can make a write die half-way.
    f.write(data)


def write_json_atomic(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` atomically (through :func:`write_bytes_atomic`).

    Args:
        path: the file to write.
        data: anything ``json`` takes; numpy scalars (anything with ``.item()``) are written as
            their Python value. Indented by 2, keys in their order, with a trailing newline.

    Returns:
        None.
    """
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def write_summary(path, status: str, summary: Mapping) -> dict:
    """Write the run's ``summary.json``: ``{"status": status}`` followed by ``summary``.

    JSON has no NaN: top-level non-finite floats of ``summary`` are written as the strings
    ``'nan'``, ``'inf'`` and ``'-inf'``.

    Args:
        path: the run folder (``summary.json`` is written inside it).
        status: the run's end (``completed``, ``diverged``, ``interrupted``, ``failed``).
        summary: the other fields, in the order they are to be written.

    Returns:
        The dict that was written.
    """
    data = {"status": status} | {k: _clean(v) for k, v in summary.items()}
    write_json_atomic(Path(path) / SUMMARY, data)
    return data


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _as_json(data: Mapping) -> dict:
    """``data`` as it reads back from JSON (tuples become lists, numpy scalars Python values)."""
    return json.loads(json.dumps(dict(data), default=_json_default))


def _clean(value):
    """JSON has no NaN: non-finite floats become strings 'nan', 'inf', '-inf'."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_json(path: Path):
    """Read a JSON file.

    Args:
        path: the file.

    Returns:
        Its parsed content. A missing file raises ``OSError``, bad JSON ``ValueError``.
    """
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
    """Who else holds the lock of a run folder.

    This very process (a store not yet closed, e.g. while an error unwinds) is not "else".

    Args:
        path: the run folder.

    Returns:
        The holder as written in its ``.lock`` (``"pid N on HOST"``), or None when no other process
        holds it (or the folder has no ``.lock``, or it cannot be opened).
    """
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
        """Release the folder's lock (idempotent).

        Returns:
            None.
        """
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @classmethod
    def create(cls, path, config: Mapping, *, overwrite: bool = False) -> "RunStore":
        """Make ``path`` for a new run, lock it and write ``config.json``.

        An existing folder that holds a run is refused unless ``overwrite`` (then its run files are
        replaced); an empty existing folder is fine.

        Args:
            path: the run folder (created with its parents if missing).
            config: the run's configuration; ``config.json`` gets it plus ``"versions"``
                (:func:`package_versions`).
            overwrite: replace a run already in ``path``.

        Returns:
            The store, holding the folder's lock. Raises :class:`RunDirError` for a folder that
            cannot be used, :class:`RunInUseError` when another process holds it.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a folder")
        if (path / CONFIG).exists() and not overwrite:
            raise RunDirError(f"{path} already holds a run; choose another --out, or pass --overwrite")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot write to {path}: {exc.strerror or exc}") from None
        _probe_write(path)
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
        running again).

        Args:
            path: the run folder.
            task_info: what the task is now (sizes, parameter count); it must match the
                ``task_info`` the run recorded (``data_source`` aside). None skips the check.

        Returns:
            The store, holding the folder's lock. Raises :class:`RunDirError` for a folder without
            a run or a task that differs, :class:`RunInUseError` when another process holds it.
        """
        path = Path(path)
        saved = read_run_config(path)
        lock = _try_lock(path)
        if task_info is not None:
            changed = _differences(saved.get("task_info", {}), task_info, ignore=("data_source",))
            if changed:
                if lock is not None:
                    lock.close()
                raise RunDirError(f"{path}: the task's data or model differ from the run's "
                                  f"({', '.join(f'{k} {old} then, {new} now' for k, old, new in changed)})")
        (path / SUMMARY).unlink(missing_ok=True)
        return cls(path, lock)

    def rewrite(self, rows) -> None:
        """Replace ``metrics.csv`` by ``rows`` (atomically): on resume, the rows of the checkpoint.

        Args:
            rows: the metrics rows (dicts); none removes ``metrics.csv``.

        Returns:
            None.
        """
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
        """Append one row to ``metrics.csv`` (flushed); the first row fixes the columns.

        Args:
            row: column -> value; ``None`` is written as an empty cell.

        Returns:
            None.
        """
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
        """Write ``summary.json`` (:func:`write_summary`) and release the folder.

        Args:
            status: the run's end (``completed``, ``diverged``, ``interrupted``, ``failed``).
            summary: the other fields.

        Returns:
            The dict written to ``summary.json``.
        """
        data = write_summary(self.path, status, summary)
        self.close()
        return data


def read_run_config(path) -> dict:
    """The ``config.json`` of a run.

    Args:
        path: the run folder.

    Returns:
        Its content (a dict with a ``"run"`` dict). A missing, unreadable or foreign file is a
        :class:`RunDirError`.
    """
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
    """Where the run in a folder stands.

    Args:
        path: the run folder.

    Returns:
        ``None`` (no run), ``"unfinished"`` (no readable summary: running or killed), or the
        summary's status.
    """
    path = Path(path)
    if not (path / CONFIG).exists():
        return None
    try:
        return str(read_json(path / SUMMARY).get("status", "unfinished"))
    except (OSError, ValueError, AttributeError):
        return "unfinished"


def check_out(path, run_config: Mapping, *, overwrite: bool = False, resume: bool = False,
              defaults: Mapping | None = None) -> bool:
    """Decide, before any compute, what to do with the run folder ``path``; True means resume.

    A folder without a run is used as is (it is created later). A run of another configuration is
    refused unless ``overwrite``. A run of the same configuration is continued with ``resume``;
    without it an unfinished or interrupted one is refused with the command that continues it,
    and a finished one is refused unless ``overwrite``.

    Args:
        path: the run folder.
        run_config: the configuration to run (``RunConfig.to_dict()``).
        overwrite: start afresh whatever the folder holds.
        resume: continue an unfinished run of the same configuration.
        defaults: the settings' defaults, which a ``config.json`` written before a setting existed
          is read with (:func:`require_same_config`).

    Returns:
        True to resume the run in ``path``, False to start a new one. A folder that cannot be used
        as asked is a :class:`RunDirError` (:class:`RunInUseError` when another process holds it).
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
    require_same_config(path, run_config, defaults=defaults)
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


def require_same_config(path, run_config: Mapping, *,
                        remedy: str = "choose another --out, or pass --overwrite to replace it",
                        defaults: Mapping | None = None) -> None:
    """Refuse a folder whose run has another configuration.

    Args:
        path: the run folder (it must hold a run).
        run_config: the configuration wanted (``RunConfig.to_dict()``).
        remedy: what the message tells the user to do (a sweep has no ``--overwrite``).
        defaults: each setting's default (``config.defaults()``): a saved configuration that lacks a
          setting (written before it existed) holds its default.

    Returns:
        None. A run of another configuration is a :class:`RunDirError` naming (up to four of) the
        settings that differ.
    """
    # the chunk size is a property of the machine: a run may continue with another (samedge.run records it)
    saved = dict(defaults or {}) | read_run_config(path)["run"]
    changed = _differences(saved, run_config, ignore=MACHINE_SETTINGS)
    if changed:
        detail = ", ".join(f"{k} {old!r} there, {new!r} here" for k, old, new in changed[:4])
        raise RunDirError(f"{path} holds a run with another configuration ({detail}); {remedy}")


_ABSENT = object()


def _differences(saved: Mapping, current: Mapping, *, ignore=()) -> list[tuple[str, Any, Any]]:
    """What differs between a recorded mapping (read from JSON) and the current one.

    ``current`` is compared as it would read back from JSON (:func:`_as_json`); keys in ``ignore``
    are left out. A key present on one side only differs (its missing value shows as ``None``).

    Returns ``[(key, saved value, current value), ...]`` sorted by key; empty when they agree.
    """
    current = _as_json(current)
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [(k, saved.get(k), current.get(k)) for k in keys
            if saved.get(k, _ABSENT) != current.get(k, _ABSENT)]


def _check_writable(path: Path) -> None:
    """Refuse a folder that cannot be created or written, before any data is read."""
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise RunDirError(f"cannot create {path}: {probe_dir} is not a folder")
    _probe_write(probe_dir)


def _probe_write(folder: Path) -> None:
    """Create and remove a small file in the existing ``folder``; :class:`RunDirError` if it fails."""
    probe = folder / f".samedge-write-test-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def _fmt(value):
    if isinstance(value, float):
        return repr(value)
    return value


def read_metrics(path) -> list[dict]:
    """Read a run's ``metrics.csv``.

    Args:
        path: the run folder, or the csv file itself.

    Returns:
        One dict per row, column -> float (``None`` for an empty cell; ``step`` an int); an empty
        list when there is no file.
    """
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
