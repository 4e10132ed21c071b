"""Chunked passes (``samedge.chunking``): every full-batch quantity in chunks equals one pass.

Truth: the same quantity in one pass over the same examples (the loss is a mean over them, so the
two agree to rounding: 1e-5 relative in float32, 1e-10 in float64); an uneven last chunk against the
mean written out by hand; the compiled program's own memory analysis for the claim that memory does
not grow with the number of examples. Every test name contains ``chunked`` (``pytest -k chunked``).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import samedge
from samedge import chunking, cli, curvature, measure, optimizers, tasks
from samedge.errors import ConfigError
from samedge.store import read_metrics

TINY = {
    "mnist": dict(n_train=300, n_test=64, width=16, depth=3),
    "cifar10": dict(n_train=96, n_test=32, base_channels=2),
    "shakespeare": dict(n_layers=1, d_model=32, n_heads=2, key_size=16, seq_len=16, batch_size=25, eval_windows=32),
}


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _user_task(n=70, d=6, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(n, d)), dtype), jnp.asarray(rng.normal(size=(n, 2)), dtype)

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (d, 12), dtype) / d ** 0.5, "w2": jax.random.normal(k2, (12, 2), dtype) / 12 ** 0.5}

    def loss(p, b):
        return jnp.mean((jnp.tanh(b[0] @ p["w1"]) @ p["w2"] - b[1]) ** 2)

    return tasks.make_task("user", init, loss, (x, y))


def _build(name, data_dir):
    if name == "user":
        return _user_task()
    fields = {f for f in tasks.task_source(name).config_cls.__dataclass_fields__}
    return tasks.build_task(name, tasks.make_task_config(name, {k: v for k, v in TINY[name].items() if k in fields}),
                            data_dir=data_dir)


def _compare(task, chunk, rtol, *, chained=True):
    """Loss, gradient, one SAM step, an HVP, lambda_max (same start) and lambda_max_full: chunked
    against one pass, at the same parameters; returns the largest relative difference of each.

    SAM's step is compared with its ascent point shared (``sam_step``: both of its gradients from
    the chunked loss against both from one pass, the second at the one-pass ascent point) and, with
    ``chained``, as the optimizer takes it (the ascent point from each one's own gradient). On the
    ReLU CNN the chained step is not a test of chunking: its gradient at the ascent point moves by
    1e-4 relative when the ascent point moves by rounding (one pass over the same examples in
    another order differs as much), since exactly-zero pre-activations (black pixels, zero biases)
    flip sign there; at a shared ascent point chunked and one pass agree to 1e-6."""
    chunked = chunking.chunk_task(task, chunk)
    params = task.init_params(jax.random.PRNGKey(0))
    batch = task.batch_fn(task.data, 0)
    full = task.full_batch_fn(task.data) if task.full_batch_fn is not None else batch
    assert chunking.leading(batch) > chunk and chunking.leading(batch) % chunk, "the test wants an uneven last chunk"
    sam = optimizers.build("sam", 0.05, rho=0.1)
    n = _flat(params).size
    v = jax.random.normal(jax.random.PRNGKey(1), (n,), _flat(params).dtype)
    g = jax.grad(task.loss_fn)(params, batch)
    norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))
    ascent = jax.tree.map(lambda w, d: w + 0.1 * d / norm, params, g)  # the one-pass ascent point
    out = {}
    for label, t in (("one", task), ("chunked", chunked)):
        vg = jax.jit(jax.value_and_grad(t.loss_fn))
        step = jax.jit(lambda p, b: sam.update(p, sam.init(p), lambda q: jax.value_and_grad(t.loss_fn)(q, b))[0])
        shared = jax.jit(lambda p, b: jax.tree.map(lambda w, d: w - 0.05 * d, p, jax.grad(t.loss_fn)(ascent, b)))
        hvp = jax.jit(lambda p, b, u: curvature.flat_hvp(lambda q: t.loss_fn(q, b), p)[0](u))
        top = jax.jit(lambda p, b: curvature.lanczos(curvature.flat_hvp(lambda q: t.loss_fn(q, b), p)[0], v, k=1,
                                                     max_iters=30, tol=1e-12, min_iters=30).values[0])
        loss, grad = vg(params, batch)
        out[label] = dict(loss=loss, grad=_flat(grad), sam_step=_flat(shared(params, batch)), hvp=hvp(params, batch, v),
                          lambda_max=top(params, batch), lambda_max_full=top(params, full))
        if chained:
            out[label]["sam_step_chained"] = _flat(step(params, batch))
    worst = {k: _rel(out["chunked"][k], out["one"][k]) for k in out["one"]}
    assert max(worst.values()) <= rtol, worst
    return worst


@pytest.mark.parametrize("name", ["mnist", "cifar10", "shakespeare", "user"])
def test_chunked_equals_one_pass(name, data_dir):
    task = _build(name, data_dir)
    n = chunking.leading(task.batch_fn(task.data, 0))
    _compare(task, n // 3 + 1, 1e-5, chained=name != "cifar10")  # three chunks, the last one shorter


def test_chunked_equals_one_pass_in_float64(x64):
    task = _user_task(dtype=jnp.float64)
    assert _flat(task.init_params(jax.random.PRNGKey(0))).dtype == np.float64
    _compare(task, 16, 1e-10)  # 70 examples: chunks 16, 16, 16, 16, 6


def test_chunked_uneven_last_chunk_and_device_blocks_against_the_mean_by_hand():
    x = jnp.arange(26.0)
    f = lambda w, b: jnp.mean(w * b ** 2)  # noqa: E731
    truth = float(np.mean(np.arange(26.0) ** 2))
    for chunk, groups in ((5, 1), (4, 2), (3, 2), (1, 1), (26, 1), (100, 1)):
        got = chunking.chunked_mean(f, chunk, groups=groups)(1.0, x)
        assert float(got) == pytest.approx(truth, rel=1e-6), (chunk, groups)
    # a batch that does not split into the groups is one pass, and still the mean
    assert float(chunking.chunked_mean(f, 4, groups=3)(1.0, x[:25])) == pytest.approx(np.mean(np.arange(25.0) ** 2))


def test_chunked_memory_does_not_grow_with_the_examples():
    """The compiled HVP's temporary memory (XLA's own analysis) at 4,000 and 16,000 examples: the
    same with chunks of 500 (the chunk's body is rematerialised and slices the data itself), four
    times larger in one pass; without rematerialisation the chunks' residuals add up again."""
    sizes = [32, 256, 256, 10]
    params = [{"w": jax.ShapeDtypeStruct((a, b), jnp.float32)} for a, b in zip(sizes[:-1], sizes[1:])]
    n = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))

    def loss(p, b):
        h = b[0]
        for layer in p[:-1]:
            h = jnp.tanh(h @ layer["w"])
        return jnp.mean((h @ p[-1]["w"] - b[1]) ** 2)

    def temp(fn, examples):
        batch = (jax.ShapeDtypeStruct((examples, 32), jnp.float32), jax.ShapeDtypeStruct((examples, 10), jnp.float32))
        hvp = lambda p, u, b: curvature.flat_hvp(lambda q: fn(q, b), p)[0](u)  # noqa: E731
        compiled = jax.jit(hvp).lower(params, jax.ShapeDtypeStruct((n,), jnp.float32), batch).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    chunked = chunking.chunked_mean(loss, 500)
    small, large = temp(chunked, 4000), temp(chunked, 16000)
    assert large <= 1.05 * small, (small, large)
    assert temp(loss, 16000) >= 3 * temp(loss, 4000) and temp(loss, 16000) > 5 * large
    assert temp(chunking.chunked_mean(loss, 500, remat=False), 16000) > 3 * large


def test_chunked_run_refuses_a_loss_that_is_not_a_mean(tmp_path):
    task = tasks.make_task("sum", lambda k: {"w": jnp.ones(3)}, lambda p, b: jnp.sum((b @ p["w"]) ** 2),
                           jnp.ones((40, 3)))
    with pytest.raises(ConfigError) as err:
        samedge.fit(task, "gd", lr=0.01, steps=2, measure_every=1, chunk_size=8, out=tmp_path / "r", progress=False)
    message = str(err.value)
    assert "--chunk-size 8: the loss is not a mean over the batch's examples" in message and "\n" not in message
    assert not (tmp_path / "r" / "metrics.csv").exists()  # refused before anything ran
    # declared on purpose (a ghost batch norm): no check; the chunking is then part of the function
    on_purpose = tasks.make_task("sum", lambda k: {"w": jnp.ones(3)}, lambda p, b: jnp.sum((b @ p["w"]) ** 2),
                                 jnp.ones((40, 3)), chunk_dependent=True)
    assert samedge.fit(on_purpose, "gd", lr=0.001, steps=2, measure_every=1, chunk_size=8, out=tmp_path / "p",
                       progress=False)["status"] == "completed"


def test_chunked_measurement_settings_equal_one_pass():
    """``MeasureSettings(chunk_size=...)`` in your own loop: the same row to rounding."""
    task = _user_task()
    params = task.init_params(jax.random.PRNGKey(0))
    rows = []
    for chunk in (0, 16):
        m = samedge.measurement(task.loss_fn, optimizers.build("sam", 0.1, rho=0.1),
                                measure.MeasureSettings(chunk_size=chunk, tol=1e-5, ascent_point=True))
        rows.append(m.measure(params, task.data, m.init(params, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))[0])
    for key in ("loss", "grad_norm", "lambda_max", "lambda_max_sam", "edge"):
        assert float(rows[1][key]) == pytest.approx(float(rows[0][key]), rel=1e-5), key


def test_chunked_run_resumes_with_another_chunk_size(tmp_path, data_dir):
    """The chunk size is the machine's: a run checkpointed with chunks of 100 continues with 64 (the
    rows after the resume equal an unbroken run's to rounding), and config.json records both."""
    common = ["run", "mnist", "--set", "n_train=256", "--set", "n_test=64", "--set", "width=16", "--optimizer", "gd",
              "--lr", "0.5", "--steps", "40", "--measure-every", "10", "--checkpoint-every", "10",
              "--data-dir", str(data_dir), "--no-progress"]
    whole = tmp_path / "whole"
    assert cli.main([*common, "--out", str(whole), "--chunk-size", "100"]) == 0
    # the same run checkpointed at step 20 only, continued from there with chunks of 64
    half = tmp_path / "half"
    assert cli.main([*common, "--out", str(half), "--chunk-size", "100", "--checkpoint-every", "20"]) == 0
    config = json.loads((half / "config.json").read_text())
    assert config["run"]["chunk_size"] == 100 and "chunk_sizes" not in config
    (half / "summary.json").unlink()  # as if it had stopped after its last checkpoint (step 20)
    assert cli.main(["resume", str(half), "--data-dir", str(data_dir), "--no-progress", "--chunk-size", "64"]) == 0
    config = json.loads((half / "config.json").read_text())
    assert config["run"]["chunk_size"] == 64
    assert config["chunk_sizes"] == [{"from_step": 0, "chunk_size": 100}, {"from_step": 20, "chunk_size": 64}]
    a, b = read_metrics(whole), read_metrics(half)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 10, 20, 30, 40]
    for ra, rb in zip(a, b):
        for key in ("loss", "grad_norm", "lambda_max"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), (ra["step"], key)


def test_chunked_sweeps_carry_the_chunk_size_and_a_chunk_dependent_run_keeps_its_own(tmp_path, data_dir):
    from samedge import sweep

    configs = sweep.expand_grid("mnist", "quick", optimizers=["gd", "sam"], lrs=[0.5], chunk_size=250, notice=lambda s: None)
    assert {c.chunk_size for c in configs} == {250}
    assert sweep.expand_grid("mnist", "paper", optimizers=["gd"], lrs=[0.1], notice=lambda s: None)[0].chunk_size == 10_000
    # a task whose loss depends on the chunking: another chunk size on resume is refused
    task = tasks.make_task("ghost", lambda k: {"w": jnp.ones(3)}, lambda p, b: jnp.mean((b @ p["w"]) ** 2),
                           jnp.ones((40, 3)), chunk_dependent=True)
    out = tmp_path / "ghost"
    kw = dict(lr=0.01, steps=4, measure_every=2, checkpoint_every=2, out=out, progress=False)
    samedge.fit(task, "gd", chunk_size=8, **kw)
    (out / "summary.json").unlink()
    with pytest.raises(Exception, match="depends on the chunking"):
        samedge.fit(task, "gd", chunk_size=16, resume=True, **kw)
