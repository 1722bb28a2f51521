"""Evaluation of the toy: RC decoding and the other methods, graded per step.

Everything runs through the project's own pieces: `rc_jax.rc.engine.RCEngine` for RC,
the method runners of `rc_jax.methods` (`autoregressive`: one long generation read at
checkpoints; `delethink`: fixed-size chunks with a few tokens carried over), fed by the
CLI's batching loop (`rc_jax.batches.run_batches`), results lines written by
`rc_jax.records.RolloutRecord.to_json` as the CLI writes them, and
`rc_jax.eval.report.evaluate_files` (with the exact-match `StringMatchGrader`) for the
per-step accuracy and token metrics.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rc_jax.batches import run_batches
from rc_jax.data import Problem
from rc_jax.eval.grading import StringMatchGrader
from rc_jax.eval.report import evaluate_files
from rc_jax.methods import get_runner
from rc_jax.rc.engine import Job, RCEngine
from rc_jax.records import RolloutRecord
from rc_jax.sampling.keys import row_key


def rc_records(engine: RCEngine, params: Any, problems: Sequence[Problem], *, num_samples: int,
               num_steps: int, seed: int, method: str, batch_size: int = 0,
               log: Callable[[str], None] = print) -> list[dict]:
    """RC rollouts of every (problem, sample) with `params` (one compiled program serves
    every model of the same shape); the engine's slots stream through all of them.
    batch_size: unused (the engine's `slots` bound the batch); kept for callers."""
    del batch_size
    todo = [(p, j) for p in problems for j in range(num_samples)]
    jobs = [Job(p.problem, row_key(seed, p.problem_id, j), num_steps) for p, j in todo]
    walls: dict[int, float] = {}
    start = time.perf_counter()
    rollouts, _ = engine.run(params, jobs, on_done=lambda i, r, w: walls.__setitem__(i, w))
    out = [r.record.with_identity(p, j, method, walls[i], "").to_json()
           for i, ((p, j), r) in enumerate(zip(todo, rollouts))]
    log(f"  {method}: {len(out)} rollouts x {num_steps} steps in "
        f"{time.perf_counter() - start:.0f}s")
    return out


def method_records(name: str, ctx, problems: Sequence[Problem], *, num_samples: int,
                   seed: int, method: str, batch_size: int,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Records of the project's method runner `name` (`autoregressive`, `delethink`, ...)
    on every (problem, sample), `batch_size` rows per runner call, labelled `method`."""
    runner = get_runner(name)
    todo = [(p, j) for p in problems for j in range(num_samples)]
    out = []
    start = time.perf_counter()
    for records in run_batches(lambda texts, keys: runner(texts, keys, ctx), todo, batch_size,
                               seed, method):
        out += [r.to_json() for r in records]
    log(f"  {method}: {len(out)} rollouts in {time.perf_counter() - start:.0f}s")
    return out


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def grade(paths: Sequence[Path], labels: Sequence[str], output_dir: Path) -> dict[str, Any]:
    """Per-step metrics of every results file (exact match of the last box)."""
    return evaluate_files(paths, output_dir, grader=StringMatchGrader(), labels=labels,
                          progress=False, plots=True)


def per_difficulty(records: Sequence[dict], graded: dict[tuple[str, int], list[bool]],
                   steps_needed: dict[str, int], step: int) -> dict[int, float]:
    """Accuracy at `step` (1-based) per number of RC steps a problem needs."""
    buckets: dict[int, list[float]] = {}
    for r in records:
        ok = graded[(str(r["problem_id"]), int(r["sample_id"]))]
        if len(ok) < step:
            continue
        buckets.setdefault(steps_needed[str(r["problem_id"])], []).append(float(ok[step - 1]))
    return {k: float(np.mean(v)) for k, v in sorted(buckets.items())}


def graded_by_record(records: Sequence[dict]) -> dict[tuple[str, int], list[bool]]:
    """(problem_id, sample_id) -> per-step correctness (same rule as the report: a step's
    answer is read from its own text, or from the trace so far for Delethink records)."""
    grader = StringMatchGrader()
    out = {}
    for i, r in enumerate(records):
        texts = RolloutRecord.from_json(r, f"record {i}").answer_texts()
        res = grader.grade_batch([(t, r["label"]) for t in texts])
        out[(str(r["problem_id"]), int(r["sample_id"]))] = [g.correct for g in res]
    return out


def paired_difference(a: dict[tuple[str, int], list[bool]], b: dict[tuple[str, int], list[bool]],
                      step: int) -> dict[str, float]:
    """Mean of (a - b) correctness at `step` over the (problem, sample) pairs both graded,
    with the standard error of that mean (paired: same problems, same sampling keys)."""
    keys = sorted(k for k in a.keys() & b.keys() if len(a[k]) >= step and len(b[k]) >= step)
    d = np.array([float(a[k][step - 1]) - float(b[k][step - 1]) for k in keys])
    if len(d) == 0:
        return {"difference": float("nan"), "stderr": float("nan"), "pairs": 0}
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"difference": float(d.mean()), "stderr": se, "pairs": int(len(d)),
            "a_only": int(np.sum(d > 0)), "b_only": int(np.sum(d < 0))}
