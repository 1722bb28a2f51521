"""Rival: Delethink ("The Markovian Thinker", arXiv 2510.06557) on HMMT (Nov 2025), with the
paper's values: chunks of C = 8K tokens, m = C / 2 = 4K tokens carried from the end of each
chunk, the first m0 = 100 tokens of the trace kept in every later prompt (the authors'
code), and I = 5 chunks (8K + 4 x 4K = 24K generated tokens at most, their Delethink-24K
setting). A step is a chunk; step k's answer is the last \\boxed{} of chunks 1..k.

python -m rc_jax.main --config=experiments/delethink_hmmt.py \
    --config.model.path=/ckpt/Qwen3-4B-Instruct-2507
Their test-time scaling runs raise only the chunk count (e.g. --config.delethink.max_chunks=25
for 8K + 24 x 4K = 104K tokens). The prompt is rc_jax's `math` solve template (the
autoregressive baseline's), chat-wrapped like every method; the authors' own wording
(the problem followed by a step-by-step / boxed-answer instruction) can be given as a
template file with --config.delethink.template=FILE.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.method = "delethink"
    c.name = "hmmt_nov_2025_delethink"
    c.data.source = "hf:MathArena/hmmt_nov_2025:train"
    # The authors' inference demo samples at temperature 0.6 (nucleus off).
    c.sampling.temperature = 0.6
    c.sampling.top_p = 1.0
    c.delethink.template = "math"
    c.delethink.chunk_tokens = 8192   # C
    c.delethink.keep_first = 100      # m0
    c.delethink.keep_last = 4096      # m = C / 2
    c.delethink.max_chunks = 5        # I
    c.num_samples = 16
    c.model.dtype = "bfloat16"
    c.batch_size = 64
    c.output_dir = "outputs/hmmt_delethink"
    return c
