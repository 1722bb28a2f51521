"""Self-refine and self-verify: iterate on the previous attempt itself, no summary.

As the paper ran them: **one template at every step** (`self_refine.template`, kind
`refine`, or `self_verify.template`, kind `verify`; fields `{problem}` and
`{previous_attempt}`). Step 0 fills `{previous_attempt}` with the empty string; step
t > 0 with the cleaned attempt of step t - 1 (RC's reasoning rule: the text before the
first `</think>`, `<think>` dropped, stripped; front-truncated to its last
`<method>.max_context_tokens` tokens when that is > 0). Each prompt is chat-wrapped by
`Tokenizer.phase_prompt` with `enable_thinking = rc.use_think_tags`; steps conditioned
on an earlier attempt (t > 0) also open a `<think>` block when think tags are on, as the
paper's code does, while step 0 leaves that to the model (docs/design.md).

Steps and per-step budget are RC's: `rc.num_steps` steps of at most
`rc.max_reasoning_tokens` tokens, so the two methods spend the same reasoning budget per
step as RC (without RC's summary tokens). `reasoning_store[t]` is step t's raw
generation (its answer is graded from it), `reasoning_clean[t]` what step t + 1 sees.
Step t samples with fold_in(row key, 2t), RC's reasoning-phase key.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rc_jax.methods import register
from rc_jax.methods.base import MethodContext
from rc_jax.sampling.keys import fold
from rc_jax.prompts import load_template
from rc_jax.rc.text import clean_reasoning
from rc_jax.records import RolloutRecord


def run_iterative(problems: Sequence[str], keys: np.ndarray, ctx: MethodContext, *,
                  section: str, kind: str) -> list[RolloutRecord]:
    """The shared loop; `section` names the config section, `kind` the prompt kind."""
    c = getattr(ctx.config, section)
    template = load_template(c.template, kind)
    problems = ctx.check_problems(problems)
    outs = [RolloutRecord() for _ in problems]
    previous = [""] * len(problems)  # the empty attempt of step 0
    for step in range(ctx.config.rc.num_steps):
        prompts = [ctx.prompt(template.format(
                       problem=p, previous_attempt=ctx.truncate(a, c.max_context_tokens)),
                       open_think=step > 0)
                   for p, a in zip(problems, previous)]
        res = ctx.generate(prompts, ctx.config.rc.max_reasoning_tokens, fold(keys, 2 * step))
        raws = [ctx.decode(t) for t in res.tokens]
        previous = [clean_reasoning(x) for x in raws]
        for r, prompt, ids, raw, clean, finish in zip(outs, prompts, res.tokens, raws,
                                                      previous, res.finish_reasons):
            r.add_step(raw, clean, ids, len(prompt), len(ids), finish)
            if ctx.record_prompts:
                r.prompts.append([prompt])
    return outs


@register("self_refine")
def run_self_refine(problems: Sequence[str], keys: np.ndarray,
                    ctx: MethodContext) -> list[RolloutRecord]:
    return run_iterative(problems, keys, ctx, section="self_refine", kind="refine")


@register("self_verify")
def run_self_verify(problems: Sequence[str], keys: np.ndarray,
                    ctx: MethodContext) -> list[RolloutRecord]:
    return run_iterative(problems, keys, ctx, section="self_verify", kind="verify")
