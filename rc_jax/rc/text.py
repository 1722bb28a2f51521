"""RC's post-processing on text (docs/design.md): what of a phase's raw output feeds the
next prompt. The raw output itself is what the records store."""
from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"


def clean_reasoning(text: str) -> str:
    """Keep the text before the first `</think>` (if any), drop `<think>`, strip."""
    if THINK_END in text:
        text = text.split(THINK_END)[0]
    return text.replace(THINK_START, "").strip()


def clean_summary(text: str) -> str:
    """Keep the text after the first `</think>` up to a second one (if any), drop
    `<think>`, strip. (A summarizer closes one think block; text after a second `</think>`
    is dropped, as the paper's code does.)"""
    if THINK_END in text:
        text = text.split(THINK_END)[1]
    return text.replace(THINK_START, "").strip()
