"""Baseline: plain autoregressive decoding on HMMT (Nov 2025), one generation of up to
128k tokens, read every 16k tokens so it shares RC's accuracy-vs-tokens plot.

python -m rc_jax.main --config=experiments/autoregressive_hmmt.py \
    --config.model.path=/ckpt/Qwen3-4B-Instruct-2507
A 128k-token generation holds a 128k KV cache per row: keep batch_size small (or shard
with --config.mesh) and max_cache_length above prompt + max_tokens.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.method = "autoregressive"
    c.name = "hmmt_nov_2025_autoregressive"
    c.data.source = "hf:MathArena/hmmt_nov_2025:train"
    # The paper samples its autoregressive and s1 baselines at temperature 0.7, top-p 0.8
    # (RC itself at 1.0 / 1.0).
    c.sampling.temperature = 0.7
    c.sampling.top_p = 0.8
    c.autoregressive.max_tokens = 131072
    c.autoregressive.checkpoint_tokens = 16384  # = RC's H_R: step t ~ RC step t's reasoning
    c.num_samples = 16
    c.model.dtype = "bfloat16"
    c.model.max_cache_length = 1 << 18
    c.batch_size = 8
    c.output_dir = "outputs/hmmt_autoregressive"
    return c
