"""The RC engine: exact text prompts, continuous batching, one on-device loop.

Device side: one jitted `lax.while_loop` over B *slots*. Each iteration decodes one token
for every slot that is generating. When a slot's phase ends (stop token or budget), an
`io_callback` hands its generated ids to the host, which

  1. decodes them (special tokens skipped) and advances that rollout: the raw text is
     stored, the cleaned text fills the next template (`rc_jax.rc.rollout`);
  2. builds the next prompt as ONE string (template + chat template) and encodes it with
     the real tokenizer, so the model sees exactly the text prompt's ids;
  3. gives the slot its next phase (same rollout), or a new (problem, sample) when the
     rollout has done its T steps, or leaves it idle when the queue is empty.

The loop then prefills the slots that received prompts (at most `refill_rows` at a time,
into rows of the shared KV cache whose prompts start at slot 0) and goes on decoding.
With `scheduling="continuous"` a slot is refilled as soon as its phase ends; with
`"lockstep"` the loop waits until every busy slot has ended its phase and admits new
rollouts only when the whole batch has finished (the classic batch-synchronous schedule).
Both give identical rollouts: every token's PRNG key depends only on (rollout, step,
phase, position), and rows never see each other.

One program per (slots, prompt width, cache length) bucket, whatever T, the number of
problems or the order in which rows finish. Each finished step is reported to `on_step`
(the CLI appends it durably to a progress log) and each finished rollout to `on_done`.
Two-model RC runs a second pool of slots with the summarizer's weights, tokenizer and
sampling settings; a rollout moves between the pools phase by phase.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import itertools
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rc_jax.models import qwen3
from rc_jax.models.attention import decode_segments
from rc_jax.models.config import ModelConfig
from rc_jax.parallel import (batch_axes, batch_shards, broadcast_from_main, put_global,
                             sharding_context)
from rc_jax.rc.rollout import PHASES, REASON, SUMMARIZE, PhasePrompts, Rollout
from rc_jax.records import RolloutRecord
from rc_jax.sampling import core
from rc_jax.sampling.core import SamplingParams
from rc_jax.sampling.generate import Buckets, stop_array
from rc_jax.tokenizer import Tokenizer

SCHEDULES = ("continuous", "lockstep")
# Refill prefills run in chunks of this many tokens and skip chunks of padding, so a
# reasoning prompt in the (wider) summary-prompt bucket costs about its own length.
REFILL_CHUNK = 128

# Compiled loops by static description (see RCEngine._program), and the host halves of
# the runs in progress, found by the loop's callback through a traced id.
_PROGRAMS: dict[tuple, tuple[Any, Any]] = {}
_HOSTS: dict[int, "_Host"] = {}
_HOST_IDS = itertools.count()


def _dispatch(host_id, *arrays):
    return _HOSTS[int(host_id)].service(*arrays)


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


DEFAULT_PROMPT_MARGIN = 1 / 16


def text_bound(budget: int, margin: float = DEFAULT_PROMPT_MARGIN) -> int:
    """Most tokens the cleaned text of a `budget`-token generation is planned to re-encode
    to: budget * (1 + margin) + 8.

    Decoding a real model's output and encoding it again gives back about as many tokens
    (a cut multi-byte character or a different merge adds a few). Random weights emit
    invalid byte sequences that re-encode to up to ~3x as many tokens: benchmarks on
    random models use a margin of 3. A prompt that still exceeds its plan stops the run
    with a message naming the rollout (never a silent cut).
    """
    return int(budget * (1 + margin)) + 8


@dataclasses.dataclass(frozen=True)
class Pool:
    """A model that decodes in the loop: weights' config, tokenizer, sampling, phases."""
    config: ModelConfig
    tokenizer: Tokenizer
    sampling: SamplingParams
    stop_ids: tuple[int, ...]
    phases: tuple[int, ...]  # which RC phases run on this pool's slots


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Static shapes of one compiled loop (per pool)."""
    slots: int
    prompt_width: int   # P: widest prompt a slot can receive
    cache_length: int   # C: prompt + budget of the longest phase
    buffer: int         # N: most tokens one phase generates
    refill_rows: int    # R: slots prefilled together


@dataclasses.dataclass
class RunStats:
    """Scheduling figures of one `run` (for benchmarks and logs)."""
    iterations: int          # loop iterations
    decode_steps: list[int]  # per pool: iterations that decoded
    useful_tokens: list[int]  # per pool: tokens generated by busy slots
    slot_steps: list[int]    # per pool: decode_steps x slots
    services: int            # host callbacks
    wall_s: float

    @property
    def utilization(self) -> float:
        """Useful token-steps / slot-steps over all pools."""
        return sum(self.useful_tokens) / max(1, sum(self.slot_steps))


@dataclasses.dataclass
class Job:
    """One rollout to run: its problem, PRNG key, steps, and where it starts.

    done_steps: the steps already finished, as the progress log keeps them (RC:
    `RolloutRecord.step_json`; another method's host: its own layout)."""
    problem: str
    key: np.ndarray
    num_steps: int
    initial_summary: str = ""
    done_steps: Sequence[dict[str, Any]] = ()


def _reply_shapes(shapes: Sequence[Shapes]) -> tuple[jax.ShapeDtypeStruct, ...]:
    """What the host callback returns: per pool, for every slot, whether it gets a prompt
    [B], the prompt [B, P] (left-aligned), its length [B], its budget [B], the rollout's
    key [B, 2] and the key's fold-in index [B]; then whether the run is finished []."""
    out = []
    for s in shapes:
        out += [jax.ShapeDtypeStruct((s.slots,), jnp.bool_),
                jax.ShapeDtypeStruct((s.slots, s.prompt_width), jnp.int32),
                jax.ShapeDtypeStruct((s.slots,), jnp.int32),
                jax.ShapeDtypeStruct((s.slots,), jnp.int32),
                jax.ShapeDtypeStruct((s.slots, 2), jnp.uint32),
                jax.ShapeDtypeStruct((s.slots,), jnp.int32)]
    return tuple(out) + (jax.ShapeDtypeStruct((), jnp.bool_),)


class _Host:
    """The host half of one `run`: rollouts, queues and slot assignments.

    `service` is the loop's callback. Exceptions are kept and re-raised after the loop
    (raising inside a callback would surface as an opaque runtime error).
    """

    def __init__(self, engine: "RCEngine", jobs: Sequence[Job], shapes: Sequence[Shapes],
                 on_step, on_done, record_prompts: bool):
        self.engine, self.shapes = engine, shapes
        self.record_prompts = record_prompts
        self.rollouts = [self._rollout(j) for j in jobs]
        self.todo = collections.deque(i for i, r in enumerate(self.rollouts) if not r.done)
        self.in_flight: set[int] = set()
        self.queues: list[collections.deque[tuple[int, int]]] = [
            collections.deque() for _ in shapes]  # (rollout, phase) per pool
        self.slot = [[None] * s.slots for s in shapes]  # (rollout, phase, prompt len)
        self.on_step, self.on_done = on_step, on_done
        self.started: dict[int, float] = {}  # rollout -> time its first phase was queued
        self.error: BaseException | None = None
        self.services = 0
        self.cancelled = False

    # ---------------------------------------------------------------- the method
    # What a method defines (RC here; a subclass for another phase sequence, e.g.
    # `rc_jax.methods.delethink.DelethinkEngine`): a job's rollout state, its next
    # phase's request, and what a finished phase does.
    def _rollout(self, job: Job) -> Any:
        return Rollout(job.problem, np.asarray(job.key, np.uint32), job.num_steps,
                       RolloutRecord.from_steps(job.done_steps), job.initial_summary)

    def _request(self, i: int, phase: int) -> tuple[list[int], int, int]:
        """(prompt ids, budget, key fold-in index) of rollout i's next `phase`."""
        r = self.rollouts[i]
        ids = r.next_prompt(self.engine.prompts, phase)
        if self.record_prompts:
            (r.record.prompts if phase == REASON else r.record.summary_prompts).append([ids])
        return ids, self.engine.budgets[phase], 2 * r.steps_done + phase

    # ---------------------------------------------------------------- callback
    def service(self, *arrays):
        if self.cancelled:  # the caller was interrupted: end the loop, start nothing
            return self._empty(finished=True)
        try:
            return self._service(*arrays)
        except BaseException as e:  # noqa: BLE001 (re-raised by RCEngine.run)
            self.error = e
            return self._empty(finished=True)

    def _empty(self, finished: bool):
        """A reply that assigns nothing (and, with `finished`, ends the loop)."""
        *assignments, _ = (np.zeros(x.shape, x.dtype) for x in _reply_shapes(self.shapes))
        return tuple(assignments) + (np.bool_(finished),)

    def _service(self, *arrays):
        self.services += 1
        eng = self.engine
        for p, shape in enumerate(self.shapes):
            finished, tokens, lengths, stopped = (np.asarray(a) for a in arrays[4 * p:4 * p + 4])
            for b in np.flatnonzero(finished):
                rollout, phase, prompt_len = self.slot[p][b]
                self.slot[p][b] = None
                ids = tokens[b, :lengths[b]].tolist()
                self._finish_phase(rollout, phase, ids, prompt_len,
                                   "stop" if stopped[b] else "length")
        # Admission: continuing rollouts first (their next phase is already queued), new
        # ones while the first phase's pool has room (lockstep: only between batches).
        first = self.engine.pool_of[REASON]
        free = sum(x is None for x in self.slot[first]) - len(self.queues[first])
        if eng.scheduling == "lockstep":
            free = self.shapes[first].slots if not self.in_flight else 0
        while free > 0 and self.todo:
            i = self.todo.popleft()
            self.in_flight.add(i)
            self.started[i] = time.time()
            self.queues[first].append((i, REASON))
            free -= 1
        out = []
        for p, shape in enumerate(self.shapes):
            assign = np.zeros((shape.slots,), bool)
            prompts = np.full((shape.slots, shape.prompt_width), eng.pad_ids[p], np.int32)
            plen = np.zeros((shape.slots,), np.int32)
            budget = np.zeros((shape.slots,), np.int32)
            keys = np.zeros((shape.slots, 2), np.uint32)
            key_index = np.zeros((shape.slots,), np.int32)
            for b in range(shape.slots):
                if self.slot[p][b] is not None or not self.queues[p]:
                    continue
                i, phase = self.queues[p].popleft()
                r = self.rollouts[i]
                ids, limit, fold = self._request(i, phase)
                if len(ids) > shape.prompt_width or len(ids) + limit > shape.cache_length:
                    raise ValueError(
                        f"rollout {i} step {r.steps_done + 1}: the {PHASES[phase]}"
                        f" prompt has {len(ids)} tokens, more than the engine planned for "
                        f"({shape.prompt_width} prompt slots, {shape.cache_length} cache "
                        "slots): re-encoding the generated text grew it past the plan; raise "
                        f"rc.prompt_margin (now {eng.prompt_margin:g}; random weights need ~3)")
                self.slot[p][b] = (i, phase, len(ids))
                assign[b] = True
                prompts[b, :len(ids)] = ids
                plen[b], budget[b] = len(ids), limit
                keys[b] = r.key
                key_index[b] = fold
            out += [assign, prompts, plen, budget, keys, key_index]
        finished = not self.in_flight and not self.todo
        if not finished and all(x is None for slots in self.slot for x in slots):
            raise RuntimeError("RC scheduler stalled: rollouts in flight but no slot busy")
        return tuple(out) + (np.bool_(finished),)

    def _finish_phase(self, i: int, phase: int, ids: list[int], prompt_len: int,
                      finish: str) -> None:
        r = self.rollouts[i]
        p = self.engine.pool_of[phase]
        raw = self.engine.pools[p].tokenizer.decode(ids, skip_special_tokens=True)
        if phase == REASON:
            r.finish_reasoning(raw, prompt_len, len(ids), finish)
            self.queues[self.engine.pool_of[SUMMARIZE]].append((i, SUMMARIZE))
            return
        r.finish_summary(raw, prompt_len, len(ids), finish)
        self._step_done(i, r.steps_done - 1, r.record.step_json(r.steps_done - 1))

    def _step_done(self, i: int, step_index: int, step: dict[str, Any]) -> None:
        """Reports rollout i's finished step (`step`: its progress-log layout, see `Job`);
        then the rollout is written or queued for its next step."""
        r = self.rollouts[i]
        if self.on_step is not None:
            self.on_step(i, step_index, step)
        if r.done:
            self.in_flight.discard(i)
            if self.on_done is not None:
                self.on_done(i, r, time.time() - self.started.get(i, time.time()))
        else:
            self.queues[self.engine.pool_of[REASON]].append((i, REASON))


class RCEngine:
    """Runs RC rollouts on B slots with one jitted loop per shape bucket.

    Stateless with respect to weights: every `run` takes the params, so RL can pass new
    weights without touching the engine.
    """
    host_class: type = _Host  # the host half: RC's phases (a subclass runs another method)

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer, settings: RCSettings,
                 sampling: SamplingParams, *, slots: int = 8, scheduling: str = "continuous",
                 refill_rows: int = 0, prompt_margin: float = DEFAULT_PROMPT_MARGIN,
                 buckets: Buckets = Buckets(), mesh: Mesh | None = None,
                 data_axes: tuple[str, ...] | None = None, param_shardings: Any = None,
                 summarizer_config: ModelConfig | None = None,
                 summarizer_tokenizer: Tokenizer | None = None,
                 summarizer_sampling: SamplingParams | None = None,
                 summarizer_shardings: Any = None,
                 stop_ids: Sequence[int] | None = None, unroll_layers: bool | None = None):
        """slots: rows decoded together (rounded up to the mesh's batch shards).
        scheduling: 'continuous' (refill a slot as soon as its phase ends) or 'lockstep'.
        refill_rows: slots prefilled per prefill call (0: min(slots, 4)).
        prompt_margin: planned re-encoding growth of generated text (see `text_bound`).
        summarizer_*: a second model that writes the summaries, with its own tokenizer
          (default: the reasoner's), sampling (default: the reasoner's) and shardings.
        stop_ids: ids that end a phase (default: each tokenizer's eos ids; an empty list
          makes every phase spend its whole budget, as benchmarks want).
        unroll_layers: decode on the packed per-layer layout (True) or the scanned stacked
          one (False); None: `core.default_unroll_layers()` (the packed one on CPU only).
          The planner and the tests pass False to run the accelerators' path on CPU."""
        if scheduling not in SCHEDULES:
            raise ValueError(f"rc.scheduling must be one of {SCHEDULES}, got {scheduling!r}")
        s_tok = summarizer_tokenizer or tokenizer
        if summarizer_config is None and summarizer_tokenizer is not None:
            raise ValueError("summarizer.tokenizer needs a summarizer model")
        for cfg, tok, role in ((config, tokenizer, "model"),
                               (summarizer_config or config, s_tok, "summarizer model")):
            if tok.vocab_size > cfg.vocab_size:
                raise ValueError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the "
                                 f"{role}'s vocab_size is {cfg.vocab_size}")
        self.config, self.tokenizer, self.settings, self.sampling = (config, tokenizer,
                                                                     settings, sampling)
        self.scheduling, self.buckets, self.mesh = scheduling, buckets, mesh
        self.data_axes = () if mesh is None else tuple(
            batch_axes(mesh) if data_axes is None else data_axes)
        self.slots = buckets.batch(slots, multiple=batch_shards(mesh, self.data_axes))
        self.refill_rows = min(self.slots, refill_rows or 4)
        self.unroll_layers = unroll_layers
        if not prompt_margin >= 0:
            raise ValueError(f"rc.prompt_margin must be >= 0, got {prompt_margin!r}")
        self.prompt_margin = float(prompt_margin)
        self.prompts = PhasePrompts(tokenizer, settings.reasoning_template,
                                    settings.summary_template, settings.use_think_tags,
                                    summary_tokenizer=s_tok)
        self.budgets = {REASON: settings.max_reasoning_tokens,
                        SUMMARIZE: settings.max_summary_tokens}
        stops = lambda tok: tuple(tok.eos_ids if stop_ids is None else stop_ids)  # noqa: E731
        if summarizer_config is None:
            self.pools: tuple[Pool, ...] = (
                Pool(config, tokenizer, sampling, stops(tokenizer), (REASON, SUMMARIZE)),)
            self.pool_of = {REASON: 0, SUMMARIZE: 0}
            self.shardings: tuple[Any, ...] = (param_shardings,)
        else:
            self.pools = (Pool(config, tokenizer, sampling, stops(tokenizer), (REASON,)),
                          Pool(summarizer_config, s_tok, summarizer_sampling or sampling,
                               stops(s_tok), (SUMMARIZE,)))
            self.pool_of = {REASON: 0, SUMMARIZE: 1}
            self.shardings = (param_shardings, summarizer_shardings)
        self.pad_ids = tuple(p.tokenizer.pad_id for p in self.pools)

    # ------------------------------------------------------------------ shapes
    def _constant(self, phase: int) -> int:
        """Prompt tokens of a phase's template and chat wrapping with empty fields."""
        if phase == REASON:
            return len(self.prompts.reasoning_ids("", "", True))
        return len(self.prompts.summary_ids("", "", ""))

    def prompt_bounds(self, problem_tokens: int) -> dict[int, int]:
        """Longest prompt of each phase for problems of up to `problem_tokens` tokens."""
        s = text_bound(self.settings.max_summary_tokens, self.prompt_margin)
        r = text_bound(self.settings.max_reasoning_tokens, self.prompt_margin)
        slack = 8  # merges across the seams of template and fields
        return {REASON: self._constant(REASON) + problem_tokens + s + slack,
                SUMMARIZE: self._constant(SUMMARIZE) + problem_tokens + s + r + slack}

    def shapes(self, problem_tokens: int) -> tuple[Shapes, ...]:
        """Static shapes of each pool's slots for problems of up to `problem_tokens`."""
        bounds = self.prompt_bounds(problem_tokens)
        out = []
        for pool in self.pools:
            width = self.buckets.prompt(max(bounds[ph] for ph in pool.phases))
            buffer = self.buckets.new_tokens(max(self.budgets[ph] for ph in pool.phases))
            # At least the prompt bucket: its rounding is slack for prompts that re-encode
            # longer than planned (free at the paper's scale, where buckets are 512-wide).
            cache = max(max(bounds[ph] + self.budgets[ph] for ph in pool.phases), width)
            cache = -(-cache // 16) * 16
            if cache > self.buckets.max_cache_length:
                raise ValueError(f"problems of {problem_tokens} tokens with H_R="
                                 f"{self.settings.max_reasoning_tokens}, H_S="
                                 f"{self.settings.max_summary_tokens} need {cache} cache slots, "
                                 f"more than max_cache_length={self.buckets.max_cache_length}")
            out.append(Shapes(self.slots, width, cache, buffer, self.refill_rows))
        return tuple(out)

    # ------------------------------------------------------------------ program
    def _program(self, shapes: tuple[Shapes, ...]):
        """The jitted loop, shared by every engine with the same static description (the
        host half is found through the traced `host_id`, the schedule is traced too), so
        a continuous and a lockstep engine, or the engines RL rebuilds, compile once.
        """
        unroll = core.resolve_unroll_layers(self.unroll_layers, self.mesh)
        key = (tuple((p.config, p.sampling.static_key()) for p in self.pools), self.pad_ids,
               shapes, self.mesh, self.data_axes, tuple(id(x) for x in self.shardings), unroll)
        if key not in _PROGRAMS:
            loop = functools.partial(self._loop, shapes, unroll)
            fn = jax.jit(loop) if self.mesh is None else jax.jit(
                loop, in_shardings=self._input_shardings(),
                out_shardings=NamedSharding(self.mesh, P()))
            _PROGRAMS[key] = (fn, self.shardings)  # keep the shardings alive with their id
        return _PROGRAMS[key][0]

    def _input_shardings(self) -> tuple:
        assert self.mesh is not None  # only compiled with shardings on a mesh
        repl = NamedSharding(self.mesh, P())
        params = tuple(s if s is not None else repl for s in self.shardings)
        return (params, tuple(repl for _ in self.pools), tuple(repl for _ in self.pools),
                repl, repl)

    def _init_pool(self, pool: Pool, shape: Shapes, unroll: bool) -> dict:
        b, n, c = shape.slots, shape.buffer, shape.cache_length
        cache = qwen3.init_cache(pool.config, b, c)
        cache = cache.replace(index=jnp.zeros((b,), jnp.int32))
        if unroll:
            cache = qwen3.unstack_cache(cache)
        return dict(cache=cache, logits=jnp.zeros((b, pool.config.vocab_size), jnp.float32),
                    tokens=jnp.zeros((b, n), jnp.int32), lengths=jnp.zeros((b,), jnp.int32),
                    budget=jnp.zeros((b,), jnp.int32), keys=jnp.zeros((b, 2), jnp.uint32),
                    busy=jnp.zeros((b,), bool), done=jnp.zeros((b,), bool),
                    stopped=jnp.zeros((b,), bool),
                    decode_steps=jnp.int32(0), useful=jnp.int32(0))

    def _loop(self, shapes, unroll, params, values, stops, host_id, lockstep):
        """The whole run as one while_loop; returns scheduling counters.

        unroll: decode on the packed layout (static); host_id: [] int32, the `_Host`
        serving this run's callbacks; lockstep: [] bool."""
        decode_params = tuple(qwen3.pack_for_decode(p, pool.config) if unroll else p
                              for p, pool in zip(params, self.pools))
        state = dict(pools=tuple(self._init_pool(pool, s, unroll)
                                 for pool, s in zip(self.pools, shapes)),
                     finished=jnp.bool_(False), iterations=jnp.int32(0))
        def needs_service(st):
            pools = st["pools"]
            ended = jnp.any(jnp.stack([jnp.any(ps["busy"] & ps["done"]) for ps in pools]))
            idle = jnp.all(jnp.stack([~jnp.any(ps["busy"]) for ps in pools]))
            # lockstep: only once every busy slot has ended its phase.
            waiting = jnp.all(jnp.stack([jnp.all(~ps["busy"] | ps["done"]) for ps in pools]))
            return jnp.where(lockstep, waiting, ended | idle)

        def service(st):
            args = []
            for ps in st["pools"]:
                args += [ps["busy"] & ps["done"], ps["tokens"], ps["lengths"], ps["stopped"]]
            res = io_callback(_dispatch, _reply_shapes(shapes), host_id, *args, ordered=False)
            pools = []
            for i, (pool, shape, ps) in enumerate(zip(self.pools, shapes, st["pools"])):
                assign, prompts, plen, budget, keys, key_index = res[6 * i:6 * i + 6]
                ended = ps["busy"] & ps["done"]
                ps = dict(ps)
                ps["busy"] = (ps["busy"] & ~ended) | assign
                ps["done"] = jnp.where(assign, False, ps["done"])
                ps["stopped"] = jnp.where(assign, False, ps["stopped"])
                ps["lengths"] = jnp.where(assign, 0, ps["lengths"])
                ps["budget"] = jnp.where(assign, budget, ps["budget"])
                phase_keys = jax.vmap(jax.random.fold_in)(keys, key_index)
                ps["keys"] = jnp.where(assign[:, None], phase_keys, ps["keys"])
                ps["cache"], ps["logits"] = self._refill(params[i], i, shape, ps["cache"],
                                                         ps["logits"], assign, prompts, plen)
                pools.append(ps)
            return dict(st, pools=tuple(pools), finished=res[-1])

        def decode(i):
            pool, shape = self.pools[i], shapes[i]

            def step(ps):
                live = ps["busy"] & ~ps["done"]
                rows = jnp.arange(shape.slots)
                keys = jax.vmap(jax.random.fold_in)(ps["keys"], ps["lengths"])
                choice = core.choose_tokens(ps["logits"], keys, values[i],
                                            greedy=pool.sampling.greedy,
                                            truncates=pool.sampling.truncates)
                token = jnp.where(live, choice.token, self.pad_ids[i])
                hit = live & jnp.any(token[:, None] == stops[i][None, :], axis=-1)
                # Non-live rows write padding past their end (never read) or nothing.
                tokens = ps["tokens"].at[rows, ps["lengths"]].set(token, mode="drop")
                lengths = ps["lengths"] + live
                done = ps["done"] | hit | (live & (lengths >= ps["budget"]))
                cache = ps["cache"]
                logits, new_cache = qwen3.forward(
                    decode_params[i], pool.config, token[:, None], cache.index[:, None], cache,
                    token_mask=live[:, None])
                new_cache = new_cache.replace(index=cache.index + live)
                return dict(ps, cache=new_cache, logits=logits[:, 0], tokens=tokens,
                            lengths=lengths, done=done, stopped=ps["stopped"] | hit,
                            decode_steps=ps["decode_steps"] + 1,
                            useful=ps["useful"] + jnp.sum(live, dtype=jnp.int32))
            return step

        def body(st):
            st = jax.lax.cond(needs_service(st), service, lambda s: s, st)
            pools = tuple(jax.lax.cond(jnp.any(ps["busy"] & ~ps["done"]), decode(i),
                                       lambda s: s, ps)
                          for i, ps in enumerate(st["pools"]))
            return dict(st, pools=pools, iterations=st["iterations"] + 1)

        out = jax.lax.while_loop(lambda st: ~st["finished"], body, state)
        counters = [out["iterations"]]
        for ps in out["pools"]:
            counters += [ps["decode_steps"], ps["useful"]]
        return jnp.stack(counters)

    def _refill(self, params, pool_index: int, shape: Shapes, cache, logits, assign, prompts,
                plen):
        """Prefills the assigned slots' prompts (left-aligned in `prompts` [B, P]) into
        their cache rows.

        Rows on one device: `refill_rows` slots per prefill call (or one, for
        stragglers), gathered to the front and written back in place. Rows sharded over
        devices: one prefill over every slot, rows where they are, written by select
        (`_select_rows`): a gather or slice at traced row indices of a sharded axis makes
        GSPMD replicate the whole KV cache, and the gathered rows' prefill, on every
        device (Qwen3-4B, 16 rows, H_R 4k on a v5e-16: 17.3 GiB per chip with gathered
        rows, 11.7 with the select write alone, 7.2 with both; docs/scaling.md), while a
        batch-sharded prefill keeps each device on its own rows: a refill costs one local
        row's prefill per device.
        """
        pool, pad = self.pools[pool_index], self.pad_ids[pool_index]
        width, r, c = shape.prompt_width, shape.refill_rows, shape.cache_length

        def prefill(rows_prompts, lens):
            """[R, P] prompts of lengths lens -> last logits [R, V], k/v [L, R, C, K, D]
            with slot s of row holding prompt token s, and the rows' valid slots [R, C]."""
            # Right-align for the left-padded prefill: token j of row sits at j + (P - len).
            shift = width - lens
            src = jnp.arange(width)[None, :] - shift[:, None]
            tokens = jnp.where(src >= 0, jnp.take_along_axis(rows_prompts, jnp.maximum(src, 0),
                                                             axis=1), pad)
            last, sub = core.prefill(params, pool.config, tokens, src >= 0, width,
                                     chunk=min(width, REFILL_CHUNK))
            sub = qwen3.stack_cache(sub)
            # Back to slot = position: slot s of row holds prompt token s.
            gather = jnp.minimum(jnp.arange(c)[None, :] + shift[:, None], width - 1)  # [R, C]
            k = jnp.take_along_axis(sub.k, gather[None, :, :, None, None], axis=2)
            v = jnp.take_along_axis(sub.v, gather[None, :, :, None, None], axis=2)
            return last, k, v, jnp.arange(c)[None, :] < lens[:, None]

        if batch_shards(self.mesh, self.data_axes) > 1:
            lens = jnp.where(assign, plen, 1)
            last, k, v, valid = prefill(prompts, lens)
            cache = _select_rows(cache, assign, k, v, valid, lens)
            return cache, jnp.where(assign[:, None], last, logits)

        def rows(r, carry):
            pending, cache, logits = carry
            idx = jnp.argsort(~pending, stable=True)[:r]  # pending slots first
            sel = pending[idx]
            lens = jnp.where(sel, plen[idx], 1)
            last, k, v, valid = prefill(prompts[idx], lens)
            cache = _write_rows(cache, idx, sel, k, v, valid, lens)
            logits = logits.at[idx].set(jnp.where(sel[:, None], last, logits[idx]))
            pending = pending.at[idx].set(False)
            return pending, cache, logits

        # Many pending slots: prefill r of them together; the rest one at a time, so a
        # lone refill never pays for r - 1 rows of padding. Two loops, not a `cond`
        # choosing the width per pass: XLA copies the whole cache into a conditional's
        # result, but updates a while loop's carry in place.
        carry = (assign, cache, logits)
        if r > 1:
            carry = jax.lax.while_loop(lambda c: jnp.sum(c[0]) >= r,
                                       functools.partial(rows, r), carry)
        _, cache, logits = jax.lax.while_loop(lambda c: jnp.any(c[0]),
                                              functools.partial(rows, 1), carry)
        return cache, logits

    # ------------------------------------------------------------------ host API
    def lower(self, params: Any, batch: int, problem_tokens: int,
              summarizer_params: Any = None):
        """The loop for `batch` slots and problems up to `problem_tokens` tokens, lowered
        from (possibly abstract) params: `.compile().memory_analysis()` is its
        per-device memory plan (rc_jax.tools.plan)."""
        engine = self
        if batch != self.slots:
            engine = copy.copy(self)
            engine.slots = self.buckets.batch(batch, multiple=batch_shards(self.mesh,
                                                                           self.data_axes))
            engine.refill_rows = min(engine.slots, self.refill_rows)
        shapes = engine.shapes(engine.buckets.prompt(problem_tokens))
        # The arguments are built outside the mesh context: under `jax.set_mesh` of an
        # abstract TPU topology (rc_jax.tools.plan) eager jnp ops fail to place.
        args = engine._args(params, summarizer_params, -1)
        with sharding_context(self.mesh):
            return engine._program(shapes).lower(*args)

    def _args(self, params, summarizer_params, host_id: int):
        """The loop's arguments (see `_loop`); host_id -1 only lowers."""
        all_params = (params,) if len(self.pools) == 1 else (params, summarizer_params)
        if any(p is None for p in all_params):
            raise ValueError("two-model RC needs summarizer_params")
        values = tuple(pool.sampling.values() for pool in self.pools)
        stops = tuple(stop_array(pool.stop_ids) for pool in self.pools)
        return (all_params, values, stops, np.int32(host_id),
                np.bool_(self.scheduling == "lockstep"))

    def run(self, params: Any, jobs: Sequence[Job], *, summarizer_params: Any = None,
            on_step: Callable[[int, int, dict[str, Any]], None] | None = None,
            on_done: Callable[[int, Rollout, float], None] | None = None,
            record_prompts: bool = False) -> tuple[list[Rollout], RunStats]:
        """Runs every job to its `num_steps`; returns the rollouts (in job order) and the
        run's scheduling figures.

        on_step(job index, step index, step): called when a step finishes, with the step
          as the progress log keeps it (`RolloutRecord.step_json`; the CLI appends it
          durably to its log).
        on_done(job index, rollout, wall seconds): called when a rollout finishes; its
          `record` is the `RolloutRecord`.
        Jobs with `done_steps` continue from there (resume); the result equals an
        uninterrupted run's.
        """
        if not jobs:
            raise ValueError("jobs: empty list, nothing to run")
        problem_tokens = 1
        for i, job in enumerate(jobs):
            n = len(self.tokenizer.encode(job.problem))
            if n == 0:
                raise ValueError(f"problems[{i}] is empty")
            problem_tokens = max(problem_tokens, n)
        shapes = self.shapes(self.buckets.prompt(problem_tokens))
        host = self.host_class(self, jobs, shapes, on_step, on_done, record_prompts)
        host_id = next(_HOST_IDS)
        _HOSTS[host_id] = host
        start = time.time()
        args = self._args(params, summarizer_params, host_id)
        try:
            with sharding_context(self.mesh):
                if self.mesh is not None:
                    args = put_global(args, self._input_shardings())
                counters = _interruptible(lambda: np.asarray(jax.device_get(
                    self._program(shapes)(*args))), host)
            jax.effects_barrier()
        finally:
            if not host.cancelled:  # a cancelled loop may still call back once
                _HOSTS.pop(host_id, None)
        if host.error is not None:
            raise host.error
        # The callback runs on the host of one device (process 0 on a multi-process
        # mesh); hand the rollouts to every process.
        rollouts = broadcast_from_main(host.rollouts, is_source=host.services > 0)
        n = len(self.pools)
        stats = RunStats(int(counters[0]), [int(counters[1 + 2 * i]) for i in range(n)],
                         [int(counters[2 + 2 * i]) for i in range(n)],
                         [int(counters[1 + 2 * i]) * s.slots for i, s in enumerate(shapes)],
                         host.services, time.time() - start)
        return rollouts, stats


def _interruptible(fn: Callable[[], Any], host: _Host) -> Any:
    """Runs `fn` in a worker thread while the main thread waits in Python, so that Ctrl-C
    raises KeyboardInterrupt at once instead of after the whole loop (a program with host
    callbacks holds the calling thread until it ends). Finished steps are already on
    disk; the caller reports and exits."""
    result: dict[str, Any] = {}

    def work():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            result["error"] = e

    thread = threading.Thread(target=work, name="rc-engine", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        host.cancelled = True  # the loop ends at its next callback
        raise
    if "error" in result:
        raise result["error"]
    return result["value"]


def _write_rows(cache: qwen3.KVCache, idx: jax.Array, sel: jax.Array, k: jax.Array,
                v: jax.Array, valid: jax.Array, lens: jax.Array) -> qwen3.KVCache:
    """Writes R rows (k, v: [L, R, C, K, D] stacked layout) into cache rows `idx` where
    `sel`; the cache may be stacked or in the per-layer decode form.

    One `dynamic_update_slice` per (row, layer): XLA updates the loop-carried cache in
    place, where a gather/scatter over the row axis would copy the whole cache. (Rows
    sharded over devices: `_select_rows`.)
    """
    index = cache.index.at[idx].set(jnp.where(sel, lens, cache.index[idx]))
    new_valid = cache.valid.at[idx].set(jnp.where(sel[:, None], valid, cache.valid[idx]))
    unstacked = qwen3.cache_is_unstacked(cache)
    ks, vs = (list(cache.k), list(cache.v)) if unstacked else (cache.k, cache.v)
    for j in range(idx.shape[0]):
        row, keep_old = idx[j], ~sel[j]
        if not unstacked:  # [L, B, C, K, D]
            def put(full, new):
                start = (0, row, 0, 0, 0)
                old = jax.lax.dynamic_slice(full, start, (full.shape[0], 1) + full.shape[2:])
                new = new[:, j:j + 1].astype(full.dtype)
                return jax.lax.dynamic_update_slice(full, jnp.where(keep_old, old, new), start)
            ks, vs = put(ks, k), put(vs, v)
            continue
        bounds = decode_segments(cache.valid.shape[1])
        for layer in range(len(ks)):  # segments of keys [B*K, D, Cj], values [B*K, Cj, D]
            kv = k.shape[3]
            new_k = k[layer, j].transpose(1, 2, 0)  # [K, D, C]
            new_v = v[layer, j].transpose(1, 0, 2)  # [K, C, D]
            for arrays, new, axis in ((ks, new_k, 2), (vs, new_v, 1)):
                segments = list(arrays[layer])
                for s, full in enumerate(segments):
                    part = jax.lax.slice_in_dim(new, bounds[s], bounds[s + 1], axis=axis)
                    start = (row * kv, 0, 0)
                    old = jax.lax.dynamic_slice(full, start, (kv,) + full.shape[1:])
                    segments[s] = jax.lax.dynamic_update_slice(
                        full, jnp.where(keep_old, old, part.astype(full.dtype)), start)
                arrays[layer] = tuple(segments)
    if unstacked:
        ks, vs = tuple(ks), tuple(vs)
    return cache.replace(k=ks, v=vs, valid=new_valid, index=index)


def _select_rows(cache: qwen3.KVCache, sel: jax.Array, k: jax.Array, v: jax.Array,
                 valid: jax.Array, lens: jax.Array) -> qwen3.KVCache:
    """Every row of k, v [L, B, C, K, D] replaces its cache row where sel [B]: an
    elementwise select, so each device of a batch-sharded cache touches only its own rows
    (see `RCEngine._refill`)."""
    index = jnp.where(sel, lens, cache.index)
    new_valid = jnp.where(sel[:, None], valid, cache.valid)
    if not qwen3.cache_is_unstacked(cache):  # [L, B, C, K, D]
        hit = sel[None, :, None, None, None]
        return cache.replace(k=jnp.where(hit, k.astype(cache.k.dtype), cache.k),
                             v=jnp.where(hit, v.astype(cache.v.dtype), cache.v),
                             valid=new_valid, index=index)
    new = qwen3.unstack_cache(cache.replace(k=k, v=v))  # the new rows in the decode layout
    hit = jnp.repeat(sel, k.shape[3])[:, None, None]  # rows of [B*K, ...]
    pick = lambda news, olds: jax.tree.map(  # noqa: E731
        lambda n, o: jnp.where(hit, n.astype(o.dtype), o), news, olds)
    return cache.replace(k=pick(new.k, cache.k), v=pick(new.v, cache.v), valid=new_valid,
                         index=index)
