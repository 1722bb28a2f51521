"""AIME 2025 with the paper's evaluation settings (docs/design.md, RC semantics).

python -m rc_jax.main --config=experiments/aime.py \
    --config.model.path=/ckpt/Qwen3-4B-Instruct-2507
Needs network access for the dataset, or a local JSON/JSONL via --config.data.source.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "aime_2025"
    c.data.source = "hf:MathArena/aime_2025:train"
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.rc.num_steps = 12
    c.rc.max_reasoning_tokens = 16384
    c.rc.max_summary_tokens = 2048
    c.num_samples = 16
    c.model.dtype = "bfloat16"
    c.batch_size = 64
    c.output_dir = "outputs/aime"
    return c
