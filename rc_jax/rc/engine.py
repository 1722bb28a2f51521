"""The RC device engine: a whole RC rollout — all T steps, both phases — as one program.

Per step (DESIGN §1), for every row at once:
  1. reason:    prompt = plan_R(problem, summary)                  -> sample <= H_R tokens
                r = ids before the first </think>, <think>/specials dropped, stripped
  2. summarize: prompt = plan_S(problem, summary, r)               -> sample <= H_S tokens
                summary = ids after the last </think>, <think>/specials dropped, stripped
  3. discard r: only (problem, summary) reach the next step.

The step loop is a `lax.while_loop` whose carry is (step, summary ids, summary lengths);
each phase assembles its prompt on device from token segments, prefills a fresh KV cache
of a fixed bucket (prompt + budget) and decodes with the sampler's inner while_loop. The
number of steps T is a traced scalar: the program compiles once per (batch, problem
length) bucket whatever T is, and the cache never exceeds its phase's bucket. Each
phase's tokens are streamed to the host with an (unordered) `io_callback`, so no output
buffer grows with T; the host decodes text once at the end.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rc_jax.models.config import ModelConfig
from rc_jax.parallel import (batch_axes, batch_shards, broadcast_from_main, put_global,
                             sharding_context)
from rc_jax.rc.prompts import Template, load_template
from rc_jax.rc.tokens import PromptPlan, TokenTables, assemble, clean_generation, make_plan, token_tables
from rc_jax.sampling import core
from rc_jax.sampling.core import SamplingParams
from rc_jax.sampling.generate import Buckets, stop_array
from rc_jax.tokenizer import Tokenizer

REASON, SUMMARIZE = 0, 1
PHASES = ("reasoning", "summary")


@dataclasses.dataclass(frozen=True)
class RCSettings:
    """RC hyper-parameters (names follow the config fields)."""
    num_steps: int = 4
    max_reasoning_tokens: int = 16384
    max_summary_tokens: int = 2048
    reasoning_template: str = "math"
    summary_template: str = "math"
    use_think_tags: bool = False

    def __post_init__(self):
        for name in ("num_steps", "max_reasoning_tokens", "max_summary_tokens"):
            value = getattr(self, name)
            if int(value) != value or value <= 0:
                raise ValueError(f"rc.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass
class Rollout:
    """One RC rollout (one problem, one sample), all steps, ids and (later) texts.

    Per step t: reasoning_ids[t] / summary_ids[t] are the *cleaned* ids (what the next
    prompt sees); *_tokens[t] count generated tokens (the budget actually spent, stop
    token included); prompt_tokens[t] is the reasoning prompt length.
    """
    row: int
    reasoning_ids: list[list[int]] = dataclasses.field(default_factory=list)
    summary_ids: list[list[int]] = dataclasses.field(default_factory=list)
    prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_finish: list[str] = dataclasses.field(default_factory=list)
    summary_finish: list[str] = dataclasses.field(default_factory=list)
    reasoning_prompts: list[list[int]] = dataclasses.field(default_factory=list)
    summary_prompts: list[list[int]] = dataclasses.field(default_factory=list)
    reasoning_text: list[str] = dataclasses.field(default_factory=list)
    summary_text: list[str] = dataclasses.field(default_factory=list)


def row_key(seed: int, problem_id: str, sample_id: int) -> np.ndarray:
    """A PRNG key that depends only on (seed, problem, sample): never on batching."""
    digest = int.from_bytes(hashlib.sha256(str(problem_id).encode()).digest()[:4], "little")
    key = jax.random.fold_in(jax.random.PRNGKey(seed), digest & 0x7FFFFFFF)
    return np.asarray(jax.random.fold_in(key, sample_id))


class RCEngine:
    """Runs batched RC rollouts with one jitted program per (batch, problem) bucket."""

    def __init__(self, params: Any, config: ModelConfig, tokenizer: Tokenizer,
                 settings: RCSettings, sampling: SamplingParams, *,
                 buckets: Buckets = Buckets(), mesh: Mesh | None = None,
                 data_axes: tuple[str, ...] | None = None, param_shardings: Any = None,
                 record_prompts: bool = False,
                 summarizer: tuple[Any, ModelConfig] | None = None,
                 stop_ids: Sequence[int] | None = None, summarizer_shardings: Any = None):
        """summarizer: optional (params, config) of a different model that writes the
        summaries (it must share the tokenizer); by default the reasoning model does.
        stop_ids: ids that end a phase (default: the tokenizer's eos ids; an empty list
        makes every phase spend its whole budget, as benchmarks want).
        mesh / data_axes / param_shardings: rows are sharded over `data_axes` (default:
        the `activation_batch` rule's axes); params (and a summarizer's, which then
        needs `summarizer_shardings`) are placed as given, else replicated. Works on a
        mesh spanning several processes: every process calls `run` with the same
        problems and gets the same rollouts."""
        for cfg, role in ((config, "model"), (summarizer[1] if summarizer else config,
                                               "summarizer model")):
            if tokenizer.vocab_size > cfg.vocab_size:
                raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} "
                                 f"tokens but the {role}'s vocab_size is {cfg.vocab_size}")
        self.params, self.config, self.tokenizer = params, config, tokenizer
        self.summarizer_params, self.summarizer_config = summarizer or (params, config)
        self.settings, self.sampling, self.buckets = settings, sampling, buckets
        self.mesh = mesh
        self.data_axes = () if mesh is None else tuple(
            batch_axes(mesh) if data_axes is None else data_axes)
        self.param_shardings = param_shardings
        # Without a separate summarizer the program receives the params once (passing
        # them twice would count them twice in per-device memory).
        self.shared_summarizer = summarizer is None
        self.summarizer_shardings = (param_shardings if self.shared_summarizer
                                     else summarizer_shardings)
        self.record_prompts = record_prompts
        self.stop_ids = tuple(tokenizer.eos_ids if stop_ids is None else stop_ids)
        self.reasoning_template: Template = load_template(settings.reasoning_template, "reasoning")
        self.summary_template: Template = load_template(settings.summary_template, "summary")
        think = settings.use_think_tags and tokenizer.think_start_id is not None
        self.reasoning_plan: PromptPlan = make_plan(
            tokenizer, self.reasoning_template,
            **({"enable_thinking": True, "open_think": True} if think else {}))
        self.summary_plan: PromptPlan = make_plan(
            tokenizer, self.summary_template,
            **({"enable_thinking": False} if settings.use_think_tags else {}))
        self.tables: TokenTables = token_tables(tokenizer, config.vocab_size)
        self.reasoning_buffer = buckets.new_tokens(settings.max_reasoning_tokens)
        self.summary_buffer = buckets.new_tokens(settings.max_summary_tokens)
        self._records: list[tuple] = []
        self._program = self._build_program()

    # ------------------------------------------------------------------ shapes
    def prompt_lengths(self, problem_bucket: int) -> tuple[int, int]:
        """Static widths of the reasoning and summarization prompts for a problem bucket."""
        p_r = self.reasoning_plan.constant_length + problem_bucket + self.summary_buffer
        p_s = (self.summary_plan.constant_length + problem_bucket + self.summary_buffer
               + self.reasoning_buffer)
        return self.buckets.prompt(p_r), self.buckets.prompt(p_s)

    def cache_lengths(self, problem_bucket: int) -> tuple[int, int]:
        """KV-cache slots per row of each phase: prompt width + generation budget."""
        p_r, p_s = self.prompt_lengths(problem_bucket)
        return p_r + self.reasoning_buffer, p_s + self.summary_buffer

    # ------------------------------------------------------------------ program
    def _sink(self, step, phase, prompt_tokens, prompt_mask, raw_lengths, stopped, ids,
              lengths):
        self._records.append(tuple(np.asarray(x) for x in (
            step, phase, prompt_tokens, prompt_mask, raw_lengths, stopped, ids, lengths)))

    def _phase(self, params, cfg, plan, fields, keys, budget, stops, values, *,
               problem_bucket, phase, step, active):
        tables, pad = self.tables, self.tokenizer.pad_id
        width = self.prompt_lengths(problem_bucket)[phase]
        buffer = self.reasoning_buffer if phase == REASON else self.summary_buffer
        tokens, mask = assemble(plan, fields, width, pad)
        phase_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, 2 * step + phase)
        out = core.sample(params, cfg, tokens, mask, phase_keys, budget, stops, values,
                          buffer_length=buffer, greedy=self.sampling.greedy,
                          truncates=self.sampling.truncates, pad_id=pad, active=active)
        keep = "before_think_end" if phase == REASON else "after_think_end"
        ids, lengths = clean_generation(out.tokens, out.lengths, tables, keep=keep, pad_id=pad)
        record = (tokens, mask) if self.record_prompts else (
            jnp.zeros((1, 1), jnp.int32), jnp.sum(mask, axis=1))
        io_callback(self._sink, None, step, jnp.int32(phase), *record, out.lengths,
                    out.stopped, ids, lengths, ordered=False)
        return ids, lengths

    def _rollout(self, params, summary_params, problem_ids, problem_lens, keys, active,
                 num_steps, budgets, stops, values, init_summary, init_summary_len):
        """problem_ids [B, Lp]; keys [B, 2]; active [B]; num_steps, budgets traced;
        init_summary [B, summary buffer] / init_summary_len [B]: the summary each row
        starts from (length 0: the empty summary). summary_params is None when the
        reasoning model also summarizes."""
        if summary_params is None:
            summary_params = params
        b = problem_ids.shape[0]
        problem = (problem_ids, problem_lens)

        def body(carry):
            step, summary, summary_len = carry
            r_ids, r_len = self._phase(
                params, self.config, self.reasoning_plan,
                {"problem": problem, "curr_summary": (summary, summary_len)}, keys,
                budgets[0], stops, values, problem_bucket=problem_ids.shape[1],
                phase=REASON, step=step, active=active)
            s_ids, s_len = self._phase(
                summary_params, self.summarizer_config, self.summary_plan,
                {"problem": problem, "existing_summary": (summary, summary_len),
                 "reasoning": (r_ids, r_len)}, keys,
                budgets[1], stops, values, problem_bucket=problem_ids.shape[1],
                phase=SUMMARIZE, step=step, active=active)
            return step + 1, s_ids, s_len

        init = (jnp.int32(0), init_summary.astype(jnp.int32),
                init_summary_len.astype(jnp.int32))
        jax.lax.while_loop(lambda c: c[0] < num_steps, body, init)
        return jnp.int32(0)

    def _input_shardings(self) -> tuple:
        """Shardings of the program's inputs (see `_rollout`)."""
        rows = NamedSharding(self.mesh, P(self.data_axes))
        repl = NamedSharding(self.mesh, P())
        params_sh = self.param_shardings if self.param_shardings is not None else repl
        summary_sh = (self.summarizer_shardings if self.summarizer_shardings is not None
                      and not self.shared_summarizer else repl)  # (None when shared)
        return (params_sh, summary_sh, rows, rows, rows, rows, repl, repl, repl, repl, rows,
                rows)

    def _build_program(self):
        fn = self._rollout
        if self.mesh is None:
            return jax.jit(fn)
        return jax.jit(fn, in_shardings=self._input_shardings(),
                       out_shardings=NamedSharding(self.mesh, P()))

    def lower(self, batch: int, problem_tokens: int):
        """The RC program for `batch` rows of problems up to `problem_tokens` tokens,
        lowered from abstract inputs (the engine's params may be `jax.ShapeDtypeStruct`s):
        `.compile().memory_analysis()` is its per-device memory plan (rc_jax.tools.plan).
        """
        rows = self.buckets.batch(batch, multiple=batch_shards(self.mesh, self.data_axes))
        width = self.buckets.prompt(problem_tokens)
        sds = jax.ShapeDtypeStruct
        args = (self.params, None if self.shared_summarizer else self.summarizer_params,
                sds((rows, width), jnp.int32), sds((rows,), jnp.int32),
                sds((rows, 2), jnp.uint32), sds((rows,), jnp.bool_), sds((), jnp.int32),
                sds((2,), jnp.int32), sds((8,), jnp.int32),
                jax.tree.map(lambda v: sds(v.shape, v.dtype), self.sampling.values()),
                sds((rows, self.summary_buffer), jnp.int32), sds((rows,), jnp.int32))
        with sharding_context(self.mesh):
            return self._program.lower(*args)

    # ------------------------------------------------------------------ host API
    def run(self, problems: Sequence[str], keys: np.ndarray, *,
            num_steps: int | None = None,
            initial_summaries: Sequence[Sequence[int]] | None = None) -> list[Rollout]:
        """Runs RC on `problems` (one row each; repeat a problem for more samples).

        keys: [len(problems), 2] per-row PRNG keys (see `row_key`).
        initial_summaries: optional summary ids each row starts from instead of the empty
          summary (RL's replay buffer seeds chains this way); at most `summary_buffer`
          tokens each.
        Returns one `Rollout` per problem, texts decoded.
        """
        num_steps = self.settings.num_steps if num_steps is None else num_steps
        if not problems:
            raise ValueError("problems: empty list")
        ids = [self.tokenizer.encode(p) for p in problems]
        for i, x in enumerate(ids):
            if not x:
                raise ValueError(f"problems[{i}] is empty")
        shards = batch_shards(self.mesh, self.data_axes)
        batch = self.buckets.batch(len(problems), multiple=shards)
        width = self.buckets.prompt(max(map(len, ids)))
        if max(self.cache_lengths(width)) > self.buckets.max_cache_length:
            raise ValueError(f"problems: longest problem ({max(map(len, ids))} tokens) with "
                             f"budgets H_R={self.settings.max_reasoning_tokens}, "
                             f"H_S={self.settings.max_summary_tokens} needs "
                             f"{max(self.cache_lengths(width))} cache slots, more than "
                             f"max_cache_length={self.buckets.max_cache_length}")
        problem_ids = np.zeros((batch, width), np.int32)
        lens = np.zeros((batch,), np.int32)
        for i, x in enumerate(ids):
            problem_ids[i, :len(x)] = x
            lens[i] = len(x)
        active = np.arange(batch) < len(problems)
        lens[~active] = 1  # padding rows: a one-token dummy problem, never reported
        all_keys = np.zeros((batch, 2), np.uint32)
        all_keys[:len(problems)] = keys
        budgets = np.asarray([self.settings.max_reasoning_tokens,
                              self.settings.max_summary_tokens], np.int32)
        init_summary = np.zeros((batch, self.summary_buffer), np.int32)
        init_len = np.zeros((batch,), np.int32)
        if initial_summaries is not None:
            if len(initial_summaries) != len(problems):
                raise ValueError(f"initial_summaries: {len(initial_summaries)} entries for "
                                 f"{len(problems)} problems")
            for i, x in enumerate(initial_summaries):
                if len(x) > self.summary_buffer:
                    raise ValueError(f"initial_summaries[{i}] has {len(x)} tokens, more than "
                                     f"the summary buffer ({self.summary_buffer})")
                init_summary[i, :len(x)] = x
                init_len[i] = len(x)
        self._records = []
        args = (self.params, None if self.shared_summarizer else self.summarizer_params,
                problem_ids, lens, all_keys, active, np.int32(num_steps), budgets,
                stop_array(self.stop_ids), self.sampling.values(), init_summary, init_len)
        with sharding_context(self.mesh):
            if self.mesh is not None:  # global arrays: each process places its devices' rows
                args = put_global(args, self._input_shardings())
            out = self._program(*args)
        jax.block_until_ready(out)
        jax.effects_barrier()  # all io_callbacks have run
        # The io_callback runs on the host of one device only (process 0 on a
        # multi-process mesh); hand its records to every process.
        self._records = broadcast_from_main(self._records, is_source=bool(self._records))
        return self._collect(len(problems), num_steps)

    def _collect(self, rows: int, num_steps: int) -> list[Rollout]:
        records = sorted(self._records, key=lambda r: (int(r[0]), int(r[1])))
        if len(records) != 2 * num_steps:
            raise RuntimeError(f"RC engine produced {len(records)} phase records, "
                               f"expected {2 * num_steps}")
        outs = [Rollout(row=i) for i in range(rows)]
        for step, phase, ptoks, pmask, raw_len, stopped, ids, lengths in records:
            for i, r in enumerate(outs):
                cleaned = ids[i, :lengths[i]].tolist()
                finish = "stop" if stopped[i] else "length"
                prompt_len = int(pmask[i].sum()) if self.record_prompts else int(pmask[i])
                if phase == REASON:
                    r.reasoning_ids.append(cleaned)
                    r.reasoning_tokens.append(int(raw_len[i]))
                    r.reasoning_finish.append(finish)
                    r.prompt_tokens.append(prompt_len)
                    if self.record_prompts:
                        r.reasoning_prompts.append(ptoks[i][pmask[i]].tolist())
                else:
                    r.summary_ids.append(cleaned)
                    r.summary_tokens.append(int(raw_len[i]))
                    r.summary_finish.append(finish)
                    r.summary_prompt_tokens.append(prompt_len)
                    if self.record_prompts:
                        r.summary_prompts.append(ptoks[i][pmask[i]].tolist())
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=True)
        for r in outs:
            r.reasoning_text = [decode(x) for x in r.reasoning_ids]
            r.summary_text = [decode(x) for x in r.summary_ids]
        return outs
