"""DESIGN §1 post-processing on text (the reference loop's rules)."""
from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"


def clean_reasoning(text: str) -> str:
    """Keep the text before the first `</think>` (if any), drop `<think>`, strip."""
    if THINK_END in text:
        text = text.split(THINK_END, 1)[0]
    return text.replace(THINK_START, "").strip()


def clean_summary(text: str) -> str:
    """Keep the text after the last `</think>` (if any), drop `<think>`, strip."""
    if THINK_END in text:
        text = text.rsplit(THINK_END, 1)[1]
    return text.replace(THINK_START, "").strip()
