"""Reading rollout results: rc_jax JSONL and the authors' JSON list, one record type.

A record is one (problem, sample) rollout:
``problem, label, problem_id, sample_id, reasoning_store[T], summarization_store[T]``
plus, in rc_jax's files, optional ``method``, ``token_counts`` ({"prompt", "reasoning",
"summary_prompt", "summary"}: per-step ints) and ``finish_reasons``. Baselines
(autoregressive, self-refine) write the same shape, possibly with an empty
summarization_store.

Step t's answer is read from ``reasoning_store[t]``, except in records with
``answer_from = "trace"`` (Delethink: a step is one chunk of a longer trace), where it
is read from the trace so far, ``reasoning_store[0..t]`` joined (`Rollout.answer_texts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rc_jax.data.jsonio import DataError, read_json_records

TOKEN_KINDS = ("prompt", "reasoning", "summary_prompt", "summary")
ANSWER_FROM = ("step", "trace")  # record field `answer_from`; absent: "step"


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
    # Why the record cannot be graded (text that is not valid Unicode), or None. Such a
    # rollout is graded as unreadable (no answer, incorrect) and listed in the report;
    # its texts hold U+FFFD where the bad characters were, so nothing downstream fails.
    unreadable: str | None = field(default=None, compare=False)
    answer_from: str = "step"  # "trace": step t's answer is read from steps 0..t joined

    def answer_texts(self) -> tuple[str, ...]:
        """Per step, the text its answer is graded from (see the module docstring)."""
        if self.answer_from != "trace":
            return self.reasoning
        return tuple("".join(self.reasoning[: t + 1]) for t in range(len(self.reasoning)))

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


def _unencodable(text: str) -> str | None:
    """A short description of the first character UTF-8 cannot encode, or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return f"lone UTF-16 surrogate U+{ord(text[e.start]):04X} at character {e.start}"


def _sanitize(texts: tuple[str, ...], where: str, name: str, problems: list[str]) -> tuple[str, ...]:
    """`texts` with unencodable characters replaced by U+FFFD; each one noted in `problems`."""
    out = []
    for t, text in enumerate(texts):
        bad = _unencodable(text)
        if bad is not None:
            what = f"{name}[{t}]" if name.endswith("_store") else name
            problems.append(f"{what} holds text that cannot be encoded ({bad})")
            text = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
        out.append(text)
    return tuple(out)


def _clean_id(value: Any, where: str, name: str, problems: list[str]) -> Any:
    return _sanitize((value,), where, name, problems)[0] if isinstance(value, str) else value


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
    answer_from = record.get("answer_from", "step")
    if answer_from not in ANSWER_FROM:
        raise DataError(f"{where}: field 'answer_from' must be one of {ANSWER_FROM}, got {answer_from!r}")
    finish = record.get("finish_reasons")
    bad: list[str] = []
    reasoning = _sanitize(_text_list(record["reasoning_store"], where, "reasoning_store"),
                          where, "reasoning_store", bad)
    summaries = _sanitize(_text_list(record.get("summarization_store") or [], where,
                                     "summarization_store"), where, "summarization_store", bad)
    (label,) = _sanitize((str(label),), where, "label", bad)
    return Rollout(
        where=where,
        problem_id=_clean_id(_id(record["problem_id"], where, "problem_id"), where, "problem_id", bad),
        sample_id=_clean_id(_id(record.get("sample_id", default_sample_id), where, "sample_id"),
                            where, "sample_id", bad),
        label=label,
        reasoning=reasoning,
        summaries=summaries,
        method=str(method) if method is not None else None,
        token_counts=_token_counts(record.get("token_counts"), where),
        finish_reasons={k: tuple(v) for k, v in finish.items() if isinstance(v, list)}
        if isinstance(finish, dict)
        else None,
        unreadable=f"{where}: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        if bad
        else None,
        answer_from=answer_from,
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
    for where, record in read_json_records(path, allow_torn_tail=True):
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
