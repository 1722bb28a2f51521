"""Per-step metrics of graded rollouts: accuracy, pass@k, majority@k, tokens.

All functions are pure. Steps are 0-based internally and 1-based in reports.

Definitions (step t, over the samples that reached step t):

* accuracy: mean over problems of the per-problem fraction of correct samples
  (each problem weighs the same even if its sample counts differ).
* stderr: clustered standard error over problems, std(per-problem accuracy,
  ddof=1) / sqrt(P) (None for one problem). It treats the problems as drawn
  from a larger pool, the usual error bar for benchmark accuracy.
* stderr_samples: sampling error only, with the problem set held fixed:
  sqrt(sum_p s_p^2 / n_p) / P with s_p^2 the unbiased variance of problem p's
  outcomes (None unless every problem has >= 2 samples).
* pass@k: unbiased estimator 1 - C(n-c, k) / C(n, k) per problem, averaged over
  problems with n >= k.
* majority@k: expected correctness of a majority vote among k samples drawn
  without replacement (all subsets when there are at most ``max_subsets``,
  otherwise ``max_subsets`` seeded random subsets). Answers are grouped by their
  normalised string; samples without an answer do not vote; a tie is scored as
  the mean over the tied answers (random tie-break in expectation).
* tokens: mean per sample of prompt, reasoning and summary tokens at step t, and
  of the cumulative reasoning+summary tokens through step t. A mean is None when
  any sample at that step lacks the count: tokens are never approximated.
* compute (``compute``; every method, from the recorded counts): per step, the tokens
  *generated* (reasoning + summary), the tokens *prefilled* (the prompt of each phase:
  prompt + summary_prompt; a phase that did not run prefills nothing), their cumulative
  sum through step t (``cumulative_total`` = prefill + decode, the x axis of the
  accuracy-vs-compute plot), and the *context*: the longest sequence any generation of
  the step held, max(prompt + reasoning, summary_prompt + summary). A reasoning phase
  that generated with no prompt of its own continued the previous step's sequence (the
  autoregressive baseline's checkpoints): its context is that sequence's length plus the
  new tokens. ``peak_context`` is the largest context through step t (mean and max over
  samples). A missing summary_prompt count is 0 when the step generated no summary.
  Population scaffolds (RSA) record counts summed over their members: their context is
  an upper bound, the sum of the members' contexts.
"""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Sequence, cast

from rc_jax.eval.normalize import normalize_answer


@dataclass(frozen=True)
class StepOutcome:
    """Graded result and token counts of one step of one rollout."""

    extracted: str | None
    correct: bool
    timed_out: bool = False
    prompt_tokens: int | None = None
    reasoning_tokens: int | None = None
    summary_tokens: int | None = None
    summary_prompt_tokens: int | None = None


@dataclass(frozen=True)
class SampleOutcome:
    """All graded steps of one (problem, sample) rollout."""

    problem_id: str
    sample_id: str
    steps: tuple[StepOutcome, ...]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k).

    Raises ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # Product form avoids huge binomials: C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (std ddof=1 / sqrt(n)); None where undefined."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def sampling_stderr(per_problem: Sequence[Sequence[bool]]) -> float | None:
    """Standard error of the mean-of-problem-means from sampling noise only."""
    if not per_problem or any(len(o) < 2 for o in per_problem):
        return None
    total = 0.0
    for outcomes in per_problem:
        n = len(outcomes)
        p = sum(outcomes) / n
        total += p * (1 - p) / (n - 1)  # s_p^2 / n_p with s_p^2 = n p (1-p) / (n-1)
    return math.sqrt(total) / len(per_problem)


def _vote(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Credit of a majority vote among the given samples (see module docstring)."""
    votes: Counter[str] = Counter()
    credit: defaultdict[str, list[bool]] = defaultdict(list)
    for answer, ok in zip(answers, correct):
        key = normalize_answer(answer)
        if key is None:
            continue
        votes[key] += 1
        credit[key].append(ok)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [key for key, count in votes.items() if count == top]
    return sum(sum(credit[w]) / len(credit[w]) for w in winners) / len(winners)


def majority_at_k(
    answers: Sequence[str | None], correct: Sequence[bool], k: int, max_subsets: int = 200, seed: int = 0
) -> float:
    """Expected majority-vote correctness over k of the n samples of one problem."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"majority_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if math.comb(n, k) <= max_subsets:
        subsets: Any = itertools.combinations(range(n), k)
    else:
        rng = random.Random(seed)
        subsets = (rng.sample(range(n), k) for _ in range(max_subsets))
    scores = [_vote([answers[i] for i in s], [correct[i] for i in s]) for s in subsets]
    return sum(scores) / len(scores)


def default_ks(max_samples: int) -> list[int]:
    """1, powers of two below ``max_samples``, and ``max_samples`` itself."""
    ks = {1, max_samples}
    k = 2
    while k < max_samples:
        ks.add(k)
        k *= 2
    return sorted(k for k in ks if k >= 1)


def _strict_mean(values: Sequence[int | None]) -> float | None:
    """Mean, or None if empty or any value is missing (no silent partial averages)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def cumulative_tokens(sample: SampleOutcome, step: int) -> int | None:
    """Reasoning + summary tokens spent by ``sample`` through ``step`` (0-based)."""
    total = 0
    for s in sample.steps[: step + 1]:
        if s.reasoning_tokens is None or s.summary_tokens is None:
            return None
        total += s.reasoning_tokens + s.summary_tokens
    return total


@dataclass(frozen=True)
class StepCompute:
    """Compute accounting of one step of one rollout (see the module docstring)."""

    prefill: int
    decode: int
    context: int
    cumulative_total: int  # prefill + decode through this step
    peak_context: int      # largest context through this step


def compute_accounting(sample: SampleOutcome) -> list[StepCompute | None]:
    """Per step of ``sample``: its compute, or None from the first step lacking a count."""
    out: list[StepCompute | None] = []
    total = peak = sequence = 0  # sequence: length of the reasoning sequence so far
    for s in sample.steps:
        summary_prompt = s.summary_prompt_tokens
        if summary_prompt is None and s.summary_tokens == 0:
            summary_prompt = 0  # no summary generated: no summary phase ran
        counts = (s.prompt_tokens, s.reasoning_tokens, summary_prompt, s.summary_tokens)
        if any(c is None for c in counts):
            out += [None] * (len(sample.steps) - len(out))
            break
        prompt, reasoning, s_prompt, summary = cast(tuple[int, int, int, int], counts)
        if prompt > 0:
            sequence = prompt + reasoning
        elif reasoning > 0:
            sequence += reasoning  # continued the previous step's sequence (no new prompt)
        else:
            sequence = 0  # no reasoning phase ran
        context = max(sequence, s_prompt + summary)
        total += prompt + s_prompt + reasoning + summary
        peak = max(peak, context)
        out.append(StepCompute(prompt + s_prompt, reasoning + summary, context, total, peak))
    return out


def _compute_means(present: Sequence[SampleOutcome], step: int) -> dict[str, float | None]:
    rows = [compute_accounting(s)[step] for s in present]
    known = [r for r in rows if r is not None]
    full = len(known) == len(rows) and bool(rows)

    def mean(name: str) -> float | None:
        return sum(getattr(r, name) for r in known) / len(known) if full else None

    return {
        "prefill": mean("prefill"),
        "decode": mean("decode"),
        "context": mean("context"),
        "cumulative_total": mean("cumulative_total"),
        "peak_context": mean("peak_context"),
        "max_peak_context": max(r.peak_context for r in known) if full else None,
    }


def step_metrics(samples: Sequence[SampleOutcome], step: int, ks: Sequence[int]) -> dict[str, Any]:
    """Metrics of one step (0-based) over the samples that have it."""
    present = [s for s in samples if len(s.steps) > step]
    by_problem: dict[str, list[StepOutcome]] = defaultdict(list)
    for s in present:
        by_problem[s.problem_id].append(s.steps[step])
    outcomes = [[o.correct for o in outs] for outs in by_problem.values()]
    accuracy, stderr = mean_stderr([sum(o) / len(o) for o in outcomes])

    pass_k: dict[str, float | None] = {}
    maj_k: dict[str, float | None] = {}
    for k in ks:
        eligible = [outs for outs in by_problem.values() if len(outs) >= k]
        pass_k[str(k)] = (
            sum(pass_at_k(len(o), sum(x.correct for x in o), k) for o in eligible) / len(eligible) if eligible else None
        )
        maj_k[str(k)] = (
            sum(majority_at_k([x.extracted for x in o], [x.correct for x in o], k) for o in eligible) / len(eligible)
            if eligible
            else None
        )
    steps = [s.steps[step] for s in present]
    return {
        "step": step + 1,
        "num_samples": len(present),
        "num_problems": len(by_problem),
        "accuracy": accuracy,
        "stderr": stderr,
        "stderr_samples": sampling_stderr(outcomes),
        "pass_at_k": pass_k,
        "majority_at_k": maj_k,
        "no_answer": sum(o.extracted is None for o in steps),
        "timed_out": sum(o.timed_out for o in steps),
        "mean_tokens": {
            "prompt": _strict_mean([o.prompt_tokens for o in steps]),
            "reasoning": _strict_mean([o.reasoning_tokens for o in steps]),
            "summary": _strict_mean([o.summary_tokens for o in steps]),
            "cumulative": _strict_mean([cumulative_tokens(s, step) for s in present]),
        },
        "compute": _compute_means(present, step),
    }


def compute_metrics(samples: Sequence[SampleOutcome], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Per-step metrics for one input, plus notes on uneven step counts.

    ``ks`` defaults to ``default_ks`` of the largest number of samples per problem.
    """
    if not samples:
        raise ValueError("compute_metrics needs at least one sample")
    per_problem = Counter(s.problem_id for s in samples)
    if ks is None:
        ks = default_ks(max(per_problem.values()))
    max_steps = max(len(s.steps) for s in samples)
    notes = []
    short = [s for s in samples if len(s.steps) < max_steps]
    if short:
        notes.append(
            f"{len(short)} of {len(samples)} samples have fewer than {max_steps} steps; "
            "each step's metrics use only the samples that reached it"
        )
    if len(set(per_problem.values())) > 1:
        notes.append(
            f"problems have different sample counts ({min(per_problem.values())}-{max(per_problem.values())}); "
            "pass@k/majority@k use problems with at least k samples"
        )
    return {
        "num_samples": len(samples),
        "num_problems": len(per_problem),
        "max_steps": max_steps,
        "ks": list(ks),
        "notes": notes,
        "steps": [step_metrics(samples, t, ks) for t in range(max_steps)],
    }
