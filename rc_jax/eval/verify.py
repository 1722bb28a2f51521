"""math-verify equivalence check and the grading worker process loop.

Grading workers run this module as a program (``python -m rc_jax.eval.verify
READ_FD WRITE_FD MEMORY_MB``); ``rc_jax.eval.grading`` starts and kills them.

``verify_answer`` calls math-verify with its own signal-based timeouts *disabled*: those use
``signal.alarm``, which only works in a main thread, takes whole seconds and
cannot interrupt a long computation inside C code. The hard wall-clock limit is
enforced instead by the parent, which kills a worker that overruns
(see ``rc_jax.eval.grading``).
"""
from __future__ import annotations

import logging
import os
import resource
import signal
import sys
from multiprocessing.connection import Connection

from math_verify import parse, verify

from rc_jax.eval.extract import extract_boxed

# math-verify logs a warning every time its timeout is disabled; that is intended here.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def as_boxed(text: str) -> str:
    """Wrap ``text`` in ``\\boxed{}`` unless it already contains a box."""
    return text if "\\boxed" in text or "\\fbox" in text else "\\boxed{" + text + "}"


def verify_answer(answer: str, gold: str, mode: str = "rc_jax") -> bool:
    """math-verify equivalence of an extracted answer and a gold answer.

    ``mode`` (see ``rc_jax.eval.grading.GRADING_MODES``):

    * ``rc_jax``: the gold is boxed unless it already holds a box; an empty parse on
      either side is incorrect; ``verify(gold, answer)``, math-verify's documented order
      (its first argument is the reference).
    * ``paper``: as the paper authors' evaluator: both sides are always wrapped in
      ``\\boxed{}`` (the gold too, even if it holds a box) and ``verify`` gets the
      *answer first* and the gold second. math-verify is not symmetric, so this differs,
      e.g. a gold interval ``[1,2]`` against the answer ``1 \\le x \\le 2``.

    No timeout: call it only in a process that can be killed (a grading worker)
    or on trusted, small inputs.
    """
    if mode == "paper":
        answer_parsed = parse("\\boxed{" + answer + "}", parsing_timeout=None)
        gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
        return bool(verify(answer_parsed, gold_parsed, timeout_seconds=None))
    if mode != "rc_jax":
        raise ValueError(f"unknown grading mode {mode!r}")
    gold_parsed = parse(as_boxed(gold), parsing_timeout=None)
    # The answer is already a box's content: always wrap it, even if it contains a box.
    answer_parsed = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))


def _limit_memory(extra_mb: int | None) -> None:
    """Cap the worker's address space at its current size plus ``extra_mb``.

    A runaway computation then fails with MemoryError instead of exhausting the
    host. Relative to the current size so that large imports do not trip it.
    """
    if not extra_mb:
        return
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = current + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _warm_up() -> None:
    """First math-verify call builds parsers lazily; do it before reporting ready."""
    verify_answer("\\frac{1}{2}", "0.5")
    extract_boxed("\\boxed{1}")


def worker_main(tasks: Connection, results: Connection, memory_limit_mb: int | None) -> None:
    """Loop: receive ``(task_id, answer, gold[, mode])``, reply ``(task_id, correct, error)``.

    Runs in the worker's main thread. ``None`` (or a closed pipe) from the parent
    means exit. The worker ignores SIGINT so that Ctrl-C reaches only the parent,
    which then shuts the pool down in order.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _warm_up()
        _limit_memory(memory_limit_mb)
    except Exception as exc:  # report start-up failure instead of dying silently
        results.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    results.send(("ready", os.getpid()))
    while True:
        try:
            msg = tasks.recv()
        except (EOFError, OSError):
            return  # parent is gone
        if msg is None:
            return
        task_id, answer, gold, *mode = msg
        try:
            correct, error = verify_answer(answer, gold, *mode), None
        except MemoryError:
            correct, error = False, "MemoryError"
        except Exception as exc:  # a grading error is an incorrect answer, not a crash
            correct, error = False, f"{type(exc).__name__}: {exc}"[:500]
        try:
            results.send((task_id, correct, error))
        except (EOFError, OSError):
            return


def _main(argv: list[str]) -> None:
    read_fd, write_fd, memory_mb = int(argv[1]), int(argv[2]), int(argv[3])
    tasks = Connection(read_fd, readable=True, writable=False)
    results = Connection(write_fd, readable=False, writable=True)
    worker_main(tasks, results, memory_mb if memory_mb > 0 else None)


if __name__ == "__main__":
    _main(sys.argv)
