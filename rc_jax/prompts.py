"""RC prompt templates: rc_jax's own default wording, file loading, placeholder checks.

A template is `str.format` text: `{problem}` style placeholders, literal braces written
`{{` / `}}`. The reasoning template takes `{problem}` and `{curr_summary}`; the
summarization template takes `{problem}`, `{existing_summary}` and `{reasoning}`.
A template missing a required placeholder, or naming an unknown one, is rejected.
"""
from __future__ import annotations

import dataclasses
import string
from pathlib import Path

REASONING_FIELDS = ("problem", "curr_summary")
SUMMARY_FIELDS = ("problem", "existing_summary", "reasoning")

MATH_REASONING = """\
You are solving a math problem. You may also see a summary of an earlier attempt at it.

## Problem
{problem}

## Summary of an earlier attempt
{curr_summary}

## What to do
If there is no summary above, solve the problem from the beginning. If there is one, \
use it: check the claims it makes, correct any mistakes, take a different route if the \
attempt got stuck, or finish it if it stopped early. Think step by step and give your \
final answer in \\boxed{{}}.
"""

MATH_SUMMARY = """\
Below are a math problem, a summary of earlier work on it (it may be empty), and the \
newest attempt at a solution. Write an updated summary of the work so far.

## Problem
{problem}

## Earlier summary
{existing_summary}

## Newest attempt
{reasoning}

## How to write the summary
Keep what still matters from the earlier summary and add what the newest attempt \
contributed: the approach it took, the key intermediate results, and the final answer it \
reached, if any. Say what was checked and what is still uncertain, and describe partial \
progress even if the attempt did not finish. Write in the first person, in at most two \
paragraphs. Report only what the attempt did: do not add new reasoning or calculations.
"""

SCIENCE_REASONING = """\
You are answering a science question. You may also see a summary of an earlier attempt \
at it.

## Question
{problem}

## Summary of an earlier attempt
{curr_summary}

## What to do
If there is no summary above, answer the question from the beginning. If there is one, \
use it: check its reasoning and facts, correct any mistakes, try another line of \
argument if it got stuck, or finish it if it stopped early. Think step by step and give \
your final answer (for multiple choice, the letter only) in \\boxed{{}}.
"""

SCIENCE_SUMMARY = """\
Below are a science question, a summary of earlier work on it (it may be empty), and the \
newest attempt at an answer. Write an updated summary of the work so far.

## Question
{problem}

## Earlier summary
{existing_summary}

## Newest attempt
{reasoning}

## How to write the summary
Keep what still matters from the earlier summary and add what the newest attempt \
contributed: the principles and facts it used, the key steps, and the answer it reached, \
if any. Say what was checked and what is still uncertain. Write in the first person, in \
at most two paragraphs. Report only what the attempt did: do not add new reasoning.
"""

BUILTIN = {
    "math": (MATH_REASONING, MATH_SUMMARY),
    "science": (SCIENCE_REASONING, SCIENCE_SUMMARY),
}


@dataclasses.dataclass(frozen=True)
class Template:
    """A validated `str.format` template.

    `pieces` is the template split into literal text (already unescaped) and placeholder
    names, in order, e.g. ('intro ', '{problem}', ' more ', '{curr_summary}', ...) as
    (is_field, text) pairs; the RC engine assembles token prompts from them.
    """
    text: str
    fields: tuple[str, ...]
    source: str = "<builtin>"

    def __post_init__(self):
        used = []
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as e:
            raise ValueError(f"template {self.source}: {e} (write literal braces as "
                             "'{{' and '}}')") from None
        for _, name, spec, conv in parsed:
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise ValueError(f"template {self.source}: unnamed placeholder {{{name}}}; "
                                 "a literal brace is written doubled, e.g. \\boxed{{}} "
                                 "for \\boxed{}")
            if name not in self.fields:
                raise ValueError(f"template {self.source}: unknown placeholder {{{name}}}; "
                                 f"allowed: {', '.join('{%s}' % f for f in self.fields)}")
            if spec or conv:
                raise ValueError(f"template {self.source}: placeholder {{{name}}} must not "
                                 "have a format spec or conversion")
            used.append(name)
        for f in self.fields:
            if f not in used:
                raise ValueError(f"template {self.source}: missing required placeholder {{{f}}}")

    def format(self, **values: str) -> str:
        return self.text.format(**values)

    @property
    def pieces(self) -> tuple[tuple[bool, str], ...]:
        out: list[tuple[bool, str]] = []
        for literal, name, _, _ in string.Formatter().parse(self.text):
            if literal:
                out.append((False, literal))
            if name is not None:
                out.append((True, name))
        return tuple(out)


def load_template(spec: str, kind: str) -> Template:
    """`spec` is a builtin name ('math', 'science') or a path to a UTF-8 text file.

    kind: 'reasoning' or 'summary' (decides the required placeholders).
    """
    if kind not in ("reasoning", "summary"):
        raise ValueError(f"template kind must be 'reasoning' or 'summary', got {kind!r}")
    fields = REASONING_FIELDS if kind == "reasoning" else SUMMARY_FIELDS
    if spec in BUILTIN:
        return Template(BUILTIN[spec][0 if kind == "reasoning" else 1], fields,
                        f"<builtin {spec} {kind}>")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} template {spec!r} is neither a builtin "
                                f"({', '.join(BUILTIN)}) nor an existing file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"template {path}: not UTF-8 ({e})") from None
    return Template(text, fields, str(path))


def reasoning_text(template: Template, problem: str, summary: str) -> str:
    return template.format(problem=problem, curr_summary=summary)


def summary_text(template: Template, problem: str, summary: str, reasoning: str) -> str:
    return template.format(problem=problem, existing_summary=summary, reasoning=reasoning)
