"""String normalisation for the exact-match fallback of the grader.

math-verify decides most cases symbolically; this fallback catches answers it
cannot parse (plain words, odd formatting). Every step is a linear-time string
operation, so it is safe to run in the parent process without a timeout.
"""
from __future__ import annotations

import re

# Wrappers whose argument is the answer itself (`\text{Monday}` -> `Monday`).
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|operatorname|mbox)\s*\{([^{}]*)\}")
# Spacing commands and sizing that never change the value.
_SPACING_RE = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_SIZING_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PERCENT_RE = re.compile(r"\\?%")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# Unwrapping nested `\text{}` takes one pass per nesting level; real answers are
# short, so longer strings are compared as they are to keep this bounded.
MAX_NORMALIZE_CHARS = 5000


def _strip_math_delimiters(s: str) -> str:
    """Remove one pair of surrounding `$...$`, `\\(...\\)` or `\\[...\\]`."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)].strip()
    return s


def _unwrap_text_commands(s: str) -> str:
    """Replace `\\text{X}`-like wrappers by X, innermost first, until none remain."""
    while True:
        new = _WRAPPER_RE.sub(r"\1", s)
        if new == s:
            return s
        s = new


def normalize_answer(answer: str | None) -> str | None:
    """Canonical string form of an answer, for exact comparison.

    Removes math delimiters, text wrappers, spacing/sizing commands, degree and
    percent signs, dollar signs, thousands separators, whitespace and a trailing
    period; maps `\\dfrac`/`\\tfrac` to `\\frac`; lower-cases. Returns None for
    None or an answer that is empty after normalisation. Answers longer than
    ``MAX_NORMALIZE_CHARS`` are only stripped.
    """
    if answer is None:
        return None
    if len(answer) > MAX_NORMALIZE_CHARS:
        return answer.strip() or None
    s = _strip_math_delimiters(answer)
    s = _unwrap_text_commands(s)
    s = _SPACING_RE.sub(" ", s)
    s = _SIZING_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREE_RE.sub("", s)
    s = _PERCENT_RE.sub("", s)
    s = s.replace("\\$", "").replace("{,}", ",")
    s = "".join(s.split())
    s = s.rstrip(".")
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    s = s.lower()
    return s or None


def strings_match(answer: str | None, gold: str | None) -> bool:
    """True when both answers are present and equal after normalisation."""
    a, g = normalize_answer(answer), normalize_answer(gold)
    return a is not None and a == g
