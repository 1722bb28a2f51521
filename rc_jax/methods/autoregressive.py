"""Autoregressive baseline: one long generation, read at fixed token checkpoints.

The model answers the solve prompt (`baselines.solve_template`, chat-wrapped by
`Tokenizer.phase_prompt`) in one generation of at most `autoregressive.max_tokens` tokens
(one sampler call, one KV cache). So it can share RC's per-step accuracy-vs-tokens plot,
the generation is read at checkpoints every `autoregressive.checkpoint_tokens` tokens:
step t's store is the raw decoded text of the first min((t+1) * checkpoint_tokens,
max_tokens) generated tokens (special tokens skipped, nothing cut or stripped), its
answer the last `\\boxed{}` in that text, and its reasoning token count the tokens added
since the previous checkpoint (0 once the generation has ended), so cumulative tokens
line up. `reasoning_clean[t]` is the same prefix cleaned by RC's reasoning rule.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rc_jax.methods import register
from rc_jax.methods.base import MethodContext
from rc_jax.sampling.keys import fold
from rc_jax.rc.text import clean_reasoning
from rc_jax.records import RolloutRecord


def checkpoints(max_tokens: int, checkpoint_tokens: int) -> list[int]:
    """Token positions the steps are read at: every checkpoint_tokens, last = max_tokens."""
    steps = -(-max_tokens // checkpoint_tokens)
    return [min((t + 1) * checkpoint_tokens, max_tokens) for t in range(steps)]


@register("autoregressive")
def run_autoregressive(problems: Sequence[str], keys: np.ndarray,
                       ctx: MethodContext) -> list[RolloutRecord]:
    c = ctx.config.autoregressive
    marks = checkpoints(c.max_tokens, c.checkpoint_tokens)
    solve = ctx.solve_template()
    prompts = [ctx.prompt(solve.format(problem=p)) for p in ctx.check_problems(problems)]
    res = ctx.generate(prompts, c.max_tokens, fold(keys, 0))
    outs = []
    for prompt, tokens, finish in zip(prompts, res.tokens, res.finish_reasons):
        r = RolloutRecord()
        done = 0
        for t, mark in enumerate(marks):
            if ctx.record_prompts:  # only the first step prefills a prompt
                r.prompts.append([prompt] if t == 0 else [])
            end = min(mark, len(tokens))
            ended = finish == "stop" and len(tokens) <= mark
            raw = ctx.decode(tokens[:end])
            r.add_step(raw, clean_reasoning(raw), tokens[done:end],
                       len(prompt) if t == 0 else 0, end - done,
                       "stop" if ended else "length")
            done = end
        outs.append(r)
    return outs
