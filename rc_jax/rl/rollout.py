"""RCT rollouts: online RC chains -> snapshot prompts -> GRPO groups -> rewards.

One training step (see docs/training.md):

A. Online chains. With the current weights, each chain runs RC for T steps from its seed
   summary (the empty summary, or a replay-buffer summary): r_0 from (problem, s_0),
   s_1 = Summ(problem, s_0, r_0), r_1 from (problem, s_1), ... giving s_1..s_T. This is
   one `RCEngine.run` call for all chains (one jitted program). The chain's own
   generations are never trained on.
B. Snapshots. Per chain, k distinct indices i are drawn uniformly from {0..T-1}; the
   training prompt of index i is the reasoning prompt with summary s_i, where s_0 is
   always "" (even for a buffer-seeded chain, as in the authors' code).
C. Groups. G fresh reasoning responses per snapshot prompt, sampled by one batched
   `generate(..., num_samples=G)` call (the G rows share one prefill). A group is one
   (problem, summary) prompt; group ids are unique within the step.
D. Reward. The grader on each response's full text: 1 if its last \\boxed{} matches the
   gold answer, else 0.

Options from the authors' method space:
* `summary_free`: the chain has no summarizer; step t reasons from the previous step's
  full cleaned reasoning (self-refine / self-verify wording); snapshot i uses r_{i-1}.
* `train_summarizer`: extra groups whose responses are *summaries* of (s_i, r_i); each
  summary's reward is the mean grade of fresh reasoning continuations conditioned on it.

Delethink rollouts (`rl.rollout = delethink`, the Markovian Thinker's recipe): instead of
A-C, G Delethink traces per problem (`delethink_groups`, the chunk loop of
`rc_jax.methods.delethink.run_traces`); each trace is graded on its whole text, and every
chunk of it is one trained sample (prompt = the chunk's prompt, response = the chunk's
ids) carrying the trace's reward and advantage. One problem's G traces form one group.

Every random choice is keyed by (seed, step, problem id, chain, snapshot, sample), never
by batch position, so results do not depend on batching or sharding.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np

from rc_jax.eval.grading import MathVerifyGrader, StringMatchGrader
from rc_jax.methods.delethink import Trace, run_traces
from rc_jax.parallel.mesh import IdentityKey
from rc_jax.rc.engine import Job, RCEngine, RCSettings
from rc_jax.prompts import Template, load_template
from rc_jax.rc.rollout import PhasePrompts
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.sampling.core import SamplingParams
from rc_jax.sampling.generate import Buckets, GenerationResult, generate
from rc_jax.sampling.keys import fold

REASONING, SUMMARY = "reasoning", "summary"

# ---------------------------------------------------------------- summary-free prompts
# The self-refine / self-verify wording of the evaluation baselines (`rc_jax.prompts`,
# kinds `refine` / `verify`, builtin `math`): one wording per method. `{previous_attempt}`
# is empty for the from-scratch prompt, as in the authors' summary-free code (which uses
# one template for every step); their files' `{curr_reasoning_trace}` is accepted too.
SUMMARY_FREE_KINDS = {"self_refine": "refine", "self_verify": "verify"}


def summary_free_template(spec: str) -> Template:
    """The summary-free reasoning template: `self_refine`, `self_verify` or a file."""
    if spec in SUMMARY_FREE_KINDS:
        return load_template("math", SUMMARY_FREE_KINDS[spec])
    return load_template(spec, "refine")


# ---------------------------------------------------------------- data records


@dataclasses.dataclass
class Chain:
    """One online chain of one problem."""
    problem_index: int
    chain_index: int
    seed_ids: list[int]
    start_depth: int
    reasoning_ids: list[list[int]] = dataclasses.field(default_factory=list)  # r_0..r_{T-1}
    reasoning_text: list[str] = dataclasses.field(default_factory=list)
    summary_ids: list[list[int]] = dataclasses.field(default_factory=list)    # s_1..s_T
    summary_text: list[str] = dataclasses.field(default_factory=list)
    correct: list[float] = dataclasses.field(default_factory=list)            # per step

    def context(self, i: int, summary_free: bool = False) -> str:
        """Snapshot i's context (cleaned text): "" for i = 0, else s_i (or r_{i-1}
        summary-free)."""
        if i == 0:
            return ""
        return self.reasoning_text[i - 1] if summary_free else self.summary_text[i - 1]


@dataclasses.dataclass
class Group:
    """One GRPO group: one prompt, its G sampled responses and their rewards."""
    group_id: int
    kind: str                 # REASONING or SUMMARY
    problem_index: int
    chain: int                # index into the step's chain list
    snapshot: int             # chain index i the prompt was built from
    prompt: list[int]
    context: str              # summary (or previous attempt) text in the prompt
    label: str = ""
    responses: list[list[int]] = dataclasses.field(default_factory=list)
    finish: list[str] = dataclasses.field(default_factory=list)
    sampler_logprobs: list[np.ndarray] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)

    def sequences(self, j: int) -> list[tuple[list[int], list[int], np.ndarray]]:
        """The trained (prompt, response, sampler log-probs) of member j: one."""
        return [(self.prompt, self.responses[j], self.sampler_logprobs[j])]


@dataclasses.dataclass
class TraceGroup:
    """One Delethink group: G traces of one problem, their texts (chunks joined) and
    rewards. Every chunk of trace j is a trained sample with reward and advantage j."""
    group_id: int
    problem_index: int
    label: str
    traces: list[Trace] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)

    def sequences(self, j: int) -> list[tuple[list[int], list[int], np.ndarray]]:
        """The trained (prompt, response, sampler log-probs) of trace j: one per chunk."""
        t = self.traces[j]
        return list(zip(t.prompts, t.chunks, t.logprobs))


def delethink_metrics(groups: Sequence[TraceGroup]) -> dict[str, float]:
    """Rollout metrics of a Delethink step: trace rewards, chunks and lengths."""
    traces = [t for g in groups for t in g.traces]
    chunks = [len(c) for t in traces for c in t.chunks]
    return {"reward_mean": float(np.mean([x for g in groups for x in g.rewards])),
            "chunks_mean": float(np.mean([len(t.chunks) for t in traces])),
            "trace_len_mean": float(np.mean([sum(len(c) for c in t.chunks) for t in traces])),
            "response_len_mean": float(np.mean(chunks)),
            "response_len_max": float(np.max(chunks)),
            # traces that never ended on a stop token (the chunk count ran out)
            "truncated_frac": float(np.mean([t.finish[-1] != "stop" for t in traces]))}


def select_snapshots(num_steps: int, k: int, rng: np.random.Generator,
                     omit_initial: bool = False) -> list[int]:
    """k distinct chain indices drawn uniformly from {0..T-1} (or {1..T-1}), sorted."""
    lo = 1 if omit_initial else 0
    if k > num_steps - lo:
        raise ValueError(f"cannot draw {k} distinct snapshots from {num_steps - lo} indices")
    return sorted(int(i) for i in rng.choice(np.arange(lo, num_steps), size=k, replace=False))


PromptFn = Callable[[str, str, bool], list[int]]  # (problem, context, conditioned) -> ids


def build_groups(chains: Sequence[Chain], k: int, rng: np.random.Generator,
                 prompt: PromptFn, problems: Sequence[str], *,
                 num_steps: int, omit_initial: bool = False, summary_free: bool = False,
                 labels: Sequence[str] = ()) -> list[Group]:
    """Phase B: k snapshot prompts per chain, one group each (ids 0, 1, ... in order).

    prompt(problem, context, conditioned): the exact reasoning prompt ids (see
    `RCTRollout.reasoning_prompt`); snapshot i > 0 continues from a context."""
    groups: list[Group] = []
    for c_index, chain in enumerate(chains):
        for i in select_snapshots(num_steps, k, rng, omit_initial):
            ctx = chain.context(i, summary_free)
            prompt_ids = prompt(problems[chain.problem_index], ctx, i > 0)
            groups.append(Group(len(groups), REASONING, chain.problem_index, c_index, i,
                                prompt_ids, ctx, labels[chain.problem_index] if labels else ""))
    return groups


def check_groups(groups: Sequence[Group], group_size: int) -> None:
    """Group ids unique and every group exactly `group_size` responses (loud, not silent)."""
    ids = [g.group_id for g in groups]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate group ids in one step")
    for g in groups:
        if len(g.responses) != group_size:
            raise ValueError(f"group {g.group_id} has {len(g.responses)} responses, expected "
                             f"{group_size}")


# ---------------------------------------------------------------- the rollout worker



@functools.lru_cache(maxsize=2)
def shared_engine(config, tokenizer, settings: RCSettings, sampling: SamplingParams,
                  buckets: Buckets, mesh, data_axes, shardings_key: IdentityKey,
                  slots: int) -> RCEngine:
    """One `RCEngine` per (model config, tokenizer, settings, mesh...): its jitted program
    compiles once per process even if several trainers are built (tests, restarts).
    Weights are an argument of every `run`."""
    return RCEngine(config, tokenizer, settings, sampling, slots=slots, buckets=buckets,
                    mesh=mesh, param_shardings=shardings_key.value,
                    **({} if data_axes is None else {"data_axes": data_axes}))


RewardFn = Callable[[Sequence[tuple[str, str]]], Sequence[float]]


class RCTRollout:
    """Generates one step's chains and groups with the weights each call is given.

    Holds one `RCEngine` (its program compiles once) and reuses the sampler's cached
    programs; weights are an argument of every generating call, so the trainer passes its
    new params without mutating anything here (same shapes: nothing recompiles).
    """

    def __init__(self, config, tokenizer, settings: RCSettings,
                 sampling: SamplingParams, *, buckets: Buckets = Buckets(), mesh=None,
                 data_axes: tuple[str, ...] | None = None, param_shardings: Any = None,
                 seed: int = 0, summary_free: bool = False,
                 summary_free_template_spec: str = "self_refine", max_rows: int = 0):
        """max_rows: most sequences one sampler / engine call decodes at once (0: all);
        bounds the KV cache (Qwen3-4B at 20k context: ~3 GB per row in bf16). Row keys
        make the samples independent of how rows are split into calls."""
        self.max_rows = max_rows
        self.config, self.tokenizer, self.settings = config, tokenizer, settings
        self.sampling, self.buckets, self.mesh = sampling, buckets, mesh
        self.data_axes, self.param_shardings, self.seed = data_axes, param_shardings, seed
        self.summary_free = summary_free
        self.engine = shared_engine(config, tokenizer, settings, sampling, buckets, mesh,
                                    data_axes, IdentityKey(param_shardings), max_rows or 8)
        self.stop_ids = tuple(tokenizer.eos_ids)
        # Every prompt is built as text and encoded whole (docs/design.md, "Prompts"):
        # the engine's own prompt builder, so chains and training prompts agree.
        self.prompts: PhasePrompts = self.engine.prompts
        # Summary-free chains: the same prompt builder with the refine/verify template as
        # the reasoning phase's (its context is the previous attempt).
        self.reasoning_prompts = self.prompts
        if summary_free:
            self.reasoning_prompts = PhasePrompts(
                self.prompts.tokenizer, summary_free_template(summary_free_template_spec),
                self.prompts.summary_template, self.prompts.use_think_tags,
                self.prompts.summary_tokenizer)

    def reasoning_prompt(self, problem: str, context: str, conditioned: bool) -> list[int]:
        """Exact ids of a reasoning prompt from (problem, summary or previous attempt)."""
        return self.reasoning_prompts.reasoning_ids(problem, context, conditioned)

    # ------------------------------------------------------------ sampling helper
    def generate(self, params: Any, prompts: Sequence[Sequence[int]], budget: int,
                 keys: np.ndarray, num_samples: int = 1) -> GenerationResult:
        """One batched sampler call; keys: [len(prompts) * num_samples, 2]."""
        return generate(params, self.config, prompts, self.sampling,
                        jax.random.PRNGKey(0), budget, self.stop_ids,
                        num_samples=num_samples, pad_id=self.tokenizer.pad_id,
                        buckets=self.buckets, mesh=self.mesh, data_axes=self.data_axes,
                        param_shardings=self.param_shardings, row_keys=keys)

    def generate_chunked(self, params: Any, prompts: Sequence[Sequence[int]], budget: int,
                         keys: np.ndarray, num_samples: int = 1) -> list[list[int]]:
        """Generated token lists of `generate`, split into calls of at most `max_rows`."""
        per_call = max(1, self.max_rows // num_samples) if self.max_rows else len(prompts)
        out: list[list[int]] = []
        for start in range(0, len(prompts), per_call):
            part = prompts[start:start + per_call]
            rows = slice(start * num_samples, (start + len(part)) * num_samples)
            out.extend(self.generate(params, part, budget, keys[rows], num_samples).tokens)
        return out


    # ------------------------------------------------------------ phase A
    def run_chains(self, params: Any, problems: Sequence[str], chains: Sequence[Chain],
                   keys: np.ndarray, num_steps: int) -> list[Chain]:
        """Fills every chain's reasoning (and summaries) for `num_steps` steps.

        problems: the step's problem texts; chains[j].problem_index points into them.
        keys: [len(chains), 2], one per chain.
        """
        if self.summary_free:
            per_call = self.max_rows or len(chains)
            for start in range(0, len(chains), per_call):  # bounded KV-cache memory
                self._run_summary_free(params, problems, chains[start:start + per_call],
                                       keys[start:start + per_call], num_steps)
            return list(chains)
        # The engine's slots (max_rows of them) bound the cache; chains stream through.
        jobs = [Job(problems[c.problem_index], k, num_steps,
                    initial_summary=self.tokenizer.decode(c.seed_ids) if c.seed_ids else "")
                for c, k in zip(chains, keys)]
        outs, _ = self.engine.run(params, jobs)
        encode = self.tokenizer.encode
        for chain, out in zip(chains, outs):
            # Cleaned texts (what the next prompt sees) and their ids for the snapshot plans.
            rec = out.record
            chain.reasoning_text, chain.summary_text = rec.reasoning_clean, rec.summary_clean
            chain.reasoning_ids = [encode(t) for t in rec.reasoning_clean]
            chain.summary_ids = [encode(t) for t in rec.summary_clean]
        return list(chains)

    def _run_summary_free(self, params, problems, chains, keys, num_steps):
        tok = self.tokenizer
        previous = [tok.decode(c.seed_ids) if c.seed_ids else "" for c in chains]
        for t in range(num_steps):
            prompts = [self.reasoning_prompt(problems[c.problem_index], a, t > 0 or bool(a))
                       for c, a in zip(chains, previous)]
            res = self.generate(params, prompts, self.settings.max_reasoning_tokens,
                                fold(keys, 2 * t))  # the RC engine's reasoning phase key
            previous = [clean_reasoning(tok.decode(x)) for x in res.tokens]
            for chain, text in zip(chains, previous):
                chain.reasoning_text.append(text)
                chain.reasoning_ids.append(tok.encode(text))
        return list(chains)

    # ------------------------------------------------------------ phase C
    def sample_groups(self, params: Any, groups: Sequence[Group], group_size: int,
                      budget: int, keys: np.ndarray) -> None:
        """Samples `group_size` responses for every group, in as few sampler calls as
        `max_rows` allows (each call's G rows per prompt share one prefill).

        keys: [len(groups) * group_size, 2] (group-major, like the sampler's rows).
        """
        per_call = max(1, self.max_rows // group_size) if self.max_rows else len(groups)
        for start in range(0, len(groups), per_call):
            part = groups[start:start + per_call]
            rows = slice(start * group_size, (start + len(part)) * group_size)
            self._sample_part(params, part, group_size, budget, keys[rows])

    def _sample_part(self, params, groups, group_size, budget, keys) -> None:
        res = self.generate(params, [g.prompt for g in groups], budget, keys,
                            num_samples=group_size)
        for row, (toks, fin, lp, model_lp) in enumerate(zip(
                res.tokens, res.finish_reasons, res.logprobs, res.model_logprobs)):
            g = groups[row // group_size]
            g.responses.append(list(toks))
            g.finish.append(fin)
            # The sampling distribution's log-probs (temperature applied); with no
            # truncation they are the policy's own log-probs at the sampler's numerics.
            g.sampler_logprobs.append(np.asarray(lp, np.float32))
            g.texts.append(self.tokenizer.decode(toks, skip_special_tokens=True))

    # ------------------------------------------------------------ Delethink rollouts
    def delethink_head(self, problem: str, template_spec: str) -> list[int]:
        """Chunk 0's prompt: the solve template, chat-wrapped and encoded whole (as
        `MethodContext.prompt` builds it for evaluation)."""
        text = load_template(template_spec, "solve").format(problem=problem)
        return self.tokenizer.encode(self.tokenizer.phase_prompt(
            text, use_think_tags=self.settings.use_think_tags))

    def delethink_groups(self, params: Any, problems: Sequence[str], labels: Sequence[str],
                         keys: np.ndarray, group_size: int, spec) -> list[TraceGroup]:
        """`group_size` Delethink traces per problem (group i = problem i), decoded.

        keys: [len(problems) * group_size, 2], problem-major; spec: the `delethink`
        config section. Rows run in calls of at most `max_rows` (the keys make the traces
        independent of that split).
        """
        heads = [self.delethink_head(p, spec.template) for p in problems]
        rows = [h for h in heads for _ in range(group_size)]
        per_call = self.max_rows or len(rows)
        traces: list[Trace] = []
        for start in range(0, len(rows), per_call):
            traces.extend(run_traces(rows[start:start + per_call],
                                     keys[start:start + per_call],
                                     functools.partial(self.generate, params), spec))
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=True)
        return [TraceGroup(i, i, labels[i], part,
                           ["".join(decode(c) for c in t.chunks) for t in part])
                for i, part in enumerate(traces[i * group_size:(i + 1) * group_size]
                                         for i in range(len(problems)))]

    # ------------------------------------------------------------ summarizer training
    def build_summary_groups(self, chains: Sequence[Chain], k: int, rng: np.random.Generator,
                             problems: Sequence[str], first_id: int,
                             num_steps: int, labels: Sequence[str]) -> list[Group]:
        """Summary-training prompts Summ(problem, s_i, r_i) for k distinct i per chain."""
        groups: list[Group] = []
        for c_index, chain in enumerate(chains):
            for i in select_snapshots(num_steps, k, rng):
                existing = chain.context(i)
                prompt = self.prompts.summary_ids(problems[chain.problem_index], existing,
                                                  chain.reasoning_text[i])
                groups.append(Group(first_id + len(groups), SUMMARY, chain.problem_index,
                                    c_index, i, prompt, existing,
                                    labels[chain.problem_index]))
        return groups

    def continuation_prompts(self, group: Group, problem: str) -> list[list[int]]:
        """Reasoning prompts conditioned on each sampled summary of a summary group."""
        return [self.prompts.reasoning_ids(problem, clean_summary(text), True)
                for text in group.texts]


def score(items: Sequence[tuple[str, str]], reward_fn: RewardFn) -> np.ndarray:
    """Rewards [N] float32 of (response text, gold) pairs."""
    if not items:
        return np.zeros((0,), np.float32)
    out = np.asarray(list(reward_fn(items)), np.float32)
    if out.shape != (len(items),):
        raise ValueError(f"reward function returned {out.shape} rewards for {len(items)} items")
    return out


def make_reward_fn(name: str, timeout_s: float) -> RewardFn:
    """Reward functions by name: 'math' (math-verify grader pool, the default) or
    'string_match' (normalised string equality of the last box; no subprocesses)."""
    grader: MathVerifyGrader | StringMatchGrader
    if name == "math":
        grader = MathVerifyGrader(timeout_s=timeout_s)
    elif name == "string_match":
        grader = StringMatchGrader()
    else:
        raise ValueError(f"unknown reward {name!r}; choose 'math' or 'string_match'")

    def reward(items: Sequence[tuple[str, str]]) -> list[float]:
        return [float(r.correct) for r in grader.grade_batch(list(items))]

    # The trainer closes the grader's worker pool when it is done.
    reward.grader = grader  # type: ignore[attr-defined]
    return reward
