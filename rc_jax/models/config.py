"""Model configuration read from a Hugging Face `config.json`.

One frozen (hashable) dataclass describes every supported decoder: it is passed to
`jax.jit` as a static argument, so two models with the same config share programs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "dense", "blockwise", "cudnn", "pallas")  # see models.attention
QUANTIZATIONS = ("none", "int8")  # weight-only int8: rc_jax.models.quant


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a dense decoder-only transformer (Qwen3, Qwen2/2.5, Llama).

    Attributes mirror the HF names where one exists. `qk_norm` is Qwen3's per-head RMSNorm
    on queries and keys; `qkv_bias`/`o_bias` are the projection biases (Qwen2 has q/k/v
    biases, Qwen3/Llama have none unless `attention_bias` is set).
    """
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qk_norm: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # Numerics and memory policy (not part of the HF checkpoint).
    dtype: str = "float32"        # activations and matmuls
    param_dtype: str = "float32"  # stored parameters
    remat_policy: str = "none"    # one of REMAT_POLICIES; 'full' for training long sequences
    attention: str = "auto"       # one of ATTENTION_IMPLS (rc_jax.models.attention)
    quantization: str = "none"    # none | int8: weight-only int8 matmuls (rc_jax.models.quant)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; "
                                              f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                                              f"num_key_value_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} unknown; choose from {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention {self.attention!r} unknown; choose from {ATTENTION_IMPLS}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization {self.quantization!r} unknown; choose from "
                             f"{QUANTIZATIONS}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}")

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Exact parameter count (embeddings counted once when tied)."""
        e, h, k, d, i, l = (self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                                                self.intermediate_size, self.num_layers)
        attn = e * h * d * 2 + e * k * d * 2
        attn += (h * d + 2 * k * d) * self.qkv_bias + e * self.o_bias + 2 * d * self.qk_norm
        per_layer = attn + 3 * e * i + 2 * e
        head = 0 if self.tie_word_embeddings else e * self.vocab_size
        return self.vocab_size * e + l * per_layer + e + head

    # ----------------------------------------------------------------- HF conversion
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, source: str = "config.json",
                                      **overrides: Any) -> "ModelConfig":
        """Validates an HF config dict; unsupported features raise naming the field."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{source}: model_type {model_type!r} is not supported "
                                              f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        _reject_unsupported(hf, source)

        def need(key: str):
            if key not in hf:
                raise ValueError(f"{source}: missing required field {key!r}")
            return hf[key]

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        attention_bias = bool(hf.get("attention_bias", False))
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        kwargs = dict(
                model_type=model_type,
                vocab_size=int(need("vocab_size")),
                hidden_size=hidden,
                intermediate_size=int(need("intermediate_size")),
                num_layers=int(need("num_hidden_layers")),
                num_heads=heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                head_dim=int(hf.get("head_dim") or hidden // heads),
                rope_theta=float(hf.get("rope_theta", 10000.0)),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qk_norm=model_type == "qwen3",
                qkv_bias=True if model_type == "qwen2" else attention_bias,
                o_bias=False if model_type == "qwen2" else attention_bias,
                max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_ids=tuple(int(x) for x in eos_ids),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "ModelConfig":
        """Reads `<path>/config.json` (or `path` itself when it is a file)."""
        path = Path(path)
        file = path if path.is_file() else path / "config.json"
        if not file.exists():
            raise FileNotFoundError(f"no config.json found at {file}")
        try:
            hf = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from None
        return cls.from_hf_dict(hf, source=str(file), **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """An HF `config.json` that `transformers` loads as the matching *ForCausalLM."""
        arch = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM",
                        "llama": "LlamaForCausalLM"}[self.model_type]
        hf: dict[str, Any] = {
                "architectures": [arch],
                "model_type": self.model_type,
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads,
                "head_dim": self.head_dim,
                "hidden_act": "silu",
                "rope_theta": self.rope_theta,
                "rms_norm_eps": self.rms_norm_eps,
                "tie_word_embeddings": self.tie_word_embeddings,
                "max_position_embeddings": self.max_position_embeddings,
                "rope_scaling": None,
                "torch_dtype": self.param_dtype,
        }
        if self.model_type != "qwen2":
            hf["attention_bias"] = self.qkv_bias
        if self.model_type in ("qwen2", "qwen3"):
            hf["use_sliding_window"] = False
        if self.model_type == "llama":
            hf["mlp_bias"] = False
        if self.bos_token_id is not None:
            hf["bos_token_id"] = self.bos_token_id
        if self.eos_token_ids:
            hf["eos_token_id"] = (self.eos_token_ids[0] if len(self.eos_token_ids) == 1
                                                        else list(self.eos_token_ids))
        return hf


def _reject_unsupported(hf: dict[str, Any], source: str) -> None:
    """Features rc_jax does not implement must fail loudly, never be silently ignored."""
    scaling = hf.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in (None, "default"):
            raise ValueError(f"{source}: rope_scaling type {kind!r} is not supported "
                                              "(only the default rotary embedding is implemented)")
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported")
    if hf.get("num_experts") or hf.get("num_local_experts"):
        raise ValueError(f"{source}: mixture-of-experts models are not supported")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{source}: hidden_act {act!r} is not supported (only silu)")
    if hf.get("mlp_bias"):
        raise ValueError(f"{source}: mlp_bias=true is not supported")


class Model(NamedTuple):
    """A loaded model: its config, its params pytree (placed on devices) and the params'
    shardings (None off a mesh). Weights are an argument of every call that uses them
    (`RCEngine.run(params, ...)`, `generate(params, ...)`, `RCTRollout.run_chains(params,
    ...)`), so a trainer passes new weights without mutating any engine."""
    config: ModelConfig
    params: Any
    shardings: Any = None
