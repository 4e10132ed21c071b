"""Checkpoints: everything a run needs to continue exactly, in one file written atomically.

A checkpoint is taken at a measurement point, after its row is stored, and holds the parameters,
the optimizer state, the model's state (a task with one: BatchNorm's running statistics), the
measurement's probe carries (the Lanczos warm-start vectors and the guard's
memory: the next measurement starts from them, so without them it would differ), the number of steps done, the metrics rows so far, the wall time
spent and the seed. Nothing else is needed: every batch is ``Task.batch_fn(data, step)`` and every
random draw of a measurement is ``fold_in(PRNGKey(seed), step)``, so the step is the whole
position in the data order and the whole random state. Because checkpoints sit on measurement
points, a resumed run cuts its ``lax.scan`` chunks at the same steps as an uninterrupted one, and
its floating-point results are bit for bit the same.

Format: flax.serialization msgpack of a dict; the rows travel as one JSON string (JSON keeps the
column order, and Python writes floats that read back exactly). The file,
``samedge.store.CHECKPOINT`` in the run folder, is written by
:func:`samedge.store.write_bytes_atomic`: under a temporary name, flushed to disk, then renamed over
the old one (``os.replace`` is atomic), so a crash in the middle of a write leaves the previous
checkpoint whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from samedge import store
from samedge.errors import RunDirError, one_line

# Bump when the payload's layout changes; other formats are refused with a clear error. Format 1
# (before the probes) held one block of warm-start vectors; it is still read (``Checkpoint.vectors``).
FORMAT = 2
READABLE = (1, 2)


class Checkpoint(NamedTuple):
    step: int  # optimizer steps done (a measurement point)
    params: Any  # parameter pytree after ``step`` steps
    opt_state: Any  # optimizer state after ``step`` steps
    measure: Any  # the measurement's probe carries at ``step`` (MeasureState.carries); None in format 1
    rows: list  # metrics rows up to and including ``step``
    elapsed_s: float  # wall time spent so far, so ``time_s`` keeps counting across resumes
    seed: int  # the run's seed (a cross-check: the config holds it too)
    vectors: Any = None  # format 1 only: its (rows, n) block of warm-start vectors
    model_state: Any = None  # the model's state (BatchNorm's running statistics) for a task with one


def path(folder) -> Path:
    """Where the checkpoint of a run lives.

    Args:
        folder: the run folder.

    Returns:
        ``folder / store.CHECKPOINT``.
    """
    return Path(folder) / store.CHECKPOINT


def save(folder, ckpt: Checkpoint) -> Path:
    """Write a checkpoint atomically (:func:`samedge.store.write_bytes_atomic`).

    Args:
        folder: the run folder.
        ckpt: what to save.

    Returns:
        The checkpoint's path, :func:`path` of ``folder``.
    """
    from flax import serialization

    payload = {
        "format": FORMAT,
        "step": int(ckpt.step),
        "seed": int(ckpt.seed),
        "elapsed_s": float(ckpt.elapsed_s),
        "rows": json.dumps(list(ckpt.rows)),
        "params": serialization.to_state_dict(jax.device_get(ckpt.params)),
        "opt_state": serialization.to_state_dict(jax.device_get(ckpt.opt_state)),
        "measure": serialization.to_state_dict(jax.device_get(ckpt.measure)),
    }
    if ckpt.model_state is not None:
        payload["model_state"] = serialization.to_state_dict(jax.device_get(ckpt.model_state))
    target = path(folder)
    # ``_write`` is looked up now, so that replacing ``checkpoint._write`` reaches this write.
    store.write_bytes_atomic(target, serialization.msgpack_serialize(payload), write=_write)
    return target


def _write(f, data: bytes) -> None:
    # A seam for tests that make only the checkpoint write die half-way (tests/test_resume.py sets
    # ``checkpoint._write``); by default it is store's own seam, ``store._write``.
    store._write(f, data)


def step_of(folder) -> int | None:
    """The step of the checkpoint in ``folder``, or ``None`` when there is none (or it is unreadable)."""
    from flax import serialization

    source = path(folder)
    if not source.is_file():
        return None
    try:
        return int(serialization.msgpack_restore(source.read_bytes())["step"])
    except Exception:
        return None


def load(folder, params_template, opt_state_template, measure_template=None,
         model_state_template=None) -> Checkpoint | None:
    """Read the checkpoint of a run back onto the structure of the templates.

    Args:
        folder: the run folder.
        params_template: a parameter pytree of the run's model (its structure, shapes and dtypes).
        opt_state_template: an optimizer state of the run's optimizer, likewise.
        measure_template: the run's measurement carries (``MeasureState.carries`` from its ``init``);
            ``None``: they are not read (``measure`` is then ``None``).
        model_state_template: the model's state at initialisation, for a task with state (``None``:
            none is read; a checkpoint without one is refused when it is given).

    Returns:
        The :class:`Checkpoint` (arrays as ``jax`` arrays), or ``None`` when ``folder`` has no
        checkpoint. A format-1 file (written before the probes) comes back with ``measure=None`` and
        its block of warm-start vectors in ``vectors`` (:func:`samedge.measure.from_vectors` turns it
        into carries). A corrupt file, an unknown format, or arrays whose shapes differ from the
        templates (the config changed the model or the probes) raise :class:`RunDirError`.
    """
    from flax import serialization

    source = path(folder)
    if not source.is_file():
        return None
    try:
        raw = serialization.msgpack_restore(source.read_bytes())
        fmt = raw.get("format")
        if fmt not in READABLE:
            raise RunDirError(f"{source}: checkpoint format {fmt!r}, this samedge reads formats "
                              f"{', '.join(map(str, READABLE))}")
        params = serialization.from_state_dict(params_template, raw["params"])
        opt_state = serialization.from_state_dict(opt_state_template, raw["opt_state"])
        rows = json.loads(raw["rows"])
        step, seed, elapsed = int(raw["step"]), int(raw["seed"]), float(raw["elapsed_s"])
        vectors = np.asarray(raw["vectors"]) if fmt == 1 else None
        measure = None
        if fmt != 1 and measure_template is not None:
            saved, wanted = sorted(raw["measure"]), sorted(measure_template or {})
            if saved != wanted:
                raise RunDirError(f"{source}: checkpoint of a measurement with probes {', '.join(saved)}; this run "
                                  f"has {', '.join(wanted)} (the configuration changed)")
            measure = serialization.from_state_dict(measure_template, raw["measure"])
        model_state = None
        if model_state_template is not None:
            if "model_state" not in raw:
                raise RunDirError(f"{source}: checkpoint without a model state; this run's model has one "
                                  f"(the configuration changed)")
            model_state = serialization.from_state_dict(model_state_template, raw["model_state"])
    except RunDirError:
        raise
    except Exception as exc:
        raise RunDirError(f"{source}: unreadable checkpoint ({type(exc).__name__}: {one_line(exc, 200)}); "
                          f"delete it to restart the run from step 0, or pass --overwrite") from None
    _check_like(source, "parameters", params, params_template)
    _check_like(source, "optimizer state", opt_state, opt_state_template)
    if measure is not None:
        _check_like(source, "measurement carries", measure, measure_template)
    if model_state is not None:
        _check_like(source, "model state", model_state, model_state_template)
    as_jax = lambda tree: jax.tree.map(jax.numpy.asarray, tree)  # noqa: E731
    return Checkpoint(step, as_jax(params), as_jax(opt_state), None if measure is None else as_jax(measure),
                      rows, elapsed, seed, None if vectors is None else jax.numpy.asarray(vectors),
                      None if model_state is None else as_jax(model_state))


def _check_like(source, what, restored, template) -> None:
    got = [(np.shape(x), np.asarray(x).dtype) for x in jax.tree.leaves(restored)]
    want = [(np.shape(x), np.dtype(x.dtype)) for x in jax.tree.leaves(template)]
    if got != want:
        diff = next(((g, w) for g, w in zip(got, want) if g != w), (len(got), len(want)))
        raise RunDirError(f"{source}: checkpoint {what} do not fit this run's model "
                          f"(found {diff[0]}, expected {diff[1]}); the configuration changed")

