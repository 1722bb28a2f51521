"""Baseline: budget forcing (s1) on HMMT (Nov 2025), as the paper ran it. The prompt is
the problem alone; the first segment may use 16k tokens, then the run always continues:
24 more segments of at most 2048 tokens each, every one prompted with the segments so far
(each followed by a short "Wait"-style cue) in the assistant turn. Step s's answer is read
from segment s.

python -m rc_jax.main --config=experiments/budget_forcing_hmmt.py \
    --config.model.path=/ckpt/Qwen3-4B-Instruct-2507
--config.budget_forcing.mode=on_stop runs rc_jax's earlier variant (the cue replaces an
early stop; one shared budget; cumulative stores).
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.method = "budget_forcing"
    c.name = "hmmt_nov_2025_budget_forcing"
    c.data.source = "hf:MathArena/hmmt_nov_2025:train"
    # The paper samples its autoregressive and s1 baselines at temperature 0.7, top-p 0.8
    # (RC itself at 1.0 / 1.0).
    c.sampling.temperature = 0.7
    c.sampling.top_p = 0.8
    c.budget_forcing.mode = "paper"
    c.budget_forcing.template = "bare"            # the problem alone, chat-wrapped
    c.budget_forcing.max_tokens = 16384           # the first segment (= RC's H_R)
    c.budget_forcing.continuation_tokens = 2048   # every later segment (the paper's 2048)
    c.budget_forcing.num_forcings = 24            # rc_jax's choice: 16k + 24 x 2k = 64k tokens
    c.num_samples = 16
    c.model.dtype = "bfloat16"
    # A continuation re-prefills the problem + every segment so far (up to ~64k tokens)
    # before its 2048 new tokens; bucket rounding can take that past 128k.
    c.model.max_cache_length = 1 << 18
    c.batch_size = 16
    c.output_dir = "outputs/hmmt_budget_forcing"
    return c
