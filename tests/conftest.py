"""Shared test fixtures: the offline data copies and float64 where a test needs dense truth."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$SAMEDGE_DATA_DIR`` if set, else ``../shared/data`` beside the checkout. Tests never download."""
    env = os.environ.get("SAMEDGE_DATA_DIR")
    return Path(env) if env else (ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
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
    # No test may read or fill the user's real cache, or see a data dir it did not ask for.
    monkeypatch.setenv("SAMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SAMEDGE_OFFLINE", "1")
