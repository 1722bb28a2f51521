"""Prompt templates of the baselines and scaffolds: rc_jax's own wording, file loading.

Templates are `rc_jax.rc.prompts.Template`s (`str.format` text, `{{`/`}}` for literal
braces, missing or unknown placeholders rejected). Each *kind* of prompt has fixed fields:

  solve      {problem}                        autoregressive, budget forcing, RSA round 0
  refine     {problem} {previous_attempt}     self-refine, every step (step 1: empty attempt)
  verify     {problem} {previous_attempt}     self-verify, every step (step 1: empty attempt)
  aggregate  {problem} {candidates}           RSA: combine K candidate solutions

As in the paper, self-refine and self-verify use one template at every step: the first
step fills `{previous_attempt}` with the empty string, so the wording covers both cases.

A template spec is a builtin name (`math`, `science`; `bare` for solve: the problem text
alone, budget forcing's default) or a path to a UTF-8 text file.
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
Solve the math problem below. Your previous attempt at it is shown too; it is empty at \
the first attempt, and it may be unfinished or cut off at the start.

## Problem
{problem}

## Your previous attempt
{previous_attempt}

## What to do
If there is no previous attempt, solve the problem from the beginning. If there is one, \
read it critically and write a better solution: find its errors, gaps and unjustified \
steps and fix them; if its approach cannot work, take a better one; if it stopped before \
the end, carry it through. Write a complete solution that stands on its own, reasoning \
step by step, and give your final answer in \\boxed{{}}.
"""

MATH_VERIFY = """\
Solve the math problem below by checking a proposed solution to it. The proposed \
solution is empty at the first attempt, and it may be unfinished or cut off at the start.

## Problem
{problem}

## Proposed solution
{previous_attempt}

## What to do
If there is no proposed solution, solve the problem yourself, step by step. If there is \
one, verify it step by step: redo every calculation and check that each claim follows \
from what came before it. If everything holds, confirm the final answer. If you find a \
mistake, say where it is, correct the solution from that point on and finish it. End \
with your final answer in \\boxed{{}}.
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
Answer the science question below. Your previous attempt at it is shown too; it is \
empty at the first attempt, and it may be unfinished or cut off at the start.

## Question
{problem}

## Your previous attempt
{previous_attempt}

## What to do
If there is no previous attempt, answer the question from the beginning. If there is \
one, read it critically and write a better answer: find its wrong facts, faulty \
reasoning and gaps and fix them; if it stopped before the end, carry it through. Write a \
complete answer that stands on its own, reasoning step by step, and give your final \
answer (for multiple choice, the letter only) in \\boxed{{}}.
"""

SCIENCE_VERIFY = """\
Answer the science question below by checking a proposed answer to it. The proposed \
answer is empty at the first attempt, and it may be unfinished or cut off at the start.

## Question
{problem}

## Proposed answer
{previous_attempt}

## What to do
If there is no proposed answer, answer the question yourself, step by step. If there is \
one, verify it step by step: check each fact, principle and calculation it uses. If \
everything holds, confirm it. If you find a mistake, say where it is and correct the \
answer from that point on. End with your final answer (for multiple choice, the letter \
only) in \\boxed{{}}.
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


# The problem alone, nothing around it: budget forcing's prompt, as the paper ran s1.
BARE_SOLVE = "{problem}"

define_kind("solve", ("problem",), {"math": MATH_SOLVE, "science": SCIENCE_SOLVE,
                                    "bare": BARE_SOLVE})
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
