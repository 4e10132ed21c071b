"""tiny_shakespeare: the corpus, its download, the paper's split, ASCII tokens and windows.

Tokens are ASCII code points (vocabulary 128); code point 0 (NUL) is reserved for padding, so a
corpus holding NUL or any non-ASCII character is refused. As in the paper, the last 10,000 lines
are the test set and the rest trains.

Training minibatches (the shuffle). A training example is a window of ``seq_len + 1`` characters
(inputs its first ``T = seq_len``, targets its last ``T``). Two sets of windows (``windows``):

- ``"all"`` (samedge's default): one window at every start, ``W = N - T`` of them in the ``N``
  training characters (consecutive windows overlap in ``T`` characters);
- ``"chunks"`` (the paper's code, google-deepmind/sam_edge ``dataset.py``, from Haiku's transformer
  example): the text cut into consecutive non-overlapping chunks ``[c (T+1), (c+1)(T+1))``,
  dropping the tail that does not fill a whole batch of chunks as that code does, so
  ``W = floor(N / (B (T + 1))) B`` chunks and an epoch is exactly ``W / B`` steps.

Epoch ``e`` visits the ``W`` examples in the order of a keyed pseudo-random permutation ``pi_e``
(keys from ``fold_in(key, e)``): step ``s`` takes examples ``pi_e(pos B), ..., pi_e(pos B + B - 1)``
with ``e, pos = divmod(s, W // B)`` (the last ``W mod B`` positions of an epoch are skipped: none
for chunks). So examples are drawn without replacement within an epoch, and a batch is a pure
function of (seed, step): a run resumes exactly. The paper's code instead streams the chunks
(cycled over epochs) through a shuffle buffer of 10 batches; a full per-epoch permutation is the
exact shuffle that buffer approximates, and unlike a buffer's state it needs nothing but the step
to reproduce, so resume stays exact. ``pi_e`` is a Feistel network (:func:`feistel_permutation`)
evaluated only at the ``B`` positions a step needs:
building the permutation with ``jax.random.permutation`` is a sort, ~2 s a step here over the
~850k windows and still ~20 ms over the ~27k disjoint ones (about a whole quick training step),
while the Feistel batch costs as much as i.i.d. sampling (~0.02 ms;
``benchmarks/shakespeare_batches.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samedge.data import common
from samedge.errors import DataError

NAME = "tinyshakespeare"
FILE = "input.txt"
URLS = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",)
SHA256 = "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
VOCAB_SIZE = 128  # ASCII
PAD = 0  # code point reserved for padding; never in a valid corpus
TEST_LINES = 10_000  # the paper holds out the last 10,000 lines


class Corpus(NamedTuple):
    text: str
    source: str  # where the text came from, for the run's config


class Split(NamedTuple):
    train: str
    test: str


def remote_file(urls=URLS, known_hash=SHA256) -> common.RemoteFile:
    return common.RemoteFile(FILE, tuple(urls), known_hash)


def read_text(path: Path) -> str:
    """The corpus at ``path`` as text; bytes outside ASCII are a :class:`DataError`."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    check_ascii(raw, str(path))
    return raw.decode("ascii")


def check_ascii(raw: bytes, where: str) -> None:
    """Refuse NUL (reserved for padding) and bytes >= 128 (outside the 128-token vocabulary)."""
    codes = np.frombuffer(raw, dtype=np.uint8)
    bad = np.flatnonzero((codes == PAD) | (codes >= VOCAB_SIZE))
    if bad.size:
        i = int(bad[0])
        kind = "a NUL byte (code 0 is reserved for padding)" if codes[i] == PAD else f"non-ASCII byte 0x{codes[i]:02x}"
        raise DataError(f"{where}: {kind} at byte offset {i} ({bad.size} such bytes); the tokens are ASCII code points 1-127")


def load(data_dir=None, *, download: bool = True, urls=URLS, known_hash: str = SHA256,
         progress: bool = False) -> Corpus:
    """Find ``tinyshakespeare/input.txt`` (``--data-dir``, ``$SAMEDGE_DATA_DIR``, cache), else download
    it into the cache, verified against ``known_hash``. Raises :class:`DataError`."""
    folder = common.find_dataset(NAME, (FILE,), data_dir)
    if folder is not None:
        return Corpus(read_text(folder / FILE), str(folder / FILE))
    looked = ", ".join(f"{p / NAME} ({o})" for o, p in common.candidate_dirs(data_dir))
    if not download:
        raise DataError(f"tiny_shakespeare not found in {looked}; put {FILE} there, set "
                        f"${common.ENV_DATA_DIR}, or pass --data-dir")
    try:
        path = common.download(remote_file(urls, known_hash), common.cache_dir() / NAME, progress=progress)
    except DataError as exc:
        raise DataError(f"tiny_shakespeare not found in {looked}, and {exc}") from None
    return Corpus(read_text(path), str(path))


def split(text: str, test_lines: int = TEST_LINES) -> Split:
    """The last ``test_lines`` lines (each with its newline) are the test set, the rest trains."""
    lines = text.splitlines(keepends=True)
    if len(lines) <= test_lines:
        raise DataError(f"the corpus has {len(lines)} lines; holding out the last {test_lines} leaves no training text")
    return Split("".join(lines[:-test_lines]), "".join(lines[-test_lines:]))


def encode(text: str) -> np.ndarray:
    """``(len(text),)`` uint8 code points; a NUL or non-ASCII character is a :class:`DataError`."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise DataError(f"non-ASCII character {text[exc.start]!r} at offset {exc.start}; the tokens are ASCII code points 1-127") from None
    check_ascii(raw, "text")
    return np.frombuffer(raw, dtype=np.uint8).copy()


def decode(tokens) -> str:
    """Code points back to text; padding (0) is dropped."""
    codes = np.asarray(tokens, dtype=np.uint8)
    return codes[codes != PAD].tobytes().decode("ascii")


def unigram_entropy(tokens: np.ndarray) -> float:
    """``H = -sum_c p_c log p_c`` in nats per character, ``p_c`` the frequency of code ``c``: the
    loss of the best model that ignores context, the bar a language model must pass."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=VOCAB_SIZE).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


FEISTEL_ROUNDS = 4  # four rounds: the Luby-Rackoff construction of a pseudo-random permutation


def _mix32(x):
    """A 32-bit integer hash (multiply / xor-shift finaliser): the Feistel round function."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def feistel_permutation(j, m: int, round_keys):
    """``pi(j)`` for a keyed pseudo-random permutation ``pi`` of ``[0, m)``, evaluated at ``j`` only.

    A balanced Feistel network on ``2h`` bits (``4^h >= m``) is a bijection of ``[0, 4^h)`` for any
    round function; walking the cycle (re-applying it while the value is ``>= m``) restricts it to a
    bijection of ``[0, m)``. Since ``4^h < 4m``, a walk takes fewer than 4 applications on average.
    Cost ``O(len(j))``, so a step need not build the whole ``(m,)`` permutation (a sort).

    j: (B,) integers in ``[0, m)``; round_keys: (R,) uint32, one per round. Returns (B,) int32.
    """
    half = max(1, (max(m - 1, 1).bit_length() + 1) // 2)
    mask = jnp.uint32((1 << half) - 1)

    def once(x):
        left, right = x >> half, x & mask
        for k in round_keys:
            left, right = right, left ^ (_mix32(right ^ k) & mask)
        return (left << half) | right

    def walk(x):
        return jax.lax.while_loop(lambda x: jnp.any(x >= m), lambda x: jnp.where(x >= m, once(x), x), once(x))

    return walk(jnp.asarray(j).astype(jnp.uint32)).astype(jnp.int32)


WINDOWS = ("all", "chunks")


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Training windows ``[s, s + T]`` (``T + 1`` characters) inside ``N`` tokens: ``W = N - T``."""
    return n_tokens - seq_len


def num_chunks(n_tokens: int, seq_len: int, batch_size: int) -> int:
    """Non-overlapping chunks of ``T + 1`` characters the paper's code trains on: the whole batches of
    them, ``floor(N / (B (T + 1))) B`` (the incomplete last batch is dropped, as there)."""
    return n_tokens // (batch_size * (seq_len + 1)) * batch_size


def num_examples(n_tokens: int, seq_len: int, batch_size: int, windows: str = "all") -> int:
    """The number of training examples the shuffle draws from: windows (``"all"``) or chunks."""
    if windows == "all":
        return num_windows(n_tokens, seq_len)
    if windows == "chunks":
        return num_chunks(n_tokens, seq_len, batch_size)
    raise ValueError(f"unknown windows {windows!r}; choose one of {', '.join(WINDOWS)}")


def example_starts(index, seq_len: int, windows: str = "all"):
    """Where example ``index`` starts in the training text: ``index`` itself for ``"all"``,
    ``index (T + 1)`` for ``"chunks"``."""
    return index * (seq_len + 1) if windows == "chunks" else index


def make_batch_fn(n_tokens: int, seq_len: int, batch_size: int, key: jax.Array, windows: str = "all"):
    """A pure, jittable ``batch(tokens, step) -> (B, T + 1)`` int32 windows (the module's shuffle).

    ``key`` (the run's data key) is captured; the result depends on ``step`` alone. ``windows``:
    ``"all"`` (a window at every start) or ``"chunks"`` (the paper's non-overlapping chunks).
    """
    m = num_examples(n_tokens, seq_len, batch_size, windows)
    steps_per_epoch = m // batch_size
    if steps_per_epoch < 1:
        if windows == "all":
            count, what = max(m, 0), "windows"
        else:
            count, what = n_tokens // (seq_len + 1), "non-overlapping chunks"
        raise DataError(
            f"the training text has {n_tokens} characters: {count} {what} of {seq_len + 1} "
            f"characters, fewer than one batch of {batch_size}; use a longer corpus, a shorter "
            f"seq_len or a smaller batch_size"
        )
    offsets = jnp.arange(seq_len + 1)  # (T + 1,)

    def batch(tokens, step):
        epoch, pos = jnp.divmod(step, steps_per_epoch)
        round_keys = jax.random.bits(jax.random.fold_in(key, epoch), (FEISTEL_ROUNDS,), jnp.uint32)
        index = feistel_permutation(pos * batch_size + jnp.arange(batch_size), m, round_keys)  # (B,)
        starts = example_starts(index, seq_len, windows)  # (B,)
        return tokens[starts[:, None] + offsets[None, :]].astype(jnp.int32)  # (B, T + 1)

    return batch


def fixed_windows(n_tokens: int, seq_len: int, count: int, key: jax.Array, windows: str = "all",
                  batch_size: int = 1) -> np.ndarray:
    """``(count,)`` starts of distinct examples drawn once without replacement (a fixed measurement
    batch): the first ``count`` positions of a keyed permutation of all the examples (windows, or
    the chunks of :func:`num_chunks` for ``batch_size``)."""
    n_examples = num_examples(n_tokens, seq_len, batch_size, windows)
    if count > n_examples:
        what = "windows" if windows == "all" else "non-overlapping chunks (in whole batches)"
        raise DataError(f"the training text has {n_examples} {what} of {seq_len + 1} characters, fewer than {count}")
    round_keys = jax.random.bits(key, (FEISTEL_ROUNDS,), jnp.uint32)
    index = np.asarray(feistel_permutation(jnp.arange(count), n_examples, round_keys))
    return example_starts(index, seq_len, windows)


def windows_at(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """``(len(starts), T + 1)`` windows ``tokens[s : s + T + 1]``."""
    return np.asarray(tokens)[np.asarray(starts)[:, None] + np.arange(seq_len + 1)[None, :]]


def eval_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """``(W, T + 1)`` windows that predict every test character after the first exactly once.

    Window ``j`` holds ``tokens[T j : T j + T + 1]``; consecutive windows share one character (the
    last target of one is the first input of the next). The last window is padded with ``PAD``,
    whose targets the loss ignores.
    """
    tokens = np.asarray(tokens, dtype=np.uint8)
    n_windows = max(1, -(-(len(tokens) - 1) // seq_len))  # ceil((N - 1) / T)
    padded = np.full(n_windows * seq_len + 1, PAD, dtype=np.uint8)
    padded[: len(tokens)] = tokens
    return windows_at(padded, np.arange(n_windows) * seq_len, seq_len)
