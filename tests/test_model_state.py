"""Models with state (BatchNorm's running statistics, dropout): the measured function, the step,
checkpoints and resume (samedge.tasks.stateful_classification, samedge.train, samedge.measure)."""

from __future__ import annotations

import csv

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from samedge import chunking, measure, optimizers, store, tasks, train


class TinyBN(nn.Module):
    """3 x 3 convolution (no bias), BatchNorm, ReLU, dropout, mean pool, dense: 45 parameters."""

    dropout: float = 0.0
    norm: bool = True

    @nn.compact
    def __call__(self, x, *, use_running_average: bool, deterministic: bool = True):
        x = nn.Conv(3, (3, 3), use_bias=not self.norm)(x)
        if self.norm:
            x = nn.BatchNorm(use_running_average=use_running_average, momentum=0.9)(x)
        x = nn.Dropout(self.dropout)(nn.relu(x), deterministic=deterministic)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


def _data(n=16, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 1)).astype(dtype), rng.integers(0, 3, size=n).astype(np.int32)


def _task(dropout=0.0, batch_size=0, augment=False, n=16, dtype=np.float32, norm=True):
    x, y = _data(n, dtype=dtype)
    return tasks.stateful_classification("tiny", None, TinyBN(dropout=dropout, norm=norm), (x, y), (x, y),
                                         source="test", batch_size=batch_size, augment=augment)


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _dense_top(fn, params):
    flat, unravel = ravel_pytree(params)
    h = np.asarray(jax.hessian(lambda f: fn(unravel(f)))(flat))
    return float(np.max(np.abs(np.linalg.eigvalsh((h + h.T) / 2))))


SETTINGS = measure.MeasureSettings(topk=1, tol=1e-10, max_hvps=60, crosscheck_every=0)


def _trained_state(task, params, steps=6):
    """Parameters and running statistics after a few GD steps (statistics away from their start)."""
    opt = optimizers.build("gd", 0.05)
    dtype = jax.tree.leaves(params)[0].dtype
    state = jax.tree.map(lambda a: a.astype(dtype), task.init_state(jax.random.PRNGKey(0)))
    chunk = train.make_chunk(task, opt, steps)
    params, _, state, _ = chunk(params, opt.init(params), state, task.data, jnp.asarray(0))
    return params, state


def test_batchnorm_lambda_max_equals_dense_eigh_in_train_and_eval_mode(x64):
    task = _task(dtype=np.float64)
    params = _f64(task.init_params(jax.random.PRNGKey(0)))
    params, state = _trained_state(task, params)
    state = _f64(state)
    batch = task.measure_batch_fn(task.data, 0)
    opt = optimizers.build("gd", 0.05)
    key = jax.random.PRNGKey(1)

    m = measure.measurement(task.loss_fn, opt, SETTINGS)
    row, _ = m.measure(params, batch, m.init(params, key), key)
    dense_train = _dense_top(lambda p: task.loss_fn(p, batch), params)
    assert float(row["lambda_max"]) == pytest.approx(dense_train, rel=1e-8)

    m_eval = measure.measurement(task.eval_loss_fn, opt, SETTINGS, stateful=True)
    row_eval, _ = m_eval.measure(params, batch, m_eval.init(params, key), key, model_state=state)
    dense_eval = _dense_top(lambda p: task.eval_loss_fn(p, state, batch), params)
    assert float(row_eval["lambda_max"]) == pytest.approx(dense_eval, rel=1e-8)
    # the two modes measure different functions (else the test above could not tell them apart)
    assert abs(dense_eval - dense_train) > 1e-3 * dense_train


def test_batchnorm_running_statistics_bit_identical_after_a_measurement():
    task = _task()
    params = task.init_params(jax.random.PRNGKey(0))
    params, state = _trained_state(task, params)
    before = jax.tree.map(np.array, state)
    opt = optimizers.build("sam", 0.05, rho=0.05)
    key = jax.random.PRNGKey(2)
    batch = task.measure_batch_fn(task.data, 0)
    settings = measure.MeasureSettings(topk=2, ascent_point=True)
    for loss, kw in ((task.loss_fn, {}), (task.eval_loss_fn, {"stateful": True})):
        m = measure.measurement(loss, opt, settings, **kw)
        m.measure(params, batch, m.init(params, key), key, **({"model_state": state} if kw else {}))
    after = jax.tree.map(np.array, state)
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
    # and a step does change them (the comparison above can fail)
    _, moved = _trained_state(task, params, steps=1)
    assert not jax.tree.all(jax.tree.map(np.array_equal, before, jax.tree.map(np.array, moved)))


def test_batchnorm_sam_step_takes_running_statistics_from_the_unperturbed_pass():
    task = _task()
    params = task.init_params(jax.random.PRNGKey(0))
    state = task.init_state(jax.random.PRNGKey(0))
    opt = optimizers.build("sam", 0.05, rho=0.5)
    batch = task.batch_fn(task.data, 0)
    key = train.step_key(0, 0)
    own = task.train_loss_fn(params, state, batch, key)[1]
    grad = jax.grad(lambda p: task.train_loss_fn(p, state, batch, key)[0])(params)
    at_ascent = task.train_loss_fn(opt.ascent_point(params, grad), state, batch, key)[1]
    _, _, after, _ = train.make_chunk(task, opt, 1)(jax.tree.map(jnp.copy, params), opt.init(params),
                                                     jax.tree.map(jnp.copy, state), task.data, jnp.asarray(0))
    np.testing.assert_array_equal(np.asarray(ravel_pytree(after)[0]), np.asarray(ravel_pytree(own)[0]))
    assert not np.allclose(np.asarray(ravel_pytree(at_ascent)[0]), np.asarray(ravel_pytree(own)[0]))


def test_batchnorm_chunks_normalise_each_chunk_with_its_own_statistics():
    task = _task(n=12)
    params = task.init_params(jax.random.PRNGKey(0))
    chunked = chunking.chunk_task(task, 4)
    whole = task.data
    per_chunk = np.mean([float(task.loss_fn(params, jax.tree.map(lambda a: a[i:i + 4], whole)))
                         for i in (0, 4, 8)])
    assert float(chunked.loss_fn(params, whole)) == pytest.approx(per_chunk, rel=1e-6)
    assert abs(float(task.loss_fn(params, whole)) - per_chunk) > 1e-4  # ghost batch norm differs
    # the step's running statistics move to the mean of the chunks' statistics
    state = task.init_state(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(3)
    _, new = chunked.train_loss_fn(params, state, whole, key)
    parts = [task.train_loss_fn(params, state, jax.tree.map(lambda a: a[i:i + 4], whole), key)[1] for i in (0, 4, 8)]
    mean = jax.tree.map(lambda *xs: sum(xs) / 3, *parts)
    np.testing.assert_allclose(ravel_pytree(new)[0], ravel_pytree(mean)[0], rtol=1e-5, atol=1e-7)


def _rows(folder):
    with open(folder / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("time_s", "measure_s")} for r in csv.DictReader(f)]


def test_batchnorm_dropout_task_killed_and_resumed_reproduces_metrics_exactly(tmp_path, monkeypatch):
    from samedge.run import fit

    settings = dict(lr=0.05, rho=0.05, momentum=0.9, weight_decay=5e-4, steps=40, measure_every=10,
                    eval_every=20, checkpoint_every=20, schedule="cosine", progress=False)
    task = _task(dropout=0.3, batch_size=8, augment=True, n=32)
    ref = fit(task, "sam_momentum", out=tmp_path / "ref", **settings)
    assert ref["status"] == "completed"

    real = store.RunStore.append

    def dies_at_30(self, row):
        real(self, row)
        if row["step"] == 30:
            raise RuntimeError("killed")

    monkeypatch.setattr(store.RunStore, "append", dies_at_30)
    with pytest.raises(RuntimeError, match="killed"):
        fit(task, "sam_momentum", out=tmp_path / "cut", **settings)
    monkeypatch.setattr(store.RunStore, "append", real)
    resumed = fit(task, "sam_momentum", out=tmp_path / "cut", resume=True, **settings)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == 20
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "ref")
    # the run did use dropout and state: another seed of the dropout draws changes the numbers
    other = fit(task, "sam_momentum", out=tmp_path / "seed1", **(settings | {"seed": 1}))
    assert _rows(tmp_path / "seed1") != _rows(tmp_path / "ref") and other["status"] == "completed"


def test_batchnorm_measure_mode_eval_runs_and_refuses_a_task_without_eval_loss(tmp_path):
    from samedge.errors import ConfigError
    from samedge.run import fit

    task = _task(batch_size=8, n=32)
    s = fit(task, "momentum", lr=0.05, momentum=0.9, steps=10, measure_every=5, measure_mode="eval",
            out=tmp_path / "eval", progress=False)
    t = fit(task, "momentum", lr=0.05, momentum=0.9, steps=10, measure_every=5, out=tmp_path / "train",
            progress=False)
    assert s["status"] == t["status"] == "completed"
    assert s["final_lambda_max"] != t["final_lambda_max"]
    plain = tasks.make_task("q", lambda k: {"w": jnp.ones(2)}, lambda p, b: jnp.sum(p["w"] ** 2), jnp.ones(1))
    with pytest.raises(ConfigError, match="eval_loss_fn"):
        fit(plain, "gd", steps=2, measure_every=1, measure_mode="eval", out=tmp_path / "plain", progress=False)


def test_make_task_refuses_half_a_model_state():
    from samedge.errors import ConfigError

    init = lambda k: {"w": jnp.ones(2)}  # noqa: E731
    loss = lambda p, b: jnp.sum(p["w"] ** 2)  # noqa: E731
    with pytest.raises(ConfigError, match="init_state"):
        tasks.make_task("q", init, loss, jnp.ones(1), train_loss_fn=lambda p, s, b, k: (loss(p, b), s))
    with pytest.raises(ConfigError, match="unlike"):
        tasks.make_task("q", init, loss, jnp.ones(1), init_state=lambda k: {"m": jnp.zeros(2)},
                        train_loss_fn=lambda p, s, b, k: (loss(p, b), {"m": jnp.zeros(3)}))
    t = tasks.make_task("q", init, loss, jnp.ones(1), init_state=lambda k: {"m": jnp.zeros(2)},
                        train_loss_fn=lambda p, s, b, k: (loss(p, b), s))
    assert t.stateful and not tasks.make_task("q", init, loss, jnp.ones(1)).stateful
