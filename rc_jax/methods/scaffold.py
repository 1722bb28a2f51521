"""Population scaffolds: rounds of candidate solutions built from the previous round.

A scaffold keeps, per (problem, sample), a population of `population` candidates.
Round 0 answers the solve prompt `population` times independently. Each later round
builds every member's prompt from the previous round's *views* (the candidates' cleaned
texts, or RC summaries of them when `use_summaries` is on, front-truncated to
`max_view_tokens` when > 0) with the scaffold's own rule, `Scaffold.round_fields`, and
samples all members of all rows in one sampler call. Summaries use RC's summarization
prompt (`rc.summary_template`, existing summary empty) with the summarizer model if one
is configured, at most `rc.max_summary_tokens` tokens; candidates get at most
`rc.max_reasoning_tokens`. The last round is not summarized (nothing reads it).
Prompts are text, chat-wrapped by `Tokenizer.phase_prompt` (`enable_thinking =
rc.use_think_tags`); rounds >= 1 are conditioned on earlier output and so also open a
`<think>` block when think tags are on, like RC's summary-conditioned steps.

The interface a scaffold implements is one method: `round_fields(views, member, rng)`
returns the template fields (besides `{problem}`) of one member's prompt plus a small
JSON-able note (e.g. which candidates it saw); `rng` is a numpy Generator seeded from the
row key, the round and the member, so choices never depend on batching. RSA
(`rsa.py`) is one such class; a multi-agent debate (each agent sees the others' last
answers) would be another.

Record (one per (problem, sample); step g = round g): reasoning_store[g] is member 0's
raw candidate generation and reasoning_clean[g] its cleaned text, the view others see
(members are exchangeable, so its accuracy estimates the population's); token counts
are summed over the whole population (the compute the round cost): prompt / reasoning /
summary tokens of all members; summarization_store[g] / summary_clean[g] are member 0's
raw / cleaned summary. Extra fields: `<name>_notes[g-1][m]` (rounds g >= 1) and, when
`store_population` is on, `population_store[g][m]` (all candidates' raw texts) and, with
summaries, `population_summary_store[g][m]` (raw; empty for the last round).
Keys: member m of round g samples with fold_in(fold_in(row key, g), m) folded with 0
(candidate) or 1 (its summary).
"""
from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np

from rc_jax.methods.base import MethodContext
from rc_jax.sampling.keys import fold
from rc_jax.prompts import format_candidates, load_template
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.records import NO_SUMMARY, RolloutRecord


class Scaffold(abc.ABC):
    """Subclass, set `name` and `kind` (the prompt kind of rounds >= 1, see
    `rc_jax.prompts.define_kind`) and implement `round_fields`."""

    name: str = "scaffold"
    kind: str = "aggregate"

    def __init__(self, ctx: MethodContext, *, population: int, rounds: int, template: str,
                 use_summaries: bool = False, max_view_tokens: int = 0,
                 store_population: bool = False):
        if population < 1 or rounds < 0:
            raise ValueError(f"{self.name}: population must be >= 1 and rounds >= 0, got "
                             f"{population}, {rounds}")
        self.ctx = ctx
        self.population, self.rounds, self.template = population, rounds, template
        self.use_summaries, self.max_view_tokens = use_summaries, max_view_tokens
        self.store_population = store_population

    @abc.abstractmethod
    def round_fields(self, views: Sequence[str], member: int,
                     rng: np.random.Generator) -> tuple[dict[str, str], Any]:
        """Fields (name -> text) of `member`'s prompt from the previous round's `views`
        (one text per member), and a note recorded for it."""


def member_rng(key: np.ndarray, round_: int, member: int) -> np.random.Generator:
    """The host RNG of one member's choices: depends only on (row key, round, member)."""
    return np.random.default_rng([int(x) for x in np.asarray(key, np.uint32)]
                                 + [round_, member])


def run_scaffold(scaffold: Scaffold, problems: Sequence[str], keys: np.ndarray,
                 ctx: MethodContext) -> list[RolloutRecord]:
    n, rows = scaffold.population, len(problems)
    cfg = ctx.config.rc
    first = ctx.solve_template()
    later = load_template(scaffold.template, scaffold.kind)
    summary_template = ctx.rc_summary_template() if scaffold.use_summaries else None
    problems = ctx.check_problems(problems)
    keys = np.asarray(keys, np.uint32)
    row_of = np.repeat(np.arange(rows), n)         # flat index f = row * n + member
    member_of = np.tile(np.arange(n), rows)
    outs = [RolloutRecord(method_fields={f"{scaffold.name}_notes": []}) for _ in problems]
    if scaffold.store_population:
        for r in outs:
            r.method_fields["population_store"] = []
            if scaffold.use_summaries:
                r.method_fields["population_summary_store"] = []
    views: list[str] = []
    for g in range(scaffold.rounds + 1):
        prompts, notes = [], []
        for f in range(rows * n):
            i, m = int(row_of[f]), int(member_of[f])
            if g == 0:
                prompts.append(ctx.prompt(first.format(problem=problems[i])))
                continue
            fields, note = scaffold.round_fields(views[i * n:(i + 1) * n], m,
                                                 member_rng(keys[i], g, m))
            # Conditioned on earlier output: opens <think> with think tags on, like RC.
            prompts.append(ctx.prompt(later.format(problem=problems[i], **fields),
                                      open_think=True))
            notes.append(note)
        member_keys = fold(keys[row_of], g, member_of)
        res = ctx.generate(prompts, cfg.max_reasoning_tokens, fold(member_keys, 0))
        raws = [ctx.decode(t) for t in res.tokens]
        cands = [clean_reasoning(x) for x in raws]
        s_raws, summaries = [""] * len(cands), [""] * len(cands)
        s_prompts: list[list[int]] = [[] for _ in cands]
        s_lengths, s_finish = [0] * len(cands), [NO_SUMMARY] * len(cands)
        summarized = summary_template is not None and g < scaffold.rounds  # last: unread
        if summarized:
            assert summary_template is not None
            s_prompts = [ctx.prompt(summary_template.format(
                             problem=problems[int(row_of[f])], existing_summary="",
                             reasoning=c)) for f, c in enumerate(cands)]
            s_res = ctx.generate(s_prompts, cfg.max_summary_tokens, fold(member_keys, 1),
                                 model="summarizer")
            s_raws = [ctx.decode(t) for t in s_res.tokens]
            summaries = [clean_summary(x) for x in s_raws]
            s_lengths, s_finish = s_res.lengths, s_res.finish_reasons
        views = [ctx.truncate(v, scaffold.max_view_tokens)
                 for v in (summaries if summary_template is not None else cands)]
        for i, r in enumerate(outs):
            span = range(i * n, (i + 1) * n)
            r.add_step(raws[i * n], cands[i * n], res.tokens[i * n],
                       sum(len(prompts[f]) for f in span), sum(res.lengths[f] for f in span),
                       res.finish_reasons[i * n], summary=s_raws[i * n],
                       summary_clean=summaries[i * n],
                       summary_prompt_tokens=sum(len(s_prompts[f]) for f in span),
                       summary_tokens=sum(s_lengths[f] for f in span),
                       summary_finish=s_finish[i * n])
            if g > 0:
                r.method_fields[f"{scaffold.name}_notes"].append(notes[i * n:(i + 1) * n])
            if scaffold.store_population:
                r.method_fields["population_store"].append([raws[f] for f in span])
                if scaffold.use_summaries:  # the last round is not summarized: []
                    r.method_fields["population_summary_store"].append(
                        [s_raws[f] for f in span] if summarized else [])
            if ctx.record_prompts:
                r.prompts.append([prompts[f] for f in span])
                r.summary_prompts.append([s_prompts[f] for f in span] if summarized else [])
    return outs


def candidates_field(views: Sequence[str], chosen: Sequence[int]) -> str:
    """Text of `{candidates}` showing the chosen views in the given order."""
    return format_candidates([views[j] for j in chosen])

