"""Reading rollout results: rc_jax JSONL and the authors' JSON list, one record type.

A record is one (problem, sample) rollout:
``problem, label, problem_id, sample_id, reasoning_store[T], summarization_store[T]``
plus, in rc_jax's files, optional ``method``, ``token_counts`` ({"prompt", "reasoning",
"summary"}: per-step ints) and ``finish_reasons``. Baselines (autoregressive,
self-refine) write the same shape, possibly with an empty summarization_store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rc_jax.data.jsonio import DataError, read_json_records

TOKEN_KINDS = ("prompt", "reasoning", "summary")


@dataclass(frozen=True)
class Rollout:
    """One (problem, sample) rollout read from a results file."""

    where: str  # "file: line N" for messages
    problem_id: Any  # as written in the file (str or int); grouped by str()
    sample_id: Any
    label: str
    reasoning: tuple[str, ...]
    summaries: tuple[str, ...]
    method: str | None = None
    token_counts: dict[str, tuple[int | None, ...]] | None = None
    finish_reasons: dict[str, tuple[Any, ...]] | None = field(default=None, compare=False)

    @property
    def num_steps(self) -> int:
        return len(self.reasoning)

    @property
    def key(self) -> tuple[str, str]:
        return str(self.problem_id), str(self.sample_id)


def _text_list(value: Any, where: str, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{name}' must be a list of strings (one per step), got {type(value).__name__}")
    out = []
    for t, item in enumerate(value):
        if item is None:  # a failed step: no text, so no answer
            item = ""
        if not isinstance(item, str):
            raise DataError(f"{where}: {name}[{t}] must be a string, got {type(item).__name__}")
        out.append(item)
    return tuple(out)


def _token_counts(value: Any, where: str) -> dict[str, tuple[int | None, ...]] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DataError(f"{where}: field 'token_counts' must be an object, got {type(value).__name__}")
    out = {}
    for kind in TOKEN_KINDS:
        counts = value.get(kind)
        if counts is None:
            continue
        if not isinstance(counts, list) or not all(
            c is None or (isinstance(c, int) and not isinstance(c, bool) and c >= 0) for c in counts
        ):
            raise DataError(f"{where}: token_counts['{kind}'] must be a list of non-negative integers")
        out[kind] = tuple(counts)
    return out


def _id(value: Any, where: str, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field '{name}' must be a string or integer, got {value!r}")
    return value


def parse_rollout(record: dict[str, Any], where: str, default_sample_id: int) -> Rollout:
    """Validate one results record and convert it to a Rollout."""
    for name in ("problem_id", "reasoning_store"):
        if name not in record:
            keys = ", ".join(sorted(record)) or "(none)"
            raise DataError(f"{where}: missing field '{name}' (fields present: {keys})")
    label = record.get("label", record.get("answer"))
    if label is None:
        raise DataError(f"{where}: missing field 'label' (the gold answer)")
    method = record.get("method")
    finish = record.get("finish_reasons")
    return Rollout(
        where=where,
        problem_id=_id(record["problem_id"], where, "problem_id"),
        sample_id=_id(record.get("sample_id", default_sample_id), where, "sample_id"),
        label=str(label),
        reasoning=_text_list(record["reasoning_store"], where, "reasoning_store"),
        summaries=_text_list(record.get("summarization_store") or [], where, "summarization_store"),
        method=str(method) if method is not None else None,
        token_counts=_token_counts(record.get("token_counts"), where),
        finish_reasons={k: tuple(v) for k, v in finish.items() if isinstance(v, list)}
        if isinstance(finish, dict)
        else None,
    )


def load_rollouts(path: str | Path) -> list[Rollout]:
    """All rollouts of a results file (rc_jax JSONL or the authors' JSON list).

    A record without ``sample_id`` gets its running index within its problem.
    Raises DataError for malformed records, duplicate (problem_id, sample_id)
    pairs, or samples of one problem that disagree on the gold label.
    """
    rollouts: list[Rollout] = []
    seen: dict[tuple[str, str], str] = {}
    labels: dict[str, tuple[str, str]] = {}
    per_problem: dict[str, int] = {}
    for where, record in read_json_records(path):
        pid = str(record.get("problem_id"))
        rollout = parse_rollout(record, where, default_sample_id=per_problem.get(pid, 0))
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
