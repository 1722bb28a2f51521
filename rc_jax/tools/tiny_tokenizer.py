"""A tiny, offline, deterministic Qwen-style tokenizer for tests and demos.

`build_tiny_tokenizer(out_dir)` trains a byte-level BPE tokenizer in-process with the
`tokenizers` library on a small built-in English + math corpus and saves it as a Hugging
Face tokenizer directory (`tokenizer.json` + `tokenizer_config.json` with a ChatML chat
template), so it loads through `transformers.AutoTokenizer.from_pretrained(out_dir)` — the
same path users take with a real Qwen3 checkpoint.

Layout of the vocabulary (mirrors Qwen's: ordinary tokens first, added tokens last):

* ids ``0 .. 255``: the 256 byte-level symbols (any UTF-8 text round-trips);
* then BPE merges learned from the corpus;
* then the added tokens, in this order: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``
  (special), ``<think>``, ``</think>`` (added but *not* special, as in Qwen3: they are always
  single ids, and ``decode(..., skip_special_tokens=True)`` keeps them so RC can split
  reasoning text on ``</think>``);
* then, only if the corpus ran out of merges before reaching ``vocab_size``, special filler
  tokens ``<|reserved_0|>``, ``<|reserved_1|>``, ... .

So ``len(AutoTokenizer.from_pretrained(out_dir)) == vocab_size`` exactly, and a model with
``vocab_size`` embedding rows covers every id.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS: tuple[str, ...] = ("<think>", "</think>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# 256 byte symbols + the 5 added tokens: the smallest vocabulary that still encodes any text.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + len(THINK_TOKENS)

# Qwen-style ChatML template, written for rc_jax. `enable_thinking=false` renders an empty,
# closed think block after the generation prompt, as Qwen3's template does; when the
# variable is undefined or true the prompt ends right after "<|im_start|>assistant\n".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Pre-tokenization split, in the spirit of Qwen2's: contractions, words with an optional
# leading non-letter, *single digits* (so numbers are tokenized digit by digit, which keeps
# arithmetic regular), punctuation runs, newline runs, other whitespace.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

# Small built-in corpus: plain English, competition-math phrasing, LaTeX (\boxed, \frac,
# \sqrt, ...), digits and the RC prompt vocabulary (summary / reasoning / problem).
_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Let us think step by step about the problem before writing the final answer.",
    "Solve the following math problem. Put the final answer in \\boxed{}.",
    "We are given that x + y = 10 and x - y = 4, so x = 7 and y = 3.",
    "Therefore the answer is \\boxed{42}.",
    "The answer is \\boxed{\\frac{1}{2}}.",
    "Compute \\frac{3}{4} + \\frac{5}{6} = \\frac{19}{12}.",
    "Let $f(x) = x^2 + 2x + 1$. Then $f(x) = (x + 1)^2$ and $f(3) = 16$.",
    "The sum of the first $n$ positive integers is $\\frac{n(n+1)}{2}$.",
    "By the Pythagorean theorem, $a^2 + b^2 = c^2$, so $c = \\sqrt{9 + 16} = 5$.",
    "Find the number of positive integers $n \\le 1000$ such that $n^2 + 1$ is divisible by 5.",
    "The probability that both coins land heads is $\\frac{1}{4}$.",
    "Consider the triangle $ABC$ with $AB = 13$, $BC = 14$ and $CA = 15$.",
    "Its area is $84$ by Heron's formula, and the inradius is $r = 4$.",
    "Since $\\gcd(12, 18) = 6$ and $\\operatorname{lcm}(12, 18) = 36$, the product is 216.",
    "We conclude that $\\sum_{k=1}^{10} k^2 = 385$.",
    "If $2^x = 64$ then $x = 6$; if $3^y = 81$ then $y = 4$.",
    "The remainder when $7^{100}$ is divided by 13 is 9.",
    "Summary of the current progress: we reduced the problem to counting lattice points.",
    "Here is the existing summary of previous attempts at this problem.",
    "Write a concise summary of the reasoning below, keeping every useful intermediate result.",
    "Reasoning: first we factor the polynomial, then we check each root.",
    "Wait, that is not right. Let me recheck the computation.",
    "Hmm, so the equation has two real solutions: $x = -1$ and $x = 3$.",
    "Let $a$, $b$, $c$ be real numbers with $a + b + c = 0$. Prove that $a^3 + b^3 + c^3 = 3abc$.",
    "The matrix $\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$ has determinant $-2$.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 1024 2025 3.14159 2.71828 -17 1/3 0.5",
    "An integer $n$ is called good if $n \\equiv 1 \\pmod{4}$.",
    "The circle $x^2 + y^2 = 25$ meets the line $y = x + 1$ at two points.",
    "In how many ways can we choose 3 people from a group of 10? $\\binom{10}{3} = 120$.",
    "The limit $\\lim_{x \\to 0} \\frac{\\sin x}{x} = 1$ is a classic result.",
    "Note that $\\left( \\frac{a+b}{2} \\right)^2 \\ge ab$ for all real $a$ and $b$.",
    "This problem asks for the smallest value, and we verify that the bound is attained.",
    "Answer: \\boxed{7}\nAnswer: \\boxed{12}\nAnswer: \\boxed{\\sqrt{2}}",
    "Step 1: simplify.\nStep 2: substitute.\nStep 3: check the answer.\n\nDone.",
    "She said that they were going to the market, and he would meet them there later.",
    "Reasoning models improve when they can revisit, summarize and extend earlier work.",
)


def _train_bpe(num_merged_tokens: int) -> Tokenizer:
    """Train byte-level BPE on the built-in corpus, aiming for `num_merged_tokens` ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            # use_regex=False: the split above already did the word segmentation.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # No normalizer: NFC/NFKC would break exact decode(encode(text)) == text round trips.
    trainer = trainers.BpeTrainer(
        vocab_size=num_merged_tokens,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(list(_CORPUS), trainer=trainer)
    return tok


def _add_tokens(tok: Tokenizer, vocab_size: int) -> None:
    """Append the chat/think tokens, then special fillers up to exactly `vocab_size`."""
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    n_fill = vocab_size - tok.get_vocab_size(with_added_tokens=True)
    fillers = [f"<|reserved_{i}|>" for i in range(n_fill)]
    if fillers:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fillers])


def _tokenizer_config(tok: Tokenizer) -> dict:
    """transformers' tokenizer_config.json for the trained tokenizer."""
    decoder = {}
    for token in (*SPECIAL_TOKENS, *THINK_TOKENS):
        decoder[str(tok.token_to_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token in SPECIAL_TOKENS,
        }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "chat_template": CHAT_TEMPLATE,
        # Keep decode() exact: the clean-up would rewrite e.g. " ." into ".".
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "split_special_tokens": False,
    }


def build_tiny_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 512) -> str:
    """Build the tiny tokenizer into `out_dir` (created if needed) and return its path.

    The result is deterministic (same ids on every build) and takes well under a second.
    `len(tokenizer) == vocab_size` exactly: if the corpus yields fewer merges than needed,
    the remainder is filled with special `<|reserved_i|>` tokens.

    Raises:
      ValueError: if `vocab_size` < 261 (256 byte symbols + 5 added tokens).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for the tiny tokenizer; "
            f"need >= {MIN_VOCAB_SIZE} (256 byte symbols + 5 added tokens)"
        )
    n_added = len(SPECIAL_TOKENS) + len(THINK_TOKENS)
    tok = _train_bpe(vocab_size - n_added)
    _add_tokens(tok, vocab_size)
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size, "internal size error"

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tok), indent=2) + "\n")
    return str(out)
