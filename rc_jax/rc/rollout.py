"""One RC rollout on the host: its exact prompts, its record (`RolloutRecord`), its state.

RC's semantics live here, as plain Python over strings, so the device engine, the
reference loop and RL share one definition (docs/design.md, "RC, exactly"):

* reasoning prompt of step t: the reasoning template filled with (problem, s), chat-wrapped
  by `Tokenizer.phase_prompt` with `enable_thinking = use_think_tags`; a
  summary-conditioned step (t > 0, or a chain seeded with a summary) also opens `<think>`
  when think tags are on and the rendered prompt has none;
* summary prompt: the summary template filled with (problem, s, r), chat-wrapped the same
  way (no `<think>` forced);
* every prompt is encoded as ONE string, so its ids are exactly the text's tokenization;
* each phase's output is stored raw (decoded, special tokens skipped); `r` and the next
  `s` are the cleaned texts (`rc_jax.rc.text`), which only feed the next prompt.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rc_jax.prompts import Template, fill_reasoning, load_template, summary_text
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.records import RolloutRecord
from rc_jax.tokenizer import Tokenizer

REASON, SUMMARIZE = 0, 1
PHASES = ("reasoning", "summary")


class PhasePrompts:
    """Builds RC's two prompts as text and as ids, for one tokenizer per phase: the one
    place where a phase's template is filled, chat-wrapped and encoded.

    `reasoning_template` may also be a summary-free template (`{previous_attempt}` in
    place of `{curr_summary}`: RL's summary-free chains); the context fills that field.
    """

    def __init__(self, tokenizer: Tokenizer, reasoning_template: str | Template,
                 summary_template: str | Template, use_think_tags: bool,
                 summary_tokenizer: Tokenizer | None = None):
        load = lambda t, kind: t if isinstance(t, Template) else load_template(t, kind)  # noqa: E731
        self.tokenizer = tokenizer
        self.summary_tokenizer = summary_tokenizer or tokenizer
        self.reasoning_template = load(reasoning_template, "reasoning")
        self.summary_template = load(summary_template, "summary")
        self.use_think_tags = bool(use_think_tags)

    def reasoning_text(self, problem: str, summary: str, conditioned: bool) -> str:
        """conditioned: the step continues from a summary (any step after the first, or a
        seeded first step): with think tags on, the prompt opens `<think>` itself."""
        text = fill_reasoning(self.reasoning_template, problem, summary)
        return self.tokenizer.phase_prompt(text, use_think_tags=self.use_think_tags,
                                           open_think=conditioned)

    def summary_text(self, problem: str, summary: str, reasoning: str) -> str:
        text = summary_text(self.summary_template, problem, summary, reasoning)
        return self.summary_tokenizer.phase_prompt(text, use_think_tags=self.use_think_tags)

    def reasoning_ids(self, problem: str, summary: str, conditioned: bool) -> list[int]:
        return self.tokenizer.encode(self.reasoning_text(problem, summary, conditioned))

    def summary_ids(self, problem: str, summary: str, reasoning: str) -> list[int]:
        return self.summary_tokenizer.encode(self.summary_text(problem, summary, reasoning))


@dataclasses.dataclass
class Rollout:
    """One RC rollout (one problem, one sample) in flight: its record so far and the phase
    in progress.

    `record` holds the finished steps (possibly restored from a progress log with
    `RolloutRecord.from_steps`) and, when asked for, every prompt's ids (`prompts[t]` /
    `summary_prompts[t]`: `[ids]`); the rollout is complete when it has `num_steps` steps.
    `initial_summary` seeds the first step (RL's replay buffer); "" is RC's default start.
    """
    problem: str
    key: Any                     # [2] uint32 PRNG key of this (problem, sample)
    num_steps: int
    record: RolloutRecord = dataclasses.field(default_factory=RolloutRecord)
    initial_summary: str = ""
    # The phase in flight (host bookkeeping while the device generates it).
    pending_reasoning: tuple[str, str, int, int, str] | None = None

    # ---- state
    @property
    def steps_done(self) -> int:
        return self.record.num_steps

    @property
    def done(self) -> bool:
        return self.steps_done >= self.num_steps

    @property
    def summary(self) -> str:
        """The summary the next step starts from (cleaned)."""
        return self.record.summary_clean[-1] if self.steps_done else self.initial_summary

    @property
    def conditioned(self) -> bool:
        return bool(self.steps_done) or bool(self.initial_summary)

    # ---- transitions (driven by the engine or the reference loop)
    def next_prompt(self, prompts: PhasePrompts, phase: int) -> list[int]:
        """Ids of the next phase's prompt (phase must match where the rollout is)."""
        if phase == REASON:
            return prompts.reasoning_ids(self.problem, self.summary, self.conditioned)
        if self.pending_reasoning is None:
            raise RuntimeError("summary phase requested before the reasoning phase finished")
        return prompts.summary_ids(self.problem, self.summary, self.pending_reasoning[1])

    def finish_reasoning(self, raw: str, prompt_tokens: int, generated: int, finish: str
                         ) -> None:
        self.pending_reasoning = (raw, clean_reasoning(raw), prompt_tokens, generated, finish)

    def finish_summary(self, raw: str, prompt_tokens: int, generated: int, finish: str
                       ) -> None:
        """Ends the step: both phases go to the record (generated ids are not kept)."""
        if self.pending_reasoning is None:
            raise RuntimeError("summary finished before its reasoning phase")
        r_raw, r_clean, r_prompt, r_gen, r_finish = self.pending_reasoning
        self.record.add_step(r_raw, r_clean, (), r_prompt, r_gen, r_finish, summary=raw,
                             summary_clean=clean_summary(raw), summary_prompt_tokens=prompt_tokens,
                             summary_tokens=generated, summary_finish=finish)
        self.pending_reasoning = None
