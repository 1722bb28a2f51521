"""HMMT (Nov 2025) with the paper's evaluation settings (docs/design.md, RC semantics).

python -m rc_jax.main --config=experiments/hmmt.py \
    --config.model.path=/ckpt/Qwen3-4B-Instruct-2507
Needs network access to the Hugging Face hub for the dataset, or point
--config.data.source at a local JSON/JSONL copy.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "hmmt_nov_2025"
    c.data.source = "hf:MathArena/hmmt_nov_2025:train"
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.rc.num_steps = 12
    c.rc.max_reasoning_tokens = 16384
    c.rc.max_summary_tokens = 2048
    c.num_samples = 16
    c.model.dtype = "bfloat16"
    c.batch_size = 64
    c.output_dir = "outputs/hmmt"
    return c
