"""The one rollout record: a (problem, sample) of any method, per step, and its results line.

Every producer fills a `RolloutRecord`: the method runners (`rc_jax.methods`), RC's
reference loop and device engine (through the in-flight state `rc_jax.rc.rollout.Rollout`,
which holds one), Delethink's traces (`delethink_records`) and RL's chains read its cleaned
texts. The CLI and the toy stamp it with its identity (`with_identity`) and write
`to_json()`, one line of `results.jsonl`; evaluation reads the lines back with `from_json`,
which validates them and names the field and `file:line` of the first bad one. One type, so
the results-line schema is written down once (docs/design.md, "The per-step record").

Per step t: `reasoning_text[t]` is the step's raw decoded generation (special tokens
skipped, nothing cut at `</think>`, nothing stripped; -> `reasoning_store`), the text the
step's answer is graded from; `reasoning_clean[t]` the cleaned text a later prompt sees
(-> `reasoning_clean`); `summary_text[t]` / `summary_clean[t]` the same for the
summarization phase (-> `summarization_store` / `summary_clean`). `reasoning_tokens[t]` /
`summary_tokens[t]` are the tokens *generated* in step t (stop tokens included), so their
running sum is the compute spent; `prompt_tokens[t]` / `summary_prompt_tokens[t]` the
tokens prefilled for the step's generations. Steps without a summary phase have summary
texts "", 0 tokens and finish reason "none". In files from other tools a token count may
be missing (an empty column) or None (unknown for that step).

`answer_from = "trace"` (Delethink: a step is one chunk of a longer trace) grades step t
from `reasoning_store[0..t]` joined (`answer_texts`); absent from the line means "step".
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from rc_jax.data.jsonio import DataError

NO_SUMMARY = "none"  # summary finish reason of a step that ran no summarization phase
TOKEN_KINDS = ("prompt", "reasoning", "summary_prompt", "summary")
ANSWER_FROM = ("step", "trace")  # record field `answer_from`; absent: "step"
# Token-count kind of the line -> column of the record.
_TOKEN_COLUMNS = {"prompt": "prompt_tokens", "reasoning": "reasoning_tokens",
                  "summary_prompt": "summary_prompt_tokens", "summary": "summary_tokens"}
# Keys of a results line that are columns or identity, not method fields.
_LINE_KEYS = frozenset({"problem", "label", "answer", "problem_id", "sample_id", "method",
                        "reasoning_store", "summarization_store", "token_counts",
                        "finish_reasons", "wall_time_s", "config_hash", "reasoning_clean",
                        "summary_clean", "answer_from"})
# One step of the progress log (`rc_jax.progress`), RC's layout: field -> column.
_STEP_FIELDS = {"reasoning_raw": "reasoning_text", "summary_raw": "summary_text",
                "reasoning_clean": "reasoning_clean", "summary_clean": "summary_clean",
                "prompt_tokens": "prompt_tokens", "reasoning_tokens": "reasoning_tokens",
                "reasoning_finish": "reasoning_finish",
                "summary_prompt_tokens": "summary_prompt_tokens",
                "summary_tokens": "summary_tokens", "summary_finish": "summary_finish"}


@dataclasses.dataclass
class RolloutRecord:
    """One (problem, sample) rollout of any method: identity plus per-step columns.

    Runners leave the identity empty; `with_identity` fills it when the line is written.
    Not written to the line: `reasoning_ids[t]` (the ids generated in step t) and, when
    asked for (`record_prompts`), the prompt ids of every generation (`prompts[t]` lists
    step t's reasoning prompts: one for single-chain methods, one per population member
    for scaffolds; `summary_prompts[t]` its summarization prompts); `where` and
    `unreadable` of a record read back from a file (see `from_json`).
    """
    # ---- identity
    problem: str = ""
    label: str = ""
    problem_id: Any = None  # as written in the file (str or int); grouped by str()
    sample_id: Any = None
    method: str | None = None
    answer_from: str = "step"  # "trace": step t's answer is read from steps 0..t joined
    # ---- per step
    reasoning_text: list[str] = dataclasses.field(default_factory=list)
    reasoning_clean: list[str] = dataclasses.field(default_factory=list)
    summary_text: list[str] = dataclasses.field(default_factory=list)
    summary_clean: list[str] = dataclasses.field(default_factory=list)
    prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_finish: list[str] = dataclasses.field(default_factory=list)
    summary_finish: list[str] = dataclasses.field(default_factory=list)
    method_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    # ---- of the run that wrote it
    wall_time_s: float | None = None
    config_hash: str | None = None
    # ---- not written to the results line
    reasoning_ids: list[list[int]] = dataclasses.field(default_factory=list)
    prompts: list[list[list[int]]] = dataclasses.field(default_factory=list)
    summary_prompts: list[list[list[int]]] = dataclasses.field(default_factory=list)
    where: str = dataclasses.field(default="", compare=False)  # "file: line N" for messages
    # Why a record read back cannot be graded (text that is not valid Unicode), or None.
    # Such a rollout is graded as unreadable (no answer, incorrect) and listed in the
    # report; its texts hold U+FFFD where the bad characters were.
    unreadable: str | None = dataclasses.field(default=None, compare=False)

    # ---------------------------------------------------------------- building
    def add_step(self, raw: str, clean: str, ids: Sequence[int], prompt_tokens: int,
                 tokens: int, finish: str, *, summary: str = "", summary_clean: str = "",
                 summary_prompt_tokens: int = 0, summary_tokens: int = 0,
                 summary_finish: str = NO_SUMMARY) -> None:
        """Appends one finished step (a step without a summary phase by default)."""
        self.reasoning_text.append(raw)
        self.reasoning_clean.append(clean)
        self.reasoning_ids.append(list(ids))
        self.prompt_tokens.append(int(prompt_tokens))
        self.reasoning_tokens.append(int(tokens))
        self.reasoning_finish.append(finish)
        self.summary_text.append(summary)
        self.summary_clean.append(summary_clean)
        self.summary_prompt_tokens.append(int(summary_prompt_tokens))
        self.summary_tokens.append(int(summary_tokens))
        self.summary_finish.append(summary_finish)

    def with_identity(self, problem: Any, sample_id: int, method: str, wall: float,
                      config_hash: str) -> "RolloutRecord":
        """A copy stamped with what the results line needs beside the steps: `problem` is
        a `rc_jax.data.Problem` (its text, gold answer and id)."""
        return dataclasses.replace(self, problem=problem.problem, label=problem.answer,
                                   problem_id=problem.problem_id, sample_id=sample_id,
                                   method=method, wall_time_s=wall, config_hash=config_hash)

    # ---------------------------------------------------------------- views
    @property
    def num_steps(self) -> int:
        return len(self.reasoning_text)

    @property
    def key(self) -> tuple[str, str]:
        """(problem_id, sample_id) as strings: a rollout's identity in a results file."""
        return str(self.problem_id), str(self.sample_id)

    @property
    def token_counts(self) -> dict[str, list[int]]:
        """The line's `token_counts`: per kind (`TOKEN_KINDS`), the per-step counts."""
        return {kind: getattr(self, column) for kind, column in _TOKEN_COLUMNS.items()}

    @property
    def extra(self) -> dict[str, Any]:
        """Line fields beside the authors' stores: cleaned texts, `answer_from` when it is
        not "step", method fields."""
        trace = {} if self.answer_from == "step" else {"answer_from": self.answer_from}
        return {"reasoning_clean": self.reasoning_clean, "summary_clean": self.summary_clean,
                **trace, **self.method_fields}

    def answer_texts(self) -> tuple[str, ...]:
        """Per step, the text its answer is graded from (see the module docstring)."""
        if self.answer_from != "trace":
            return tuple(self.reasoning_text)
        return tuple("".join(self.reasoning_text[: t + 1]) for t in range(self.num_steps))

    # ---------------------------------------------------------------- the results line
    def to_json(self) -> dict[str, Any]:
        """One results line: the authors' fields, then rc_jax's token counts, finish
        reasons, timing, config hash and `extra`, in this order."""
        return {
            "problem": self.problem, "label": self.label,
            "problem_id": self.problem_id, "sample_id": self.sample_id, "method": self.method,
            "reasoning_store": self.reasoning_text,      # raw phase outputs
            "summarization_store": self.summary_text,
            "token_counts": self.token_counts,
            "finish_reasons": {"reasoning": self.reasoning_finish,
                               "summary": self.summary_finish},
            "wall_time_s": None if self.wall_time_s is None else round(self.wall_time_s, 3),
            "config_hash": self.config_hash,
            **self.extra,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], where: str,
                  default_sample_id: int = 0) -> "RolloutRecord":
        """Validates one results line (rc_jax's, or an element of the authors' JSON list)
        and reads it back; `where` ("file: line N") starts every error message, which
        names the field. A line without `sample_id` gets `default_sample_id`."""
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
            raise DataError(f"{where}: field 'answer_from' must be one of {ANSWER_FROM}, "
                            f"got {answer_from!r}")
        finish = record.get("finish_reasons")
        finish = finish if isinstance(finish, dict) else {}
        bad: list[str] = []
        reasoning = _sanitize(_text_list(record["reasoning_store"], where, "reasoning_store"),
                              "reasoning_store", bad)
        summaries = _sanitize(_text_list(record.get("summarization_store") or [], where,
                                         "summarization_store"), "summarization_store", bad)
        (label,) = _sanitize([str(label)], "label", bad)
        problem_id = _clean_id(_id(record["problem_id"], where, "problem_id"), "problem_id", bad)
        sample_id = _clean_id(_id(record.get("sample_id", default_sample_id), where, "sample_id"),
                              "sample_id", bad)
        counts = _token_counts(record.get("token_counts"), where)
        return cls(
            problem=str(record.get("problem") or ""), label=label, problem_id=problem_id,
            sample_id=sample_id, method=str(method) if method is not None else None,
            answer_from=answer_from, reasoning_text=reasoning, summary_text=summaries,
            reasoning_clean=_list(record.get("reasoning_clean")),
            summary_clean=_list(record.get("summary_clean")),
            prompt_tokens=counts.get("prompt", []), reasoning_tokens=counts.get("reasoning", []),
            summary_prompt_tokens=counts.get("summary_prompt", []),
            summary_tokens=counts.get("summary", []),
            reasoning_finish=_list(finish.get("reasoning")),
            summary_finish=_list(finish.get("summary")),
            method_fields={k: v for k, v in record.items() if k not in _LINE_KEYS},
            wall_time_s=record.get("wall_time_s"), config_hash=record.get("config_hash"),
            where=where,
            unreadable=f"{where}: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            if bad else None)

    # ---------------------------------------------------------------- progress-log steps
    def step_json(self, t: int) -> dict[str, Any]:
        """Step t as the progress log keeps it (`rc_jax.progress`): raw and cleaned texts,
        token counts and finish reasons, all a rollout needs to continue."""
        return {name: getattr(self, column)[t] for name, column in _STEP_FIELDS.items()}

    @classmethod
    def from_steps(cls, steps: Sequence[dict[str, Any]]) -> "RolloutRecord":
        """A record of the steps read back from the progress log (`step_json` lines)."""
        record = cls()
        for d in steps:  # generated ids are not logged: as RC's own steps, () per step
            record.add_step(d["reasoning_raw"], d["reasoning_clean"], (), d["prompt_tokens"],
                            d["reasoning_tokens"], d["reasoning_finish"], summary=d["summary_raw"],
                            summary_clean=d["summary_clean"],
                            summary_prompt_tokens=d["summary_prompt_tokens"],
                            summary_tokens=d["summary_tokens"], summary_finish=d["summary_finish"])
        return record


def _list(value: Any) -> list:
    return list(value) if isinstance(value, list) else []


def _text_list(value: Any, where: str, name: str) -> list[str]:
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{name}' must be a list of strings (one per step), "
                        f"got {type(value).__name__}")
    out = []
    for t, item in enumerate(value):
        if item is None:  # a failed step: no text, so no answer
            item = ""
        if not isinstance(item, str):
            raise DataError(f"{where}: {name}[{t}] must be a string, got {type(item).__name__}")
        out.append(item)
    return out


def _unencodable(text: str) -> str | None:
    """A short description of the first character UTF-8 cannot encode, or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return f"lone UTF-16 surrogate U+{ord(text[e.start]):04X} at character {e.start}"


def _sanitize(texts: list[str], name: str, problems: list[str]) -> list[str]:
    """`texts` with unencodable characters replaced by U+FFFD; each one noted in `problems`."""
    out = []
    for t, text in enumerate(texts):
        bad = _unencodable(text)
        if bad is not None:
            what = f"{name}[{t}]" if name.endswith("_store") else name
            problems.append(f"{what} holds text that cannot be encoded ({bad})")
            text = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
        out.append(text)
    return out


def _clean_id(value: Any, name: str, problems: list[str]) -> Any:
    return _sanitize([value], name, problems)[0] if isinstance(value, str) else value


def _token_counts(value: Any, where: str) -> dict[str, list[Any]]:
    """The per-kind counts of a line (a kind may be missing; a count may be None)."""
    if value is None:
        return {}
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
        out[kind] = list(counts)
    return out


def _id(value: Any, where: str, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field '{name}' must be a string or integer, got {value!r}")
    return value
