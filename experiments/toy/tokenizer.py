"""The toy tokenizer: ~780 tokens, built in-process with the `tokenizers` library.

Vocabulary: ChatML specials (`<|endoftext|>` pad, `<|im_start|>`, `<|im_end|>` eos), an
unknown token, every printable ASCII character and newline/tab as single tokens, one
token per labelled operation (`a+3`, `c-5`, ..., 32 labels x 21 operations: a step's
label and operation are one token, so finding "operation d" is a one-hop attention
lookup), `\\boxed{`, and the few words of the toy prompt templates. Pre-tokenization is a regex that prefers
those multi-character tokens and otherwise cuts single characters, so any ASCII text
round-trips exactly and digits are always single tokens. The decoder concatenates
(no spaces are inserted).

Saved as a Hugging Face tokenizer directory with a ChatML chat template, so it loads
through `rc_jax.tokenizer.load_tokenizer` like a real checkpoint's tokenizer.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from experiments.toy import task

PAD, IM_START, IM_END, UNK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
WORDS = ("user", "assistant", "solve", "summarize", "state", "work")
OP_TOKENS = tuple(label + op for label in task.LABELS for op in task.OPS)
PLAIN_OP_TOKENS = task.OPS
CHARS = tuple(chr(c) for c in range(0x20, 0x7F)) + ("\n", "\t")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def multi_char_tokens(labelled_ops: bool = True) -> tuple[str, ...]:
    ops = OP_TOKENS if labelled_ops else PLAIN_OP_TOKENS
    return ("\\boxed{",) + ops + WORDS


def vocabulary(labelled_ops: bool = True) -> list[str]:
    """All tokens in id order (specials last, as in Qwen's layout)."""
    return [*CHARS, *multi_char_tokens(labelled_ops), UNK, *SPECIAL_TOKENS]


def _split_pattern(labelled_ops: bool = True) -> str:
    words = sorted(multi_char_tokens(labelled_ops), key=len, reverse=True)
    return "|".join(re.escape(w) for w in words) + r"|[\s\S]"


def build_toy_tokenizer(out_dir: str | os.PathLike, labelled_ops: bool = True) -> str:
    """Writes tokenizer.json + tokenizer_config.json to `out_dir`; returns its path.

    labelled_ops: one token per labelled operation (`c-5`); False: label and operation
    are separate tokens (`c`, `-5`). Deterministic: the same ids on every build.
    """
    vocab = {t: i for i, t in enumerate(vocabulary(labelled_ops))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_split_pattern(labelled_ops)),
                                             behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPECIAL_TOKENS])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    decoder = {str(vocab[t]): {"content": t, "lstrip": False, "normalized": False,
                               "rstrip": False, "single_word": False, "special": True}
               for t in SPECIAL_TOKENS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD,
        "unk_token": UNK,
        "additional_special_tokens": [IM_START],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "split_special_tokens": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return str(out)
