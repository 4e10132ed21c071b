"""CIFAR-10 data: the shared copy, the restricted unpickler, bad files, safe extraction, the download."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from samedge.data import cifar10
from samedge.errors import DataError

# SHA-256 of the shared copy's batches (../shared/data/README.md): with it verified, a plain
# pickle.load of that trusted file is the independent truth the restricted reader is checked against.
SHARED_SHA256 = {
    "data_batch_1": "a598992fd04e64175bec2b090e40b55b8ff95639fa628ccd7af31287794da211",
    "test_batch": "173ecf75bb5cee48f422e807d5388201253cd8985ec68c265a6f2dc3d8fc454b",
}


def trusted_batch(path: Path) -> dict:
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHARED_SHA256[path.name]
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def write_batch(path: Path, data, labels, protocol: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({b"batch_label": b"test", b"labels": labels, b"data": data}, protocol=protocol))
    return path


def random_batch(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


# --- the shared copy -------------------------------------------------------------------------------


def test_shared_copy_matches_a_plain_decoding(data_dir):
    folder = data_dir / "cifar10" / cifar10.FOLDER
    raw = cifar10.load(data_dir, n_train=1000, n_test=500)
    truth = trusted_batch(folder / "data_batch_1")
    test_truth = trusted_batch(folder / "test_batch")
    assert raw.train.images.shape == (1000, 32, 32, 3) and raw.train.images.dtype == np.uint8
    assert raw.test.images.shape == (500, 32, 32, 3)
    np.testing.assert_array_equal(raw.train.labels, np.asarray(truth[b"labels"][:1000]))
    np.testing.assert_array_equal(raw.test.labels, np.asarray(test_truth[b"labels"][:500]))
    # Channel-major rows: pixel (row r, column c, channel ch) sits at ch * 1024 + r * 32 + c.
    rng = np.random.default_rng(0)
    for i, r, c, ch in zip(*(rng.integers(0, m, 50) for m in (1000, 32, 32, 3))):
        assert raw.train.images[i, r, c, ch] == truth[b"data"][i, ch * 1024 + r * 32 + c]
    assert raw.source == str(folder)


def test_preprocess_is_pixels_over_256_centred_by_the_train_mean(data_dir):
    raw = cifar10.load(data_dir, n_train=200, n_test=100)
    (x, y), (x_test, y_test) = cifar10.preprocess(raw)
    mean = raw.train.images.astype(np.float64).mean(0) / 256.0  # (32, 32, 3), in float64
    np.testing.assert_allclose(x, raw.train.images / 256.0 - mean, atol=1e-6)
    np.testing.assert_allclose(x_test, raw.test.images / 256.0 - mean, atol=1e-6)
    assert np.abs(x.mean(0)).max() < 1e-6
    assert y.shape == (200, 10) and y_test.shape == (100, 10)
    np.testing.assert_array_equal(y.sum(1), 1.0)
    np.testing.assert_array_equal(y.argmax(1), raw.train.labels)


def test_folder_with_fewer_batches_and_too_large_n(data_dir):
    # The shared copy has only data_batch_1 (10,000 images): all of it loads, one more is an error.
    assert len(cifar10.load(data_dir, n_train=10_000, n_test=10).train.labels) == 10_000
    with pytest.raises(DataError, match="asked for 10001 training examples.*holds 10000"):
        cifar10.load(data_dir, n_train=10_001)
    with pytest.raises(DataError, match="asked for 2001 test examples"):
        cifar10.load(data_dir, n_train=10, n_test=2001)


def test_batches_are_read_in_order_and_only_as_far_as_needed(tmp_path):
    folder = tmp_path / "cifar10" / cifar10.FOLDER
    (d1, l1), (d2, l2) = random_batch(5, 1), random_batch(5, 2)
    write_batch(folder / "data_batch_1", d1, l1)
    write_batch(folder / "data_batch_2", d2, l2)
    write_batch(folder / "test_batch", *random_batch(3, 3))
    (folder / "data_batch_3").write_bytes(b"never read: 5 + 5 images are enough")
    raw = cifar10.load(tmp_path, n_train=8)
    np.testing.assert_array_equal(raw.train.labels, l1 + l2[:3])
    np.testing.assert_array_equal(raw.train.images.transpose(0, 3, 1, 2).reshape(8, -1),
                                  np.concatenate([d1, d2[:3]]))
    assert len(raw.test.labels) == 3


def test_explicit_data_dir_without_the_files_is_an_error(tmp_path):
    with pytest.raises(DataError, match="data_batch_1 not found"):
        cifar10.load(tmp_path, n_train=1)


# --- the restricted unpickler ----------------------------------------------------------------------


class _CallsSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os')",))


@pytest.mark.parametrize("wrap", [lambda evil: evil, lambda evil: {b"data": evil, b"labels": [0]}])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(wrap(_CallsSystem(marker))))
    assert b"system" in path.read_bytes()  # the payload really names os.system (posix.system)
    with pytest.raises(DataError, match=r"refused global (posix|nt|os)\.system"):
        cifar10.read_batch(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(wrap(_CallsEval())))
    with pytest.raises(DataError, match=r"refused global builtins\.eval"):
        cifar10.read_batch(path)


def test_object_arrays_are_refused(tmp_path):
    data = np.empty((1, 3072), dtype=object)
    data[:] = 0
    path = write_batch(tmp_path / "b", data, [0])
    with pytest.raises(DataError, match="refused dtype"):
        cifar10.read_batch(path)


def test_numpy1_module_name_of_official_pickles_is_accepted(tmp_path):
    # The official batches were written under NumPy 1, whose reconstruct function lived in
    # numpy.core.multiarray; protocol 3 names globals as plain text, so the name can be swapped.
    data, labels = random_batch(4, 5)
    blob = pickle.dumps({b"data": data, b"labels": labels}, protocol=3)
    new, old = b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy._core.multiarray\n_reconstruct\n"
    assert old in blob
    path = tmp_path / "b"
    path.write_bytes(blob.replace(old, new))
    batch = cifar10.read_batch(path)
    np.testing.assert_array_equal(batch.images.transpose(0, 3, 1, 2).reshape(4, -1), data)
    np.testing.assert_array_equal(batch.labels, labels)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"this is not a pickle at all\n", "not a readable CIFAR-10 pickle|not a safe CIFAR-10 pickle"),
        (b"", "not a readable CIFAR-10 pickle"),
        (pickle.dumps([1, 2, 3]), "expected a dict batch"),
        (pickle.dumps({b"labels": [1]}), "no 'data' entry"),
        (pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]}), r"\(N, 3072\) uint8"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}), r"\(N, 3072\) uint8"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "2 images but 1 labels"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), "labels outside"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["a"]}), "list of ints"),
    ],
)
def test_bad_batch_files_give_one_clear_error(tmp_path, content, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        cifar10.read_batch(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# --- safe extraction and the download --------------------------------------------------------------


def tarball(members: dict[str, bytes], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info in extra or ():
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["../evil", "cifar-10-batches-py/../../evil", "/tmp/samedge-evil-abs"])
def test_extraction_refuses_members_escaping_the_target(tmp_path, name):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tarball({"cifar-10-batches-py/ok": b"fine", name: b"evil"}))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(DataError, match="escapes"):
        cifar10.safe_extract(archive, target)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/samedge-evil-abs").exists()
    assert not (target / "cifar-10-batches-py" / "ok").exists()  # refused whole, before writing


def test_extraction_refuses_links(tmp_path):
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tarball({}, [link]))
    with pytest.raises(DataError, match="not a plain file"):
        cifar10.safe_extract(archive, tmp_path)


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path / "www"``; yields (base URL, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, requests
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_a_local_server(tmp_path, monkeypatch, http_server):
    base, root, requests = http_server
    monkeypatch.delenv("SAMEDGE_DATA_DIR", raising=False)
    (d, l), (dt, lt) = random_batch(6, 7), random_batch(4, 8)
    batch = {"cifar-10-batches-py/data_batch_1": pickle.dumps({b"data": d, b"labels": l}),
             "cifar-10-batches-py/test_batch": pickle.dumps({b"data": dt, b"labels": lt})}
    blob = tarball(batch)
    (root / "cifar.tar.gz").write_bytes(blob)
    md5 = "md5:" + hashlib.md5(blob).hexdigest()
    url = f"{base}/cifar.tar.gz"

    with pytest.raises(DataError, match="checksum mismatch"):
        cifar10.load(None, n_train=6, url=url, known_hash="md5:" + "0" * 32)
    raw = cifar10.load(None, n_train=6, url=url, known_hash=md5)
    np.testing.assert_array_equal(raw.train.labels, l)
    np.testing.assert_array_equal(raw.test.labels, lt)
    cache = Path(os.environ["SAMEDGE_CACHE_DIR"]) / "cifar10"
    assert raw.source == str(cache / cifar10.FOLDER)
    assert len(requests) == 2  # the failed attempt and the good one
    cifar10.load(None, n_train=6, url=url, known_hash=md5)  # found in the cache: no new request
    assert len(requests) == 2


def test_nothing_found_and_no_download_is_an_error(monkeypatch):
    monkeypatch.delenv("SAMEDGE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        cifar10.load(None, n_train=1, download=False)
