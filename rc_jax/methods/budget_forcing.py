"""Budget forcing (s1): make the model keep thinking after it has written an answer.

Two modes (`budget_forcing.mode`):

**paper** (default): budget forcing as the paper ran it. The prompt is the problem alone
(`budget_forcing.template`, default `bare`), chat-wrapped by `Tokenizer.phase_prompt`
(`enable_thinking = rc.use_think_tags`). There are `num_forcings + 1` steps, and every
step generates one *segment*: the first with a budget of `budget_forcing.max_tokens`
tokens, each later one with `budget_forcing.continuation_tokens` tokens (2048 in the
paper). It always continues, whether the previous segment stopped or was cut by its
budget. The context of step s > 0 is the chat-wrapped prompt followed, in the assistant
turn (not re-wrapped), by every earlier segment (raw text stripped) each followed by the
continuation cue `budget_forcing.cue`, all pieces joined by blank lines:

    <wrapped prompt>\\n\\n<segment 1>\\n\\n<cue>\\n\\n<segment 2>\\n\\n<cue>

(`continuation_context`), tokenized whole. Generations stop on EOS only. Step s stores
its own segment: `reasoning_store[s]` is the raw decoded generation (the per-step answer
is read from it), `reasoning_clean[s]` the stripped segment the next context holds;
`token_counts.prompt[s]` is the context it prefilled.

**on_stop**: rc_jax's earlier variant. One budget of `max_tokens` generated tokens is
shared by all generations. A generation that ends on a *forcing stop* with budget left
has the stop token removed and the cue appended exactly there, and generation continues
from the whole context with the budget that is left, up to `num_forcings` times; the
last continuation stops only on EOS. Forcing stops: the EOS ids plus the tokens of
`budget_forcing.stop_tokens` (comma-separated; empty: `</think>` when
`rc.use_think_tags` is on). Step s stores everything generated so far (earlier cues
included, the removed stop tokens not), raw; a row that ended repeats its final text for
the remaining steps with 0 new tokens. A row's own remaining budget is applied by
cutting its tokens, which gives exactly the tokens a generation with that budget would
have (token t of a row depends only on its key and t).

In both modes step s samples with fold_in(row key, s).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rc_jax.methods import register
from rc_jax.methods.base import MethodContext
from rc_jax.sampling.keys import fold
from rc_jax.prompts import load_template
from rc_jax.records import RolloutRecord

MODES = ("paper", "on_stop")
SEGMENT_JOIN = "\n\n"  # between the prompt, segments and cues of a paper-mode context


def continuation_context(prompt: str, segments: Sequence[str], cue: str) -> str:
    """Paper mode: the context of the step after `segments` (stripped texts)."""
    parts = [prompt]
    for segment in segments:
        parts += [segment, cue]
    return SEGMENT_JOIN.join(parts)


def forcing_stop_ids(ctx: MethodContext) -> tuple[int, ...]:
    """on_stop mode: EOS ids plus the configured forcing stop tokens (single tokens)."""
    extra: list[int] = []
    names = [s.strip() for s in ctx.config.budget_forcing.stop_tokens.split(",") if s.strip()]
    for name in names:
        ids = ctx.tokenizer.encode(name)
        if len(ids) != 1:
            raise ValueError(f"config.budget_forcing.stop_tokens: {name!r} is not a single "
                             f"token of {ctx.tokenizer.path} (it encodes to {ids})")
        extra.append(ids[0])
    if not names and ctx.use_think_tags and ctx.tokenizer.think_end_id is not None:
        extra.append(ctx.tokenizer.think_end_id)
    return tuple(dict.fromkeys(ctx.eos_ids + tuple(extra)))


@register("budget_forcing")
def run_budget_forcing(problems: Sequence[str], keys: np.ndarray,
                       ctx: MethodContext) -> list[RolloutRecord]:
    mode = ctx.config.budget_forcing.mode
    if mode == "paper":
        return _run_paper(problems, keys, ctx)
    if mode == "on_stop":
        return _run_on_stop(problems, keys, ctx)
    raise ValueError(f"config.budget_forcing.mode: must be one of {MODES}, got {mode!r}")


def _run_paper(problems: Sequence[str], keys: np.ndarray,
               ctx: MethodContext) -> list[RolloutRecord]:
    c = ctx.config.budget_forcing
    template = load_template(c.template, "solve")
    heads = [ctx.wrap(template.format(problem=p)) for p in ctx.check_problems(problems)]
    segments: list[list[str]] = [[] for _ in problems]
    outs = [RolloutRecord() for _ in problems]
    for step in range(c.num_forcings + 1):
        prompts = [ctx.tokenizer.encode(continuation_context(h, s, c.cue))
                   for h, s in zip(heads, segments)]
        budget = c.max_tokens if step == 0 else c.continuation_tokens
        res = ctx.generate(prompts, budget, fold(keys, step))
        for r, prompt, ids, finish, segs in zip(outs, prompts, res.tokens,
                                                res.finish_reasons, segments):
            raw = ctx.decode(ids)
            segs.append(raw.strip())
            r.add_step(raw, segs[-1], ids, len(prompt), len(ids), finish)
            if ctx.record_prompts:
                r.prompts.append([prompt])
    return outs


def _run_on_stop(problems: Sequence[str], keys: np.ndarray,
                 ctx: MethodContext) -> list[RolloutRecord]:
    c = ctx.config.budget_forcing
    steps = c.num_forcings + 1
    cue = ctx.tokenizer.encode(c.cue)
    forced, final = forcing_stop_ids(ctx), ctx.eos_ids
    template = load_template(c.template, "solve")
    prompts = [ctx.prompt(template.format(problem=p)) for p in ctx.check_problems(problems)]
    contexts = [list(p) for p in prompts]  # prompt + generated text + cues
    used = [0] * len(problems)
    live = [True] * len(problems)
    outs = [RolloutRecord(method_fields={"forcings": 0}) for _ in problems]
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
                r.add_step(r.reasoning_text[-1], r.reasoning_clean[-1], [], 0, 0,
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
            raw = ctx.decode(contexts[i][len(prompts[i]):])
            r.add_step(raw, raw.strip(), tokens, prompt_len, len(tokens),
                       "stop" if stopped else "length")
            if force:
                contexts[i] += cue
                r.method_fields["forcings"] += 1
            else:
                live[i] = False
    return outs
