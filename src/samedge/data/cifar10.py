"""CIFAR-10: the official Python-pickle batches, a restricted unpickler, the download, and the paper's
preprocessing.

Layout (``<data_dir>/cifar10/cifar-10-batches-py/``): ``data_batch_1`` .. ``data_batch_5`` (10,000
images each) and ``test_batch`` (10,000), each a pickled dict with ``b"data"``, an ``(N, 3072)``
uint8 array whose rows are channel-major (1024 red, 1024 green, 1024 blue, each 32 x 32 row-major),
and ``b"labels"``, a list of N ints in 0..9. A folder with only the first batches (the shared
offline copy: ``data_batch_1`` and a 2,000-image ``test_batch``) is accepted as long as it holds the
examples asked for.

The batches are pickles, so they are read with :class:`RestrictedUnpickler`, which resolves only the
three NumPy names an ndarray's pickle refers to; dicts, lists, bytes, str and ints need no lookup.
Anything else a pickle asks for (``os.system``, ``builtins.eval``...) is refused before it exists.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from samedge.data import common
from samedge.errors import DataError

NAME = "cifar10"
FOLDER = "cifar-10-batches-py"  # the folder the official archive unpacks to
ARCHIVE = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
KNOWN_HASH = "md5:c58f30108f718f92721af3b95e74349a"  # the official archive (../shared/data/README.md)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SHAPE = (32, 32, 3)  # NHWC, as the CNN takes it
PIXELS = 32 * 32 * 3
NUM_CLASSES = 10


class Split(NamedTuple):
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) uint8


class CIFAR10(NamedTuple):
    train: Split
    test: Split
    source: str  # where the data came from, for the run's config


# The only globals an ndarray's pickle names: numpy's own reconstruct function (under its NumPy 2
# module name, and its NumPy 1 name that the official Python 2 pickles carry), the ndarray type it
# rebuilds, and dtype. Nothing else is ever imported.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, whichever module holds it


def _plain_dtype(*args):
    """``np.dtype(*args)`` for plain numeric types only: an object dtype would let the pickle's
    array payload hold arbitrary objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"refused dtype {dtype!r} (only plain numeric arrays are allowed)")
    return dtype


def _plain_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refused array subtype {subtype!r}")
    return _RECONSTRUCT(subtype, shape, _plain_dtype(dtype))


_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"): _plain_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _plain_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the NumPy names a plain uint8 array needs.

    ``find_class`` is the one door through which a pickle reaches any callable; every other
    (module, name) pair raises ``UnpicklingError`` before anything is imported or called.
    """

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name} (a CIFAR-10 batch holds only dicts, lists, bytes, "
                f"ints and uint8 arrays)"
            ) from None


def restricted_load(path: Path):
    """The object pickled in ``path``, read with :class:`RestrictedUnpickler`; DataError if unsafe or
    not a pickle. ``encoding="bytes"`` reads the official Python 2 strings as bytes, as they were."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: not a safe CIFAR-10 pickle: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            OverflowError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({type(exc).__name__}: {exc})") from None


def read_batch(path: Path) -> Split:
    """One batch file as NHWC uint8 images and uint8 labels, after checking its keys, types and shapes."""
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict batch, found {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{path}: batch has no {key!r} entry (keys: {', '.join(map(str, batch))})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be an (N, {PIXELS}) uint8 array, found {desc}")
    if not isinstance(labels, (list, np.ndarray)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels
    ):
        raise DataError(f"{path}: 'labels' must be a list of ints")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # (N,)
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels outside 0..{NUM_CLASSES - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3072) -> (N, 32, 32, 3)
    return Split(np.ascontiguousarray(images), labels.astype(np.uint8))


def read_folder(folder: Path, n_train: int, n_test: int | None = None) -> CIFAR10:
    """The first ``n_train`` training examples (reading ``data_batch_1``, ``_2``... only as far as
    needed) and the first ``n_test`` test examples (all with ``None``) of an official-layout folder."""
    folder = Path(folder)
    parts, have = [], 0
    for name in TRAIN_BATCHES:
        if have >= n_train:
            break
        if not (folder / name).is_file():
            break
        part = read_batch(folder / name)
        parts.append(part)
        have += len(part.labels)
    if have < n_train:
        read = ", ".join(TRAIN_BATCHES[: len(parts)]) or "no batch"
        raise DataError(
            f"asked for {n_train} training examples, {folder} holds {have} ({read}); "
            f"lower n_train or add the missing data_batch_* files"
        )
    train = Split(np.concatenate([p.images for p in parts])[:n_train],
                  np.concatenate([p.labels for p in parts])[:n_train])
    test = read_batch(folder / TEST_BATCH)
    if n_test is not None:
        if n_test > len(test.labels):
            raise DataError(f"asked for {n_test} test examples, {folder / TEST_BATCH} holds {len(test.labels)}")
        test = Split(test.images[:n_test], test.labels[:n_test])
    return CIFAR10(train, test, str(folder))


def safe_extract(archive: Path, target: Path) -> None:
    """Unpack a tar archive into ``target``, refusing it whole (before writing anything) if a member
    is not a plain file or folder, or its path would land outside ``target`` (``../x``, ``/x``)."""
    target = Path(target)
    root = target.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                dest = (root / member.name).resolve()
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive}: refused member {member.name!r} (not a plain file or folder)")
                if dest != root and root not in dest.parents:
                    raise DataError(f"{archive}: refused member {member.name!r} (escapes {target})")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, members=members, **kwargs)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: not a readable tar archive ({exc}); delete it and download again") from None


def download_batches(folder: Path, *, url: str = URL, known_hash: str = KNOWN_HASH, progress: bool = False) -> Path:
    """Fetch the archive into ``folder`` (checked against ``known_hash``), unpack it there, and return
    ``folder / cifar-10-batches-py``. ``url`` and ``known_hash`` are parameters so the tests can point
    this at a local server."""
    folder = Path(folder)
    archive = common.download(common.RemoteFile(ARCHIVE, (url,), known_hash), folder, progress=progress)
    safe_extract(archive, folder)
    batches = folder / FOLDER
    for name in (TRAIN_BATCHES[0], TEST_BATCH):
        if not (batches / name).is_file():
            raise DataError(f"{archive}: unpacked, but {batches / name} is missing")
    return batches


def load(data_dir=None, *, n_train: int, n_test: int | None = None, download: bool = True,
         url: str = URL, known_hash: str = KNOWN_HASH, progress: bool = False) -> CIFAR10:
    """Find CIFAR-10 (``--data-dir``, ``$SAMEDGE_DATA_DIR``, the cache), else download it into the
    cache; then read the first ``n_train`` training and ``n_test`` test examples."""
    needed = (f"{FOLDER}/{TRAIN_BATCHES[0]}", f"{FOLDER}/{TEST_BATCH}")
    found = common.find_dataset(NAME, needed, data_dir)
    if found is not None:
        return read_folder(found / FOLDER, n_train, n_test)
    looked = ", ".join(f"{p / NAME / FOLDER} ({o})" for o, p in common.candidate_dirs(data_dir))
    if not download:
        raise DataError(
            f"CIFAR-10 not found in {looked}; unpack the official {ARCHIVE} into one of those "
            f"folders, set ${common.ENV_DATA_DIR}, or pass --data-dir"
        )
    try:
        batches = download_batches(common.cache_dir() / NAME, url=url, known_hash=known_hash,
                                   progress=progress)
    except DataError as exc:
        raise DataError(f"CIFAR-10 not found in {looked}, and {exc}") from None
    return read_folder(batches, n_train, n_test)


def preprocess(data: CIFAR10):
    """The paper's preprocessing: pixels / 256, minus the per-pixel mean of the training images
    (applied to the test images too); one-hot targets. Returns ``(x, y), (x_test, y_test)``."""

    def scale(images):
        return images.astype(np.float32) / 256.0  # (N, 32, 32, 3)

    x, x_test = scale(data.train.images), scale(data.test.images)
    mean = x.mean(axis=0, keepdims=True)  # (1, 32, 32, 3)
    eye = np.eye(NUM_CLASSES, dtype=np.float32)
    return (x - mean, eye[data.train.labels]), (x_test - mean, eye[data.test.labels])


def standardize(data: CIFAR10):
    """The ResNet recipe's preprocessing: pixels / 255, minus the training images' mean of each
    channel, over its standard deviation (applied to the test images too); integer labels.

    Returns:
      ``(x, y), (x_test, y_test)``: float32 ``(N, 32, 32, 3)`` images, int32 ``(N,)`` labels.

    >>> rng = np.random.default_rng(0)
    >>> split = lambda n: Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.zeros(n, np.uint8))
    >>> (x, y), _ = standardize(CIFAR10(split(4), split(2), "random"))
    >>> bool(np.allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-5)), bool(np.allclose(x.std(axis=(0, 1, 2)), 1)), y.dtype
    (True, True, dtype('int32'))
    """
    x = data.train.images.astype(np.float32) / 255.0
    x_test = data.test.images.astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)  # (3,)
    std = x.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    return (((x - mean) / std, data.train.labels.astype(np.int32)),
            ((x_test - mean) / std, data.test.labels.astype(np.int32)))
