"""Token-level host stepper: the engine's segment logic, one phase at a time, on the host.

It assembles prompts as python id lists from the same `PromptPlan`s, samples each phase
with the plain batched sampler (`generate`), and cleans ids with the same rules. With
greedy sampling it must match the device engine token for token; it exists to test the
engine's on-device assembly, loop and streaming.
"""
from __future__ import annotations

from typing import Sequence

import jax

from rc_jax.rc.engine import RCEngine, Rollout
from rc_jax.rc.tokens import clean_host
from rc_jax.sampling.generate import generate


def run_token_stepper(engine: RCEngine, problems: Sequence[str], num_steps: int) -> list[Rollout]:
    """Greedy-only reference for `engine.run` (same plans, tables and budgets)."""
    if not engine.sampling.greedy:
        raise ValueError("the token-level stepper is a greedy oracle; use temperature 0")
    tok, s = engine.tokenizer, engine.settings
    problem_ids = [tok.encode(p) for p in problems]
    summaries: list[list[int]] = [[] for _ in problems]
    outs = [Rollout(row=i) for i in range(len(problems))]

    def phase(params, config, prompts, budget, keep):
        res = generate(params, config, prompts, engine.sampling, jax.random.PRNGKey(0), budget,
                       tok.eos_ids, pad_id=tok.pad_id, buckets=engine.buckets)
        cleaned = [clean_host(t, engine.tables, keep, tok.pad_id) for t in res.tokens]
        return res, cleaned

    for _ in range(num_steps):
        prompts = [engine.reasoning_plan.host_ids({"problem": p, "curr_summary": s_})
                   for p, s_ in zip(problem_ids, summaries)]
        res, reasoning = phase(engine.params, engine.config, prompts, s.max_reasoning_tokens,
                               "before_think_end")
        for r, prompt, raw, clean in zip(outs, prompts, res.tokens, reasoning):
            r.reasoning_prompts.append(prompt)
            r.reasoning_ids.append(clean)
            r.reasoning_tokens.append(len(raw))
        prompts = [engine.summary_plan.host_ids(
            {"problem": p, "existing_summary": s_, "reasoning": r_})
            for p, s_, r_ in zip(problem_ids, summaries, reasoning)]
        res, summaries = phase(engine.summarizer_params, engine.summarizer_config, prompts,
                               s.max_summary_tokens, "after_think_end")
        for r, prompt, raw, clean in zip(outs, prompts, res.tokens, summaries):
            r.summary_prompts.append(prompt)
            r.summary_ids.append(clean)
            r.summary_tokens.append(len(raw))
    return outs
