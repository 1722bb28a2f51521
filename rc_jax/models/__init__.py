"""Pure-functional decoders (Qwen3, Qwen2/2.5, Llama) and HF checkpoint I/O."""
from rc_jax.models.checkpoint import load_hf_checkpoint, save_hf_checkpoint
from rc_jax.models.config import Model, ModelConfig
from rc_jax.models.qwen3 import (KVCache, forward, init_cache, init_params, param_logical_axes,
                                 param_shapes, positions_from_mask)

__all__ = [
    "Model", "ModelConfig", "KVCache", "forward", "init_cache", "init_params", "param_shapes",
    "param_logical_axes", "positions_from_mask", "load_hf_checkpoint", "save_hf_checkpoint",
]
