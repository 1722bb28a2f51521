"""Reading JSON / JSON Lines files of objects with errors that name file and line.

Shared by the problem loaders (``rc_jax.data``) and the results reader
(``rc_jax.eval``). Both formats are accepted from any file name: a file whose
first non-blank character is ``[`` is a JSON list of objects, anything else is
JSON Lines (one object per line, blank lines ignored).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data. The message names the file, the line or item, and the problem."""


def decode_utf8(raw: bytes, path: str | Path) -> str:
    """Decode ``raw`` as UTF-8 (a leading BOM is dropped) or raise a DataError.

    The error gives the line number and byte offset of the first bad byte, so a
    corrupt file can be fixed instead of crashing a long run.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 4]
        raise DataError(
            f"{path}: line {line} (byte offset {exc.start}): not valid UTF-8 (bytes {bad!r}); "
            "re-encode the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _first_char(text: str) -> str:
    stripped = text.lstrip()
    return stripped[:1]


def _parse_json_list(text: str, path: str | Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}") from None
    return [(f"{path}: item [{i}]", obj) for i, obj in enumerate(data)]


def _parse_json_lines(text: str, path: str | Path, allow_torn_tail: bool = False) -> list[tuple[str, Any]]:
    out = []
    # split("\n"), not splitlines(): the latter also breaks at U+2028 etc., which
    # json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    lines = text.split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if allow_torn_tail and lineno == len(lines):  # no newline after it: mid-write
                print(
                    f"note: {path}: line {lineno} is incomplete (the file is still being written?); "
                    "left out",
                    file=sys.stderr,
                )
                continue
            raise DataError(
                f"{path}: line {lineno} column {exc.colno}: invalid JSON: {exc.msg} "
                "(read as JSON Lines: one object per line; a JSON file must be a list starting with '[')"
            ) from None
        out.append((f"{path}: line {lineno}", obj))
    return out


def read_json_records(path: str | Path, *, allow_torn_tail: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """All objects in a JSON-list or JSONL file, each with a location string.

    The location (``"file: line 7"`` or ``"file: item [3]"``) is for error messages.
    Raises DataError for a missing file, bad UTF-8, invalid JSON, a non-object
    record, or a file with no records. With ``allow_torn_tail`` (results files read
    while a run appends to them), an unparsable JSONL last line without a newline
    after it is left out with a note on stderr instead.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a JSON / JSON Lines file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = decode_utf8(path.read_bytes(), path)
    if _first_char(text) == "[":
        records = _parse_json_list(text, path)
    else:
        records = _parse_json_lines(text, path, allow_torn_tail)
    if not records:
        raise DataError(f"{path}: no records (empty file)")
    for where, obj in records:
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return records
