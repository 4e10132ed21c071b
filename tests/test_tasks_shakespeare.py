"""The shakespeare task: the paper's architecture, evaluation against a closed form, measurement
batches, the stochastic SAM step, and bad input."""

from __future__ import annotations

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import config as run_config
from samedge import optimizers, train
from samedge.data import shakespeare as sh
from samedge.errors import ConfigError, DataError
from samedge.tasks import shakespeare as task_mod

TINY = dict(seq_len=8, batch_size=4, d_model=8, n_layers=1, n_heads=2, key_size=4, test_lines=5, eval_batch=3)


def corpus_text(lines=40, seed=0):
    rng = np.random.default_rng(seed)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "Whether", "'tis", "nobler"]
    return "".join(" ".join(rng.choice(words, size=rng.integers(2, 7))) + ".\n" for _ in range(lines))


@pytest.fixture(scope="module")
def tiny():
    text = corpus_text()
    cfg = task_mod.Config(**TINY)
    return text, cfg, task_mod.build(cfg, corpus=sh.Corpus(text, "synthetic"))


def test_paper_preset_builds_the_paper_architecture():
    cfg = task_mod.Config(**task_mod.PRESETS["paper"].task)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.key_size, cfg.seq_len, cfg.batch_size) == (6, 128, 8, 32, 64, 128)
    model = task_mod.make_model(cfg)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32))["params"]
    v, t, d, p, h, layers = 128, 64, 128, 8 * 32, 4 * 128, 6
    per_layer = (2 * d) + (3 * (d * p + p)) + (p * d + d) + (2 * d) + (d * h + h) + (h * d + d)
    expected = v * d + t * d + layers * per_layer + 2 * d + d * v + v
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == expected == 1_626_496
    assert shapes["tok_emb"].shape == (128, 128) and shapes["pos_emb"].shape == (64, 128)
    assert len([k for k in shapes if k.startswith("block_")]) == 6
    block = shapes["block_5"]
    assert block["attn"]["qkv"]["kernel"].shape == (128, 3 * 256)
    assert block["attn"]["out"]["kernel"].shape == (256, 128)
    assert block["mlp"]["fc"]["kernel"].shape == (128, 512) and block["mlp"]["proj"]["kernel"].shape == (512, 128)
    assert shapes["head"]["kernel"].shape == (128, 128) and shapes["head"]["bias"].shape == (128,)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32))
    logits = jax.eval_shape(model.apply, params, jnp.zeros((2, 64), jnp.int32))
    assert logits.shape == (2, 64, 128)


def test_paper_preset_is_the_authors_setup_and_quick_is_ours():
    paper = task_mod.Config(**task_mod.PRESETS["paper"].task)
    assert (paper.init, paper.gelu, paper.windows) == ("authors", "tanh", "chunks")
    model = task_mod.make_model(paper)
    assert (model.init_scheme, model.gelu) == ("authors", "tanh")
    quick = task_mod.Config(**task_mod.PRESETS["quick"].task)
    assert (quick.init, quick.gelu, quick.windows) == ("gpt2", "exact", "all")
    assert (task_mod.Config().init, task_mod.Config().gelu, task_mod.Config().windows) == ("gpt2", "exact", "all")
    model = task_mod.make_model(quick)
    assert (model.init_scheme, model.gelu) == ("gpt2", "exact")


def test_chunk_windows_train_on_the_texts_consecutive_chunks(tiny):
    text, _, _ = tiny
    cfg = task_mod.Config(**(TINY | {"windows": "chunks"}))
    task = task_mod.build(cfg, corpus=sh.Corpus(text, "synthetic"))
    train_text = "".join(text.splitlines(keepends=True)[:-cfg.test_lines])
    t, b = cfg.seq_len, cfg.batch_size
    n_chunks = len(train_text) // (b * (t + 1)) * b
    assert task.info["n_train_windows"] == n_chunks and task.info["steps_per_epoch"] == n_chunks // b
    chunks = [train_text[c * (t + 1):(c + 1) * (t + 1)] for c in range(n_chunks)]
    batch = jax.jit(task.batch_fn)
    seen = [sh.decode(row) for s in range(n_chunks // b) for row in np.asarray(batch(task.data, s))]
    assert sorted(seen) == sorted(chunks)  # one epoch: every chunk once
    fixed = task_mod.build(task_mod.Config(**(TINY | {"windows": "chunks", "measure_batch": 8})),
                           corpus=sh.Corpus(text, "synthetic"))
    rows = [sh.decode(r) for r in np.asarray(fixed.measure_batch_fn(fixed.data, 0))]
    assert len(set(rows)) == 8 and all(r in chunks for r in rows)


def test_real_corpus_task_info(data_dir):
    cfg = task_mod.Config(**task_mod.PRESETS["quick"].task)
    info = task_mod.build(cfg, data_dir=data_dir).info
    assert info["n_train_chars"] + info["n_test_chars"] == 1_115_394
    assert info["n_train_windows"] == info["n_train_chars"] - cfg.seq_len
    assert 3.0 < info["unigram_entropy_nats"] < math.log(65)  # 65 distinct characters, not uniform


def test_unigram_entropy_is_that_of_the_training_text(tiny):
    text, cfg, task = tiny
    train_text = "".join(text.splitlines(keepends=True)[:-cfg.test_lines])
    counts = collections.Counter(train_text)
    n = len(train_text)
    assert task.info["n_train_chars"] == n
    assert task.info["unigram_entropy_nats"] == pytest.approx(-sum(c / n * math.log(c / n) for c in counts.values()))


def test_evaluate_matches_a_closed_form_on_constant_logits(tiny):
    # With a zero read-out kernel the logits are the read-out bias b at every position, so the test
    # loss per character is the mean over test characters 2..n of logsumexp(b) - b[c].
    text, cfg, task = tiny
    params = task.init_params(jax.random.PRNGKey(0))
    b = jax.random.normal(jax.random.PRNGKey(1), (128,))
    inner = dict(params["params"])
    inner["head"] = {"kernel": jnp.zeros_like(inner["head"]["kernel"]), "bias": b}
    test_text = "".join(text.splitlines(keepends=True)[-cfg.test_lines:])
    scored = np.array([ord(c) for c in test_text[1:]])
    b_np = np.asarray(b, np.float64)
    lse = np.log(np.exp(b_np).sum())
    result = task.evaluate({"params": inner})
    assert task.info["test_chars_scored"] == len(scored)
    assert result["test_loss"] == pytest.approx(float(np.mean(lse - b_np[scored])), rel=1e-5)
    assert result["test_acc"] == pytest.approx(float(np.mean(scored == np.argmax(b_np))))


def test_eval_windows_caps_the_test_set():
    cfg = task_mod.Config(**(TINY | {"eval_windows": 2}))
    task = task_mod.build(cfg, corpus=sh.Corpus(corpus_text(), "synthetic"))
    assert task.info["n_test_windows"] == 2 and task.info["test_chars_scored"] == 2 * cfg.seq_len


def test_measurement_batch_is_the_steps_minibatch_or_a_fixed_one(tiny):
    text, cfg, task = tiny
    measure_batch, batch = jax.jit(task.measure_batch_fn), jax.jit(task.batch_fn)
    for step in (0, 9):
        np.testing.assert_array_equal(measure_batch(task.data, step), batch(task.data, step))
    fixed = task_mod.build(task_mod.Config(**(TINY | {"measure_batch": 16})), corpus=sh.Corpus(text, "synthetic"))
    first = np.asarray(fixed.measure_batch_fn(fixed.data, 0))
    assert first.shape == (16, cfg.seq_len + 1)
    np.testing.assert_array_equal(first, fixed.measure_batch_fn(fixed.data, 7))
    assert len({tuple(r) for r in first}) == 16
    train_text = sh.decode(np.asarray(fixed.data["tokens"]))
    assert all(sh.decode(r) in train_text for r in first)


def test_sam_ascent_and_descent_use_the_steps_minibatch(tiny):
    _, _, task = tiny
    lr, rho = 0.5, 0.2
    params = task.init_params(jax.random.PRNGKey(0))
    donated = jax.tree.map(jnp.copy, params)  # the chunk donates its inputs

    @jax.jit
    def by_hand(batch_ascent, batch_descent):
        g = jax.grad(task.loss_fn)(params, batch_ascent)
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))
        adv = jax.tree.map(lambda w, gi: w + rho * gi / norm, params, g)
        g_adv = jax.grad(task.loss_fn)(adv, batch_descent)
        return jax.tree.map(lambda w, gi: w - lr * gi, params, g_adv)

    batch = jax.jit(task.batch_fn)
    b3, b4 = batch(task.data, 3), batch(task.data, 4)
    same, mixed = by_hand(b3, b3), by_hand(b4, b3)
    opt = optimizers.build("sam", lr, rho=rho)
    chunk = train.make_chunk(task, opt, 1)
    got, _, _ = chunk(donated, opt.init(params), task.data, jnp.asarray(3))
    for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(same), jax.tree.leaves(mixed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    diff = max(float(jnp.abs(a - c).max()) for a, c in zip(jax.tree.leaves(got), jax.tree.leaves(mixed)))
    assert diff > 1e-5  # an ascent on another minibatch would be a different step


@pytest.mark.parametrize("key, value", [("seq_len", 0), ("batch_size", -1), ("measure_batch", -2),
                                        ("n_heads", True), ("eval_windows", 1.5), ("init", "he"),
                                        ("gelu", "fast"), ("windows", "every"), ("windows", 1)])
def test_bad_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        run_config.resolve("shakespeare", "quick", task_overrides={key: value})


def test_bad_corpora_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        task_mod.build(task_mod.Config(**TINY), data_dir=tmp_path)
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes("Romeo\nand Juliet\u2019s\n".encode())
    with pytest.raises(DataError, match="non-ASCII"):
        task_mod.build(task_mod.Config(**TINY), data_dir=tmp_path)
    with pytest.raises(DataError, match="fewer than one batch"):
        task_mod.build(task_mod.Config(**(TINY | {"batch_size": 4096})), corpus=sh.Corpus(corpus_text(), "synthetic"))
