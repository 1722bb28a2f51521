"""Problem sets from JSON/JSONL files, Hugging Face datasets and TFDS.

Every source is mapped to one record type, ``Problem(problem_id, problem, answer)``.
Field names are auto-detected from common conventions or given explicitly;
dotted names reach into nested objects (``reward_model.ground_truth``).

Sources accepted by ``load_problems``:

* ``path/to/file.json`` (a JSON list of objects) or ``path/to/file.jsonl``;
* ``path/to/file.parquet`` / ``.csv`` (read with ``datasets``);
* ``path/to/dir``: a dataset saved with ``save_to_disk``, or a directory of
  data files (parquet/json/jsonl/csv) that ``datasets.load_dataset`` understands;
* ``hf:<dataset id or local dir>[:split]``: Hugging Face ``datasets``;
* ``tfds:<name>[:split]``: TensorFlow Datasets (optional dependency).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from rc_jax.data.jsonio import DataError, read_json_records
from rc_jax.eval.extract import extract_boxed

# Candidate field names in priority order. `solution` is last for answers because
# it usually holds a whole worked solution (its last \boxed{} is then the answer).
PROBLEM_FIELDS: tuple[str, ...] = ("problem", "question", "prompt", "Problem", "Question", "input", "query")
ANSWER_FIELDS: tuple[str, ...] = (
    "answer",
    "final_answer",
    "label",
    "ground_truth",
    "reward_model.ground_truth",
    "expected_answer",
    "target",
    "Answer",
    "solution",
)
ID_FIELDS: tuple[str, ...] = (
    "problem_id",
    "id",
    "unique_id",
    "uid",
    "question_id",
    "idx",
    "index",
    "ID",
    "extra_info.index",
)

_HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HF_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_DEFAULT_SPLITS = ("test", "validation", "train")

TFDS_INSTALL_HINT = (
    "TFDS sources need `pip install tensorflow-datasets tensorflow` "
    "(TensorFlow-free reading via tfds.data_source also works for datasets already "
    "prepared in ArrayRecord format, with `pip install tensorflow-datasets array_record`)"
)


@dataclass(frozen=True)
class Problem:
    """One problem: a stable id, the problem statement, and the gold answer text."""

    problem_id: str
    problem: str
    answer: str


_MISSING = object()


def get_field(record: dict[str, Any], name: str) -> Any:
    """Value of ``name`` in ``record``; dots reach into nested dicts. ``_MISSING`` if absent."""
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _present(record: dict[str, Any], name: str) -> bool:
    return get_field(record, name) not in (_MISSING, None)


def detect_field(record: dict[str, Any], candidates: Sequence[str]) -> str | None:
    """First candidate field present (and not null) in ``record``."""
    return next((name for name in candidates if _present(record, name)), None)


def _as_text(value: Any) -> Any:
    """bytes -> str (TFDS yields bytes); numpy scalars/arrays -> Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist") and not isinstance(value, (str, list, dict)):
        return _as_text(value.tolist())
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    return value


def _chat_user_content(messages: list[Any]) -> str | None:
    """Content of the first user message of a chat-style list (the authors' RL format)."""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return None


def check_encodable(text: str, where: str, field: str) -> str:
    """``text`` if it is valid Unicode (UTF-8 encodable), else a DataError naming the spot.

    JSON's ``\\ud83d``-style escapes can produce lone UTF-16 surrogates, which no
    tokenizer or UTF-8 file can hold; say where they are instead of crashing later.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end]
        code = ", ".join(f"U+{ord(ch):04X}" for ch in bad[:3])
        raise DataError(
            f"{where}: field '{field}' holds text that cannot be encoded (lone UTF-16 surrogate "
            f"{code} at character {e.start}: a broken \\u escape? fix or remove it)"
        ) from None
    return text


def _problem_text(value: Any, where: str, field: str) -> str:
    value = _as_text(value)
    if isinstance(value, list):
        content = _chat_user_content(value)
        if content is None:
            raise DataError(f"{where}: field '{field}' is a list but has no user message with text content")
        value = content
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return check_encodable(value, where, field)


def _answer_text(value: Any, where: str, field: str) -> str:
    value = _as_text(value)
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(
                f"{where}: field '{field}' is a list of {len(value)} values; point answer_field at a single answer"
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field '{field}' must be text or a number, got {type(value).__name__}")
    text = str(value).strip()
    # Worked solutions (e.g. MATH's `solution`) carry the answer in their last box.
    boxed = extract_boxed(text) if "\\boxed" in text or "\\fbox" in text else None
    text = boxed if boxed is not None else text
    if not text:
        raise DataError(f"{where}: field '{field}' is empty")
    return check_encodable(text, where, field)


def _id_text(value: Any, where: str, field: str) -> str:
    value = _as_text(value)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value).strip()
        if text:
            return check_encodable(text, where, field)
    raise DataError(f"{where}: field '{field}' must be a non-empty string or integer id, got {value!r}")


def _require(record: dict[str, Any], field: str, where: str, role: str) -> Any:
    value = get_field(record, field)
    if value is _MISSING or value is None:
        keys = ", ".join(sorted(map(str, record))) or "(none)"
        raise DataError(f"{where}: missing {role} field '{field}' (fields present: {keys})")
    return value


def _choose_field(explicit: str | None, first: dict[str, Any], candidates: Sequence[str], where: str, role: str):
    if explicit is not None:
        return explicit
    found = detect_field(first, candidates)
    if found is None and role != "id":
        keys = ", ".join(sorted(map(str, first))) or "(none)"
        raise DataError(
            f"{where}: no {role} field found (looked for {', '.join(candidates)}; fields present: {keys}); "
            f"pass {role}_field=..."
        )
    return found


def records_to_problems(
    records: Iterable[tuple[str, dict[str, Any]]],
    *,
    problem_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Map ``(location, record)`` pairs to Problems.

    Field names not given are detected on the first record and then required in
    every record. Without an id field, ids are the 0-based record index (stable
    for a given file). Duplicate ids raise DataError naming both records.
    """
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    fields: tuple[str, str, str | None] | None = None
    for index, (where, record) in enumerate(records):
        if limit is not None and index >= limit:
            break
        if fields is None:
            fields = (
                _choose_field(problem_field, record, PROBLEM_FIELDS, where, "problem"),
                _choose_field(answer_field, record, ANSWER_FIELDS, where, "answer"),
                _choose_field(id_field, record, ID_FIELDS, where, "id"),
            )
        p_field, a_field, i_field = fields
        problem = _problem_text(_require(record, p_field, where, "problem"), where, p_field)
        answer = _answer_text(_require(record, a_field, where, "answer"), where, a_field)
        pid = _id_text(_require(record, i_field, where, "id"), where, i_field) if i_field else str(index)
        if pid in seen:
            raise DataError(f"{where}: duplicate problem id {pid!r} (first seen at {seen[pid]})")
        seen[pid] = where
        problems.append(Problem(problem_id=pid, problem=problem, answer=answer))
    if not problems and limit != 0:
        raise DataError("no problems loaded (empty source)")
    return problems


# -- sources -------------------------------------------------------------------


def _split_source(spec: str) -> tuple[str, str | None]:
    """``"name:split"`` -> (name, split). Only the last colon splits, so ids keep slashes."""
    if ":" in spec:
        name, split = spec.rsplit(":", 1)
        if name and split and "/" not in split:
            return name, split
    return spec, None


def _pick_split(available: Sequence[str], split: str | None, source: str) -> str:
    if split is not None:
        if split not in available:
            raise DataError(f"{source}: no split '{split}' (available: {', '.join(available)})")
        return split
    if len(available) == 1:
        return available[0]
    for name in _DEFAULT_SPLITS:
        if name in available:
            return name
    raise DataError(f"{source}: several splits ({', '.join(available)}); choose one with split=... or ':split'")


def _hf_rows(dataset: Any, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(dataset):
        yield f"{source} row {i}", row


def _select_hf_split(obj: Any, split: str | None, source: str) -> Any:
    """A Dataset from a Dataset or DatasetDict, choosing the split."""
    if isinstance(obj, dict):  # DatasetDict is a dict of splits
        return obj[_pick_split(list(obj.keys()), split, source)]
    if split is not None and getattr(obj, "split", None) not in (None, split):
        raise DataError(f"{source}: saved dataset has split '{obj.split}', not '{split}'")
    return obj


def _load_hf_local(path: Path, split: str | None, source: str) -> Any:
    import datasets  # why: ~1.5 s to import; only hf: sources need it

    if path.is_dir() and any((path / marker).exists() for marker in _HF_DISK_MARKERS):
        try:
            obj = datasets.load_from_disk(str(path))
        except Exception as exc:  # corrupt or incompatible save
            raise DataError(f"{source}: cannot read saved dataset: {exc}") from exc
        return _select_hf_split(obj, split, source)
    try:
        if path.is_file():
            builder = _HF_FILE_BUILDERS.get(path.suffix.lower(), "json")
            obj = datasets.load_dataset(builder, data_files=str(path))
        else:
            obj = datasets.load_dataset(str(path))
    except Exception as exc:
        raise DataError(f"{source}: cannot read data files: {str(exc) or type(exc).__name__}") from exc
    return _select_hf_split(obj, split, source)


def _load_hf(spec: str, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    name, spec_split = _split_source(spec)
    split = split or spec_split
    source = f"hf:{name}"
    path = Path(name).expanduser()
    if path.exists():
        dataset = _load_hf_local(path, split, source)
    else:
        import datasets  # why: ~1.5 s to import; only hf: sources need it

        try:
            obj = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
        except Exception as exc:  # network, unknown id, unknown split
            raise DataError(f"{source}: cannot load Hugging Face dataset: {exc}") from exc
        dataset = _select_hf_split(obj, split, source)
    return _hf_rows(dataset, f"{source}:{getattr(dataset, 'split', None) or split or ''}".rstrip(":"))


def _load_tfds(spec: str, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """TFDS rows as dicts. Tries the TensorFlow-free data source first."""
    name, spec_split = _split_source(spec)
    split = split or spec_split or "test"
    source = f"tfds:{name}:{split}"
    try:
        import tensorflow_datasets as tfds  # why: optional dependency (the tfds extra)
    except ImportError:
        raise DataError(f"{source}: tensorflow_datasets is not installed. {TFDS_INSTALL_HINT}") from None
    try:
        # Numpy-only path: works without TensorFlow for ArrayRecord-prepared datasets.
        data_source = tfds.data_source(name, split=split)
        rows: Iterable[Any] = (data_source[i] for i in range(len(data_source)))
    except Exception as first_exc:
        try:
            rows = tfds.as_numpy(tfds.load(name, split=split))
        except ImportError:
            raise DataError(f"{source}: reading this dataset needs TensorFlow. {TFDS_INSTALL_HINT}") from first_exc
        except Exception as exc:
            raise DataError(f"{source}: cannot load TFDS dataset: {exc}") from exc
    return ((f"{source} row {i}", dict(row)) for i, row in enumerate(rows))


def load_problems(
    source: str | Path,
    *,
    problem_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Load a problem set from a file, directory, ``hf:`` or ``tfds:`` source.

    Args:
      source: see the module docstring for the accepted forms.
      problem_field, answer_field, id_field: field names (dots for nesting);
        auto-detected when None. The problem field may hold a chat-style list of
        messages (the first user message is used). An answer holding a
        ``\\boxed{}`` is reduced to the box content. Without an id field, ids are
        the record index as a string.
      split: dataset split for ``hf:``/``tfds:``/directory sources (overrides a
        ``:split`` suffix). Defaults to the only split, else test/validation/train.
      limit: keep only the first ``limit`` problems.

    Raises:
      DataError: naming the file/line (or dataset row) and the problem: missing
        file or field, invalid JSON or UTF-8, empty values, duplicate ids.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    spec = str(source)
    if spec.startswith("hf:"):
        records: Iterable[tuple[str, dict[str, Any]]] = _load_hf(spec[3:], split)
    elif spec.startswith("tfds:"):
        records = _load_tfds(spec[5:], split)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"{spec}: no such file or directory (use hf:<id> or tfds:<name> for datasets)")
        if path.is_file() and path.suffix.lower() not in _HF_FILE_BUILDERS:
            # .json/.jsonl and any other name: our reader, whose errors name the line.
            records = read_json_records(path)
        else:
            records = _hf_rows(_load_hf_local(path, split, spec), spec)
    return records_to_problems(
        records, problem_field=problem_field, answer_field=answer_field, id_field=id_field, limit=limit
    )


def demo_problems_path() -> Path:
    """Path of the small embedded demo problem set (``demo_problems.jsonl``)."""
    return Path(__file__).with_name("demo_problems.jsonl")


def load_demo_problems() -> list[Problem]:
    """The embedded demo problems (easy arithmetic with integer answers)."""
    return load_problems(demo_problems_path())
