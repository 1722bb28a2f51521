"""Self-refine and self-verify: iterate on the previous attempt itself, no summary.

Like RC (DESIGN §1) with the summarization phase removed: step 0 answers the solve prompt
(`baselines.solve_template`); step t > 0 sees the problem and the *full* cleaned attempt
of step t - 1 (front-truncated to its last `<method>.max_context_tokens` tokens when that
is > 0) and is asked to improve it (self_refine, `refine` template) or to verify and
correct it (self_verify, `verify` template). Steps and per-step budget are RC's:
`rc.num_steps` steps of at most `rc.max_reasoning_tokens` tokens, so the two methods
spend the same reasoning budget per step as RC (without RC's summary tokens).
Step t samples with fold_in(row key, 2t), RC's reasoning-phase key.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rc_jax.methods import register
from rc_jax.methods.base import MethodContext, MethodRollout, fold, keep_last


def run_iterative(problems: Sequence[str], keys: np.ndarray, ctx: MethodContext, *,
                  section: str, kind: str) -> list[MethodRollout]:
    """The shared loop; `section` names the config section, `kind` the prompt kind."""
    c = getattr(ctx.config, section)
    first, follow = ctx.solve_plan(), ctx.method_plan(c.template, kind)
    problem_ids = ctx.encode_problems(problems)
    outs = [MethodRollout() for _ in problems]
    previous: list[list[int]] = [[] for _ in problems]
    for step in range(ctx.config.rc.num_steps):
        if step == 0:
            prompts = [first.host_ids({"problem": p}) for p in problem_ids]
        else:
            prompts = [follow.host_ids({"problem": p,
                                        "previous_attempt": keep_last(a, c.max_context_tokens)})
                       for p, a in zip(problem_ids, previous)]
        res = ctx.generate(prompts, ctx.config.rc.max_reasoning_tokens, fold(keys, 2 * step))
        previous = [ctx.clean(t, "before_think_end") for t in res.tokens]
        for r, prompt, raw, attempt, finish in zip(outs, prompts, res.tokens, previous,
                                                   res.finish_reasons):
            r.add_step(ctx.decode(attempt), attempt, len(prompt), len(raw), finish)
            if ctx.record_prompts:
                r.prompts.append([prompt])
    return outs


@register("self_refine")
def run_self_refine(problems: Sequence[str], keys: np.ndarray,
                    ctx: MethodContext) -> list[MethodRollout]:
    return run_iterative(problems, keys, ctx, section="self_refine", kind="refine")


@register("self_verify")
def run_self_verify(problems: Sequence[str], keys: np.ndarray,
                    ctx: MethodContext) -> list[MethodRollout]:
    return run_iterative(problems, keys, ctx, section="self_verify", kind="verify")
