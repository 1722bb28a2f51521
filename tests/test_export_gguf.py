"""rc_jax.tools.export_gguf: a float32 llama GGUF that reads back to the same checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("gguf")

from rc_jax.models import ModelConfig, init_params, save_hf_checkpoint  # noqa: E402
from rc_jax.models.gguf import convert_gguf_to_hf, unpermute_rope_rows  # noqa: E402
from rc_jax.tools.export_gguf import (GGUFExportError, export_gguf, gguf_layout,  # noqa: E402
                                      permute_rope_rows, write_gguf)


def _llama(vocab_size: int, tied: bool) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=vocab_size, hidden_size=64,
                       intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, rope_theta=10000.0, rms_norm_eps=1e-5, qk_norm=False,
                       tie_word_embeddings=tied, max_position_embeddings=256, bos_token_id=1,
                       eos_token_ids=(2,))


def _tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(model_dir / "model.safetensors"))


def test_permute_is_the_inverse_of_the_loaders_unpermute() -> None:
    w = np.random.RandomState(0).randn(3 * 8, 5).astype(np.float32)
    assert np.array_equal(unpermute_rope_rows(permute_rope_rows(w, 3), 3), w)
    assert not np.array_equal(permute_rope_rows(w, 3), w)


# vocab 512 = the tokenizer's size; 520 pads 8 embedding rows with placeholder tokens.
@pytest.mark.parametrize("vocab_size,tied", [(512, True), (520, False)])
def test_round_trip_through_rc_jax_gguf_loader(tmp_path: Path, tiny_tokenizer_dir: str,
                                               vocab_size: int, tied: bool) -> None:
    config = _llama(vocab_size, tied)
    params = init_params(config, jax.random.PRNGKey(1))
    src = save_hf_checkpoint(tmp_path / "src", config, params, tokenizer_dir=tiny_tokenizer_dir)
    # The tiny tokenizer's own split has no llama.cpp name: an explicit `pre` is needed.
    with pytest.raises(GGUFExportError, match="pre="):
        export_gguf(src, tmp_path / "m.gguf")
    path = export_gguf(src, tmp_path / "m.gguf", pre="gpt-2")
    layout = gguf_layout(path)
    meta = layout["metadata"]
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 0
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    # head_dim 8 != hidden / heads = 16, so llama.cpp needs key_length / value_length
    assert meta["llama.rope.dimension_count"] == 8 and meta["llama.attention.key_length"] == 8
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert ("output.weight" in layout["tensors"]) is not tied
    assert layout["tensors"]["blk.1.attn_k.weight"] == [64, 16]   # GGUF order: (in, out)

    back = convert_gguf_to_hf(path, tmp_path / "back")
    ours, theirs = _tensors(src), _tensors(back)
    assert sorted(ours) == sorted(theirs)
    for name, value in ours.items():
        assert theirs[name].dtype == np.float32
        np.testing.assert_array_equal(theirs[name], value, err_msg=name)
    cfg_src = json.loads((src / "config.json").read_text())
    cfg_back = json.loads((back / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
                "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings"):
        assert cfg_back[key] == cfg_src[key], key
    tok_src = json.loads((Path(tiny_tokenizer_dir) / "tokenizer.json").read_text())
    tok_back = json.loads((back / "tokenizer.json").read_text())
    vocab_back = {**tok_back["model"]["vocab"],
                  **{t["content"]: t["id"] for t in tok_back["added_tokens"]}}
    vocab_src = {**tok_src["model"]["vocab"],
                 **{t["content"]: t["id"] for t in tok_src["added_tokens"]}}
    assert {t: i for t, i in vocab_back.items() if not t.startswith("[PAD")} == vocab_src
    assert len(vocab_back) == vocab_size


def test_rejects_what_llama_cpp_llama_cannot_hold(tmp_path: Path, tiny_tokenizer_dir: str) -> None:
    config = ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=64,
                         intermediate_size=96, num_layers=1, num_heads=4, num_kv_heads=2,
                         head_dim=16)
    with pytest.raises(GGUFExportError, match="only Llama"):
        write_gguf(tmp_path / "q.gguf", config, init_params(config, jax.random.PRNGKey(0)),
                   tiny_tokenizer_dir)
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_demo_model_matches_the_shipped_gguf(tmp_path: Path) -> None:
    """The converted SmolLM2 written back is the shipped Q4_1 file's layout, in F32: same
    tensor names and shapes, same llama.* and tokenizer metadata, values equal to the
    shipped file's dequantized tensors."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from rc_jax.tools.prepare_demo_model import (DemoModelUnavailableError, demo_gguf_path,
                                                 ensure_demo_model)
    try:
        shipped, model_dir = demo_gguf_path(download=False), ensure_demo_model()
    except DemoModelUnavailableError as exc:
        pytest.skip(f"demo model unavailable: {exc}")
    path = export_gguf(model_dir, tmp_path / "smollm2-f32.gguf")
    ours, ref = gguf_layout(path), gguf_layout(shipped)
    assert ours["tensors"] == ref["tensors"]
    for key, value in ref["metadata"].items():
        if key.startswith(("llama.", "tokenizer.")):
            assert ours["metadata"][key] == value, key
    assert ours["metadata"]["general.file_type"] == 0
    written = {t.name: t for t in GGUFReader(str(path)).tensors}
    for t in GGUFReader(str(shipped)).tensors[:12]:
        np.testing.assert_array_equal(np.asarray(written[t.name].data).reshape(-1),
                                      dequantize(t.data, t.tensor_type).reshape(-1), t.name)


def test_q8_0_file_reads_back_within_a_quantization_step(tmp_path: Path,
                                                         tiny_tokenizer_dir: str) -> None:
    """`file_type="q8_0"` (benchmarks/peers.py's llama.cpp int8 peer): every matrix is
    stored Q8_0 (blocks of 32 int8 values with a float16 scale), norms stay F32, and each
    weight reads back within half a quantization step of its block (absmax / 254) plus
    the float16 rounding of the scale."""
    from gguf import GGMLQuantizationType, GGUFReader
    config = _llama(512, tied=True)
    params = init_params(config, jax.random.PRNGKey(2))
    src = save_hf_checkpoint(tmp_path / "src", config, params, tokenizer_dir=tiny_tokenizer_dir)
    with pytest.raises(GGUFExportError, match="file_type 'q4'"):
        export_gguf(src, tmp_path / "bad.gguf", pre="gpt-2", file_type="q4")
    path = export_gguf(src, tmp_path / "q8.gguf", pre="gpt-2", file_type="q8_0")
    types = {t.name: t.tensor_type for t in GGUFReader(str(path)).tensors}
    assert {n for n, t in types.items() if t == GGMLQuantizationType.Q8_0} == {
        n for n in types if not n.endswith("norm.weight")}
    assert all(types[n] == GGMLQuantizationType.F32 for n in types if n.endswith("norm.weight"))
    assert gguf_layout(path)["metadata"]["general.file_type"] == 7  # MOSTLY_Q8_0
    assert gguf_layout(path)["tensors"] == gguf_layout(export_gguf(
        src, tmp_path / "f32.gguf", pre="gpt-2"))["tensors"]
    ours, back = _tensors(src), _tensors(convert_gguf_to_hf(path, tmp_path / "back"))
    for name, value in ours.items():
        if value.ndim == 1:
            np.testing.assert_array_equal(back[name], value, err_msg=name)
            continue
        blocks = np.abs(value.reshape(value.shape[0], -1, 32)).max(-1, keepdims=True)
        bound = np.broadcast_to(blocks * (1 / 254 + 1e-3), blocks.shape[:-1] + (32,))
        err = np.abs(back[name] - value).reshape(bound.shape)
        assert np.all(err <= bound), name
        assert not np.array_equal(back[name], value), name  # really quantized
