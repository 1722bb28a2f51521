"""Reading a results file: rc_jax JSONL or the authors' JSON list, as `RolloutRecord`s.

Each line (or list element) is read by `rc_jax.records.RolloutRecord.from_json`, which
validates it (the layout: docs/design.md, "The per-step record"); this module adds what
only a whole file can check: duplicate (problem, sample) pairs and one gold label per
problem. Step t's answer is read from ``reasoning_store[t]``, except in records with
``answer_from = "trace"`` (Delethink), see `RolloutRecord.answer_texts`.
"""
from __future__ import annotations

from pathlib import Path

from rc_jax.data.jsonio import DataError, read_json_records
from rc_jax.records import RolloutRecord


def load_rollouts(path: str | Path) -> list[RolloutRecord]:
    """All rollouts of a results file (rc_jax JSONL or the authors' JSON list).

    A record without ``sample_id`` gets its running index within its problem.
    Raises DataError for malformed records, duplicate (problem_id, sample_id)
    pairs, or samples of one problem that disagree on the gold label.
    """
    rollouts: list[RolloutRecord] = []
    seen: dict[tuple[str, str], str] = {}
    labels: dict[str, tuple[str, str]] = {}
    per_problem: dict[str, int] = {}
    for where, record in read_json_records(path, allow_torn_tail=True):
        pid = str(record.get("problem_id"))
        rollout = RolloutRecord.from_json(record, where, default_sample_id=per_problem.get(pid, 0))
        per_problem[pid] = per_problem.get(pid, 0) + 1
        if rollout.key in seen:
            raise DataError(
                f"{where}: duplicate rollout problem_id={rollout.problem_id!r} sample_id={rollout.sample_id!r} "
                f"(first at {seen[rollout.key]})"
            )
        seen[rollout.key] = where
        first_label = labels.setdefault(rollout.key[0], (rollout.label, where))
        if first_label[0] != rollout.label:
            raise DataError(
                f"{where}: label {rollout.label!r} differs from {first_label[0]!r} given for the same "
                f"problem_id at {first_label[1]}"
            )
        rollouts.append(rollout)
    return rollouts
