"""Prompt templates of the baselines and scaffolds: rc_jax's own wording, file loading.

Templates are `rc_jax.rc.prompts.Template`s (`str.format` text, `{{`/`}}` for literal
braces, missing or unknown placeholders rejected). Each *kind* of prompt has fixed fields:

  solve      {problem}                        first attempt of every baseline / scaffold
  refine     {problem} {previous_attempt}     self-refine: improve the previous attempt
  verify     {problem} {previous_attempt}     self-verify: check and correct it
  aggregate  {problem} {candidates}           RSA: combine K candidate solutions

A template spec is a builtin name (`math`, `science`) or a path to a UTF-8 text file.
A new scaffold with its own prompt kind calls `define_kind` from its module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rc_jax.rc.prompts import Template

# How `{candidates}` is laid out: each candidate under a numbered header, blank line apart.
CANDIDATE_HEADER = "### Candidate {index}\n"
CANDIDATE_SEPARATOR = "\n\n"

MATH_SOLVE = """\
Solve the math problem below. Reason step by step, and give your final answer in \\boxed{{}}.

## Problem
{problem}
"""

MATH_REFINE = """\
You are working on a math problem and have already written one attempt at it. Read that \
attempt critically and write a better solution.

## Problem
{problem}

## Your previous attempt (it may be cut off at the start)
{previous_attempt}

## What to do
Look for errors, gaps and unjustified steps in the previous attempt and fix them. If its \
approach cannot work, take a better one; if it stopped before the end, carry it through. \
Write a complete solution that stands on its own, reasoning step by step, and give your \
final answer in \\boxed{{}}.
"""

MATH_VERIFY = """\
You are checking a proposed solution to a math problem.

## Problem
{problem}

## Proposed solution (it may be cut off at the start)
{previous_attempt}

## What to do
Verify the proposed solution step by step: redo every calculation and check that each \
claim follows from what came before it. If everything holds, confirm the final answer. \
If you find a mistake, say where it is, correct the solution from that point on and \
finish it. End with your final answer in \\boxed{{}}.
"""

MATH_AGGREGATE = """\
Below are a math problem and several candidate solutions to it, written independently. \
Some of them may be wrong or unfinished.

## Problem
{problem}

## Candidate solutions
{candidates}

## What to do
Compare the candidates: where they agree, where they differ, and which of their steps \
are wrong. Keep their correct ideas, avoid their mistakes, and write one better solution \
of your own, reasoning step by step. Do not simply follow the majority. Give your final \
answer in \\boxed{{}}.
"""

SCIENCE_SOLVE = """\
Answer the science question below. Reason step by step, and give your final answer (for \
multiple choice, the letter only) in \\boxed{{}}.

## Question
{problem}
"""

SCIENCE_REFINE = """\
You are working on a science question and have already written one attempt at it. Read \
that attempt critically and write a better answer.

## Question
{problem}

## Your previous attempt (it may be cut off at the start)
{previous_attempt}

## What to do
Look for wrong facts, faulty reasoning and gaps in the previous attempt and fix them; if \
it stopped before the end, carry it through. Write a complete answer that stands on its \
own, reasoning step by step, and give your final answer (for multiple choice, the letter \
only) in \\boxed{{}}.
"""

SCIENCE_VERIFY = """\
You are checking a proposed answer to a science question.

## Question
{problem}

## Proposed answer (it may be cut off at the start)
{previous_attempt}

## What to do
Verify the proposed answer step by step: check each fact, principle and calculation it \
uses. If everything holds, confirm it. If you find a mistake, say where it is and correct \
the answer from that point on. End with your final answer (for multiple choice, the \
letter only) in \\boxed{{}}.
"""

SCIENCE_AGGREGATE = """\
Below are a science question and several candidate answers to it, written \
independently. Some of them may be wrong or unfinished.

## Question
{problem}

## Candidate answers
{candidates}

## What to do
Compare the candidates: where they agree, where they differ, and which of their claims \
are wrong. Keep their correct reasoning, avoid their mistakes, and write one better \
answer of your own, reasoning step by step. Do not simply follow the majority. Give your \
final answer (for multiple choice, the letter only) in \\boxed{{}}.
"""

KINDS: dict[str, tuple[str, ...]] = {}
BUILTIN: dict[str, dict[str, str]] = {}  # kind -> builtin name -> text


def define_kind(kind: str, fields: Sequence[str], builtins: dict[str, str]) -> None:
    """Declares a prompt kind, its required placeholders and its builtin templates."""
    KINDS[kind] = tuple(fields)
    BUILTIN[kind] = dict(builtins)
    for name, text in builtins.items():  # builtins must pass their own checks
        Template(text, KINDS[kind], f"<builtin {name} {kind}>")


define_kind("solve", ("problem",), {"math": MATH_SOLVE, "science": SCIENCE_SOLVE})
define_kind("refine", ("problem", "previous_attempt"),
            {"math": MATH_REFINE, "science": SCIENCE_REFINE})
define_kind("verify", ("problem", "previous_attempt"),
            {"math": MATH_VERIFY, "science": SCIENCE_VERIFY})
define_kind("aggregate", ("problem", "candidates"),
            {"math": MATH_AGGREGATE, "science": SCIENCE_AGGREGATE})


def load_method_template(spec: str, kind: str) -> Template:
    """`spec`: a builtin name of `kind` or a path to a UTF-8 text file with its fields."""
    if kind not in KINDS:
        raise ValueError(f"unknown template kind {kind!r}; known: {', '.join(KINDS)}")
    if spec in BUILTIN[kind]:
        return Template(BUILTIN[kind][spec], KINDS[kind], f"<builtin {spec} {kind}>")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} template {spec!r} is neither a builtin "
                                f"({', '.join(BUILTIN[kind])}) nor an existing file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"template {path}: not UTF-8 ({e})") from None
    return Template(text, KINDS[kind], str(path))


def candidate_header(index: int) -> str:
    """Header of the `index`-th (1-based) candidate in `{candidates}`."""
    return CANDIDATE_HEADER.format(index=index)


def format_candidates(texts: Sequence[str]) -> str:
    """The text of `{candidates}` for these candidate texts (the token-level assembly in
    `rc_jax.methods.base.MethodContext.join_candidates` decodes to exactly this)."""
    return CANDIDATE_SEPARATOR.join(candidate_header(j + 1) + t for j, t in enumerate(texts))
