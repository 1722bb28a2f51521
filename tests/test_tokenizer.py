"""Tests for rc_jax.tokenizer and the tiny offline test tokenizer."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from rc_jax.tools.tiny_tokenizer import (
    CHAT_TEMPLATE,
    MIN_VOCAB_SIZE,
    SPECIAL_TOKENS,
    THINK_TOKENS,
    build_tiny_tokenizer,
)
from rc_jax.tokenizer import ChatSegments, Tokenizer, load_tokenizer

# Module-scoped until the lead adds a session fixture to tests/conftest.py.


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="module")
def tok(tiny_dir: str) -> Tokenizer:
    return load_tokenizer(tiny_dir)


def _copy_with_template(src: str, dst: Path, template: str | None) -> Path:
    """Copy a tokenizer directory, replacing (or, for None, removing) its chat template."""
    shutil.copytree(src, dst)
    config_file = dst / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if template is None:
        config.pop("chat_template", None)
    else:
        config["chat_template"] = template
    config_file.write_text(json.dumps(config))
    return dst


# ---- the tiny tokenizer builder ------------------------------------------------------------


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = Path(build_tiny_tokenizer(tmp_path / "a"))
    b = Path(build_tiny_tokenizer(tmp_path / "b"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_build_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    build_tiny_tokenizer(tmp_path / "t")
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("vocab_size", [MIN_VOCAB_SIZE, 300, 512, 2048])
def test_build_vocab_size_is_exact(tmp_path: Path, vocab_size: int) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "t", vocab_size))
    assert len(hf) == vocab_size
    # Every id decodes and no id is out of range: the model's vocab may equal vocab_size.
    assert max(hf.get_vocab().values()) == vocab_size - 1


def test_build_rejects_too_small_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        build_tiny_tokenizer(tmp_path / "t", vocab_size=MIN_VOCAB_SIZE - 1)


def test_loads_through_autotokenizer(tiny_dir: str) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_dir)
    assert hf.eos_token == "<|im_end|>"
    assert hf.pad_token == "<|endoftext|>"
    assert hf.chat_template == CHAT_TEMPLATE


# ---- encode / decode -----------------------------------------------------------------------

ROUND_TRIP_TEXTS = [
    "",
    "Hello, world!",
    "The answer is \\boxed{\\frac{1}{2}}.",
    "1234567890 3.14159 -42 1e-9",
    "spaces    runs\t\ttabs\n\n\nnewlines  \n ",
    "   leading and trailing   ",
    "ünïcödé façade naïve — “quotes” ∑_{k=1}^n k² ≤ ∞",
    "中文数学题：求 x 的值。",
    "emoji 😀🚀 and combining e\u0301 (not normalized)",
    "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$",
    "mixed <think>reasoning</think> answer",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_encode_decode_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_digits_are_single_tokens(tok: Tokenizer) -> None:
    # The tiny tokenizer splits numbers digit by digit, like Qwen.
    assert len(tok.encode("2025")) == 4


@pytest.mark.parametrize("token", SPECIAL_TOKENS + THINK_TOKENS)
def test_special_tokens_are_single_ids(tok: Tokenizer, token: str) -> None:
    ids = tok.encode(token)
    assert len(ids) == 1
    assert tok.encode(f"a{token}b")[1:2] == ids  # matched even inside text


def test_decode_skips_chat_tokens_but_keeps_think_tags(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>x<think>y</think>z<|im_end|>")
    assert tok.decode(ids) == "x<think>y</think>z"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>x<think>y</think>z<|im_end|>"


def test_token_ids_and_vocab_size(tok: Tokenizer) -> None:
    vocab = tok.hf.get_vocab()
    assert tok.think_start_id == vocab["<think>"]
    assert tok.think_end_id == vocab["</think>"]
    assert tok.eos_ids == (vocab["<|im_end|>"], vocab["<|endoftext|>"])
    assert tok.pad_id == vocab["<|endoftext|>"]
    assert tok.vocab_size == len(tok.hf) == 512


# ---- eos ids -------------------------------------------------------------------------------


def test_eos_ids_include_generation_config(tiny_dir: str, tok: Tokenizer, tmp_path: Path) -> None:
    d = _copy_with_template(tiny_dir, tmp_path / "t", CHAT_TEMPLATE)
    im_end = tok.eos_ids[0]
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, 7]}))
    assert load_tokenizer(d).eos_ids == (*tok.eos_ids, 7)  # order kept, no duplicates
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert load_tokenizer(d).eos_ids == (*tok.eos_ids, 9)


def test_bad_generation_config_eos_is_reported(tiny_dir: str, tmp_path: Path) -> None:
    d = _copy_with_template(tiny_dir, tmp_path / "t", CHAT_TEMPLATE)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match="generation_config.json"):
        load_tokenizer(d)


# ---- chat template -------------------------------------------------------------------------


def test_chat_template_text(tok: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert tok.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(messages, add_generation_prompt=False).endswith(
        "What is 2+2?<|im_end|>\n"
    )


def test_chat_prompt_ids_match_rendered_text(tok: Tokenizer) -> None:
    text = "<|im_start|>user\nSolve x.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.chat_prompt_text("Solve x.") == text
    assert tok.chat_prompt_ids("Solve x.") == tok.encode(text)


def test_enable_thinking(tok: Tokenizer) -> None:
    base = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert tok.chat_prompt_text("q") == base
    assert tok.chat_prompt_text("q", enable_thinking=True) == base
    assert tok.chat_prompt_text("q", enable_thinking=False) == base + "<think>\n\n</think>\n\n"
    ids = tok.chat_prompt_ids("q", enable_thinking=False)
    assert ids.count(tok.think_start_id) == 1 and ids.count(tok.think_end_id) == 1


def test_open_think_appends_think_tag(tok: Tokenizer) -> None:
    ids = tok.chat_prompt_ids("q", open_think=True)
    assert ids == tok.chat_prompt_ids("q") + [tok.think_start_id]
    assert tok.chat_prompt_ids("q", enable_thinking=True, open_think=True) == ids


def test_open_think_conflicts_with_disabled_thinking(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="open_think"):
        tok.chat_prompt_ids("q", enable_thinking=False, open_think=True)


def test_open_think_not_doubled_when_template_opens_it(tiny_dir: str, tmp_path: Path) -> None:
    # A "thinking" template (like Qwen3-*-Thinking) already ends with an opened block.
    template = CHAT_TEMPLATE.replace(
        "{{- '<|im_start|>assistant\\n' -}}", "{{- '<|im_start|>assistant\\n<think>\\n' -}}"
    )
    tok = load_tokenizer(_copy_with_template(tiny_dir, tmp_path / "t", template))
    ids = tok.chat_prompt_ids("q", open_think=True)
    assert ids == tok.chat_prompt_ids("q")
    assert ids.count(tok.think_start_id) == 1


def test_open_think_is_noop_without_think_token(tok: Tokenizer) -> None:
    no_think = dataclasses.replace(tok, think_start_id=None, think_end_id=None)
    assert no_think.chat_prompt_ids("q", open_think=True) == tok.chat_prompt_ids("q")


# ---- chat template segments ----------------------------------------------------------------

SEGMENT_TEXTS = [
    "What is 2+2?",
    "Solve the following math problem. Put the final answer in \\boxed{}.",
    "Compute $\\frac{3}{4} + \\frac{5}{6}$.",
    "1234 is a number",
    "42",
    "x",
    " leading space",
    "  two leading spaces",
    "\tleading tab",
    "trailing space ",
    "trailing newline\n",
    "trailing newlines\n\n",
    "multi\nline\n\nproblem statement",
    "ünïcödé façade naïve ∑ ≤ ∞",
    "中文数学题",
    "😀 starts with an emoji",
    "Problem: {problem}\nSummary: {curr_summary}",
    "Has <think>tags</think> inside",
    "Has <|im_end|> inside",
    "$$\\int_0^1 x^2\\,dx$$",
    "'s contraction first",
    ".,;: punctuation first",
    "Here is the existing summary:\n- step 1\n- step 2\n\nNow continue.",
    "",
]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"enable_thinking": False}, {"enable_thinking": True}, {"open_think": True}],
    ids=["default", "thinking_off", "thinking_on", "open_think"],
)
def test_segments_reproduce_chat_prompt_ids(tok: Tokenizer, kwargs: dict) -> None:
    segments = tok.chat_template_segments(**kwargs)
    assert isinstance(segments, ChatSegments)
    for text in SEGMENT_TEXTS:
        assembled = segments.prefix_ids + tok.encode(text) + segments.suffix_ids
        assert assembled == tok.chat_prompt_ids(text, **kwargs), text
        assert tok.segments_match(segments, text, **kwargs)


def test_segments_are_bounded_by_chat_tokens(tok: Tokenizer) -> None:
    prefix, suffix = tok.chat_template_segments(open_think=True)
    vocab = tok.hf.get_vocab()
    assert prefix[0] == vocab["<|im_start|>"]
    assert suffix[0] == vocab["<|im_end|>"]
    assert suffix[-1] == tok.think_start_id
    assert tok.decode(prefix, skip_special_tokens=False) == "<|im_start|>user\n"


@pytest.mark.parametrize(
    "content_expr, match",
    [
        ("message['content'] | trim", "transforms"),
        ("message['content'] | upper", "transforms"),
        ("message['content'] + message['content']", "exactly once"),
    ],
)
def test_segments_reject_transforming_template(
    tiny_dir: str, tmp_path: Path, content_expr: str, match: str
) -> None:
    template = CHAT_TEMPLATE.replace("message['content']", f"({content_expr})")
    tok = load_tokenizer(_copy_with_template(tiny_dir, tmp_path / "t", template))
    with pytest.raises(ValueError, match=match):
        tok.chat_template_segments()


# ---- errors --------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_tokenizer(missing)


def test_directory_without_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


def test_path_is_a_file(tiny_dir: str) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_tokenizer(Path(tiny_dir) / "tokenizer.json")


def test_unloadable_tokenizer_files(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        load_tokenizer(tmp_path)


def test_no_chat_template(tiny_dir: str, tmp_path: Path) -> None:
    d = _copy_with_template(tiny_dir, tmp_path / "t", None)
    with pytest.raises(ValueError, match=re.escape(str(d)) + ".*no chat template"):
        load_tokenizer(d)
    tok = load_tokenizer(d, require_chat_template=False)  # plain text still works
    assert tok.decode(tok.encode("abc")) == "abc"
    with pytest.raises(ValueError, match="no chat template"):
        tok.chat_prompt_ids("q")
    with pytest.raises(ValueError, match="no chat template"):
        tok.chat_template_segments()
