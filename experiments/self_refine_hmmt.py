"""Baseline: self-refine without summaries on HMMT (Nov 2025). Each step sees the full
previous attempt (RC's per-step budget: 12 steps of at most 16k tokens).

python -m rc_jax.main --config=experiments/self_refine_hmmt.py \
    --config.model.path=/ckpt/Qwen3-4B-Instruct-2507
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.method = "self_refine"
    c.name = "hmmt_nov_2025_self_refine"
    c.data.source = "hf:MathArena/hmmt_nov_2025:train"
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.rc.num_steps = 12
    c.rc.max_reasoning_tokens = 16384
    c.self_refine.max_context_tokens = 0  # the whole previous attempt (at most 16k tokens)
    c.num_samples = 16
    c.model.dtype = "bfloat16"
    c.batch_size = 64
    c.output_dir = "outputs/hmmt_self_refine"
    return c
