"""Counting XLA compilations, so tests can assert how many programs a run builds."""
from __future__ import annotations

import contextlib
from typing import Iterator

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCount:
    """Number of backend compilations seen inside a `count_compiles()` block."""

    def __init__(self) -> None:
        self.count = 0

    def __int__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"CompileCount({self.count})"


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCount]:
    """`with count_compiles() as n: ...; assert n.count == 1` (any jit in the process)."""
    counter = CompileCount()

    def listener(event: str, duration_secs: float, **_: str | int) -> None:
        if event == _EVENT:
            counter.count += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
