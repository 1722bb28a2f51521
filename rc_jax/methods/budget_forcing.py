"""Budget forcing (s1 style): when the model stops early, make it keep thinking.

The model answers the solve prompt with a total budget of `budget_forcing.max_tokens`
generated tokens. Each time a generation ends on a *forcing stop* before the budget is
spent, the stop token (its end-of-thinking / end-of-answer marker) is removed, the
continuation cue `budget_forcing.cue` (e.g. "Wait") is appended right where it stopped,
and generation continues from the whole context with the budget that is left, up to
`budget_forcing.num_forcings` times. The last continuation stops only on EOS, so a
thinking model can close its thoughts and answer.

Forcing stops: the EOS ids plus the tokens of `budget_forcing.stop_tokens`
(comma-separated; empty: `</think>` when `rc.use_think_tags` is on).

Steps: step s is the s-th generation (s = 0 .. num_forcings). Its text is everything
generated so far (earlier cues included, the removed stop tokens not), so its answer is
the one the model gave when it stopped; its reasoning tokens are the tokens that
generation produced (cue tokens are not generated and do not count against the budget);
its prompt tokens the context it was prefilled from. A row that ends (budget spent, or
its last stop) repeats its final text for the remaining steps with 0 new tokens.

Each continuation re-prefills the context (prompt + generated text + cues); a row's own
remaining budget is applied by cutting its tokens, which gives exactly the tokens a
generation with that budget would have (token t of a row depends only on its key and t).
Generation s samples with fold_in(row key, s).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rc_jax.methods import register
from rc_jax.methods.base import MethodContext, MethodRollout, fold


def forcing_stop_ids(ctx: MethodContext) -> tuple[int, ...]:
    """EOS ids plus the configured forcing stop tokens (each must be a single token)."""
    extra: list[int] = []
    names = [s.strip() for s in ctx.config.budget_forcing.stop_tokens.split(",") if s.strip()]
    for name in names:
        ids = ctx.tokenizer.encode(name)
        if len(ids) != 1:
            raise ValueError(f"config.budget_forcing.stop_tokens: {name!r} is not a single "
                             f"token of {ctx.tokenizer.path} (it encodes to {ids})")
        extra.append(ids[0])
    if not names and ctx.think and ctx.tokenizer.think_end_id is not None:
        extra.append(ctx.tokenizer.think_end_id)
    return tuple(dict.fromkeys(ctx.eos_ids + tuple(extra)))


@register("budget_forcing")
def run_budget_forcing(problems: Sequence[str], keys: np.ndarray,
                       ctx: MethodContext) -> list[MethodRollout]:
    c = ctx.config.budget_forcing
    steps = c.num_forcings + 1
    cue = ctx.tokenizer.encode(c.cue)
    forced, final = forcing_stop_ids(ctx), ctx.eos_ids
    plan = ctx.solve_plan()
    prompts = [plan.host_ids({"problem": p}) for p in ctx.encode_problems(problems)]
    contexts = [list(p) for p in prompts]  # prompt + generated text + cues
    used = [0] * len(problems)
    live = [True] * len(problems)
    outs = [MethodRollout(extra={"forcings": 0}) for _ in problems]
    keys = np.asarray(keys)
    for step in range(steps):
        rows = [i for i in range(len(problems)) if live[i]]
        if rows:
            last = step == steps - 1
            budgets = [c.max_tokens - used[i] for i in rows]
            res = ctx.generate([contexts[i] for i in rows], max(budgets), fold(keys[rows], step),
                               stop_ids=final if last else forced)
        for i, r in enumerate(outs):
            if i not in rows:  # ended earlier: same text, nothing new
                r.add_step(r.reasoning_text[-1], r.reasoning_ids[-1], 0, 0,
                           r.reasoning_finish[-1])
                if ctx.record_prompts:
                    r.prompts.append([])
                continue
            j = rows.index(i)
            budget = budgets[j]
            tokens = res.tokens[j][:budget]
            stopped = res.finish_reasons[j] == "stop" and len(res.tokens[j]) <= budget
            prompt_len = len(contexts[i])
            if ctx.record_prompts:
                r.prompts.append([list(contexts[i])])
            used[i] += len(tokens)
            force = stopped and not last and used[i] < c.max_tokens
            contexts[i] += tokens[:-1] if force else tokens  # drop the stop marker
            text_ids = contexts[i][len(prompts[i]):]
            r.add_step(ctx.decode(text_ids).strip(), text_ids, prompt_len, len(tokens),
                       "stop" if stopped else "length")
            if force:
                contexts[i] += cue
                r.extra["forcings"] += 1
            else:
                live[i] = False
    return outs
