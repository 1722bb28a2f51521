"""rc_jax / Hugging Face Llama checkpoint -> float32 GGUF file that llama.cpp loads.

The inverse of :func:`rc_jax.models.gguf.convert_gguf_to_hf`: it lets llama.cpp run exactly
the weights rc_jax runs (e.g. the demo model's converted checkpoint, or a model trained
with rc_jax), which is what ``benchmarks/peers.py`` needs to compare engines on equal
terms. What llama.cpp expects of a ``llama``-architecture file, as written here and by
llama.cpp's own ``convert_hf_to_gguf.py``:

* tensors named by the ``gguf`` package's own table (``gguf.TensorNameMap`` for
  ``MODEL_ARCH.LLAMA``: ``token_embd``, ``blk.N.attn_q``, ..., ``output_norm``; no
  ``output.weight`` when the embeddings are tied), stored F32;
* q/k rows permuted per head into llama.cpp's interleaved-RoPE order (the inverse of
  :func:`rc_jax.models.gguf.unpermute_rope_rows`);
* ``llama.*`` hyperparameters (``block_count``, ``embedding_length``, ``attention.*``,
  ``rope.*``, ``vocab_size``, ...), ``general.file_type = ALL_F32`` (or ``MOSTLY_Q8_0``
  with ``file_type="q8_0"``: every matrix whose rows are whole blocks of 32 stored Q8_0);
* the byte-level BPE vocabulary as ``tokenizer.ggml.*`` (``model = gpt2``, a ``pre`` name
  llama.cpp knows, tokens with their types, merges, special ids, chat template).

Float32 or Q8_0, Llama architecture. Public API: :func:`write_gguf` (from a config + params),
:func:`export_gguf` (from an HF-format directory) and :func:`gguf_layout` (what a GGUF file
declares, to compare two files). CLI::

    python -m rc_jax.tools.export_gguf --model_dir DIR --out FILE.gguf [--type q8_0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from rc_jax.models import load_hf_checkpoint
from rc_jax.models.checkpoint import hf_state_dict
from rc_jax.models.config import ModelConfig
from rc_jax.models.gguf import _field_value, _open_reader

__all__ = ["GGUFExportError", "export_gguf", "gguf_layout", "permute_rope_rows", "write_gguf"]

# gguf.TokenType values (kept literal so the enum's location in the package does not matter).
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


class GGUFExportError(ValueError):
    """The checkpoint or tokenizer cannot be written as a llama.cpp GGUF file."""


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF (rotate-half) q/k row order -> llama.cpp's interleaved order, per head.

    The same reshape as llama.cpp's ``convert_hf_to_gguf.LlamaModel.permute``; the exact
    inverse of :func:`rc_jax.models.gguf.unpermute_rope_rows`.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- tokenizer
def _detect_pre(tok: dict[str, Any], source: Path) -> str:
    """llama.cpp ``tokenizer.ggml.pre`` name of a byte-level BPE ``tokenizer.json``.

    Recognizes the two splits :mod:`rc_jax.models.gguf` reads back: Digits(individual) +
    ByteLevel(regex) ("smollm") and plain ByteLevel(regex) ("gpt-2", llama.cpp's spelling:
    it refuses "gpt2"); anything else needs an explicit ``pre`` (llama.cpp identifies it
    by hashing a test encoding).
    """
    pre = tok.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
            and parts[1].get("use_regex", True)):
        return "smollm"
    raise GGUFExportError(f"{source}: pre-tokenizer {kinds} has no known llama.cpp name; pass "
                          "pre= (e.g. 'gpt-2', 'smollm', 'qwen2') explicitly")


def _read_tokenizer(tokenizer_dir: Path, vocab_size: int, pre: str | None) -> dict[str, Any]:
    """Tokens (one per embedding row), their types, merges and special ids."""
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError(f"{path} not found: GGUF files carry the vocabulary")
    tok = json.loads(path.read_text(encoding="utf-8"))
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFExportError(f"{path}: tokenizer model {model.get('type')!r} is not BPE")
    by_id: dict[int, tuple[str, int]] = {i: (t, _NORMAL) for t, i in model["vocab"].items()}
    for added in tok.get("added_tokens", []):
        kind = _CONTROL if added.get("special") else _USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if max(by_id) >= vocab_size:
        raise GGUFExportError(f"{path}: token id {max(by_id)} >= vocab_size {vocab_size}")
    # Embedding rows without a token (padded vocabularies) get placeholders, as
    # llama.cpp's converter writes them.
    tokens = [by_id.get(i, (f"[PAD{i}]", _UNUSED)) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {t: i for i, (t, _) in enumerate(tokens)}
    cfg_path = tokenizer_dir / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}

    def token_id(key: str) -> int | None:
        value = tcfg.get(key)
        if isinstance(value, dict):  # AddedToken serialized as a dict
            value = value.get("content")
        return ids.get(value) if isinstance(value, str) else None

    template = tcfg.get("chat_template")
    jinja = tokenizer_dir / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return {
        "tokens": [t for t, _ in tokens], "types": [k for _, k in tokens], "merges": merges,
        "pre": pre or _detect_pre(tok, path),
        "bos": token_id("bos_token"), "eos": token_id("eos_token"),
        "unk": token_id("unk_token"), "pad": token_id("pad_token"),
        "add_bos": bool(tcfg.get("add_bos_token", False)),
        "add_eos": bool(tcfg.get("add_eos_token", False)),
        "chat_template": template if isinstance(template, str) else None,
    }


# ----------------------------------------------------------------------------- writing
def _check_config(config: ModelConfig) -> None:
    if config.model_type != "llama":
        raise GGUFExportError(f"model_type {config.model_type!r}: only Llama checkpoints export "
                              "to GGUF (llama.cpp's 'llama' architecture)")
    if config.qkv_bias or config.o_bias or config.qk_norm:
        raise GGUFExportError("attention biases / q-k norms are not part of llama.cpp's "
                              "'llama' architecture")
    if getattr(config, "quantization", None) not in (None, "none"):
        raise GGUFExportError("export float32 parameters, not quantized ones")


def _quantized(array: np.ndarray, file_type: str) -> tuple[np.ndarray, Any]:
    """(data, GGML type) to store a float32 (out, in) tensor as in a ``file_type`` file:
    Q8_0 (blocks of 32 int8 values with one float16 scale) for matrices whose rows are
    whole blocks, as llama.cpp's own converter does; norms and other tensors stay F32."""
    q8 = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[q8][0]
    if file_type == "q8_0" and array.ndim == 2 and array.shape[-1] % block == 0:
        return gguf.quants.quantize(array, q8), q8
    return array, None


def write_gguf(out: str | os.PathLike, config: ModelConfig, params: Any,
               tokenizer_dir: str | os.PathLike, *, pre: str | None = None,
               name: str | None = None, file_type: str = "f32") -> Path:
    """Writes ``params`` (rc_jax layout, any float dtype) as a llama GGUF file.

    Args:
      out: the ``.gguf`` file to write (its directory must exist); written atomically.
      config: a Llama ``ModelConfig``.
      params: the model's parameters as :func:`rc_jax.models.load_hf_checkpoint` returns them.
      tokenizer_dir: directory with the model's ``tokenizer.json`` (byte-level BPE) and
        ``tokenizer_config.json`` (special tokens, ``add_bos_token``, chat template).
      pre: llama.cpp pre-tokenizer name; detected from ``tokenizer.json`` when None.
      name: ``general.name``; defaults to the tokenizer directory's name.
      file_type: ``f32`` (every tensor float32) or ``q8_0`` (matrices Q8_0, including the
        token embeddings, as llama.cpp's converter writes ``--outtype q8_0``).
    Raises:
      GGUFExportError: not a plain Llama model, a tokenizer GGUF cannot describe, or an
        unknown ``file_type``.
    """
    if file_type not in FILE_TYPES:
        raise GGUFExportError(f"file_type {file_type!r} unknown; choose from {sorted(FILE_TYPES)}")
    _check_config(config)
    tok = _read_tokenizer(Path(tokenizer_dir), config.vocab_size, pre)
    out = Path(out)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, config.num_layers)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(name or Path(tokenizer_dir).name)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_heads)
        writer.add_head_count_kv(config.num_kv_heads)
        writer.add_rope_freq_base(float(config.rope_theta))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_file_type(FILE_TYPES[file_type])
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(config.head_dim)
        if config.head_dim != config.hidden_size // config.num_heads:
            writer.add_key_length(config.head_dim)
            writer.add_value_length(config.head_dim)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tok["pre"])
        writer.add_token_list(tok["tokens"])
        writer.add_token_types(tok["types"])
        writer.add_token_merges(tok["merges"])
        bos = config.bos_token_id if config.bos_token_id is not None else tok["bos"]
        eos = config.eos_token_ids[0] if config.eos_token_ids else tok["eos"]
        for add, value in ((writer.add_bos_token_id, bos), (writer.add_eos_token_id, eos),
                           (writer.add_unk_token_id, tok["unk"]),
                           (writer.add_pad_token_id, tok["pad"])):
            if value is not None:
                add(int(value))
        writer.add_add_bos_token(tok["add_bos"])
        if tok["add_eos"]:  # default False in llama.cpp; the shipped SmolLM2 file omits it
            writer.add_add_eos_token(True)
        writer.add_add_space_prefix(False)
        if tok["chat_template"] is not None:
            writer.add_chat_template(tok["chat_template"])
        for hf_name, array in hf_state_dict(config, params):
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GGUFExportError(f"no llama.cpp name for tensor {hf_name!r}")
            array = np.ascontiguousarray(array, dtype=np.float32)
            if hf_name.endswith("q_proj.weight"):
                array = permute_rope_rows(array, config.num_heads)
            elif hf_name.endswith("k_proj.weight"):
                array = permute_rope_rows(array, config.num_kv_heads)
            data, raw_dtype = _quantized(array, file_type)
            # numpy (out, in) -> GGUF dims (in, out); for Q8_0 bytes the writer derives the
            # tensor's shape from the byte shape
            writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, *,
                pre: str | None = None, name: str | None = None,
                file_type: str = "f32") -> Path:
    """HF-format Llama directory (config.json + safetensors + tokenizer) -> GGUF file
    (float32, or Q8_0 matrices with ``file_type="q8_0"``)."""
    config, params = load_hf_checkpoint(Path(model_dir), dtype="float32")
    return write_gguf(out, config, params, model_dir, pre=pre, name=name or Path(model_dir).name,
                      file_type=file_type)


def gguf_layout(path: str | os.PathLike) -> dict[str, Any]:
    """What a GGUF file declares: ``{"metadata": {key: value}, "tensors": {name: shape}}``.

    Long arrays (vocabulary, merges) are summarized as ``"<array of N>"``; shapes are in
    GGUF order (fastest dimension first). Used to check a written file against a reference.
    """
    reader = _open_reader(Path(path))
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = _field_value(field)
        meta[key] = f"<array of {len(value)}>" if isinstance(value, list) and len(value) > 8 else value
    tensors = {t.name: [int(d) for d in t.shape.tolist()] for t in reader.tensors}
    return {"metadata": meta, "tensors": tensors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rc_jax.tools.export_gguf",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_dir", required=True, help="HF-format Llama directory")
    ap.add_argument("--out", required=True, help="the .gguf file to write")
    ap.add_argument("--pre", default=None, help="llama.cpp pre-tokenizer name (default: detect)")
    ap.add_argument("--type", default="f32", choices=sorted(FILE_TYPES),
                    help="f32, or q8_0 (matrices int8 in blocks of 32, as llama.cpp writes)")
    args = ap.parse_args(argv)
    try:
        path = export_gguf(args.model_dir, args.out, pre=args.pre, file_type=args.type)
    except (GGUFExportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB, {args.type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
