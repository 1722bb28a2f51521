"""Results files: append one JSON line per finished (problem, sample), resume from them.

Lines are flushed and fsync'ed as they are written, so a crash loses at most the batch in
flight; a partial last line (the crash happened mid-write) is cut off on resume.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence


def prepare_output_dir(path: str | Path, field: str = "output_dir") -> Path:
    """Creates `path` (and parents) or raises ValueError saying why it cannot be used."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{field} {str(out)!r} is a file, not a directory; "
                         "choose another output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ValueError(f"{field} {str(out)!r} cannot be created: {str(parent)!r} is a "
                             "file, not a directory") from None
        raise ValueError(f"{field} {str(out)!r} cannot be created: "
                         f"{e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{field} {str(out)!r} is not writable")
    return out


def _lock_dir(directory: Path):
    """An exclusive lock on `directory/.lock` (released by `ResultsFile.close` or when the
    process ends, even by kill -9), so two runs never append to one results file.
    Best effort: where the file system has no locks, no lock."""
    import fcntl  # why: POSIX only; elsewhere the module still imports
    key = str(directory.resolve())
    held = _HELD_LOCKS.get(key)
    if held is not None and not held.closed:  # this process already holds it
        return held
    f = open(directory / ".lock", "a", encoding="utf-8")  # empty; only its lock matters
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"{directory} is being written by another run right now; wait for it "
                         "to finish, or use another output_dir") from None
    except OSError:  # no locking on this file system
        pass
    _HELD_LOCKS[key] = f
    return f


# Locks held by this process, by directory: a process may open one directory's results
# file several times (tests, notebooks); the lock only keeps other processes out.
_HELD_LOCKS: dict[str, Any] = {}


def input_digest(problem: Any) -> str:
    """A short digest of what a problem's records depend on: its text and gold answer."""
    blob = json.dumps([problem.problem, str(problem.answer)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class ResultsFile:
    """`<output_dir>/results.jsonl` plus `config.json` describing the run.

    Resume compares two things with what is already there: the configuration (its
    semantic hash, `rc_jax.config.config_hash`) and, given `problems`, the inputs
    themselves: a problem whose text or gold answer differs from the one recorded with
    its results (an edited data file) is refused, naming the problem and the field,
    instead of being reported as done and graded with the old label.
    """

    def __init__(self, output_dir: str | Path, config_json: dict[str, Any], config_hash: str,
                 problems: Sequence[Any] | None = None, source: str = "the data"):
        self.dir = prepare_output_dir(output_dir)
        self._lock = _lock_dir(self.dir)  # held while this object lives
        self.path = self.dir / "results.jsonl"
        self.config_hash = config_hash
        self.done: set[tuple[str, int]] = set()
        self._inputs: dict[str, tuple[str, str, int]] = {}  # id -> (problem, label, line)
        # id -> digest of (problem, answer) of every problem this directory has run on,
        # kept in config.json: also covers steps of unfinished rollouts (progress.jsonl).
        self._fingerprints: dict[str, str] = {}
        self._check_config()
        self._recover()
        if problems is not None:
            self.check_inputs(problems, source)
            self._fingerprints.update({str(p.problem_id): input_digest(p) for p in problems})
        # Written only once the checks passed: a refused resume changes nothing.
        (self.dir / "config.json").write_text(json.dumps(
            {"config_hash": self.config_hash, "config": config_json,
             "inputs": self._fingerprints}, indent=2))

    def close(self) -> None:
        """Releases the directory lock (also released when the process ends)."""
        _HELD_LOCKS.pop(str(self.dir.resolve()), None)
        self._lock.close()

    def check_inputs(self, problems: Sequence[Any], source: str = "the data") -> None:
        """Raises ValueError if a problem's text or answer differs from its recorded one."""
        changed = []
        for p in problems:
            old = self._inputs.get(str(p.problem_id))
            if old is None:
                digest = self._fingerprints.get(str(p.problem_id))
                if digest is not None and digest != input_digest(p):
                    changed.append(f"problem {p.problem_id}: its text or answer in {source} "
                                   "differs from when this output_dir was started")
                continue
            if old[1] != str(p.answer):
                changed.append(f"problem {p.problem_id}: answer {old[1]!r} in "
                               f"{self.path.name} line {old[2]}, {str(p.answer)!r} in {source}")
            elif old[0] != p.problem:
                changed.append(f"problem {p.problem_id}: problem text differs from "
                               f"{self.path.name} line {old[2]}")
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise ValueError(
                f"{self.dir} holds results for different inputs: {changed[0]}{more}; use another "
                f"output_dir, or move {self.dir} away to start over with the current data")

    def _check_config(self) -> None:
        file = self.dir / "config.json"
        started = any(f.exists() and f.stat().st_size
                      for f in (self.path, self.dir / "progress.jsonl"))
        if file.exists() and started:
            try:
                fingerprints = json.loads(file.read_text()).get("inputs")
            except (json.JSONDecodeError, AttributeError):
                fingerprints = None
            if isinstance(fingerprints, dict):
                self._fingerprints = {str(k): str(v) for k, v in fingerprints.items()}
        if file.exists() and self.path.exists() and self.path.stat().st_size:
            old = json.loads(file.read_text())
            if old.get("config_hash") != self.config_hash:
                raise ValueError(
                    f"{self.dir} holds results of a different configuration (hash "
                    f"{old.get('config_hash')} vs {self.config_hash}); use another "
                    "output_dir or delete the old results")

    def _recover(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good = raw.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if good < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        for n, line in enumerate(raw[:good].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{n}: not valid JSON ({e})") from None
            self.done.add((str(rec["problem_id"]), int(rec["sample_id"])))
            if "problem" in rec and "label" in rec:
                self._inputs.setdefault(str(rec["problem_id"]),
                                        (rec["problem"], str(rec["label"]), n))

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                self.done.add((str(rec["problem_id"]), int(rec["sample_id"])))
            f.flush()
            os.fsync(f.fileno())


# What a training run leaves in its output directory.
RUN_FILES = ("metrics.jsonl", "checkpoints", "export", "tensorboard")


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def set_aside_previous_run(output_dir: str | Path, *, extra_dirs: Sequence[str | Path] = (),
                           inputs: dict[str, str] | None = None,
                           flag: str = "checkpoint.resume=False") -> list[tuple[Path, Path]]:
    """Starting over: moves a previous run out of the way, whole, before anything is written.

    `output_dir` holds a previous run if it has any of RUN_FILES; `extra_dirs` (e.g. a
    checkpoint directory outside output_dir) count when non-empty. Each is renamed
    (one atomic rename each) to `<name>.replaced-<UTC time>` next to it, so nothing of
    the old run is lost and the new run never mixes with it. Refuses (ValueError, before
    touching anything) when a path the new run reads (`inputs`: config field -> path)
    lies inside what would be moved, or when output_dir holds the working directory.
    Returns the (old, new) paths moved.
    """
    out = Path(output_dir)
    moves: list[Path] = []
    if out.is_dir() and any((out / name).exists() for name in RUN_FILES):
        moves.append(out)
    for d in extra_dirs:
        d = Path(d)
        if d.is_dir() and any(d.iterdir()) and not any(_inside(d, m) for m in moves):
            moves.append(d)
    if not moves:
        return []
    for m in moves:
        if _inside(Path.cwd(), m):
            raise ValueError(f"{flag} would move the previous run in {m} aside, but it holds the "
                             "working directory; use another output_dir")
        for field, value in (inputs or {}).items():
            if value and not str(value).startswith(("builtin:", "hf:", "tfds:")) \
                    and _inside(Path(value), m):
                raise ValueError(
                    f"{flag} would move the previous run in {m} aside, but config.{field} "
                    f"({value}) lies inside it; copy it elsewhere or use another output_dir")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    done = []
    for m in moves:
        target = m.with_name(f"{m.name}.replaced-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = m.with_name(f"{m.name}.replaced-{stamp}-{n}")
        os.rename(m, target)
        done.append((m, target))
    return done
