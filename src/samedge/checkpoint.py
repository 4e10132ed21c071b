"""Checkpoints: everything a run needs to continue exactly, in one file written atomically.

A checkpoint is taken at a measurement point, after its row is stored, and holds the parameters,
the optimizer state, the Lanczos warm-start vectors (the next measurement starts from them, so
without them it would differ), the number of steps done, the metrics rows so far, the wall time
spent and the seed. Nothing else is needed: every batch is ``Task.batch_fn(data, step)`` and every
random draw of a measurement is ``fold_in(PRNGKey(seed), step)``, so the step is the whole
position in the data order and the whole random state. Because checkpoints sit on measurement
points, a resumed run cuts its ``lax.scan`` chunks at the same steps as an uninterrupted one, and
its floating-point results are bit for bit the same.

Format: flax.serialization msgpack of a dict; the rows travel as one JSON string (JSON keeps the
column order, and Python writes floats that read back exactly). The file is written under a
temporary name, flushed to disk, then renamed over ``checkpoint.msgpack`` (``os.replace`` is
atomic), so a crash in the middle of a write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from samedge.errors import RunDirError

FILE = "checkpoint.msgpack"  # the same name as samedge.store.CHECKPOINT
FORMAT = 1  # bump when the payload's layout changes; older files are then refused with a clear error


class Checkpoint(NamedTuple):
    step: int  # optimizer steps done (a measurement point)
    params: Any  # parameter pytree after ``step`` steps
    opt_state: Any  # optimizer state after ``step`` steps
    vectors: Any  # (k, n) eigenvector estimates of the measurement at ``step``
    rows: list  # metrics rows up to and including ``step``
    elapsed_s: float  # wall time spent so far, so ``time_s`` keeps counting across resumes
    seed: int  # the run's seed (a cross-check: the config holds it too)


def path(folder) -> Path:
    return Path(folder) / FILE


def save(folder, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``folder/checkpoint.msgpack`` atomically; return the path."""
    from flax import serialization

    payload = {
        "format": FORMAT,
        "step": int(ckpt.step),
        "seed": int(ckpt.seed),
        "elapsed_s": float(ckpt.elapsed_s),
        "rows": json.dumps(list(ckpt.rows)),
        "params": serialization.to_state_dict(jax.device_get(ckpt.params)),
        "opt_state": serialization.to_state_dict(jax.device_get(ckpt.opt_state)),
        "vectors": np.asarray(ckpt.vectors),
    }
    target = path(folder)
    write_bytes_atomic(target, serialization.msgpack_serialize(payload))
    return target


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """``data`` into ``target`` via a temporary file and a rename; a crash leaves the old file."""
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        _write(f, data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _write(f, data: bytes) -> None:
    # A separate function so that the tests can make a write die half-way.
    f.write(data)


def load(folder, params_template, opt_state_template) -> Checkpoint | None:
    """The checkpoint in ``folder`` restored onto the templates' structure, or ``None`` if none.

    A corrupt file, another format, or arrays whose shapes differ from the templates (the config
    changed the model) raise :class:`RunDirError`.
    """
    from flax import serialization

    source = path(folder)
    if not source.is_file():
        return None
    try:
        raw = serialization.msgpack_restore(source.read_bytes())
        if raw.get("format") != FORMAT:
            raise RunDirError(f"{source}: checkpoint format {raw.get('format')!r}, this samedge reads {FORMAT}")
        params = serialization.from_state_dict(params_template, raw["params"])
        opt_state = serialization.from_state_dict(opt_state_template, raw["opt_state"])
        rows = json.loads(raw["rows"])
        step, seed, elapsed = int(raw["step"]), int(raw["seed"]), float(raw["elapsed_s"])
        vectors = np.asarray(raw["vectors"])
    except RunDirError:
        raise
    except Exception as exc:
        raise RunDirError(f"{source}: unreadable checkpoint ({type(exc).__name__}: {_one_line(exc)}); "
                          f"delete it to restart the run from step 0, or pass --overwrite") from None
    _check_like(source, "parameters", params, params_template)
    _check_like(source, "optimizer state", opt_state, opt_state_template)
    return Checkpoint(step, jax.tree.map(jax.numpy.asarray, params),
                      jax.tree.map(jax.numpy.asarray, opt_state), jax.numpy.asarray(vectors),
                      rows, elapsed, seed)


def _check_like(source, what, restored, template) -> None:
    got = [(np.shape(x), np.asarray(x).dtype) for x in jax.tree.leaves(restored)]
    want = [(np.shape(x), np.dtype(x.dtype)) for x in jax.tree.leaves(template)]
    if got != want:
        diff = next(((g, w) for g, w in zip(got, want) if g != w), (len(got), len(want)))
        raise RunDirError(f"{source}: checkpoint {what} do not fit this run's model "
                          f"(found {diff[0]}, expected {diff[1]}); the configuration changed")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


class StopSignals:
    """While active, the first SIGINT or SIGTERM only asks the loop to stop at its next measurement
    point (where it checkpoints); a second one interrupts at once (``KeyboardInterrupt``).

    Handlers can only be set from the main thread; elsewhere (a worker thread) this does nothing
    and the signals keep their usual effect.
    """

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
