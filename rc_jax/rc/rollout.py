"""One RC rollout on the host: its exact prompts, its per-step records, its state.

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

from rc_jax.rc.prompts import Template, load_template, reasoning_text, summary_text
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.tokenizer import Tokenizer

REASON, SUMMARIZE = 0, 1
PHASES = ("reasoning", "summary")


@dataclasses.dataclass
class StepRecord:
    """One finished RC step: both phases' raw outputs, cleaned texts and token counts."""
    reasoning_raw: str
    summary_raw: str
    reasoning_clean: str
    summary_clean: str
    prompt_tokens: int           # reasoning prompt length
    reasoning_tokens: int        # generated, stop token included
    reasoning_finish: str        # 'stop' | 'length'
    summary_prompt_tokens: int
    summary_tokens: int
    summary_finish: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StepRecord":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


class PhasePrompts:
    """Builds RC's two prompts as text and as ids, for one tokenizer per phase."""

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
        text = reasoning_text(self.reasoning_template, problem, summary)
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
    """One RC rollout (one problem, one sample): steps done so far and what comes next.

    `steps` holds finished steps (possibly restored from a progress log); the rollout is
    complete when `len(steps) == num_steps`. `initial_summary` seeds the first step (RL's
    replay buffer); "" is RC's default start.
    """
    problem: str
    key: Any                     # [2] uint32 PRNG key of this (problem, sample)
    num_steps: int
    steps: list[StepRecord] = dataclasses.field(default_factory=list)
    initial_summary: str = ""
    # The phase in flight (host bookkeeping while the device generates it).
    pending_reasoning: tuple[str, str, int, int, str] | None = None
    reasoning_prompt_ids: list[list[int]] = dataclasses.field(default_factory=list)
    summary_prompt_ids: list[list[int]] = dataclasses.field(default_factory=list)

    # ---- state
    @property
    def done(self) -> bool:
        return len(self.steps) >= self.num_steps

    @property
    def summary(self) -> str:
        """The summary the next step starts from (cleaned)."""
        return self.steps[-1].summary_clean if self.steps else self.initial_summary

    @property
    def conditioned(self) -> bool:
        return bool(self.steps) or bool(self.initial_summary)

    # ---- views in the results-record layout
    @property
    def reasoning_text(self) -> list[str]:
        """Raw reasoning per step (the authors' `reasoning_store`)."""
        return [s.reasoning_raw for s in self.steps]

    @property
    def summary_text(self) -> list[str]:
        """Raw summarizer output per step (the authors' `summarization_store`)."""
        return [s.summary_raw for s in self.steps]

    @property
    def reasoning_clean(self) -> list[str]:
        return [s.reasoning_clean for s in self.steps]

    @property
    def summary_clean(self) -> list[str]:
        return [s.summary_clean for s in self.steps]

    def _column(self, name: str) -> list:
        return [getattr(s, name) for s in self.steps]

    prompt_tokens = property(lambda self: self._column("prompt_tokens"))
    reasoning_tokens = property(lambda self: self._column("reasoning_tokens"))
    reasoning_finish = property(lambda self: self._column("reasoning_finish"))
    summary_prompt_tokens = property(lambda self: self._column("summary_prompt_tokens"))
    summary_tokens = property(lambda self: self._column("summary_tokens"))
    summary_finish = property(lambda self: self._column("summary_finish"))

    @property
    def extra(self) -> dict[str, Any]:
        """Fields added to the results record beside the authors' stores."""
        return {"reasoning_clean": self.reasoning_clean, "summary_clean": self.summary_clean}

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
                       ) -> StepRecord:
        if self.pending_reasoning is None:
            raise RuntimeError("summary finished before its reasoning phase")
        r_raw, r_clean, r_prompt, r_gen, r_finish = self.pending_reasoning
        step = StepRecord(r_raw, raw, r_clean, clean_summary(raw), r_prompt, r_gen, r_finish,
                          prompt_tokens, generated, finish)
        self.steps.append(step)
        self.pending_reasoning = None
        return step
