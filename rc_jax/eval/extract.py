"""Final-answer extraction: the content of the last ``\\boxed{...}`` in a text.

The scanner matches braces explicitly (a depth counter that skips escaped
characters), so arbitrarily nested answers such as ``\\boxed{\\frac{\\sqrt{3}}{2}}``
or ``\\boxed{\\left\\{1,2\\right\\}}`` come out whole. A one-level regex cannot do
this and silently truncates nested answers, which biases accuracy.

Rules (documented because accuracy depends on them):

* Recognised commands: ``\\boxed`` and ``\\fbox``. A command name must end at a
  non-letter, so ``\\boxedanswer`` is not a box.
* ``\\boxed{...}``: content between the matching braces, stripped. Whitespace
  between the command and ``{`` is allowed.
* ``\\boxed 42``: the single token after the whitespace, i.e. characters up to the
  next whitespace or ``$``, with trailing sentence punctuation removed.
* Several boxes: the last *top-level* box wins (a box nested inside another box
  belongs to the outer one; ``\\boxed{\\boxed{5}}`` is unwrapped to ``5``).
* A backslash escapes the next character, so ``\\{`` and ``\\}`` never change the
  depth, while ``\\\\{`` (a LaTeX line break then a real brace) does.
* ``None`` when there is no box, when the last box is unbalanced (e.g. the
  generation was cut off inside it), or when it is empty.

``extract_boxed_paper`` reproduces the paper authors' extraction instead (used by
``grading.mode = paper``); see its docstring for how it differs.
"""
from __future__ import annotations

import re

# A box command; the name must end at a non-letter (`\boxedfoo` is another macro).
_COMMAND_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Characters that end a `\boxed 42` style token.
_TOKEN_STOP = set(" \t\r\n$")
_TRAILING_PUNCT = ".,;:"


def _match_brace(text: str, open_pos: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_pos``, or None if unbalanced."""
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _find_command(text: str, start: int) -> tuple[int, int] | None:
    """First box command at or after ``start``: (command start, index after name)."""
    # One regex search per box keeps the whole scan linear in len(text).
    m = _COMMAND_RE.search(text, start)
    return (m.start(), m.end()) if m else None


def _single_token(text: str, pos: int) -> tuple[str, int]:
    """Token for the brace-less form ``\\boxed 42``; returns (token, end index)."""
    end = pos
    while end < len(text) and text[end] not in _TOKEN_STOP:
        end += 1
    return text[pos:end].rstrip(_TRAILING_PUNCT), end


def _parse_box(text: str, name_end: int) -> tuple[str | None, int, bool]:
    """Parse the argument of a box command whose name ends at ``name_end``.

    Returns (content or None, index to resume scanning from, balanced flag).
    """
    i = name_end
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i >= len(text):
        return None, len(text), True
    if text[i] == "{":
        close = _match_brace(text, i)
        if close is None:
            return None, len(text), False
        return text[i + 1 : close], close + 1, True
    if i == name_end:
        # `\boxed` directly followed by something that is neither `{` nor whitespace
        # (e.g. `\boxed$`): not a usable box.
        return None, i, True
    token, end = _single_token(text, i)
    return token, end, True


def find_boxed_all(text: str) -> list[str | None]:
    """Contents of every top-level box in order (None for an empty/unusable box).

    An unbalanced box swallows the rest of the text, so it is always last and is
    reported as None.
    """
    out: list[str | None] = []
    pos = 0
    while True:
        found = _find_command(text, pos)
        if found is None:
            return out
        content, pos, _ = _parse_box(text, found[1])
        out.append(_unwrap(content))


def _unwrap(content: str | None) -> str | None:
    """Strip whitespace and redundant nested boxes; empty content becomes None."""
    while content is not None:
        content = content.strip()
        if not content:
            return None
        found = _find_command(content, 0)
        if found is None or found[0] != 0:
            return content
        # Unwrap only when the whole content is exactly one balanced box.
        inner, end, balanced = _parse_box(content, found[1])
        if not balanced or end != len(content):
            return content
        content = inner
    return None


def extract_boxed(text: str | None) -> str | None:
    """Content of the last top-level ``\\boxed{}``/``\\fbox{}`` in ``text``.

    Returns None when ``text`` is None, has no box, or its last box is unbalanced
    or empty. See the module docstring for the exact rules.
    """
    if not text:
        return None
    boxes = find_boxed_all(text)
    return boxes[-1] if boxes else None


_PAPER_OPEN = "\\boxed{"


def _paper_box_end(text: str, start: int) -> int:
    """Index of the ``}`` ending a paper-style box whose content starts at ``start``.

    The content may hold any character but a brace, plus brace groups one level deep
    whose inside has no brace at all. Braces count literally (``\\{`` too). Returns -1
    when the content breaks that rule (a second level of braces, or no closing brace
    before the text ends). A scan stops at the first brace after a group's opening one,
    so each attempt reads little beyond the next ``\\boxed{``.
    """
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch == "}":
            return i
        if ch == "{":
            j = i + 1
            while j < n and text[j] not in "{}":
                j += 1
            if j >= n or text[j] == "{":
                return -1
            i = j
        i += 1
    return -1


def extract_boxed_paper(text: str | None) -> str | None:
    """The paper authors' final-answer extraction (their evaluation script's behaviour).

    Differences from ``extract_boxed`` (which is the stricter, fully nested scanner):

    * only ``\\boxed{`` directly followed by its brace counts (no ``\\fbox``, no
      ``\\boxed 42``, no space before the brace);
    * the content may nest braces only one level deep: ``\\boxed{\\frac{1}{2}}`` is
      read, ``\\boxed{\\frac{\\sqrt{3}}{2}}`` is not a box at all, so an *earlier*
      box in the text (or nothing) becomes the answer;
    * braces are not escapable (``\\{`` opens a group like ``{``);
    * boxes are found left to right without overlap (a box found inside the content of
      a box that was not readable can still count), and the last one found wins;
    * the content is returned as written: not stripped, not unwrapped, and an empty
      box gives ``""``, not None.
    """
    if not text:
        return None
    found = None
    pos = text.find(_PAPER_OPEN)
    while pos != -1:
        start = pos + len(_PAPER_OPEN)
        end = _paper_box_end(text, start)
        if end == -1:
            pos = text.find(_PAPER_OPEN, pos + 1)
            continue
        found = text[start:end]
        pos = text.find(_PAPER_OPEN, end + 1)
    return found
