"""Delethink (Markovian thinking): reason in fixed-size chunks, carry a few tokens over.

The method of "The Markovian Thinker" (Aghajohari, Chitsaz, Kazemnejad et al., McGill-NLP /
Mila, arXiv 2510.06557), RC's closest rival: bounded-context reasoning without a summary
call. rc_jax follows the construction of the authors' released inference code:

* The *head* is the solve prompt (`delethink.template`, kind `solve`, filled with the
  problem) chat-wrapped by the one rule of every method, `Tokenizer.phase_prompt`
  (`enable_thinking = rc.use_think_tags`; generation prompt on, so the head ends inside
  the assistant turn), and tokenized whole.
* Chunk 0 is sampled from the head with a budget of `delethink.chunk_tokens` (C) tokens.
* Every later chunk k is sampled from token ids, not re-wrapped text:

      head ids + the first m0 ids of chunk 0 + the last m ids of chunk k - 1

  (m0 = `delethink.keep_first`, m = `delethink.keep_last`), all sitting in the assistant
  turn right after the head, with a budget of C - m tokens, so a chunk's thinking
  context (carry-over plus new tokens) never exceeds m0 + C. The first m0 tokens are
  taken from chunk 0 only (they are the first m0 tokens of the whole trace whenever
  C >= m0; with C < m0 all of chunk 0). A span longer than the chunk keeps the whole
  chunk; 0 keeps nothing.
* The trace ends when a chunk ends on a stop token (the model finished its answer before
  the budget ran out) or after `delethink.max_chunks` chunks.

Records (a step = a chunk, `delethink.max_chunks` steps): `reasoning_store[k]` is chunk k's
raw decoded generation (special tokens skipped); the per-step answer is read from the
trace so far, chunks 0..k joined (the record field `answer_from = "trace"` tells
`rc_jax.eval` so; other methods grade step k from `reasoning_store[k]` alone).
`reasoning_clean[k]` is the decoded text chunk k hands on (its last m tokens; "" when no
chunk follows), `delethink_first` the decoded first-m0 prefix every later chunk sees.
`token_counts.prompt[k]` is the chunk's prompt length (all of it is prefilled again: the
context is reset at every chunk boundary), `token_counts.reasoning[k]` its length. Steps
after the trace ended hold "", 0 tokens and the last finish reason. Chunk k samples with
fold_in(row key, k).

Two schedulers give the same records: `run_delethink` (the registered runner; one
sampler call per chunk index over the traces still going) and `DelethinkEngine`, the RC
engine's continuous-batching loop with a host half whose rollouts have one phase type
(`rc_jax.main` uses it with `rc.engine=device`). RL trains on `run_traces`' traces
(`rl.rollout = delethink`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence, cast

import numpy as np

from rc_jax.methods import register
from rc_jax.methods.base import MethodContext
from rc_jax.sampling.keys import fold
from rc_jax.prompts import load_template
from rc_jax.rc.engine import Job, RCEngine, RCSettings, Shapes, _Host
from rc_jax.records import RolloutRecord
from rc_jax.sampling.generate import GenerationResult

ANSWER_FROM_TRACE = "trace"  # record field `answer_from`: grade step k from chunks 0..k


def first_span(chunk0: Sequence[int], keep_first: int) -> list[int]:
    """The first `keep_first` ids of the first chunk (all of it when shorter; 0: none)."""
    return list(chunk0[:max(int(keep_first), 0)])


def last_span(chunk: Sequence[int], keep_last: int) -> list[int]:
    """The last `keep_last` ids of a chunk (all of it when shorter; 0: none)."""
    return list(chunk[-int(keep_last):]) if keep_last > 0 else []


def chunk_prompt(head: Sequence[int], chunks: Sequence[Sequence[int]], keep_first: int,
                 keep_last: int) -> list[int]:
    """Ids of the prompt of the chunk after `chunks` (the trace's chunks so far, as ids).

    No chunks yet: the head alone. Otherwise head + first m0 ids of chunk 0 + last m
    ids of the latest chunk.
    """
    if not chunks:
        return list(head)
    return list(head) + first_span(chunks[0], keep_first) + last_span(chunks[-1], keep_last)


def chunk_budget(chunk_tokens: int, keep_last: int, index: int) -> int:
    """New tokens chunk `index` may generate: C for the first, C - m for every later one."""
    return int(chunk_tokens) if index == 0 else int(chunk_tokens) - int(keep_last)


def trace_answer_texts(chunks: Sequence[str]) -> list[str]:
    """The text step k's answer is read from: chunks 0..k joined (the trace so far)."""
    out, text = [], ""
    for chunk in chunks:
        text += chunk
        out.append(text)
    return out


@dataclasses.dataclass
class Trace:
    """One Delethink trace as ids, per chunk k: its prompt, its generated ids (stop token
    included), its finish reason and the sampler's log-probs of those ids. A trace has
    fewer than `max_chunks` chunks when one ended on a stop token."""
    prompts: list[list[int]] = dataclasses.field(default_factory=list)
    chunks: list[list[int]] = dataclasses.field(default_factory=list)
    finish: list[str] = dataclasses.field(default_factory=list)
    logprobs: list[np.ndarray] = dataclasses.field(default_factory=list)


# (prompts, max_new_tokens, keys) -> one batched sampler call (`MethodContext.generate`).
GenerateFn = Callable[[list[list[int]], int, np.ndarray], GenerationResult]


def run_traces(heads: Sequence[Sequence[int]], keys: np.ndarray, generate: GenerateFn,
               spec: Any) -> list[Trace]:
    """The chunk loop of every Delethink rollout: evaluation (`run_delethink`) and RL
    (`rc_jax.rl.rollout`, `rl.rollout = delethink`).

    heads[i]: row i's head ids; keys[i]: its key (chunk k samples with fold_in(key, k));
    spec: anything with `chunk_tokens`, `keep_first`, `keep_last`, `max_chunks` (the
    `delethink` config section). One sampler call per chunk index over the rows still
    going, so a row's chunks do not depend on the other rows.
    """
    traces = [Trace() for _ in heads]
    live = [True] * len(heads)
    keys = np.asarray(keys)
    for k in range(spec.max_chunks):
        rows = [i for i in range(len(heads)) if live[i]]
        if not rows:
            break
        prompts = [chunk_prompt(heads[i], traces[i].chunks, spec.keep_first, spec.keep_last)
                   for i in rows]
        res = generate(prompts, chunk_budget(spec.chunk_tokens, spec.keep_last, k),
                       fold(keys[rows], k))
        for j, i in enumerate(rows):
            t = traces[i]
            t.prompts.append(prompts[j])
            t.chunks.append(list(res.tokens[j]))
            t.finish.append(res.finish_reasons[j])
            t.logprobs.append(np.asarray(res.logprobs[j], np.float32))
            live[i] = res.finish_reasons[j] != "stop" and k + 1 < spec.max_chunks
    return traces


def delethink_records(traces: Sequence[Trace], spec: Any, decode: Callable[[list[int]], str],
                      record_prompts: bool = False) -> list[RolloutRecord]:
    """The per-step records of finished traces (a step = a chunk; see the module doc)."""
    outs = []
    for t in traces:
        r = RolloutRecord(answer_from=ANSWER_FROM_TRACE, method_fields={"delethink_first": ""})
        for k in range(spec.max_chunks):
            if k >= len(t.chunks):  # the trace ended at an earlier chunk
                r.add_step("", "", [], 0, 0, r.reasoning_finish[-1])
                if record_prompts:
                    r.prompts.append([])
                continue
            ids = t.chunks[k]
            if k == 0:
                r.method_fields["delethink_first"] = decode(first_span(ids, spec.keep_first))
            # What chunk k hands on (its last m ids), when a chunk follows it.
            handed = decode(last_span(ids, spec.keep_last)) if k + 1 < len(t.chunks) else ""
            r.add_step(decode(ids), handed, ids, len(t.prompts[k]), len(ids), t.finish[k])
            if record_prompts:
                r.prompts.append([t.prompts[k]])
        outs.append(r)
    return outs


def delethink_heads(ctx: MethodContext, problems: Sequence[str]) -> list[list[int]]:
    """Each problem's head ids: the solve template, chat-wrapped, encoded whole."""
    template = load_template(ctx.config.delethink.template, "solve")
    return [ctx.prompt(template.format(problem=p)) for p in ctx.check_problems(problems)]


@register("delethink")
def run_delethink(problems: Sequence[str], keys: np.ndarray,
                  ctx: MethodContext) -> list[RolloutRecord]:
    traces = run_traces(delethink_heads(ctx, problems), keys, ctx.generate, ctx.config.delethink)
    return delethink_records(traces, ctx.config.delethink, ctx.decode, ctx.record_prompts)


# ---------------------------------------------------------------- on the RC engine
class _DelethinkRollout:
    """A Delethink trace in flight on the engine's host: one phase type (a chunk). Its
    record is `delethink_records([trace])`. A finished chunk goes to the progress log as
    `{"ids", "finish"}` (`step_json`): all a trace needs to continue, since its prompt is
    rebuilt from the head and the earlier chunks' ids."""

    def __init__(self, head: list[int], key: np.ndarray, spec: Any,
                 done: Sequence[dict[str, Any]] = ()):
        self.head, self.key, self.spec, self.trace = head, key, spec, Trace()
        for chunk in done:  # resumed from the progress log
            self.add([int(x) for x in chunk["ids"]], str(chunk["finish"]))

    def step_json(self, k: int) -> dict[str, Any]:
        """Chunk k as the progress log keeps it."""
        return {"ids": list(self.trace.chunks[k]), "finish": self.trace.finish[k]}

    def add(self, ids: list[int], finish: str) -> None:
        t = self.trace
        t.prompts.append(chunk_prompt(self.head, t.chunks, self.spec.keep_first,
                                      self.spec.keep_last))
        t.chunks.append(list(ids))
        t.finish.append(finish)
        t.logprobs.append(np.zeros((0,), np.float32))  # the engine keeps no log-probs

    @property
    def steps_done(self) -> int:  # the engine's name for a rollout's progress
        return len(self.trace.chunks)

    @property
    def done(self) -> bool:
        t = self.trace
        return bool(t.chunks) and (t.finish[-1] == "stop" or len(t.chunks) >= self.spec.max_chunks)


class _DelethinkHost(_Host):
    """The engine's host half for Delethink: a slot whose chunk ended gets the trace's
    next chunk prompt (head + first m0 ids of chunk 0 + last m ids of that chunk, as ids),
    budget C - m and key fold-in index = chunk index, exactly as `run_traces` samples."""
    engine: DelethinkEngine

    def _rollout(self, job: Job) -> _DelethinkRollout:
        return _DelethinkRollout(self.engine.heads[job.problem], np.asarray(job.key, np.uint32),
                                 self.engine.spec, job.done_steps)

    def _request(self, i: int, phase: int) -> tuple[list[int], int, int]:
        r, spec = self.rollouts[i], self.engine.spec
        k = len(r.trace.chunks)
        ids = chunk_prompt(r.head, r.trace.chunks, spec.keep_first, spec.keep_last)
        return ids, chunk_budget(spec.chunk_tokens, spec.keep_last, k), k

    def _finish_phase(self, i: int, phase: int, ids: list[int], prompt_len: int,
                      finish: str) -> None:
        r = self.rollouts[i]
        r.add(ids, finish)
        self._step_done(i, r.steps_done - 1, r.step_json(r.steps_done - 1))


class DelethinkEngine(RCEngine):
    """Delethink on the RC engine's loop: B slots, continuous or lockstep scheduling, one
    program per shape bucket. Chunk prompts are built from ids on the host (`chunk_prompt`),
    so the records equal `run_delethink`'s (same keys: chunk k folds k into the row key).

    heads: problem text -> head ids (`delethink_heads`), for every problem of a `run`.
    """
    host_class = _DelethinkHost

    def __init__(self, config, tokenizer, spec: Any, sampling, heads: dict[str, list[int]],
                 **kwargs):
        # RC's settings only name the budget here (RC's templates are never used).
        settings = RCSettings(num_steps=spec.max_chunks, max_reasoning_tokens=spec.chunk_tokens,
                              max_summary_tokens=1)
        super().__init__(config, tokenizer, settings, sampling, **kwargs)
        self.spec, self.heads = spec, dict(heads)

    def shapes(self, problem_tokens: int) -> tuple[Shapes, ...]:
        """One pool: prompts up to the longest head + m0 + m; cache up to head + m0 + C."""
        spec = self.spec
        head = max(len(h) for h in self.heads.values())
        width = self.buckets.prompt(head + spec.keep_first + spec.keep_last)
        cache = max(head + spec.keep_first + spec.chunk_tokens, width)
        cache = -(-cache // 16) * 16
        if cache > self.buckets.max_cache_length:
            raise ValueError(f"Delethink chunks of heads of {head} tokens need {cache} cache "
                             f"slots, more than max_cache_length={self.buckets.max_cache_length}")
        return (Shapes(self.slots, width, cache, self.buckets.new_tokens(spec.chunk_tokens),
                       self.refill_rows),)

    def traces(self, params: Any, problems: Sequence[str], keys: np.ndarray,
               done: Sequence[Sequence[dict[str, Any]]] = (), **kwargs) -> list[Trace]:
        """Every problem's trace (in order), one engine run; done[i]: problem i's chunks
        already finished (resume). kwargs: `RCEngine.run`'s (on_step receives
        `_DelethinkRollout.step_json` dicts, on_done the host's rollout, whose `.trace` is
        the trace)."""
        done = list(done) or [()] * len(problems)
        jobs = [Job(p, k, self.spec.max_chunks, done_steps=list(d))
                for p, k, d in zip(problems, np.asarray(keys), done)]
        rollouts, _ = self.run(params, jobs, **kwargs)
        return [cast(_DelethinkRollout, r).trace for r in rollouts]
