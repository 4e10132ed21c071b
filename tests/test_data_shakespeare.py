"""tiny_shakespeare data: the split against the raw file, tokens, the shuffle, windows, download."""

from __future__ import annotations

import collections
import functools
import hashlib
import http.server
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge.data import shakespeare as sh
from samedge.errors import DataError


def test_split_holds_out_exactly_the_last_10000_lines(data_dir):
    corpus = sh.load(data_dir)
    parts = sh.split(corpus.text)
    # Rebuild the split from the raw bytes: the test set starts right after the newline that ends
    # line 30,000 of the 40,000 (the file ends with a newline).
    raw = (data_dir / "tinyshakespeare" / "input.txt").read_bytes()
    newlines = np.flatnonzero(np.frombuffer(raw, np.uint8) == ord("\n"))
    assert len(newlines) == 40_000 and raw.endswith(b"\n")
    cut = int(newlines[-10_001]) + 1
    assert parts.test.encode() == raw[cut:]
    assert parts.train.encode() == raw[:cut]
    assert parts.test.count("\n") == 10_000 and parts.train.count("\n") == 30_000


def test_split_rejects_too_few_lines():
    with pytest.raises(DataError, match="no training text"):
        sh.split("a\nb\n", test_lines=2)


def test_tokens_are_ascii_code_points_and_round_trip():
    text = "First Citizen:\nBefore we proceed~"
    tokens = sh.encode(text)
    np.testing.assert_array_equal(tokens, [ord(c) for c in text])
    assert sh.decode(tokens) == text
    assert sh.decode(np.array([72, 105, 0, 0])) == "Hi"  # padding dropped


@pytest.mark.parametrize("text, what, offset", [("caf\u00e9", "non-ASCII", 6), ("a\x00b", "NUL", 4)])
def test_bad_characters_are_refused(tmp_path, text, what, offset):
    with pytest.raises(DataError, match=what):
        sh.encode(text)
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    (folder / "input.txt").write_bytes(("ok\n" + text).encode("utf-8"))
    with pytest.raises(DataError, match=f"{what}.*byte offset {offset} "):
        sh.load(tmp_path)


def test_missing_corpus_is_an_error(tmp_path):
    with pytest.raises(DataError, match="input.txt not found"):
        sh.load(tmp_path)


def test_unigram_entropy_matches_counts():
    text = "to be, or not to be: that is the question\n"
    counts = collections.Counter(text)
    expected = -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())
    assert sh.unigram_entropy(sh.encode(text)) == pytest.approx(expected, rel=1e-12)
    assert sh.unigram_entropy(sh.encode("abcd" * 5)) == pytest.approx(math.log(4), rel=1e-12)


@pytest.mark.parametrize("m", [1, 7, 1000, 4097])
def test_feistel_is_a_permutation(m):
    perm_fn = jax.jit(sh.feistel_permutation, static_argnums=1)
    perms = []
    for seed in (0, 1):
        keys = jax.random.bits(jax.random.PRNGKey(seed), (sh.FEISTEL_ROUNDS,), jnp.uint32)
        perm = np.asarray(perm_fn(jnp.arange(m), m, keys))
        np.testing.assert_array_equal(np.sort(perm), np.arange(m))  # each of [0, m) exactly once
        perms.append(perm)
    if m >= 1000:
        assert not np.array_equal(*perms)  # the key matters
        assert np.mean(perms[0] == np.arange(m)) < 0.01  # shuffled, not near the identity
        assert abs(np.corrcoef(perms[0], np.arange(m))[0, 1]) < 0.1


def test_batches_are_windows_drawn_without_replacement_per_epoch():
    n, t, b = 200, 8, 8  # W = 192 windows, 24 steps an epoch
    tokens = jnp.arange(n, dtype=jnp.int32)  # a token equal to its position reveals each window's start
    batch = jax.jit(sh.make_batch_fn(n, t, b, jax.random.PRNGKey(3)))
    epochs = []
    for e in range(2):
        rows = np.concatenate([np.asarray(batch(tokens, s)) for s in range(24 * e, 24 * e + 24)])  # (192, 9)
        np.testing.assert_array_equal(rows, rows[:, :1] + np.arange(t + 1))  # contiguous windows
        np.testing.assert_array_equal(np.sort(rows[:, 0]), np.arange(192))  # every window once
        epochs.append(rows[:, 0])
    assert not np.array_equal(epochs[0], epochs[1])  # each epoch reshuffles


def test_batches_depend_only_on_seed_and_step(data_dir):
    tokens_np = sh.encode(sh.split(sh.load(data_dir).text).train)
    tokens = jnp.asarray(tokens_np)
    make = functools.partial(sh.make_batch_fn, len(tokens_np), 16, 4)
    a, b = jax.jit(make(jax.random.PRNGKey(0))), jax.jit(make(jax.random.PRNGKey(0)))
    first = np.asarray(a(tokens, 5))
    np.testing.assert_array_equal(first, np.asarray(b(tokens, 5)))  # a second build, same batch
    assert not np.array_equal(first, np.asarray(a(tokens, 6)))
    np.testing.assert_array_equal(first, np.asarray(a(tokens, 5)))  # again, after another step
    assert not np.array_equal(first, np.asarray(jax.jit(make(jax.random.PRNGKey(1)))(tokens, 5)))
    text = sh.decode(tokens_np)
    assert all(sh.decode(row) in text for row in first)  # real windows of the training text


def test_too_short_for_one_batch_is_an_error():
    with pytest.raises(DataError, match="fewer than one batch of 4"):
        sh.make_batch_fn(10, 8, 4, jax.random.PRNGKey(0))


def authors_chunks(corpus: np.ndarray, seq_len: int, batch_size: int) -> np.ndarray:
    """The paper's code's training examples (sam_edge dataset.py, load_ascii_dataset): the corpus
    less its incomplete last batch, reshaped into rows of T + 1 characters."""
    crop_len = seq_len + 1
    _, remainder = divmod(corpus.size, batch_size * crop_len)
    if remainder:
        corpus = corpus[:-remainder]
    return corpus.reshape([-1, crop_len])


@pytest.mark.parametrize("n", [200, 215, 216])
def test_chunk_batches_visit_every_chunk_once_per_epoch(n):
    t, b = 8, 4  # chunks of 9; n // 36 whole batches of them
    tokens = np.arange(n, dtype=np.int32)  # a token equal to its position reveals each chunk's start
    m = sh.num_chunks(n, t, b)
    assert m == n // 36 * 4 and m == len(authors_chunks(tokens, t, b))
    steps = m // b
    batch = jax.jit(sh.make_batch_fn(n, t, b, jax.random.PRNGKey(3), "chunks"))
    epochs = []
    for e in range(3):
        rows = np.concatenate([np.asarray(batch(jnp.asarray(tokens), s)) for s in range(steps * e, steps * (e + 1))])
        assert rows.shape == (m, t + 1)
        np.testing.assert_array_equal(rows, rows[:, :1] + np.arange(t + 1))  # contiguous
        np.testing.assert_array_equal(np.sort(rows[:, 0]), np.arange(m) * (t + 1))  # every chunk start once
        # the same set of rows as the authors' reshape, each once
        np.testing.assert_array_equal(rows[np.argsort(rows[:, 0])], authors_chunks(tokens, t, b))
        epochs.append(rows[:, 0])
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])  # reshuffled


def test_chunk_batches_on_the_real_text_are_its_chunks(data_dir):
    text = sh.split(sh.load(data_dir).text).train
    tokens_np = sh.encode(text)
    t, b = 64, 128  # the paper's
    assert sh.num_chunks(len(tokens_np), t, b) == 13_056 == len(authors_chunks(tokens_np, t, b))
    batch = jax.jit(sh.make_batch_fn(len(tokens_np), t, b, jax.random.PRNGKey(0), "chunks"))
    rows = np.asarray(batch(jnp.asarray(tokens_np), 101))  # the last step of the first epoch (102 steps)
    chunks = {tuple(r) for r in authors_chunks(tokens_np.astype(np.int32), t, b)}
    assert len({tuple(r) for r in rows}) == b and all(tuple(r) in chunks for r in rows)


@pytest.mark.parametrize("windows", ["all", "chunks"])
def test_batch_of_a_step_is_a_pure_function_of_seed_and_step(windows):
    n, t, b = 1000, 8, 4
    tokens = jnp.arange(n, dtype=jnp.int32)
    make = functools.partial(sh.make_batch_fn, n, t, b, windows=windows)
    fn = make(jax.random.PRNGKey(5))
    jitted, rebuilt = jax.jit(fn), jax.jit(make(jax.random.PRNGKey(5)))
    steps = [0, 1, 26, 27, 28, 500]  # 27 steps an epoch for chunks, across epoch boundaries
    first = {s: np.asarray(jitted(tokens, s)) for s in steps}
    for s in reversed(steps):  # a resumed run: other steps in between, a fresh build, eager, traced step
        np.testing.assert_array_equal(np.asarray(rebuilt(tokens, jnp.asarray(s))), first[s])
        np.testing.assert_array_equal(np.asarray(fn(tokens, s)), first[s])
        np.testing.assert_array_equal(np.asarray(jitted(tokens, s)), first[s])
    assert len({first[s].tobytes() for s in steps}) == len(steps)
    other = jax.jit(make(jax.random.PRNGKey(6)))
    assert not np.array_equal(np.asarray(other(tokens, 0)), first[0])  # the seed matters
    if windows == "chunks":
        assert all(np.all(first[s][:, 0] % (t + 1) == 0) for s in steps)


def test_chunks_too_short_for_one_batch_is_an_error():
    sh.make_batch_fn(36, 8, 4, jax.random.PRNGKey(0), "chunks")  # exactly one batch of 4 chunks of 9
    with pytest.raises(DataError, match="35 characters: 3 non-overlapping chunks of 9 characters, "
                                        "fewer than one batch of 4"):
        sh.make_batch_fn(35, 8, 4, jax.random.PRNGKey(0), "chunks")
    with pytest.raises(ValueError, match="unknown windows 'every'"):
        sh.make_batch_fn(100, 8, 4, jax.random.PRNGKey(0), "every")


def test_fixed_chunks_are_distinct_chunk_starts():
    starts = sh.fixed_windows(200, 8, 20, jax.random.PRNGKey(0), "chunks", batch_size=4)
    np.testing.assert_array_equal(np.sort(starts), np.arange(20) * 9)  # all 20 chunks, once each
    with pytest.raises(DataError, match="20 non-overlapping chunks"):
        sh.fixed_windows(200, 8, 21, jax.random.PRNGKey(0), "chunks", batch_size=4)


def test_fixed_windows_are_distinct_and_inside():
    starts = sh.fixed_windows(100, 8, 92, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.sort(starts), np.arange(92))  # all 92 windows, once each
    with pytest.raises(DataError):
        sh.fixed_windows(100, 8, 93, jax.random.PRNGKey(0))


@pytest.mark.parametrize("n", [2, 9, 17, 18, 30])
def test_eval_windows_predict_every_character_once(n):
    t = 8
    tokens = np.arange(1, n + 1, dtype=np.uint8)
    w = sh.eval_windows(tokens, t)  # (W, T + 1)
    assert w.shape == (math.ceil((n - 1) / t), t + 1)
    targets = w[:, 1:].ravel()  # (W T,)
    np.testing.assert_array_equal(targets[targets != sh.PAD], tokens[1:])
    assert np.all(targets[n - 1:] == sh.PAD)  # only the tail is padding
    np.testing.assert_array_equal(w[:, 0], tokens[: len(w) * t : t])  # inputs start where the last window ended


class _Server:
    """A static file server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, folder):
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(folder), **k)

            def do_GET(self):
                outer.requests += 1
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    text = "".join(f"line {i}: so shaken as we are\n" for i in range(50))
    (served / "input.txt").write_text(text)
    s = _Server(served)
    s.text = text
    s.sha = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    yield s
    s.close()


def test_download_checks_the_hash_and_caches(server, monkeypatch, tmp_path):
    monkeypatch.delenv("SAMEDGE_DATA_DIR", raising=False)
    urls = (server.url + "input.txt",)
    corpus = sh.load(urls=urls, known_hash=server.sha)
    assert corpus.text == server.text and server.requests == 1
    assert corpus.source == str(tmp_path / "cache" / "tinyshakespeare" / "input.txt")
    assert sh.load(urls=urls, known_hash=server.sha).text == server.text
    assert server.requests == 1  # found in the cache, not fetched again


def test_download_with_a_wrong_hash_is_refused(server, monkeypatch, tmp_path):
    monkeypatch.delenv("SAMEDGE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="checksum mismatch"):
        sh.load(urls=(server.url + "input.txt",), known_hash="sha256:" + "0" * 64)
    assert not (tmp_path / "cache" / "tinyshakespeare" / "input.txt").exists()
    with pytest.raises(DataError, match="not found"):
        sh.load(download=False)
