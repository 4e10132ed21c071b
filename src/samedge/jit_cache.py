"""The persistent compilation cache: a later run of the same programs skips XLA's compile.

A run compiles its training chunk and its measurement (on two CPU cores the quick MNIST
measurement's first call takes 2.25 s cold and 0.99 s from the cache: BENCHMARKS.md). JAX can keep
compiled programs on disk; samedge turns that on for its entry points (the CLI, sweep workers),
never at import time, in a folder of the user's own cache: ``<cache>/jax/<host>-<cpu>``, where ``<cache>`` is ``$SAMEDGE_CACHE_DIR`` or
the platform cache folder. The folder is per machine because an XLA:CPU entry is native code for the
CPU that built it, and run folders (so possibly caches) may sit on a file system several machines
share. ``SAMEDGE_JIT_CACHE=off`` turns it off; ``SAMEDGE_JIT_CACHE=/some/folder`` puts it there; a
``JAX_COMPILATION_CACHE_DIR`` the user set is kept when ``SAMEDGE_JIT_CACHE`` is unset.

The cache is trusted code: JAX runs what it finds there. Keep it private (the default is).
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import warnings
from pathlib import Path

ENV = "SAMEDGE_JIT_CACHE"
OFF = ("0", "off", "false", "no", "none")
MIN_COMPILE_S = 0.1  # programs that compile faster than this are not worth a file


def _cpu_tag() -> str:
    """A short tag of this CPU: its model and feature flags (what XLA:CPU code depends on)."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def folder() -> Path | None:
    """Where the cache goes, or None when ``$SAMEDGE_JIT_CACHE`` turns it off."""
    env = os.environ.get(ENV, "").strip()
    if env.lower() in OFF:
        return None
    if env:
        return Path(env).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the user's own JAX setting wins over our default
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    from samedge.data.common import cache_dir

    return cache_dir() / "jax" / f"{socket.gethostname()}-{_cpu_tag()}"


def enable(path: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``path`` (default :func:`folder`); returns it.

    Call before the first compile of the process (later calls change the folder for programs not
    compiled yet). Returns None, changing nothing, when the cache is off or its folder cannot be
    made (a warning says so; the run goes on, compiling as usual).
    """
    path = Path(path) if path is not None else folder()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        warnings.warn(f"compilation cache off: cannot make {path}: {exc}", stacklevel=2)
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()  # forget a folder set earlier in this process
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
