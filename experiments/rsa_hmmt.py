"""Scaffold: recursive self-aggregation (RSA) on HMMT (Nov 2025). A population of 8
solutions per sample; 4 rounds in which every new solution aggregates 4 members of the
last round. Run it once per model (e.g. the base model and RCT-4B) to compare how well
each uses the scaffold; --config.rsa.use_summaries=True shows RC summaries of the
candidates instead of their full texts.

python -m rc_jax.main --config=experiments/rsa_hmmt.py \
    --config.model.path=/ckpt/Qwen3-4B-Instruct-2507
Token counts per step are summed over the whole population (8 candidates).
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.method = "rsa"
    c.name = "hmmt_nov_2025_rsa"
    c.data.source = "hf:MathArena/hmmt_nov_2025:train"
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.rc.max_reasoning_tokens = 16384  # per candidate
    c.rc.max_summary_tokens = 2048     # per summary (with rsa.use_summaries)
    c.rsa.population = 8
    c.rsa.k = 4
    c.rsa.generations = 4
    c.rsa.use_summaries = False
    c.rsa.max_candidate_tokens = 8192  # 4 candidates of <= 8k tokens: a prompt under ~34k
    c.num_samples = 4                  # each sample is a population of 8
    c.model.dtype = "bfloat16"
    c.batch_size = 8                   # 8 samples x 8 candidates = 64 rows per call
    c.output_dir = "outputs/hmmt_rsa"
    return c
