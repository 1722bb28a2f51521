"""Prompt plans: RC's prompts as constant token segments and named fields (the toy's SFT
data, `sft.build_examples`).

A plan is a sequence of constant token segments (chat-template pieces, template literals,
each tokenized on its own) and named fields (problem ids, summary ids, ...), so SFT
examples can be laid out from ids without re-tokenizing text. The runtime never uses
plans: it encodes every prompt whole (docs/design.md, "Prompts"). tests/test_toy.py
checks that the toy's SFT prompts equal that whole-string encoding.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from rc_jax.prompts import Template
from rc_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class PromptPlan:
    """Constant id segments and field names, in prompt order.

    segments: each item is either a tuple of token ids (constant) or a field name (str).
    """
    segments: tuple[tuple[int, ...] | str, ...]

    def host_ids(self, values: Mapping[str, Sequence[int]]) -> list[int]:
        """The plan filled with python id lists."""
        out: list[int] = []
        for seg in self.segments:
            out.extend(values[seg] if isinstance(seg, str) else seg)
        return out


def make_plan(tokenizer: Tokenizer, template: Template, **chat_kwargs) -> PromptPlan:
    """Chat prefix + template pieces (literals tokenized one by one) + chat suffix."""
    chat = tokenizer.chat_template_segments(**chat_kwargs)
    segments: list[tuple[int, ...] | str] = [tuple(chat.prefix_ids)]
    for is_field, text in template.pieces:
        segments.append(text if is_field else tuple(tokenizer.encode(text)))
    segments.append(tuple(chat.suffix_ids))
    return PromptPlan(tuple(s for s in segments if isinstance(s, str) or len(s)))
