"""Context-length check: every phase's prompt plus its budget must fit the model.

`check_context` runs before any model work (after the tokenizer and the model configs
are read, before params are loaded or anything compiles). For every problem and every
phase of the configured method it takes an upper bound on the phase's length:

    tokens of the chat-wrapped template filled with the problem (generated fields empty)
  + the budgets of the fields that generated text fills (a summary <= rc.max_summary_tokens,
    a reasoning / previous attempt / candidate <= its generation budget)
  + the phase's own generation budget

and fails, naming the problem, the phase and how many tokens over, if the bound exceeds
the model's `max_position_embeddings` (positions past it are outside what the model was
trained on: the run would go on and silently produce garbage).

The bound is a little loose (a few tokens of BPE merges at field boundaries, the chat
wrapping of a whole prompt vs its pieces) but never misses a prompt that would overflow
by more than that.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from rc_jax.config import METHOD_SECTIONS
from rc_jax.models import ModelConfig
from rc_jax.prompts import CANDIDATE_SEPARATOR, Template, candidate_header, load_template
from rc_jax.tokenizer import load_tokenizer


@dataclasses.dataclass(frozen=True)
class Phase:
    """One prompt kind of a method: its template, chat role and token bounds."""
    name: str                  # e.g. "reasoning (step >= 2)"
    template: Template
    role: str                  # "reasoning" (opens <think> with think tags) or "summary"
    generated: dict[str, int]  # template field -> most tokens generated text fills it with
    budget: int                # new tokens this phase generates
    model: str = "model"       # "model" or "summarizer": whose context must hold it
    extra: int = 0             # constant tokens besides the template (cues, headers)


def _summarizer_path(c) -> str:
    """The second model's path ('' without one; training configs have no such section)."""
    return c.summarizer.model.path if "summarizer" in c else ""


def phase_method(c) -> str:
    """The method whose prompts a run builds: `c.method`, or for training (`train`) the
    rollout kind (`rl.rollout`: rc or delethink)."""
    return c.rl.rollout if c.method == "train" else c.method


def method_phases(c, tokenizer) -> list[Phase]:
    """The phases of `c.method` with their bounds (see the module docstring)."""
    rc = c.rc
    h_r, h_s, steps = rc.max_reasoning_tokens, rc.max_summary_tokens, rc.num_steps
    method = phase_method(c)
    summarizer = "summarizer" if _summarizer_path(c) else "model"
    if method == "rc":
        summary = h_s if steps > 1 else 0  # step 1 has an empty summary
        return [
            Phase("reasoning", load_template(rc.reasoning_template, "reasoning"), "reasoning",
                  {"curr_summary": summary}, h_r),
            Phase("summary", load_template(rc.summary_template, "summary"), "summary",
                  {"existing_summary": summary, "reasoning": h_r}, h_s, summarizer),
        ]
    if method == "delethink":  # (training configs have no `baselines` section)
        d = c.delethink
        if d.max_chunks <= 1:
            return [Phase("chunk", load_template(d.template, "solve"), "reasoning", {},
                          d.chunk_tokens)]
        # The longest prompt: the wrapped problem + the first m0 ids of chunk 0 (at most
        # its C tokens) + the last m ids of the previous chunk; then C - m new tokens.
        return [Phase("later chunk", load_template(d.template, "solve"), "reasoning",
                      {"first tokens kept": min(d.keep_first, d.chunk_tokens),
                       "last tokens kept": d.keep_last},
                      d.chunk_tokens - d.keep_last)]
    solve = load_template(c.baselines.solve_template, "solve")
    if method == "autoregressive":
        return [Phase("generation", solve, "reasoning", {}, c.autoregressive.max_tokens)]
    if method == "budget_forcing":
        bf = c.budget_forcing
        spec = getattr(bf, "template", "") or c.baselines.solve_template
        template = load_template(spec, "solve")
        cue = len(tokenizer.encode(bf.cue))
        if getattr(bf, "mode", "on_stop") == "paper" and bf.num_forcings:
            # The last continuation holds every earlier segment, each followed by the cue.
            cont = getattr(bf, "continuation_tokens", 0)
            joins = 2 * len(tokenizer.encode("\n\n"))
            return [Phase("last continuation", template, "reasoning",
                          {"earlier segments": bf.max_tokens + (bf.num_forcings - 1) * cont},
                          cont, extra=bf.num_forcings * (cue + joins))]
        return [Phase("generation (with every continuation cue)", template, "reasoning", {},
                      bf.max_tokens, extra=cue * bf.num_forcings)]
    phases = []
    if "baselines" in METHOD_SECTIONS.get(method, ()):
        phases.append(Phase("first attempt", solve, "reasoning", {}, h_r))
    if method in ("self_refine", "self_verify"):
        section = getattr(c, method)
        kind = "refine" if method == "self_refine" else "verify"
        attempt = min(section.max_context_tokens or h_r, h_r) if steps > 1 else 0
        phases.append(Phase(f"{kind} step", load_template(section.template, kind),
                            "reasoning", {"previous_attempt": attempt}, h_r))
        return phases
    if method == "rsa":
        r = c.rsa
        if r.generations > 0:
            view = h_s if r.use_summaries else h_r
            if r.max_candidate_tokens:
                view = min(view, r.max_candidate_tokens)
            headers = sum(len(tokenizer.encode(candidate_header(j + 1))) for j in range(r.k))
            seps = (r.k - 1) * len(tokenizer.encode(CANDIDATE_SEPARATOR))
            phases.append(Phase("aggregation", load_template(r.template, "aggregate"),
                                "reasoning", {"candidates": r.k * view}, h_r,
                                extra=headers + seps))
            if r.use_summaries:
                phases.append(Phase("candidate summary",
                                    load_template(rc.summary_template, "summary"), "summary",
                                    {"existing_summary": 0, "reasoning": h_r}, h_s, summarizer))
        return phases
    return phases  # a method this module does not know: its first attempt at least


def _prompt_tokens(tokenizer, phase: Phase, problem: str, use_think_tags: bool) -> int:
    values = {f: "" for f in phase.template.fields}
    values["problem"] = problem
    text = tokenizer.phase_prompt(phase.template.format(**values), use_think_tags=use_think_tags,
                                  open_think=phase.role == "reasoning")
    return len(tokenizer.encode(text))


def check_context(c, tokenizer, problems: Sequence, context: int,
                  summarizer_context: int | None = None,
                  describe: Callable[[str], str] = lambda who: who,
                  summarizer_tokenizer=None) -> None:
    """Raises ValueError naming the first (problem, phase) whose bound exceeds the context.

    problems: `rc_jax.data.Problem`s; context / summarizer_context: the models'
    max_position_embeddings (summarizer_context None: the model also summarizes).
    """
    phases = method_phases(c, tokenizer)
    worst = None
    for p in problems:
        for ph in phases:
            limit = summarizer_context if ph.model == "summarizer" and summarizer_context else context
            tok = summarizer_tokenizer if ph.model == "summarizer" and summarizer_tokenizer \
                else tokenizer
            prompt = _prompt_tokens(tok, ph, p.problem, c.rc.use_think_tags)
            total = prompt + ph.extra + sum(ph.generated.values()) + ph.budget
            if total > limit and (worst is None or total - limit > worst[0]):
                worst = (total - limit, p, ph, prompt, total, limit)
        if worst is not None:
            break  # the first problem that does not fit is the one to name
    if worst is None:
        return
    over, p, ph, prompt, total, limit = worst
    parts = [f"{prompt} prompt"]
    if ph.extra:
        parts.append(f"{ph.extra} cue/header")
    parts += [f"{n} {f}" for f, n in ph.generated.items() if n]
    parts.append(f"{ph.budget} generated")
    raise ValueError(
        f"problem {p.problem_id}: the {phase_method(c)} {ph.name} phase needs up to {total} tokens "
        f"({' + '.join(parts)}), {over} over the {limit}-token context of "
        f"{describe(ph.model)} (max_position_embeddings); shorten the problem or lower the "
        f"budgets ({_budget_fields(phase_method(c))})")


def _budget_fields(method: str) -> str:
    return {
        "autoregressive": "autoregressive.max_tokens",
        "budget_forcing": "budget_forcing.max_tokens, budget_forcing.num_forcings",
        "rsa": "rc.max_reasoning_tokens, rc.max_summary_tokens, rsa.k, rsa.max_candidate_tokens",
        "self_refine": "rc.max_reasoning_tokens, self_refine.max_context_tokens",
        "self_verify": "rc.max_reasoning_tokens, self_verify.max_context_tokens",
        "delethink": "delethink.chunk_tokens, delethink.keep_first",
    }.get(method, "rc.max_reasoning_tokens, rc.max_summary_tokens")


def check_run_fits(c, tokenizer, problems: Sequence, model_dir) -> None:
    """`check_context` for a run: reads the models' config.json files (no params)."""
    context = ModelConfig.from_pretrained(str(model_dir)).max_position_embeddings
    s_context = s_tokenizer = None
    if _summarizer_path(c):
        s_context = ModelConfig.from_pretrained(c.summarizer.model.path).max_position_embeddings
        s_tok_path = getattr(getattr(c.summarizer, "tokenizer", None), "path", "")
        try:  # the summarizer's own tokenizer where it has one
            s_tokenizer = load_tokenizer(s_tok_path or c.summarizer.model.path)
        except (OSError, ValueError):
            if s_tok_path:
                raise
            s_tokenizer = None
    names = {"model": f"model {c.model.path}", "summarizer": f"summarizer {_summarizer_path(c)}"}
    unique = list({str(p.problem_id): p for p in problems}.values())
    check_context(c, tokenizer, unique, context, s_context, describe=lambda who: names.get(who, who),
                  summarizer_tokenizer=s_tokenizer)
