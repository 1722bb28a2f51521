"""What every method shares: the run context, the rollout record, keys, prompts, cleaning.

A method runner is `runner(problems, keys, ctx) -> list[MethodRollout]`: one rollout per
problem string (a problem appears once per sample), `keys[i]` the row's PRNG key from
`rc_jax.rc.engine.row_key`. Runners keep their host decisions (which candidates to show,
where to cut a context) outside jit, but sample all rows of a step with **one** call of
the jitted sampler (`MethodContext.generate`), each row with its own key derived from
its row key by `fold`: results never depend on batching, padding or resume order.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rc_jax.models.config import ModelConfig
from rc_jax.rc.prompts import Template, load_template
from rc_jax.rc.tokens import PromptPlan, TokenTables, make_plan, token_tables
from rc_jax.sampling.core import SamplingParams
from rc_jax.sampling.generate import Buckets, GenerationResult, generate
from rc_jax.tokenizer import Tokenizer
from rc_jax.methods.prompts import CANDIDATE_SEPARATOR, candidate_header, load_method_template

NO_SUMMARY = "none"  # summary finish reason of a step that ran no summarization phase


@dataclasses.dataclass
class MethodRollout:
    """One (problem, sample) of any method, per step; `rc_jax.main.build_record` writes it.

    Per step t: reasoning_text[t] is the text the step's answer is read from;
    reasoning_tokens[t] / summary_tokens[t] the tokens *generated* in step t (stop tokens
    included), so their running sum is the compute spent; prompt_tokens[t] the tokens
    prefilled for the step's generation(s). Steps without a summary phase have summary
    text "", 0 tokens and finish reason "none".

    Not written to the record: reasoning_ids (the cleaned ids behind reasoning_text) and,
    when the context asks for them, the prompt ids of every generation (prompts[t] lists
    the step's prompts; one for single-chain methods, one per population member for
    scaffolds). `extra` holds method-specific record fields.
    """
    reasoning_text: list[str] = dataclasses.field(default_factory=list)
    summary_text: list[str] = dataclasses.field(default_factory=list)
    prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_finish: list[str] = dataclasses.field(default_factory=list)
    summary_finish: list[str] = dataclasses.field(default_factory=list)
    reasoning_ids: list[list[int]] = dataclasses.field(default_factory=list)
    prompts: list[list[list[int]]] = dataclasses.field(default_factory=list)
    summary_prompts: list[list[list[int]]] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add_step(self, text: str, ids: Sequence[int], prompt_tokens: int, tokens: int,
                 finish: str, *, summary: str = "", summary_prompt_tokens: int = 0,
                 summary_tokens: int = 0, summary_finish: str = NO_SUMMARY) -> None:
        self.reasoning_text.append(text)
        self.reasoning_ids.append(list(ids))
        self.prompt_tokens.append(int(prompt_tokens))
        self.reasoning_tokens.append(int(tokens))
        self.reasoning_finish.append(finish)
        self.summary_text.append(summary)
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


def clean_ids(ids: Sequence[int], tables: TokenTables, keep: str) -> list[int]:
    """DESIGN §1 post-processing of one generation, on the host (numpy).

    The same rule as `rc_jax.rc.tokens.clean_generation`: keep='before_think_end' keeps
    what precedes the first `</think>`, 'after_think_end' what follows the last; special
    tokens are dropped and whitespace-only tokens stripped at both ends.
    """
    if keep not in ("before_think_end", "after_think_end"):
        raise ValueError(f"keep must be 'before_think_end' or 'after_think_end', got {keep!r}")
    x = np.asarray(list(ids), np.int64)
    if tables.think_end >= 0 and x.size:
        ends = np.flatnonzero(x == tables.think_end)
        if ends.size:
            x = x[:ends[0]] if keep == "before_think_end" else x[ends[-1] + 1:]
    x = x[~tables.drop[x]]
    text = np.flatnonzero(~tables.whitespace[x])
    return x[text[0]:text[-1] + 1].tolist() if text.size else []


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
        self._plans: dict[tuple[str, str], PromptPlan] = {}

    # ---------------------------------------------------------------- shared knobs
    @property
    def eos_ids(self) -> tuple[int, ...]:
        return tuple(self.stop_ids) if self.stop_ids is not None else tuple(self.tokenizer.eos_ids)

    @property
    def think(self) -> bool:
        """Whether reasoning prompts open a `<think>` block (rc.use_think_tags)."""
        return bool(self.config.rc.use_think_tags) and self.tokenizer.think_start_id is not None

    @functools.cached_property
    def tables(self) -> TokenTables:
        return token_tables(self.tokenizer, self.model_config.vocab_size)

    # ---------------------------------------------------------------- prompts
    def plan(self, template: Template, role: str = "reasoning") -> PromptPlan:
        """The template chat-wrapped as RC wraps its phases (role 'reasoning' or 'summary')."""
        key = (template.text, role)
        if key not in self._plans:
            if role == "reasoning":
                kwargs = {"enable_thinking": True, "open_think": True} if self.think else {}
            elif role == "summary":
                kwargs = {"enable_thinking": False} if self.config.rc.use_think_tags else {}
            else:
                raise ValueError(f"role must be 'reasoning' or 'summary', got {role!r}")
            self._plans[key] = make_plan(self.tokenizer, template, **kwargs)
        return self._plans[key]

    def method_plan(self, spec: str, kind: str) -> PromptPlan:
        return self.plan(load_method_template(spec, kind), "reasoning")

    def solve_plan(self) -> PromptPlan:
        """The first-attempt prompt of every baseline (baselines.solve_template)."""
        return self.method_plan(self.config.baselines.solve_template, "solve")

    def rc_summary_plan(self) -> PromptPlan:
        """RC's summarization prompt (rc.summary_template), for scaffolds that summarize."""
        return self.plan(load_template(self.config.rc.summary_template, "summary"), "summary")

    def encode_problems(self, problems: Sequence[str]) -> list[list[int]]:
        ids = [self.tokenizer.encode(p) for p in problems]
        for i, x in enumerate(ids):
            if not x:
                raise ValueError(f"problems[{i}] is empty")
        return ids

    def join_candidates(self, candidates: Sequence[Sequence[int]]) -> list[int]:
        """Ids of `{candidates}`: numbered headers + candidate ids, decoding to
        `rc_jax.methods.prompts.format_candidates` of the candidates' texts."""
        sep = self.tokenizer.encode(CANDIDATE_SEPARATOR)
        out: list[int] = []
        for j, c in enumerate(candidates):
            if j:
                out += sep
            out += self.tokenizer.encode(candidate_header(j + 1)) + list(c)
        return out

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

    def clean(self, ids: Sequence[int], keep: str = "before_think_end") -> list[int]:
        return clean_ids(ids, self.tables, keep)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
