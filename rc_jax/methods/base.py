"""What every method shares: the run context, keys, prompts, cleaning.

A method runner is `runner(problems, keys, ctx) -> list[RolloutRecord]` (the one record
type, `rc_jax.records`): one rollout per problem string (a problem appears once per
sample), `keys[i]` the row's PRNG key from
`rc_jax.sampling.keys.row_key`. Runners keep their host decisions (which candidates to show,
where to cut a context) outside jit, but sample all rows of a step with **one** call of
the jitted sampler (`MethodContext.generate`), each row with its own key derived from
its row key by `rc_jax.sampling.keys.fold`: results never depend on batching, padding or resume order.

Prompts are built as text, as the paper's code builds them: a filled template is
chat-wrapped by the one rule of every phase, `Tokenizer.phase_prompt` (the template gets
`enable_thinking = rc.use_think_tags`; `open_think` for steps conditioned on earlier
output, see docs/design.md), then tokenized whole (`MethodContext.prompt`).

Records: each phase's generation is stored *raw* (decoded with special tokens skipped,
nothing cut or stripped) and the per-step answer is graded from it; the cleaned text
that a later prompt sees (`rc_jax.rc.text.clean_reasoning` / `clean_summary`: cut at
`</think>`, `<think>` dropped, stripped) is kept beside it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from rc_jax.models.config import ModelConfig
from rc_jax.prompts import Template, load_template
from rc_jax.sampling.core import SamplingParams
from rc_jax.sampling.generate import Buckets, GenerationResult, generate
from rc_jax.tokenizer import Tokenizer


def keep_last(ids: Sequence[int], max_tokens: int) -> list[int]:
    """The last `max_tokens` ids (all of them when max_tokens is 0): front truncation."""
    ids = list(ids)
    return ids[-max_tokens:] if 0 < max_tokens < len(ids) else ids


@dataclasses.dataclass
class MethodContext:
    """Everything a method runner needs: the run config, model(s), tokenizer, sampler.

    config: the run's ConfigDict (methods read their own section and `rc` for the shared
      per-step budgets, step count and think-tag handling).
    summarizer: optional (params, config) of a different summarization model.
    stop_ids: ids that end a generation; None: the tokenizer's EOS ids.
    record_prompts: keep every prompt's ids on the rollouts (tests, debugging).
    """
    config: Any
    params: Any
    model_config: ModelConfig
    tokenizer: Tokenizer
    sampling: SamplingParams
    buckets: Buckets = Buckets()
    mesh: Any = None
    param_shardings: Any = None
    summarizer: tuple[Any, ModelConfig] | None = None
    summarizer_shardings: Any = None
    stop_ids: tuple[int, ...] | None = None
    record_prompts: bool = False

    def __post_init__(self):
        models = [(self.model_config, "model")]
        if self.summarizer is not None:
            models.append((self.summarizer[1], "summarizer model"))
        for cfg, role in models:
            if self.tokenizer.vocab_size > cfg.vocab_size:
                raise ValueError(f"tokenizer {self.tokenizer.path} has "
                                 f"{self.tokenizer.vocab_size} tokens but the {role}'s "
                                 f"vocab_size is {cfg.vocab_size}")

    # ---------------------------------------------------------------- shared knobs
    @property
    def eos_ids(self) -> tuple[int, ...]:
        return tuple(self.stop_ids) if self.stop_ids is not None else tuple(self.tokenizer.eos_ids)

    @property
    def use_think_tags(self) -> bool:
        return bool(self.config.rc.use_think_tags)

    # ---------------------------------------------------------------- prompts
    def wrap(self, user_text: str, *, open_think: bool = False) -> str:
        """`user_text` chat-wrapped by the one rule of every phase (`phase_prompt`)."""
        return self.tokenizer.phase_prompt(user_text, use_think_tags=self.use_think_tags,
                                           open_think=open_think)

    def prompt(self, user_text: str, *, open_think: bool = False) -> list[int]:
        """Ids of the chat-wrapped prompt (the whole text tokenized at once)."""
        return self.tokenizer.encode(self.wrap(user_text, open_think=open_think))

    def solve_template(self) -> Template:
        """The first-attempt prompt of autoregressive and RSA (baselines.solve_template)."""
        return load_template(self.config.baselines.solve_template, "solve")

    def rc_summary_template(self) -> Template:
        """RC's summarization prompt (rc.summary_template), for scaffolds that summarize."""
        return load_template(self.config.rc.summary_template, "summary")

    def check_problems(self, problems: Sequence[str]) -> list[str]:
        for i, p in enumerate(problems):
            if not p:
                raise ValueError(f"problems[{i}] is empty")
        return list(problems)

    def truncate(self, text: str, max_tokens: int) -> str:
        """`text` cut from the front to its last `max_tokens` tokens (0: unchanged)."""
        if max_tokens <= 0:
            return text
        ids = self.tokenizer.encode(text)
        return text if len(ids) <= max_tokens else self.decode(keep_last(ids, max_tokens))

    # ---------------------------------------------------------------- sampling
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 keys: np.ndarray, *, model: str = "reasoner",
                 stop_ids: Sequence[int] | None = None) -> GenerationResult:
        """One batched sampler call: row i samples from prompts[i] with keys[i]."""
        if model == "reasoner":
            params, cfg, shardings = self.params, self.model_config, self.param_shardings
        elif model == "summarizer":
            if self.summarizer is None:
                params, cfg, shardings = self.params, self.model_config, self.param_shardings
            else:
                (params, cfg), shardings = self.summarizer, self.summarizer_shardings
        else:
            raise ValueError(f"model must be 'reasoner' or 'summarizer', got {model!r}")
        return generate(params, cfg, prompts, self.sampling, jax.random.PRNGKey(0),
                        int(max_new_tokens), self.eos_ids if stop_ids is None else stop_ids,
                        pad_id=self.tokenizer.pad_id, buckets=self.buckets, mesh=self.mesh,
                        param_shardings=shardings, row_keys=keys)

    def decode(self, ids: Sequence[int]) -> str:
        """Raw text of generated ids: special tokens skipped, nothing else changed."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)
