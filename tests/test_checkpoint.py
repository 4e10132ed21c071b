"""Checkpoint files, the stop-signal guard, and the divergence rules of the training loop.

Truths: bit equality of what went in and what comes out; a crash in the middle of a write leaves
the previous file loadable; the divergence step of GD on a quadratic from its closed form
``w_t = (1 - eta h)^t w_0``.
"""

from __future__ import annotations

import json
import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from samedge import checkpoint, train, store
from samedge.config import RunConfig
from samedge.errors import RunDirError
from samedge.probes.topk import TopkCarry
from samedge.store import RunStore, read_metrics
from samedge.tasks import Task


def _state(seed=0, width=5):
    key = jax.random.PRNGKey(seed)
    params = {"params": {"w": jax.random.normal(key, (3, width)), "b": jnp.arange(width, dtype=jnp.float32)}}
    opt = optax.sgd(0.1, momentum=0.9)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda x: x * 0.5 + 1.0, params)
    _, opt_state = opt.update(grads, opt_state, params)  # a non-zero momentum trace
    vectors = jax.random.normal(jax.random.fold_in(key, 1), (2, 3 * width + width))  # (k, n)
    carries = {"topk": TopkCarry(vectors, jnp.asarray(3, jnp.int32), jnp.asarray(2.0, jnp.float32)), "edge": (),
               "outliers": jax.random.normal(jax.random.fold_in(key, 2), (3, 3 * width + width))}
    rows = [{"step": 0, "time_s": 0.5, "loss": 0.1 + 1e-17, "test_acc": None, "lambda_max": float("nan")},
            {"step": 10, "time_s": 1.25, "loss": 1 / 3, "test_acc": 0.25, "lambda_max": 2.0}]
    return checkpoint.Checkpoint(10, params, opt_state, carries, rows, 1.25, 7)


def _templates(ckpt):
    return jax.tree.map(jnp.zeros_like, (ckpt.params, ckpt.opt_state, ckpt.measure))


def _same_bits(a, b):
    return all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_roundtrip_is_bit_exact(tmp_path):
    ckpt = _state()
    checkpoint.save(tmp_path, ckpt)
    back = checkpoint.load(tmp_path, *_templates(ckpt))
    assert _same_bits(back.params, ckpt.params)
    assert _same_bits(back.opt_state, ckpt.opt_state)
    assert type(back.opt_state[0]).__name__ == "TraceState"
    assert _same_bits(back.measure, ckpt.measure) and type(back.measure["topk"]) is TopkCarry
    assert back.vectors is None
    assert (back.step, back.seed, back.elapsed_s) == (10, 7, 1.25)
    # Rows keep their column order, None, NaN and every bit of each float.
    assert [list(r) for r in back.rows] == [list(r) for r in ckpt.rows]
    assert back.rows[0]["loss"] == 0.1 + 1e-17 and back.rows[0]["test_acc"] is None
    assert math.isnan(back.rows[0]["lambda_max"]) and back.rows[1]["loss"] == 1 / 3


def test_no_checkpoint_is_none(tmp_path):
    ckpt = _state()
    assert checkpoint.load(tmp_path, *_templates(ckpt)) is None


# store._write is the seam of every atomic write; checkpoint._write reaches only the checkpoint's
# (tests/test_resume.py uses it in a subprocess).
@pytest.mark.parametrize("seam", [store, checkpoint], ids=["store._write", "checkpoint._write"])
def test_crash_in_the_middle_of_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, seam):
    first = _state(seed=0)
    checkpoint.save(tmp_path, first)
    assert checkpoint.path(tmp_path) == tmp_path / store.CHECKPOINT

    def dies_half_way(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seam, "_write", dies_half_way)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, _state(seed=1)._replace(step=20))
    assert (tmp_path / (store.CHECKPOINT + ".tmp")).stat().st_size > 0
    back = checkpoint.load(tmp_path, *_templates(first))
    assert back.step == 10 and _same_bits(back.params, first.params)
    monkeypatch.undo()
    checkpoint.save(tmp_path, _state(seed=1)._replace(step=20))  # the stale temporary file is no obstacle
    assert checkpoint.load(tmp_path, *_templates(first)).step == 20


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    checkpoint.save(tmp_path, _state(width=5))
    other = _state(width=6)
    with pytest.raises(RunDirError, match="do not fit this run's model"):
        checkpoint.load(tmp_path, *_templates(other))


def test_a_checkpoint_of_other_probes_is_refused(tmp_path):
    ckpt = _state()
    checkpoint.save(tmp_path, ckpt)
    params, opt_state, carries = _templates(ckpt)
    with pytest.raises(RunDirError, match="probes edge, outliers, topk; this run has edge, topk"):
        checkpoint.load(tmp_path, params, opt_state, {k: v for k, v in carries.items() if k != "outliers"})
    with pytest.raises(RunDirError, match="do not fit this run's model"):  # 2 tracked rows, not 3
        checkpoint.load(tmp_path, params, opt_state, carries | {"outliers": carries["outliers"][:2]})


def test_a_format_1_checkpoint_reads_back_its_block_of_vectors(tmp_path):
    """Written before the probes: one (rows, n) block under "vectors" (built here by hand, as that
    version wrote it); it comes back in ``vectors``, with ``measure`` None."""
    from flax import serialization

    ckpt = _state()
    block = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (5, 20)), np.float32)
    payload = {"format": 1, "step": 10, "seed": 7, "elapsed_s": 1.25, "rows": json.dumps(ckpt.rows),
               "params": serialization.to_state_dict(jax.device_get(ckpt.params)),
               "opt_state": serialization.to_state_dict(jax.device_get(ckpt.opt_state)), "vectors": block}
    checkpoint.path(tmp_path).write_bytes(serialization.msgpack_serialize(payload))
    back = checkpoint.load(tmp_path, *_templates(ckpt))
    assert back.measure is None and _same_bits(back.vectors, block) and back.step == 10
    assert _same_bits(back.params, ckpt.params)
    payload["format"] = 7
    checkpoint.path(tmp_path).write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(RunDirError, match="checkpoint format 7, this samedge reads formats 1, 2"):
        checkpoint.load(tmp_path, *_templates(ckpt))


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 10, None], ids=["empty", "garbage", "truncated"])
def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    ckpt = _state()
    checkpoint.save(tmp_path, ckpt)
    target = checkpoint.path(tmp_path)
    target.write_bytes(target.read_bytes()[:100] if content is None else content)  # None: truncated
    with pytest.raises(RunDirError, match="unreadable checkpoint"):
        checkpoint.load(tmp_path, *_templates(ckpt))


def test_stop_signals_first_asks_then_interrupts():
    before = signal.getsignal(signal.SIGTERM)
    with train.StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


# --- divergence, on GD over a quadratic 0.5 sum(h w^2): w_t = (1 - eta h)^t w_0 -------------------
H = np.array([1.0, 0.5, 0.25], np.float32)


def _quadratic_task(loss_fn=None):
    def quadratic(params, batch):
        return 0.5 * jnp.sum(jnp.asarray(H) * params["w"] ** 2)

    return Task(name="quadratic", config=None, init_params=lambda key: {"w": jnp.ones(3, jnp.float32)},
                loss_fn=loss_fn or quadratic, accuracy_fn=None, data=jnp.zeros(1),
                batch_fn=lambda data, step: data, measure_batch_fn=lambda data, step: data,
                evaluate=lambda params: {}, info={})


def _cfg(**kw):
    base = dict(optimizer="gd", lr=3.0, steps=40, measure_every=3, eval_every=40, topk=1,
                lanczos_max_iters=3, measure_sam_point=False, checkpoint_every=3)
    return RunConfig(**(base | kw))


def test_loss_above_factor_times_initial_is_divergence(tmp_path):
    from samedge import train

    cfg = _cfg(diverge_factor=1000.0)
    eta = cfg.lr
    loss = [0.5 * float(np.sum(H * (1 - eta * H) ** (2 * t))) for t in range(cfg.steps)]
    first = next(t for t in range(cfg.steps) if loss[t] > cfg.diverge_factor * loss[0])  # 6 here
    store = RunStore.create(tmp_path, {"run": cfg.to_dict()})
    summary = train.train(cfg, _quadratic_task(), store, progress=False)
    assert summary["status"] == "diverged"
    assert summary["diverged_reason"].endswith(f"at step {first}")
    kept = [r["step"] for r in read_metrics(tmp_path)]
    assert kept == [s for s in range(0, cfg.steps, cfg.measure_every) if s < first]
    # The last checkpoint is the last finite measurement point before the blow-up, and it is finite.
    ckpt = checkpoint.load(tmp_path, {"w": jnp.ones(3)}, optax.sgd(1.0).init({"w": jnp.ones(3)}))
    assert ckpt.step == kept[-1] and summary["checkpoint_step"] == kept[-1]
    assert np.allclose(ckpt.params["w"], (1 - eta * H) ** ckpt.step, rtol=1e-5)


def test_overflow_to_inf_is_divergence(tmp_path):
    from samedge import train

    cfg = _cfg(lr=1e30, diverge_factor=1e38, measure_every=4)
    summary = train.train(cfg, _quadratic_task(), RunStore.create(tmp_path, {"run": cfg.to_dict()}), progress=False)
    assert summary["status"] == "diverged"
    assert summary["diverged_reason"] == "non-finite loss inf at step 1"
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]


def test_non_finite_parameters_with_a_finite_loss_are_divergence(tmp_path):
    from samedge import train

    def loss(params, batch):  # value 0.5 at w = 1, z = 0, but d/dz sqrt(|z|) at 0 is 0 * inf = NaN
        return 0.5 * jnp.sum(params["w"] ** 2) + jnp.sqrt(jnp.abs(params["z"]))

    task = _quadratic_task(loss)
    task.init_params = lambda key: {"w": jnp.ones(3, jnp.float32), "z": jnp.zeros((), jnp.float32)}
    cfg = _cfg(lr=0.1, measure_every=1)
    summary = train.train(cfg, task, RunStore.create(tmp_path, {"run": cfg.to_dict()}), progress=False)
    assert summary["status"] == "diverged"
    assert summary["diverged_reason"] == "non-finite parameters after step 0"


def test_a_run_checkpointed_in_format_1_resumes_to_the_same_rows(tmp_path, data_dir):
    """A run from before the probes: its checkpoint held one block of vectors (top-k, then tracked)
    and the guard's memory came from the rows. Rewritten by hand in that format (from this run's own
    step-30 checkpoint), it resumes to the rows of the uninterrupted run, every column but timing."""
    from flax import serialization

    from samedge import cli

    out = tmp_path / "run"
    assert cli.main(["run", "mnist", "--set", "n_train=64", "--set", "n_test=32", "--set", "width=8",
                     "--set", "depth=3", "--optimizer", "gd", "--lr", "0.5", "--steps", "40", "--measure-every", "10",
                     "--checkpoint-every", "10", "--topk", "2", "--track-fraction", "0.3",
                     "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]) == 0
    whole = read_metrics(out)
    raw = serialization.msgpack_restore(checkpoint.path(out).read_bytes())
    assert raw["format"] == 2 and raw["step"] == 30
    carries = raw.pop("measure")
    raw |= {"format": 1, "vectors": np.concatenate([carries["topk"]["vectors"], carries["outliers"]])}
    checkpoint.path(out).write_bytes(serialization.msgpack_serialize(raw))
    (out / "summary.json").unlink()
    assert cli.main(["resume", str(out), "--data-dir", str(data_dir), "--no-progress"]) == 0
    again = read_metrics(out)
    timing = {"time_s", "measure_s"}
    as_text = lambda rows: [{k: repr(v) for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert as_text(again) == as_text(whole)  # repr: NaN equals NaN, and every bit of each float counts
