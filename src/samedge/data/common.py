"""Where data lives: data-directory resolution and checksummed downloads shared by every data set.

A data set lives in ``<data_dir>/<name>/`` in its own official on-disk layout. The directory is,
in order: the one passed explicitly (``--data-dir``), ``$SAMEDGE_DATA_DIR``, the cache
(``$SAMEDGE_CACHE_DIR`` or the platform cache folder), and the cache is filled by a download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from samedge.errors import DataError, one_line

ENV_DATA_DIR = "SAMEDGE_DATA_DIR"
ENV_CACHE_DIR = "SAMEDGE_CACHE_DIR"
ENV_OFFLINE = "SAMEDGE_OFFLINE"  # set to 1 to never try a download (the tests set it)


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set's download: its name, where to fetch it, and its known hash."""

    name: str
    urls: tuple[str, ...]
    known_hash: str  # pooch form: "md5:..." or "sha256:..."


def cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("samedge"))


def candidate_dirs(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """The folders to look in, with where each came from, in order of preference."""
    if data_dir is not None:
        return [("--data-dir", Path(data_dir).expanduser())]
    found = []
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        found.append((f"${ENV_DATA_DIR}", Path(env).expanduser()))
    found.append(("cache", cache_dir()))
    return found


def find_dataset(name: str, files: tuple[str, ...], data_dir=None) -> Path | None:
    """The first candidate ``<dir>/<name>`` that holds every one of ``files``, else ``None``.

    An explicitly given directory that lacks a file is an error (the user asked for it).
    """
    for origin, base in candidate_dirs(data_dir):
        folder = base / name
        missing = [f for f in files if not (folder / f).is_file()]
        if not missing:
            return folder
        if origin == "--data-dir":
            raise DataError(
                f"{name}: {folder / missing[0]} not found (looked in {folder} given by --data-dir); "
                f"put the official files there, or omit --data-dir to use ${ENV_DATA_DIR} or download "
                f"into {cache_dir()}"
            )
    return None


def download(remote: RemoteFile, folder: Path, *, progress: bool = False) -> Path:
    """Fetch one file into ``folder`` with pooch, verified against its known hash.

    pooch downloads to a temporary name, checks the hash, and only then moves the file into place;
    a cached file whose hash matches is not fetched again. Each URL is tried in turn.
    """
    import pooch

    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in remote.urls:
        try:
            path = pooch.retrieve(
                url, known_hash=remote.known_hash, fname=remote.name, path=folder,
                progressbar=progress,
            )
            return Path(path)
        except ValueError as exc:  # hash mismatch: pooch deletes the bad download
            errors.append(f"{url}: checksum mismatch for {remote.name}: {_hashes(exc)}")
        except Exception as exc:  # network errors: try the next mirror
            errors.append(f"{url}: {type(exc).__name__}: {one_line(exc)}")
    raise DataError(f"could not download {remote.name} into {folder}: " + "; ".join(errors))


def _hashes(exc: Exception) -> str:
    """``expected X, found Y`` from pooch's hash-mismatch message (its whole text if it changes)."""
    import re

    m = re.search(r"expected (\S+) but got (\w+)", str(exc))
    return f"expected {m[1]}, found {m[2]}" if m else one_line(exc)

