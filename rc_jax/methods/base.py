"""What every method shares: the run context, the rollout record, keys, prompts, cleaning.

A method runner is `runner(problems, keys, ctx) -> list[MethodRollout]`: one rollout per
problem string (a problem appears once per sample), `keys[i]` the row's PRNG key from
`rc_jax.rc.engine.row_key`. Runners keep their host decisions (which candidates to show,
where to cut a context) outside jit, but sample all rows of a step with **one** call of
the jitted sampler (`MethodContext.generate`), each row with its own key derived from
its row key by `fold`: results never depend on batching, padding or resume order.

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
import jax.numpy as jnp
import numpy as np

from rc_jax.models.config import ModelConfig
from rc_jax.rc.prompts import Template, load_template
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.sampling.core import SamplingParams
from rc_jax.sampling.generate import Buckets, GenerationResult, generate
from rc_jax.tokenizer import Tokenizer
from rc_jax.methods.prompts import load_method_template

NO_SUMMARY = "none"  # summary finish reason of a step that ran no summarization phase


@dataclasses.dataclass
class MethodRollout:
    """One (problem, sample) of any method, per step; `rc_jax.main.build_record` writes it.

    Per step t: reasoning_text[t] is the step's raw decoded generation (special tokens
    skipped, nothing cut at `</think>`, nothing stripped; -> `reasoning_store`), the text
    the step's answer is graded from; reasoning_clean[t] the cleaned text a later prompt
    sees (-> `reasoning_clean`); summary_text[t] / summary_clean[t] the same for the
    summarization phase (-> `summarization_store` / `summary_clean`).
    reasoning_tokens[t] / summary_tokens[t] are the tokens *generated* in step t (stop
    tokens included), so their running sum is the compute spent; prompt_tokens[t] the
    tokens prefilled for the step's generation(s). Steps without a summary phase have
    summary texts "", 0 tokens and finish reason "none".

    Not written to the record: reasoning_ids[t] (the ids generated in step t) and, when
    the context asks for them, the prompt ids of every generation (prompts[t] lists the
    step's prompts; one for single-chain methods, one per population member for
    scaffolds). `method_fields` holds method-specific record fields; `extra` (what
    `build_record` adds to the record, as for RC's rollouts) is the cleaned texts plus those.
    """
    reasoning_text: list[str] = dataclasses.field(default_factory=list)
    reasoning_clean: list[str] = dataclasses.field(default_factory=list)
    summary_text: list[str] = dataclasses.field(default_factory=list)
    summary_clean: list[str] = dataclasses.field(default_factory=list)
    prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_finish: list[str] = dataclasses.field(default_factory=list)
    summary_finish: list[str] = dataclasses.field(default_factory=list)
    reasoning_ids: list[list[int]] = dataclasses.field(default_factory=list)
    prompts: list[list[list[int]]] = dataclasses.field(default_factory=list)
    summary_prompts: list[list[list[int]]] = dataclasses.field(default_factory=list)
    method_fields: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def extra(self) -> dict[str, Any]:
        """Record fields beside the authors' stores: the cleaned texts, method fields."""
        return {"reasoning_clean": self.reasoning_clean, "summary_clean": self.summary_clean,
                **self.method_fields}

    def add_step(self, raw: str, clean: str, ids: Sequence[int], prompt_tokens: int,
                 tokens: int, finish: str, *, summary: str = "", summary_clean: str = "",
                 summary_prompt_tokens: int = 0, summary_tokens: int = 0,
                 summary_finish: str = NO_SUMMARY) -> None:
        self.reasoning_text.append(raw)
        self.reasoning_clean.append(clean)
        self.reasoning_ids.append(list(ids))
        self.prompt_tokens.append(int(prompt_tokens))
        self.reasoning_tokens.append(int(tokens))
        self.reasoning_finish.append(finish)
        self.summary_text.append(summary)
        self.summary_clean.append(summary_clean)
        self.summary_prompt_tokens.append(int(summary_prompt_tokens))
        self.summary_tokens.append(int(summary_tokens))
        self.summary_finish.append(summary_finish)


@jax.jit
def _fold(keys: jax.Array, data: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in)(keys, data)


def fold(keys: np.ndarray, *tags: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """keys [R, 2] -> [R, 2]: each row's key with `tags` folded in, in order.

    A tag is an int (same for every row) or one int per row (e.g. a member index).
    """
    out = jnp.asarray(np.asarray(keys, np.uint32))
    for tag in tags:
        data = np.broadcast_to(np.asarray(tag, np.uint32), (out.shape[0],))
        out = _fold(out, jnp.asarray(data))
    return np.asarray(out)


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
        return load_method_template(self.config.baselines.solve_template, "solve")

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

    @staticmethod
    def clean_reasoning(raw: str) -> str:
        return clean_reasoning(raw)

    @staticmethod
    def clean_summary(raw: str) -> str:
        return clean_summary(raw)
