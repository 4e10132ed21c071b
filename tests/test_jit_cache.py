"""The persistent compilation cache: where it goes, that it can be turned off, and that a second
process really reads what the first one wrote (JAX's own cache-hit events)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from samedge import jit_cache

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Compiles one samedge program (a Lanczos loop: ~0.5 s to compile, above MIN_COMPILE_S), runs it,
# and prints JAX's cache-hit count and the top eigenvalue.
PROGRAM = textwrap.dedent("""
    import json, jax, jax.numpy as jnp
    from samedge import curvature, jit_cache
    hits = []
    jax.monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
    print("folder", jit_cache.enable())
    a = jnp.diag(jnp.arange(1.0, 41.0))
    top = jax.jit(lambda a, v: curvature.lanczos(lambda x: a @ x, v, k=2, max_iters=30, tol=1e-6).values)
    values = top(a, jnp.ones(40))
    print(json.dumps({"hits": len(hits), "top": float(values[0])}))
""")


def _run(env_value, tmp_path):
    env = os.environ | {"SAMEDGE_JIT_CACHE": env_value, "JAX_PLATFORMS": "cpu", "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, check=True).stdout.splitlines()
    return out[0], json.loads(out[-1])


def test_folder_off_path_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv(jit_cache.ENV, "off")
    assert jit_cache.folder() is None and jit_cache.enable() is None
    monkeypatch.setenv(jit_cache.ENV, str(tmp_path / "jc"))
    assert jit_cache.folder() == tmp_path / "jc"
    monkeypatch.delenv(jit_cache.ENV)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "theirs"))
    assert jit_cache.folder() == tmp_path / "theirs"  # the user's own JAX setting is kept
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("SAMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    default = jit_cache.folder()
    # per machine: the user's cache, then jax/, then host and CPU
    assert default.parent == tmp_path / "cache" / "jax"
    assert default.name.startswith(socket.gethostname() + "-")


def test_second_process_reads_what_the_first_wrote(tmp_path):
    folder = tmp_path / "jc"
    first_line, first = _run(str(folder), tmp_path)
    assert first_line == f"folder {folder}"
    assert first["hits"] == 0
    assert any(folder.iterdir()), "the first process wrote no cache entry"
    _, second = _run(str(folder), tmp_path)
    assert second["hits"] >= 1
    assert second["top"] == first["top"] == pytest.approx(40.0, rel=1e-5)


def test_off_writes_nothing(tmp_path):
    env_line, out = _run("off", tmp_path)
    assert env_line == "folder None" and out["hits"] == 0
    assert not (tmp_path / "cache").exists()  # conftest's SAMEDGE_CACHE_DIR: no jax/ made in it


def test_unwritable_folder_warns_and_runs_on(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(jit_cache.ENV, str(blocker / "jc"))
    with pytest.warns(UserWarning, match="compilation cache off"):
        assert jit_cache.enable() is None


def test_cli_turns_it_on(tmp_path):
    folder = tmp_path / "jc"
    env = os.environ | {"SAMEDGE_JIT_CACHE": str(folder), "JAX_PLATFORMS": "cpu", "PYTHONPATH": SRC}
    subprocess.run([sys.executable, "-m", "samedge", "edge", "--lr", "0.1", "--grad-norm", "1"], env=env, cwd=tmp_path,
                   capture_output=True, text=True, timeout=300, check=True)
    assert folder.is_dir()
