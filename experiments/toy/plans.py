"""RC on token ids: prompt plans, on-device prompt assembly, and post-processing.

The device engine never re-tokenizes text. A prompt is a *plan*: a sequence of constant
token segments (chat-template pieces, template literals) and named fields (problem ids,
current summary ids, current reasoning ids). `assemble` lays a plan out as a left-padded
batch; `clean_generation` applies RC's post-processing on ids.

Token-level post-processing equals the text rules (`rc_jax.rc.text`) with one documented
normalisation: `strip()` removes whole whitespace-only *tokens* at both ends; whitespace
inside a token that also holds text (e.g. " The") is kept. Decoding the cleaned ids
therefore equals the text rule's result up to leading/trailing whitespace.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rc_jax.rc.prompts import Template
from rc_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class PromptPlan:
    """Constant id segments and field names, in prompt order.

    segments: each item is either a tuple of token ids (constant) or a field name (str).
    """
    segments: tuple[tuple[int, ...] | str, ...]

    @property
    def constant_length(self) -> int:
        return sum(len(s) for s in self.segments if not isinstance(s, str))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(s for s in self.segments if isinstance(s, str))

    def host_ids(self, values: Mapping[str, Sequence[int]]) -> list[int]:
        """The plan filled with python id lists (RL's snapshot prompts, the toy's SFT data)."""
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


def assemble(plan: PromptPlan, fields: Mapping[str, tuple[jax.Array, jax.Array]],
             length: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Builds left-padded prompts on device.

    Args:
      plan: the prompt plan.
      fields: name -> (ids [B, F] int32, lengths [B] int32); ids valid up to lengths.
      length: output width P (static); must be >= the longest possible prompt.

    Returns:
      tokens [B, P] int32 (right-aligned), mask [B, P] bool.
    """
    batch = next(iter(fields.values()))[0].shape[0]
    parts, valid = [], []
    for seg in plan.segments:
        if isinstance(seg, str):
            ids, lens = fields[seg]
            parts.append(ids.astype(jnp.int32))
            valid.append(jnp.arange(ids.shape[1])[None, :] < lens[:, None])
        else:
            parts.append(jnp.broadcast_to(jnp.asarray(seg, jnp.int32)[None], (batch, len(seg))))
            valid.append(jnp.ones((batch, len(seg)), bool))
    src, ok = jnp.concatenate(parts, axis=1), jnp.concatenate(valid, axis=1)
    total = jnp.sum(ok, axis=1, keepdims=True)
    dest = jnp.where(ok, length - total + jnp.cumsum(ok, axis=1) - 1, length)  # length = drop
    rows = jnp.arange(batch)[:, None]
    tokens = jnp.full((batch, length), pad_id, jnp.int32).at[rows, dest].set(src, mode="drop")
    mask = jnp.zeros((batch, length), bool).at[rows, dest].set(True, mode="drop")
    return tokens, mask


@dataclasses.dataclass(frozen=True)
class TokenTables:
    """Per-vocabulary facts for post-processing (arrays of length >= model vocab)."""
    drop: np.ndarray        # [V] bool: special tokens, removed like skip_special_tokens
    whitespace: np.ndarray  # [V] bool: tokens that decode to whitespace only
    think_start: int        # -1 when absent
    think_end: int          # -1 when absent

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other


def token_tables(tokenizer: Tokenizer, vocab_size: int) -> TokenTables:
    """Builds the tables for a model with `vocab_size` rows (>= tokenizer vocabulary)."""
    n = max(vocab_size, tokenizer.vocab_size)
    drop = np.zeros(n, bool)
    drop[[i for i in tokenizer.hf.all_special_ids if i < n]] = True
    drop[tokenizer.vocab_size:] = True  # padding rows of the embedding are never text
    texts = tokenizer.hf.batch_decode([[i] for i in range(tokenizer.vocab_size)],
                                      skip_special_tokens=False)
    whitespace = np.zeros(n, bool)
    whitespace[:tokenizer.vocab_size] = [t != "" and t.strip() == "" for t in texts]
    start = -1 if tokenizer.think_start_id is None else tokenizer.think_start_id
    end = -1 if tokenizer.think_end_id is None else tokenizer.think_end_id
    if start >= 0:
        drop[start] = True
    return TokenTables(drop, whitespace, start, end)


def _suffix_count(x: jax.Array) -> jax.Array:
    """[B, N] -> number of True at positions >= i."""
    return jnp.flip(jnp.cumsum(jnp.flip(x, axis=1), axis=1), axis=1)


def clean_generation(tokens: jax.Array, lengths: jax.Array, tables: TokenTables, *,
                     keep: str, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """RC's post-processing (docs/design.md) on ids. tokens [B, N], lengths [B] -> (ids [B, N], lengths).

    keep='before_think_end' (reasoning): keep what precedes the first `</think>`.
    keep='after_think_end' (summary): keep what follows the first `</think>` (up to a
    second one).
    Then special tokens (stop tokens, `<think>`) are dropped, whitespace-only tokens at
    both ends are stripped, and the kept ids are packed to the left.
    """
    if keep not in ("before_think_end", "after_think_end"):
        raise ValueError(f"keep must be 'before_think_end' or 'after_think_end', got {keep!r}")
    n = tokens.shape[1]
    kept = jnp.arange(n)[None, :] < lengths[:, None]
    if tables.think_end >= 0:
        is_end = kept & (tokens == tables.think_end)
        if keep == "before_think_end":
            kept &= jnp.cumsum(is_end, axis=1) == 0
        else:  # between the first and a second </think>, as the text rule
            between = (jnp.cumsum(is_end, axis=1) == 1) & ~is_end
            kept &= jnp.where(jnp.any(is_end, axis=1, keepdims=True), between, True)
    kept &= ~jnp.asarray(tables.drop)[tokens]
    text = kept & ~jnp.asarray(tables.whitespace)[tokens]
    kept &= (jnp.cumsum(text, axis=1) > 0) & (_suffix_count(text) > 0)
    dest = jnp.where(kept, jnp.cumsum(kept, axis=1) - 1, n)
    rows = jnp.arange(tokens.shape[0])[:, None]
    out = jnp.full_like(tokens, pad_id).at[rows, dest].set(tokens, mode="drop")
    return out, jnp.sum(kept, axis=1).astype(jnp.int32)


def clean_host(ids: Sequence[int], tables: TokenTables, keep: str, pad_id: int) -> list[int]:
    """`clean_generation` for one python id list (RL's host-side cleaning)."""
    if not ids:
        return []
    out, n = clean_generation(jnp.asarray([list(ids)], jnp.int32),
                              jnp.asarray([len(ids)], jnp.int32), tables, keep=keep,
                              pad_id=pad_id)
    return np.asarray(out[0, :int(n[0])]).tolist()
