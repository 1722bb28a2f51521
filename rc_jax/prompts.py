"""The one prompt registry: every template of every method, by kind and builtin name.

A template is `str.format` text: `{problem}` style placeholders, literal braces written
`{{` / `}}`. Each *kind* of prompt has fixed fields:

  reasoning  {problem} {curr_summary}                 RC's reasoning phase (step 1: empty summary)
  summary    {problem} {existing_summary} {reasoning}  RC's summarization phase
  solve      {problem}                                autoregressive, budget forcing, Delethink,
                                                      RSA round 0
  refine     {problem} {previous_attempt}             self-refine, every step (step 1: empty
                                                      attempt); RL's summary-free chains
  verify     {problem} {previous_attempt}             self-verify, likewise
  aggregate  {problem} {candidates}                   RSA: combine K candidate solutions

A template spec is a builtin name (`math`, `science`; `bare` for solve: the problem text
alone, budget forcing's default) or a path to a UTF-8 text file. There is one wording per
kind and name: RC, the baselines and RL all load from here (`load_template`). A template
missing a required placeholder, or naming an unknown one, is rejected. A new scaffold with
its own prompt kind calls `define_kind` from its module.

As in the paper, self-refine and self-verify use one template at every step: the first
step fills `{previous_attempt}` with the empty string, so the wording covers both cases.
The authors' summary-free files name that placeholder `{curr_reasoning_trace}`; a file may
use either spelling (`FIELD_ALIASES`).
"""
from __future__ import annotations

import dataclasses
import string
from pathlib import Path
from typing import Mapping, Sequence

REASONING_FIELDS = ("problem", "curr_summary")
SUMMARY_FIELDS = ("problem", "existing_summary", "reasoning")
# A reasoning-phase template's context: RC's summary, or the previous attempt of the
# summary-free variants (`fill_reasoning` fills whichever the template has).
CONTEXT_FIELDS = ("curr_summary", "previous_attempt")
# Other spellings a template *file* may use for a field (the authors' summary-free files).
FIELD_ALIASES: Mapping[str, tuple[str, ...]] = {"previous_attempt": ("curr_reasoning_trace",)}

# How `{candidates}` is laid out: each candidate under a numbered header, blank line apart.
CANDIDATE_HEADER = "### Candidate {index}\n"
CANDIDATE_SEPARATOR = "\n\n"

# ---------------------------------------------------------------- RC

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

# ---------------------------------------------------------------- baselines and scaffolds

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


@dataclasses.dataclass(frozen=True)
class Template:
    """A validated `str.format` template.

    `pieces` is the template split into literal text (already unescaped) and placeholder
    names, in order, e.g. ('intro ', '{problem}', ' more ', '{curr_summary}', ...) as
    (is_field, text) pairs (the toy experiment's token-level prompt plans use them).
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


KINDS: dict[str, tuple[str, ...]] = {}
BUILTIN: dict[str, dict[str, str]] = {}  # kind -> builtin name -> text


def define_kind(kind: str, fields: Sequence[str], builtins: Mapping[str, str]) -> None:
    """Declares a prompt kind, its required placeholders and its builtin templates."""
    KINDS[kind] = tuple(fields)
    BUILTIN[kind] = dict(builtins)
    for name, text in builtins.items():  # builtins must pass their own checks
        Template(text, KINDS[kind], f"<builtin {name} {kind}>")


# The problem alone, nothing around it: budget forcing's prompt, as the paper ran s1.
BARE_SOLVE = "{problem}"

define_kind("reasoning", REASONING_FIELDS, {"math": MATH_REASONING, "science": SCIENCE_REASONING})
define_kind("summary", SUMMARY_FIELDS, {"math": MATH_SUMMARY, "science": SCIENCE_SUMMARY})
define_kind("solve", ("problem",), {"math": MATH_SOLVE, "science": SCIENCE_SOLVE,
                                    "bare": BARE_SOLVE})
define_kind("refine", ("problem", "previous_attempt"),
            {"math": MATH_REFINE, "science": SCIENCE_REFINE})
define_kind("verify", ("problem", "previous_attempt"),
            {"math": MATH_VERIFY, "science": SCIENCE_VERIFY})
define_kind("aggregate", ("problem", "candidates"),
            {"math": MATH_AGGREGATE, "science": SCIENCE_AGGREGATE})


def _canonical_fields(text: str, fields: tuple[str, ...]) -> str:
    """`text` with an alias placeholder (FIELD_ALIASES) renamed to its field, when the
    template does not use the field's own name; literal text is re-escaped unchanged."""
    renames = {alias: f for f in fields for alias in FIELD_ALIASES.get(f, ())}
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return text  # Template reports the parse error
    names = {name for _, name, _, _ in parsed if name is not None}
    renames = {a: f for a, f in renames.items() if a in names and f not in names}
    if not renames:
        return text
    out = []
    for literal, name, spec, conv in parsed:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is not None:
            out.append("{" + renames.get(name, name) + (f"!{conv}" if conv else "")
                       + (f":{spec}" if spec else "") + "}")
    return "".join(out)


def load_template(spec: str, kind: str) -> Template:
    """`spec`: a builtin name of `kind` or a path to a UTF-8 text file with its fields."""
    if kind not in KINDS:
        raise ValueError(f"unknown template kind {kind!r}; known: {', '.join(KINDS)}")
    fields = KINDS[kind]
    if spec in BUILTIN[kind]:
        return Template(BUILTIN[kind][spec], fields, f"<builtin {spec} {kind}>")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} template {spec!r} is neither a builtin "
                                f"({', '.join(BUILTIN[kind])}) nor an existing file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"template {path}: not UTF-8 ({e})") from None
    return Template(_canonical_fields(text, fields), fields, str(path))


def fill_reasoning(template: Template, problem: str, context: str) -> str:
    """A reasoning-phase prompt's text: `{problem}` and the template's context field
    (`{curr_summary}` for RC, `{previous_attempt}` for the summary-free variants)."""
    field = next(f for f in CONTEXT_FIELDS if f in template.fields)
    return template.format(problem=problem, **{field: context})


def summary_text(template: Template, problem: str, summary: str, reasoning: str) -> str:
    return template.format(problem=problem, existing_summary=summary, reasoning=reasoning)


def candidate_header(index: int) -> str:
    """Header of the `index`-th (1-based) candidate in `{candidates}`."""
    return CANDIDATE_HEADER.format(index=index)


def format_candidates(texts: Sequence[str]) -> str:
    """The text of `{candidates}` for these candidate texts (the token-level assembly in
    `rc_jax.methods.base.MethodContext.join_candidates` decodes to exactly this)."""
    return CANDIDATE_SEPARATOR.join(candidate_header(j + 1) + t for j, t in enumerate(texts))
