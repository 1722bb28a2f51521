"""Baseline: s1-style budget forcing on HMMT (Nov 2025). Whenever the model stops before
the 64k-token budget, its stop is replaced by "Wait" (up to 7 times); the answer is read
at each stop.

python -m rc_jax.main --config=experiments/budget_forcing_hmmt.py \
    --config.model.path=/ckpt/Qwen3-4B-Instruct-2507
For a thinking model add --config.rc.use_think_tags=True: then `</think>` is the
forcing stop.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.method = "budget_forcing"
    c.name = "hmmt_nov_2025_budget_forcing"
    c.data.source = "hf:MathArena/hmmt_nov_2025:train"
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.budget_forcing.max_tokens = 65536
    c.budget_forcing.num_forcings = 7
    c.budget_forcing.cue = "Wait"
    c.num_samples = 16
    c.model.dtype = "bfloat16"
    # A continuation re-prefills prompt + generated text: the prompt bucket and the
    # remaining budget's bucket together can exceed 128k near the end of the budget.
    c.model.max_cache_length = 1 << 18
    c.batch_size = 16
    c.output_dir = "outputs/hmmt_budget_forcing"
    return c
