"""Hugging Face safetensors checkpoints <-> rc_jax parameter pytrees.

Loading reads tensor by tensor from memory-mapped files: per-layer HF tensors are
stacked along the scanned `layers` axis and each stacked parameter is placed on its
devices as soon as it is built, so the host never holds the model twice. With target
shardings, each device's slice is read directly (`jax.make_array_from_callback`), so a
host only touches the bytes its own devices hold.

Exported directories (config.json + safetensors) load in `transformers` and vLLM.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rc_jax.models import qwen3
from rc_jax.models.config import ModelConfig
from rc_jax.models.quant import (QuantizedWeight, contracted_axes, dequantize_weight,
                                 quantize_weight)
from rc_jax.models.safetensors_io import open_checkpoint_files, save_file

Transform = Callable[[np.ndarray], np.ndarray]
_ident: Transform = lambda x: x


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """How one rc_jax parameter relates to HF tensor(s).

    `hf_name` contains `{i}` for per-layer tensors, which are stacked on axis 0.
    `to_ours`/`to_hf` convert one (per-layer) tensor between layouts.
    """
    path: tuple[str, ...]
    hf_name: str
    to_ours: Transform = _ident
    to_hf: Transform = _ident

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def tensor_mappings(config: ModelConfig) -> list[TensorMapping]:
    """The name/layout table for `config` (only the parameters it actually has)."""
    e, h, k, d = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    t = np.transpose

    def in_proj(heads: int) -> tuple[Transform, Transform]:
        # HF [heads*D, E] (out, in)  <->  ours [E, heads, D]
        return (lambda w: t(w).reshape(e, heads, d), lambda w: t(w.reshape(e, heads * d)))

    def bias(heads: int) -> tuple[Transform, Transform]:
        return (lambda b: b.reshape(heads, d), lambda b: b.reshape(heads * d))

    layer = "model.layers.{i}."
    maps = [
        TensorMapping(("embedding",), "model.embed_tokens.weight"),
        TensorMapping(("final_norm", "scale"), "model.norm.weight"),
        TensorMapping(("layers", "attn_norm", "scale"), layer + "input_layernorm.weight"),
        TensorMapping(("layers", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight"),
        TensorMapping(("layers", "attn", "q_proj"), layer + "self_attn.q_proj.weight", *in_proj(h)),
        TensorMapping(("layers", "attn", "k_proj"), layer + "self_attn.k_proj.weight", *in_proj(k)),
        TensorMapping(("layers", "attn", "v_proj"), layer + "self_attn.v_proj.weight", *in_proj(k)),
        # HF [E, H*D]  <->  ours [H, D, E]
        TensorMapping(("layers", "attn", "o_proj"), layer + "self_attn.o_proj.weight",
                      lambda w: t(w).reshape(h, d, e), lambda w: t(w.reshape(h * d, e))),
        TensorMapping(("layers", "mlp", "gate_proj"), layer + "mlp.gate_proj.weight", t, t),
        TensorMapping(("layers", "mlp", "up_proj"), layer + "mlp.up_proj.weight", t, t),
        TensorMapping(("layers", "mlp", "down_proj"), layer + "mlp.down_proj.weight", t, t),
    ]
    if config.qkv_bias:
        maps += [
            TensorMapping(("layers", "attn", "q_bias"), layer + "self_attn.q_proj.bias", *bias(h)),
            TensorMapping(("layers", "attn", "k_bias"), layer + "self_attn.k_proj.bias", *bias(k)),
            TensorMapping(("layers", "attn", "v_bias"), layer + "self_attn.v_proj.bias", *bias(k)),
        ]
    if config.o_bias:
        maps.append(TensorMapping(("layers", "attn", "o_bias"), layer + "self_attn.o_proj.bias"))
    if config.qk_norm:
        maps += [
            TensorMapping(("layers", "attn", "q_norm", "scale"), layer + "self_attn.q_norm.weight"),
            TensorMapping(("layers", "attn", "k_norm", "scale"), layer + "self_attn.k_norm.weight"),
        ]
    if not config.tie_word_embeddings:
        maps.append(TensorMapping(("lm_head",), "lm_head.weight", t, t))
    return maps


def _get_path(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted({path / f for f in weight_map.values()})
        missing = [f for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{index} lists {missing[0].name}, which does not exist")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    return files


class _TensorSource:
    """Reads (and checks) HF tensors by name from a checkpoint directory."""

    def __init__(self, path: Path):
        self.path = path
        self.where = open_checkpoint_files(_checkpoint_files(path))

    def read(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        file = self.where.get(name)
        if file is None:
            raise ValueError(f"checkpoint {self.path} is missing tensor {name!r}")
        shape = file.shape(name)
        if shape != tuple(expected_shape):
            raise ValueError(f"tensor {name!r} in {file.path} has shape {list(shape)}, "
                             f"expected {list(expected_shape)} from config.json")
        return file.get(name)


def load_hf_checkpoint(path: str | Path, dtype: str | None = None, shardings: Any = None,
                       **config_overrides: Any) -> tuple[ModelConfig, Any]:
    """Loads an HF-format directory (config.json + safetensors, single or sharded).

    Args:
      path: directory with `config.json` and `model.safetensors` or
        `model.safetensors.index.json` + shards.
      dtype: 'float32' / 'bfloat16' for params and activations; None keeps the config
        default (float32).
      shardings: optional pytree of `jax.sharding.Sharding` matching the params; each
        device then reads only its slice of each tensor.
      **config_overrides: extra `ModelConfig` fields (e.g. remat_policy='full';
        quantization='int8' quantizes each projection as it is placed, from the float
        tensors of any checkpoint: rc_jax.models.quant).

    Returns:
      (config, params) with per-layer tensors stacked on a leading [L] axis.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if dtype is not None:
        config_overrides = {"dtype": dtype, "param_dtype": dtype, **config_overrides}
    config = ModelConfig.from_pretrained(path, **config_overrides)
    source = _TensorSource(path)
    shapes = qwen3.param_shapes(config)
    target = config.jnp_param_dtype
    params: dict = {}
    for m in tensor_mappings(config):
        full_shape = _get_path(shapes, m.path).shape
        layer_shape = full_shape[1:] if m.per_layer else full_shape
        hf_shape = m.to_hf(np.empty(layer_shape, np.uint8)).shape
        names = ([m.hf_name.format(i=i) for i in range(config.num_layers)] if m.per_layer
                 else [m.hf_name])
        arrays = [source.read(n, hf_shape) for n in names]  # memory maps: nothing read yet
        sharding = None if shardings is None else _get_path(shardings, m.path)
        value: Any  # jax.Array, or QuantizedWeight for int8 weights
        if isinstance(_get_path(shapes, m.path), QuantizedWeight):
            value = _place_quantized(arrays, m, full_shape, target, sharding)
        else:
            value = _place(arrays, m, full_shape, target, sharding)
        _set_path(params, m.path, value)
    return config, params


def _place_quantized(arrays: list[np.ndarray], m: TensorMapping, full_shape: tuple[int, ...],
                     dtype: Any, sharding: Any) -> QuantizedWeight:
    """One parameter placed in float (sharded like its values), then quantized on device;
    the float copy is dropped as soon as the int8 one exists."""
    axes = contracted_axes(m.path[-1], len(full_shape), m.per_layer)
    w = _place(arrays, m, full_shape, dtype, None if sharding is None else sharding.values)
    quantize = jax.jit(lambda x: quantize_weight(x, axes), out_shardings=sharding)
    return quantize(w)


def _place(arrays: list[np.ndarray], m: TensorMapping, full_shape: tuple[int, ...],
           dtype: Any, sharding: Any) -> jax.Array:
    """Builds one stacked parameter from memory-mapped HF tensors and puts it on device."""
    def read(index: tuple[slice, ...] | None = ()) -> np.ndarray:
        index = tuple(index or ()) + (slice(None),) * (len(full_shape) - len(index or ()))
        if not m.per_layer:
            return np.asarray(m.to_ours(arrays[0])[index], dtype=dtype)
        layers = range(*index[0].indices(full_shape[0]))
        return np.stack([np.asarray(m.to_ours(arrays[i])[index[1:]], dtype=dtype)
                         for i in layers])

    if sharding is None:
        return jnp.asarray(read())
    return jax.make_array_from_callback(full_shape, sharding, read)


def hf_state_dict(config: ModelConfig, params: Any) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, numpy tensor) pairs, one per HF tensor, lazily."""
    for m in tensor_mappings(config):
        value = _get_path(params, m.path)
        if isinstance(value, QuantizedWeight):  # exported dequantized (values * scale)
            value = dequantize_weight(value, contracted_axes(m.path[-1], value.values.ndim,
                                                             m.per_layer))
        value = np.asarray(jax.device_get(value))
        if m.per_layer:
            for i in range(config.num_layers):
                yield m.hf_name.format(i=i), np.ascontiguousarray(m.to_hf(value[i]))
        else:
            yield m.hf_name, np.ascontiguousarray(m.to_hf(value))


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json",
                    "chat_template.jinja")


def save_hf_checkpoint(path: str | Path, config: ModelConfig, params: Any, *,
                       tokenizer_dir: str | Path | None = None,
                       max_shard_bytes: int = 4 << 30) -> Path:
    """Writes an HF-format directory that `transformers` (and vLLM) loads.

    Tensors are stored in `config.param_dtype`; more than `max_shard_bytes` of them are
    split into `model-0000k-of-0000n.safetensors` with a `model.safetensors.index.json`.
    Tokenizer files are copied from `tokenizer_dir` when given.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    if tokenizer_dir is not None:
        for name in _TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists() and src.resolve() != (path / name).resolve():
                shutil.copy(src, path / name)
    dtype = config.jnp_param_dtype
    # Write each shard as soon as it is full, so at most one shard is held in host memory.
    shard_files: list[tuple[Path, list[str]]] = []
    current: dict[str, np.ndarray] = {}
    size = total = 0

    def flush() -> None:
        tmp = path / f"shard-{len(shard_files):05d}.partial"
        save_file(current, tmp)
        shard_files.append((tmp, list(current)))
        current.clear()

    for name, tensor in hf_state_dict(config, params):
        tensor = tensor.astype(dtype)
        if current and size + tensor.nbytes > max_shard_bytes:
            flush()
            size = 0
        current[name] = tensor
        size += tensor.nbytes
        total += tensor.nbytes
    flush()
    if len(shard_files) == 1:
        shard_files[0][0].replace(path / "model.safetensors")
        return path
    weight_map = {}
    for k, (tmp, names) in enumerate(shard_files, 1):
        fname = f"model-{k:05d}-of-{len(shard_files):05d}.safetensors"
        tmp.replace(path / fname)
        weight_map.update({n: fname for n in names})
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return path
