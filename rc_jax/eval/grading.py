"""Math grading that never hangs: a killable worker pool around math-verify.

Design:

* Extraction (``extract_boxed``) and the normalised string match run in the
  calling process: both are linear-time string scans and cannot hang.
* Symbolic equivalence (math-verify / sympy) runs in worker processes. Sympy can
  spin for hours on inputs like ``10^{10^{10}}`` or ``(10^8)!`` and such loops are
  not interruptible from Python, so each task gets a hard wall-clock limit: the
  parent kills the worker that overruns, records the case as incorrect and
  timed out, and starts a replacement so the pool keeps working.
* Results are cached by ``(answer, gold)``; identical answers are graded once.
* Workers are fresh interpreters (``python -m rc_jax.eval.verify``) talking over
  pipes; the (possibly JAX-threaded) parent is never forked. Starting or
  replacing one costs about half a second, paid only at start-up and after a
  timeout.

``Grader`` is the plug-in interface (an LLM judge can implement it later).

Grading modes (``GRADING_MODES``; ``MathVerifyGrader(mode=...)``, config ``grading.mode``,
CLI ``python -m rc_jax.eval --grading=paper,rc_jax``):

* ``rc_jax`` (default): ``extract_boxed`` (any brace nesting, ``\\fbox``, ``\\boxed 42``),
  the gold's own box if it has one, a normalised string match first, then
  ``verify(gold, answer)``.
* ``paper``: the paper authors' evaluator: ``extract_boxed_paper`` (one level of nested
  braces), no string match, both sides wrapped in ``\\boxed{}``, ``verify(answer,
  gold)``; a response with no readable box is graded as the text ``None`` (as theirs
  is), so it is wrong unless the gold parses the same. Scores from it are comparable
  with the paper's numbers; rc_jax's own mode reads more answers (deeply nested ones)
  and can score higher on the same generations.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from rc_jax.eval.extract import extract_boxed, extract_boxed_paper
from rc_jax.eval.normalize import strings_match

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_LIMIT_MB = 4096
_MAX_STARTUP_DEATHS = 5
_WORKER_MODULE = "rc_jax.eval.verify"  # run as `python -m` in each worker
GRADING_MODES = ("rc_jax", "paper")
# What the paper's evaluator grades when it finds no box: its extraction gives None,
# which it formats into the box it verifies.
_PAPER_NO_ANSWER = "None"


@dataclass(frozen=True)
class GradeResult:
    """Outcome of grading one response.

    ``correct`` is False whenever ``timed_out`` is True. ``error`` holds a short
    message when grading failed (timeout, worker crash, exception in math-verify).
    """

    extracted: str | None
    correct: bool
    timed_out: bool = False
    error: str | None = None


@runtime_checkable
class Grader(Protocol):
    """Anything that grades (response_text, gold_answer) pairs."""

    def grade_batch(self, items: Sequence[tuple[str, str]]) -> list[GradeResult]:
        """Grade each ``(response_text, gold)`` pair; same order as ``items``."""
        ...


def gold_answer_text(gold: str) -> str:
    """The answer part of a gold label: its last box if it has one (e.g. a full solution)."""
    boxed = extract_boxed(gold) if ("\\boxed" in gold or "\\fbox" in gold) else None
    return boxed if boxed is not None else gold


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks / containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _worker_env() -> dict[str, str]:
    """Environment for worker processes: same interpreter, this copy of rc_jax first."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    tasks: Connection  # parent -> worker
    results: Connection  # worker -> parent; EOF here also signals the worker's death
    spawned_at: float
    ready: bool = False
    task: int | None = None
    task_started_at: float = 0.0

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
            pass
        self.tasks.close()
        self.results.close()


@dataclass
class _TaskOutcome:
    correct: bool
    timed_out: bool
    error: str | None
    crashed: bool = False


def _stop_workers(workers: list[_Worker]) -> None:
    """Ask idle workers to exit, then kill any still running. Safe to call twice."""
    for w in workers:
        try:
            if w.task is None:
                w.tasks.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 1.0
    for w in workers:
        if w.task is None:
            try:
                w.process.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        w.kill()
    workers.clear()


class WorkerPool:
    """Processes that run ``verify_answer(answer, gold[, mode])`` with a per-task time limit.

    Workers are separate interpreters (``python -m rc_jax.eval.verify``) rather
    than ``multiprocessing`` children: nothing of the parent is forked (it may run
    JAX threads) and the caller's ``__main__`` is never re-imported, so this works
    from scripts without a ``__main__`` guard and from notebooks. Not thread-safe;
    ``MathVerifyGrader`` serialises access with a lock.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.num_workers = num_workers or available_cpus()
        self.memory_limit_mb = memory_limit_mb
        self.start_timeout_s = start_timeout_s
        self.replaced = 0  # workers killed and replaced (timeouts + crashes)
        self._startup_deaths = 0  # consecutive deaths before "ready"
        self._env = _worker_env()
        self._workers: list[_Worker] = []
        # Kill the workers even if the owner forgets close() (e.g. on exceptions).
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)
        self._workers.extend(self._spawn() for _ in range(self.num_workers))

    def _spawn(self) -> _Worker:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        cmd = [sys.executable, "-m", _WORKER_MODULE, str(task_r), str(result_w), str(self.memory_limit_mb or 0)]
        proc = subprocess.Popen(
            cmd, pass_fds=(task_r, result_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=self._env
        )
        # The child owns its ends now; closing ours makes EOF mean "child is gone".
        os.close(task_r)
        os.close(result_w)
        return _Worker(
            process=proc,
            tasks=Connection(task_w, readable=False, writable=True),
            results=Connection(result_r, readable=True, writable=False),
            spawned_at=time.monotonic(),
        )

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()
        self.replaced += 1

    def wait_ready(self) -> None:
        """Block until every worker has started (imports done, warmed up)."""
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        while not all(w.ready for w in self._workers):
            waiting = [w for w in self._workers if not w.ready]
            deadline = min(w.spawned_at for w in waiting) + self.start_timeout_s
            signalled = set(wait([w.results for w in waiting], timeout=max(0.0, deadline - time.monotonic())))
            for w in waiting:
                if w.results in signalled:
                    self._handle_message(w, finish=None)
            self._enforce_deadlines(timeout_s=float("inf"), finish=None)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop all workers. The pool cannot be used afterwards."""
        self._finalizer()

    def run(
        self,
        tasks: Sequence[tuple[str, ...]],
        timeout_s: float,
        on_done: Callable[[int, _TaskOutcome], None] | None = None,
    ) -> list[_TaskOutcome]:
        """Verify each ``(answer, gold[, mode])``; each gets at most ``timeout_s`` seconds."""
        if self.closed:
            raise RuntimeError("WorkerPool is closed")
        try:
            return self._run(tasks, timeout_s, on_done)
        except BaseException:
            # An interrupted batch leaves workers mid-task; do not reuse them.
            self.close()
            raise

    def _run(self, tasks, timeout_s, on_done) -> list[_TaskOutcome]:
        results: list[_TaskOutcome | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        remaining = len(tasks)

        def finish(i: int, outcome: _TaskOutcome) -> None:
            nonlocal remaining
            results[i] = outcome
            remaining -= 1
            if on_done is not None:
                on_done(i, outcome)

        while remaining:
            now = time.monotonic()
            for w in list(self._workers):
                if w.ready and w.task is None and pending:
                    i = pending.popleft()
                    try:
                        w.tasks.send((i, *tasks[i]))
                    except OSError:  # the idle worker died (e.g. OOM-killed): requeue, replace
                        pending.appendleft(i)
                        self._replace(w)
                        continue
                    w.task, w.task_started_at = i, now
            deadlines = [
                w.task_started_at + timeout_s if w.ready else w.spawned_at + self.start_timeout_s
                for w in self._workers
                if w.task is not None or not w.ready
            ]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else None
            signalled = set(wait([w.results for w in self._workers], timeout=wait_s))
            for w in list(self._workers):
                if w.results in signalled:
                    self._handle_message(w, finish)
            self._enforce_deadlines(timeout_s, finish)
        return results  # type: ignore[return-value]

    def _handle_message(self, w: _Worker, finish) -> None:
        """Read a message from ``w`` or deal with its death."""
        try:
            msg = w.results.recv()
        except (EOFError, OSError):
            msg = None  # the worker closed its pipe: it has exited or crashed
        if msg is None:
            try:
                code = w.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                code = None
            if not w.ready:
                # Killed while starting (e.g. by the OOM killer): retry a few times,
                # but a worker that can never start must not loop forever.
                self._startup_deaths += 1
                if self._startup_deaths > _MAX_STARTUP_DEATHS:
                    raise RuntimeError(f"grading workers keep dying during start-up (last exit code {code})")
            elif w.task is not None:
                finish(w.task, _TaskOutcome(False, False, f"grading worker crashed (exit code {code})", crashed=True))
            self._replace(w)
            return
        if msg[0] == "ready":
            w.ready = True
            self._startup_deaths = 0
        elif msg[0] == "failed":
            raise RuntimeError(f"grading worker failed to start: {msg[1]}")
        elif msg[0] == w.task:
            _, correct, error = msg
            w.task = None
            finish(msg[0], _TaskOutcome(bool(correct), False, error))
        # Anything else is a late reply for a task already timed out: ignore it.

    def _enforce_deadlines(self, timeout_s: float, finish) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if w.task is not None and now - w.task_started_at >= timeout_s:
                task = w.task
                self._replace(w)  # the only way to stop a computation stuck in C code
                finish(task, _TaskOutcome(False, True, f"timed out after {timeout_s:g} s"))
            elif not w.ready and now - w.spawned_at >= self.start_timeout_s:
                raise RuntimeError(f"grading worker not ready after {self.start_timeout_s:g} s")


@dataclass
class _CacheEntry:
    correct: bool
    timed_out: bool
    error: str | None
    timeout_s: float  # limit used; a timeout under a shorter limit is retried under a longer one


class MathVerifyGrader:
    """``Grader`` using math-verify (symbolic) plus a normalised string match.

    In ``mode='rc_jax'`` an answer is correct when its normalised string equals the
    gold's, or when math-verify finds them equivalent within ``timeout_s`` seconds;
    ``mode='paper'`` reproduces the paper authors' evaluator (see the module
    docstring). Use as a context manager (or call ``close()``) to stop the worker
    processes; they start on first use.
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        num_workers: int | None = None,
        memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
        progress: bool = False,
        mode: str = "rc_jax",
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if mode not in GRADING_MODES:
            raise ValueError(f"unknown grading mode {mode!r}; choose from {', '.join(GRADING_MODES)}")
        self.mode = mode
        self.timeout_s = timeout_s
        self.num_workers = num_workers
        self.memory_limit_mb = memory_limit_mb
        self.progress = progress
        self._pool: WorkerPool | None = None
        self._cache: dict[tuple[str, str], _CacheEntry] = {}
        self._lock = threading.Lock()
        self.stats = {"graded": 0, "cache_hits": 0, "string_matches": 0, "verified": 0, "timeouts": 0}

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "MathVerifyGrader":
        """Start the worker processes now and wait until they are ready.

        Otherwise they start on first use.
        """
        with self._lock:
            self._ensure_pool().wait_ready()
        return self

    def _ensure_pool(self) -> WorkerPool:
        if self._pool is None or self._pool.closed:
            self._pool = WorkerPool(self.num_workers, self.memory_limit_mb)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes. The grader restarts them if used again."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> "MathVerifyGrader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def workers_replaced(self) -> int:
        """How many workers were killed and replaced by the current pool."""
        return self._pool.replaced if self._pool is not None else 0

    # -- grading -----------------------------------------------------------
    def grade_batch(
        self, items: Sequence[tuple[str, str]], *, progress: bool | None = None, timeout_s: float | None = None
    ) -> list[GradeResult]:
        """Extract the last boxed answer of each response and grade it against gold."""
        extract = extract_boxed_paper if self.mode == "paper" else extract_boxed
        pairs = [(extract(response), gold) for response, gold in items]
        return self.grade_answers(pairs, progress=progress, timeout_s=timeout_s)

    def grade_answers(
        self,
        pairs: Sequence[tuple[str | None, str]],
        *,
        progress: bool | None = None,
        timeout_s: float | None = None,
    ) -> list[GradeResult]:
        """Grade already-extracted answers (None = no answer) against gold answers.

        In paper mode a None answer is graded as the paper does (as the text ``None``).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        with self._lock:
            return self._grade_locked(pairs, progress if progress is not None else self.progress, timeout_s)

    def _grade_locked(self, pairs, progress: bool, timeout_s: float) -> list[GradeResult]:
        self.stats["graded"] += len(pairs)
        batch: dict[tuple[str, str], _CacheEntry] = {}  # this batch's answers
        todo: dict[tuple[str, str], None] = {}  # ordered set of keys for the pool
        paper = self.mode == "paper"
        for answer, gold in pairs:
            if answer is None and not paper:
                continue
            key = self._key(answer, gold)
            if key in batch or key in todo:
                continue
            entry = self._cache.get(key)
            if entry is not None and not (entry.timed_out and timeout_s > entry.timeout_s):
                self.stats["cache_hits"] += 1
                batch[key] = entry
            elif not paper and strings_match(answer, gold_answer_text(key[1])):
                batch[key] = self._cache[key] = _CacheEntry(True, False, None, timeout_s)
                self.stats["string_matches"] += 1
            else:
                todo[key] = None
        if todo:
            batch.update(self._verify_in_pool(list(todo), progress, timeout_s))
        return [_result(answer, batch.get(self._key(answer, gold)), paper) for answer, gold in pairs]

    def _key(self, answer: str | None, gold) -> tuple[str, str]:
        if answer is None:  # paper mode only: the paper grades the text "None"
            answer = _PAPER_NO_ANSWER
        return answer, str(gold)

    def _verify_in_pool(
        self, keys: list[tuple[str, str]], progress: bool, timeout_s: float
    ) -> dict[tuple[str, str], _CacheEntry]:
        from tqdm.auto import tqdm  # why: ~0.3 s to import; the config check imports this module

        pool = self._ensure_pool()
        out: dict[tuple[str, str], _CacheEntry] = {}
        with tqdm(total=len(keys), desc="grading", unit="ans", disable=not progress, leave=False) as bar:

            def on_done(i: int, outcome: _TaskOutcome) -> None:
                entry = _CacheEntry(outcome.correct, outcome.timed_out, outcome.error, timeout_s)
                out[keys[i]] = entry
                # A crashed worker (e.g. OOM-killed) may be transient: do not cache it.
                if not outcome.crashed:
                    self._cache[keys[i]] = entry
                bar.update(1)

            pool.run([(a, g, self.mode) for a, g in keys], timeout_s, on_done)
        self.stats["verified"] += len(keys)
        self.stats["timeouts"] += sum(e.timed_out for e in out.values())
        return out


def _result(answer: str | None, entry: _CacheEntry | None, paper: bool = False) -> GradeResult:
    if (answer is None and not paper) or entry is None:
        return GradeResult(extracted=answer, correct=False)
    return GradeResult(extracted=answer, correct=entry.correct, timed_out=entry.timed_out, error=entry.error)


class StringMatchGrader:
    """``Grader`` using only the normalised string match (no symbolic check).

    Fast and dependency-free; useful as a baseline or where math-verify is absent.
    """

    def grade_batch(self, items: Sequence[tuple[str, str]]) -> list[GradeResult]:
        out = []
        for response, gold in items:
            answer = extract_boxed(response)
            out.append(GradeResult(extracted=answer, correct=strings_match(answer, gold_answer_text(gold))))
        return out


_default_grader: MathVerifyGrader | None = None
_default_lock = threading.Lock()


def default_grader() -> MathVerifyGrader:
    """Process-wide shared ``MathVerifyGrader`` (closed automatically at exit)."""
    global _default_grader
    with _default_lock:
        if _default_grader is None:
            _default_grader = MathVerifyGrader()
            atexit.register(_default_grader.close)
        return _default_grader


def grade_one(response: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True iff the last boxed answer in ``response`` matches ``gold``.

    Uses the shared default grader (worker pool + cache), so repeated calls are
    cheap; a timeout counts as False. Suitable as an RL reward.
    """
    return default_grader().grade_batch([(response, gold)], timeout_s=timeout_s)[0].correct
