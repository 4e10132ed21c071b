"""The run directory: ``config.json``, ``metrics.csv``, ``summary.json`` and the figures.

``config.json`` is written when a run starts, each measurement appends one flushed row to
``metrics.csv``, and ``summary.json`` is written only when the run ends (completed, diverged,
interrupted or failed): a folder without ``summary.json``, or whose status is not ``completed``,
never looks like a finished run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Mapping

from samedge.errors import RunDirError

CONFIG, METRICS, SUMMARY = "config.json", "metrics.csv", "summary.json"
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


class RunStore:
    """Writes one run's folder. Create it with :meth:`create`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._columns: list[str] | None = None

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
        for name in (METRICS, SUMMARY):
            (path / name).unlink(missing_ok=True)
        store = cls(path)
        write_json_atomic(path / CONFIG, dict(config) | {"versions": package_versions()})
        return store

    def append(self, row: Mapping) -> None:
        if self._columns is None:
            self._columns = [c for c in LEADING if c in row] + [c for c in row if c not in LEADING]
            with open(self.path / METRICS, "w", newline="") as f:
                csv.writer(f).writerow(self._columns)
        with open(self.path / METRICS, "a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else _fmt(row[c]) for c in self._columns])
            f.flush()

    def finish(self, status: str, summary: Mapping) -> dict:
        data = {"status": status} | {k: _clean(v) for k, v in summary.items()}
        write_json_atomic(self.path / SUMMARY, data)
        return data


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
