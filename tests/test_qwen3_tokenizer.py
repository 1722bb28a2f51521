"""The real Qwen3 tokenizer (fetched once via npm): think tags and the chat template.

RC relies on these facts: ``<think>``/``</think>`` are single, non-special ids (so
decoding with ``skip_special_tokens=True`` keeps them for splitting reasoning), and the
template's ``enable_thinking`` switch renders exactly as below.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from rc_jax.tools.qwen3_tokenizer import ArtefactUnavailableError, fetch_qwen3_tokenizer

THINK, END_THINK = 151667, 151668
_USER = [{"role": "user", "content": "What is 1+1?"}]


@pytest.fixture(scope="module")
def qwen3_dir() -> Path:
    try:
        return fetch_qwen3_tokenizer()
    except ArtefactUnavailableError as exc:
        pytest.skip(f"real Qwen3 tokenizer unavailable: {exc}")


@pytest.fixture(scope="module")
def qwen3(qwen3_dir: Path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_dir)


def test_vocabulary_and_special_tokens(qwen3) -> None:
    assert len(qwen3) == 151669
    assert qwen3.eos_token == "<|im_end|>" and qwen3.pad_token == "<|endoftext|>"
    assert qwen3.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]) == [151644, 151645, 151643]
    assert qwen3.bos_token is None and qwen3("hi")["input_ids"] == qwen3.encode("hi", add_special_tokens=False)


def test_think_tags_are_single_ids(qwen3) -> None:
    assert qwen3.convert_tokens_to_ids(["<think>", "</think>"]) == [THINK, END_THINK]
    ids = qwen3.encode("<think>\nLet me see.\n</think>\n\nThe answer is 2.", add_special_tokens=False)
    assert ids[0] == THINK and ids.count(THINK) == 1 and ids.count(END_THINK) == 1
    assert qwen3.encode("x</think>y", add_special_tokens=False)[1] == END_THINK
    # Not special: skip_special_tokens keeps them, so RC can split on "</think>".
    assert qwen3.decode([THINK, END_THINK], skip_special_tokens=True) == "<think></think>"
    assert qwen3.decode(ids) == "<think>\nLet me see.\n</think>\n\nThe answer is 2."


def _render(qwen3, messages, **kwargs) -> str:
    return qwen3.apply_chat_template(messages, tokenize=False, **kwargs)


def test_chat_template_enable_thinking(qwen3) -> None:
    base = "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert _render(qwen3, _USER, add_generation_prompt=True) == base
    assert _render(qwen3, _USER, add_generation_prompt=True, enable_thinking=True) == base
    assert _render(qwen3, _USER, add_generation_prompt=True, enable_thinking=False) == (
        base + "<think>\n\n</think>\n\n")
    assert _render(qwen3, _USER, add_generation_prompt=False) == base[: -len("<|im_start|>assistant\n")]


def test_chat_template_system_and_history(qwen3) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nold reasoning\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
    ]
    # Reasoning of turns before the last user query is dropped from the history.
    assert _render(qwen3, messages, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = qwen3.apply_chat_template(_USER, add_generation_prompt=True, enable_thinking=False)
    # "\n\n" is one id (271): the closed empty think block is exactly 4 ids.
    assert ids[-4:] == qwen3.encode("<think>\n\n</think>\n\n", add_special_tokens=False) == [THINK, 271, END_THINK, 271]
