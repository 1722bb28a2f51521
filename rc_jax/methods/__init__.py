"""Baselines and test-time scaffolds the paper compares RC against.

Every method is a `runner(problems, keys, ctx) -> list[RolloutRecord]` (see
`rc_jax.methods.base`, `rc_jax.records`) registered under its `method=` name with
`@register(name)`. `rc_jax.main` looks runners up with `get_runner`; RC itself keeps its device engine.

  autoregressive   one long generation, answers read at fixed token checkpoints
  self_refine      each step improves the previous attempt (no summary; one template)
  self_verify      each step verifies and corrects the previous attempt
  budget_forcing   s1 as the paper ran it: segments, each continuing the last after a cue
  rsa              recursive self-aggregation (a population scaffold, `scaffold.py`)
  delethink        Markovian thinking: fixed-size chunks, each prompted with the problem
                   plus a few carried-over tokens (`delethink.py`)

Every prompt is text chat-wrapped by `Tokenizer.phase_prompt` and tokenized whole;
records store each phase's raw generation next to its cleaned text (`base.py`).

Adding a method: one module here with a `@register("name")` runner (a population
scaffold subclasses `rc_jax.methods.scaffold.Scaffold` instead of writing a loop), its
module in `METHOD_MODULES`, and its name (plus a config section for its knobs) in
`rc_jax.config`. This package imports no JAX until a runner is requested.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

Runner = Callable[[Sequence[str], Any, Any], list]

# method name -> module that registers it (imported on first use).
METHOD_MODULES = {
    "autoregressive": "rc_jax.methods.autoregressive",
    "self_refine": "rc_jax.methods.refine",
    "self_verify": "rc_jax.methods.refine",
    "budget_forcing": "rc_jax.methods.budget_forcing",
    "rsa": "rc_jax.methods.rsa",
    "delethink": "rc_jax.methods.delethink",
}

METHODS: dict[str, Runner] = {}  # filled as method modules are imported


def register(name: str) -> Callable[[Runner], Runner]:
    """Decorator: makes `runner` the implementation of `method=name`."""
    def wrap(runner: Runner) -> Runner:
        if name in METHODS and METHODS[name] is not runner:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = runner
        return runner
    return wrap


def get_runner(name: str) -> Runner:
    """The runner of `method=name` (imports its module on first use)."""
    if name not in METHODS and name in METHOD_MODULES:
        importlib.import_module(METHOD_MODULES[name])
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_MODULES)}")
    return METHODS[name]
