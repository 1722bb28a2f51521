"""Tokenizer + chat template: text and templates -> token ids.

rc_jax uses Hugging Face `transformers` tokenizers loaded from a *local* directory (the
checkpoint directory of a Qwen3 model, or the tiny test tokenizer from
`rc_jax.tools.tiny_tokenizer`). Nothing here touches the network or the hub.

Public surface:

* `load_tokenizer(path)` -> `Tokenizer`
* `Tokenizer.encode / decode / apply_chat_template / chat_prompt_ids`
* `Tokenizer.chat_template_segments(...)` -> `ChatSegments(prefix_ids, suffix_ids)`: the
  chat wrapping as token segments, so the on-device RC engine can assemble prompts from
  token pieces without re-tokenizing strings.
* `Tokenizer.eos_ids / pad_id / think_start_id / think_end_id / vocab_size`

RC's prompt rule (docs/design.md): a filled template is wrapped as a single user
message with the model's chat template, generation prompt on; for models with thinking
tags, a `<think>` block is opened if the template did not open one (`open_think=True`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

THINK_START = "<think>"
THINK_END = "</think>"

# Extra end-of-turn / end-of-text tokens that stop generation for ChatML-style models
# (Qwen's `<|im_end|>` ends an assistant turn; `<|endoftext|>` ends a document).
_EXTRA_EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")

# Any one of these files means "a tokenizer lives here" for transformers.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)

# Stand-in user message used to split the rendered chat template into prefix / suffix.
# Plain ASCII letters only, so no template filter (escape, trim, ...) is likely to alter it.
_SENTINEL = "RCJAXUSERTEXTSENTINELQX7"

# Texts used to verify a split. Text-level: the rendered template must be exactly
# prefix + text + suffix (catches templates that trim/escape/rewrite content). Token-level:
# prefix_ids + encode(text) + suffix_ids must equal chat_prompt_ids(text) for typical texts.
_TEXT_PROBES = (
    "Solve 2 + 2.",
    "  Leading and trailing spaces.  ",
    "Line one\nLine two\n",
    "Compute $\\frac{1}{2}$ and put it in \\boxed{}.",
)
_TOKEN_PROBES = (
    "Solve 2 + 2.",
    "Compute $\\frac{1}{2}$ and put it in \\boxed{}.",
    "Problem:\nFind x.\n\nSummary: none yet.",
)


class ChatSegments(NamedTuple):
    """Token ids that go before and after the user text in a chat-wrapped prompt."""

    prefix_ids: list[int]
    suffix_ids: list[int]


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A loaded Hugging Face tokenizer plus the ids RC needs.

    Build it with `load_tokenizer`. Immutable; hashes by identity (eq=False) so it can be
    a static argument of jitted functions.

    Attributes:
      path: directory it was loaded from.
      hf: the underlying `transformers` tokenizer.
      eos_ids: ids that stop generation (see `load_tokenizer`).
      pad_id: pad token id, or the first eos id when there is no pad token.
      think_start_id / think_end_id: ids of `<think>` / `</think>` if each is a single
        token in the vocabulary, else None.
      vocab_size: `len(hf)`, i.e. including added tokens; a model's embedding table must
        have at least this many rows.
    """

    path: str
    hf: Any
    eos_ids: tuple[int, ...]
    pad_id: int
    think_start_id: int | None
    think_end_id: int | None
    vocab_size: int

    # ---- plain text <-> ids -------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in `text` map to their single ids."""
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. `<think>`/`</think>` are kept when the vocab marks them non-special
        (as Qwen3 does), so RC can split reasoning text on them."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ---- chat template ------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer directory defines a chat template."""
        return bool(getattr(self.hf, "chat_template", None))

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Render `messages` with the chat template and return the text (not tokenized).

        Extra keyword arguments (e.g. `enable_thinking=False`) become template variables.
        """
        self._require_chat_template()
        return self.hf.apply_chat_template(
            list(messages),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )

    def chat_prompt_text(
        self,
        user_text: str,
        *,
        enable_thinking: bool | None = None,
        open_think: bool = False,
        **template_kwargs: Any,
    ) -> str:
        """Text of the RC prompt: `user_text` as one user message, generation prompt on.

        See `chat_prompt_ids` for the arguments.
        """
        kwargs = _template_kwargs(enable_thinking, open_think, template_kwargs)
        text = self.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, **kwargs
        )
        if open_think and self.think_start_id is not None and not _ends_with_think_block(text):
            text += THINK_START
        return text

    def phase_prompt(self, user_text: str, *, use_think_tags: bool,
                     open_think: bool = False) -> str:
        """The one chat-wrapping rule of every RC phase and every method (docs/design.md).

        `user_text` becomes a single user message, generation prompt on, and the template
        gets `enable_thinking=use_think_tags` (templates without that variable ignore it).
        With `open_think` (RC's summary-conditioned reasoning steps) and think tags on, a
        `<think>` is appended when the rendered prompt holds none, as the paper's code does;
        a first step leaves opening the block to the model.
        """
        text = self.apply_chat_template([{"role": "user", "content": user_text}],
                                        add_generation_prompt=True,
                                        enable_thinking=bool(use_think_tags))
        if use_think_tags and open_think and THINK_START not in text:
            text += THINK_START
        return text

    def chat_prompt_ids(
        self,
        user_text: str,
        *,
        enable_thinking: bool | None = None,
        open_think: bool = False,
        **template_kwargs: Any,
    ) -> list[int]:
        """Token ids of the RC prompt: `user_text` as one user message, generation prompt on.

        Args:
          user_text: the filled RC template.
          enable_thinking: passed to the template as a variable only when not None (Qwen3
            templates read it; False renders an empty, closed think block).
          open_think: RC's rule for models with thinking tags: if the vocabulary has
            `<think>` and the rendered prompt does not already end with a think block,
            append `<think>` so the model starts inside one. A prompt ending with an opened
            `<think>` (thinking templates) or with a closed empty block (the template
            switched thinking off) is left alone. No-op if `<think>` is not a single token.
          **template_kwargs: other template variables.

        Raises:
          ValueError: no chat template, or `open_think=True` with `enable_thinking=False`
            (they contradict each other).
        """
        text = self.chat_prompt_text(
            user_text, enable_thinking=enable_thinking, open_think=open_think, **template_kwargs
        )
        # Chat templates spell out their own special tokens (bos included where the model
        # uses one), so the rendered text is encoded without adding any more.
        return self.encode(text, add_special_tokens=False)

    def chat_template_segments(
        self,
        *,
        enable_thinking: bool | None = None,
        open_think: bool = False,
        **template_kwargs: Any,
    ) -> ChatSegments:
        """The chat wrapping of a single user message as (prefix_ids, suffix_ids).

        For typical user texts,
        ``prefix_ids + encode(user_text) + suffix_ids == chat_prompt_ids(user_text, ...)``
        (same keyword arguments), so the RC device engine can build prompts from token
        segments without re-tokenizing strings.

        How: the template is rendered with a unique sentinel as the user message, the text
        is split around it, and the two sides are tokenized separately. The split is then
        checked on a few probe texts; a template that rewrites the content (trims it,
        escapes it, repeats it, ...) cannot be split this way and raises ValueError.

        When token-level equality can break: BPE tokenizes the whole prompt at once, so a
        token may merge characters across the prefix/user-text or user-text/suffix
        boundary. Equality holds when each boundary is also a pre-tokenizer split point or
        a special token. For ChatML templates (Qwen, the tiny test tokenizer) the suffix
        starts with the special `<|im_end|>`, and the prefix ends with "\\n", which the
        pre-tokenizer keeps apart from a following letter, digit, symbol or single space;
        it can break when the user text *starts with a newline* (the prefix's "\\n" and the
        text's newlines may become one token) or, for templates whose suffix does not
        start with a special token, when the text ends in whitespace or a mergeable
        character. Callers that must be exact for arbitrary text should compare against
        `chat_prompt_ids` (see `segments_match`).

        Raises:
          ValueError: no chat template, the sentinel does not appear exactly once in the
            rendered text, the template transforms the content, or the probes do not
            tokenize identically split and unsplit.
        """
        kwargs = dict(template_kwargs, enable_thinking=enable_thinking, open_think=open_think)
        rendered = self.chat_prompt_text(_SENTINEL, **kwargs)
        if rendered.count(_SENTINEL) != 1:
            raise ValueError(
                f"chat template of {self.path} does not render the user message exactly once "
                f"(found {rendered.count(_SENTINEL)} copies); cannot split it into segments"
            )
        prefix, suffix = rendered.split(_SENTINEL)
        for probe in _TEXT_PROBES:
            if self.chat_prompt_text(probe, **kwargs) != prefix + probe + suffix:
                raise ValueError(
                    f"chat template of {self.path} transforms the user message content "
                    f"(rendering {probe!r} is not prefix + text + suffix); "
                    "cannot split it into token segments"
                )
        segments = ChatSegments(self.encode(prefix), self.encode(suffix))
        for probe in _TOKEN_PROBES:
            if not self.segments_match(segments, probe, **kwargs):
                raise ValueError(
                    f"chat template of {self.path}: tokenizing prefix, user text and suffix "
                    f"separately differs from tokenizing the whole prompt for {probe!r} "
                    "(BPE merges across the segment boundary)"
                )
        return segments

    def segments_match(self, segments: ChatSegments, user_text: str, **kwargs: Any) -> bool:
        """Whether `segments` reproduce `chat_prompt_ids(user_text, **kwargs)` exactly."""
        assembled = segments.prefix_ids + self.encode(user_text) + segments.suffix_ids
        return assembled == self.chat_prompt_ids(user_text, **kwargs)

    def _require_chat_template(self) -> None:
        if not self.has_chat_template:
            raise ValueError(
                f"tokenizer at {self.path} has no chat template (no 'chat_template' in "
                "tokenizer_config.json and no chat_template.jinja); RC wraps every prompt "
                "as a chat message and needs one"
            )


def load_tokenizer(path: str | os.PathLike, *, require_chat_template: bool = True) -> Tokenizer:
    """Load the tokenizer in local directory `path` with `transformers.AutoTokenizer`.

    eos ids, in order, without duplicates: the tokenizer's eos token; `<|im_end|>` and
    `<|endoftext|>` if in the vocabulary; the `eos_token_id` (int or list) of
    `generation_config.json` in the same directory, if present.

    Args:
      path: directory holding tokenizer files (tokenizer.json / tokenizer_config.json ...).
      require_chat_template: fail now, rather than at the first chat call, if the
        directory has no chat template (RC always needs one).

    Raises:
      FileNotFoundError: `path` does not exist or holds no tokenizer files.
      ValueError: `path` is not a directory, cannot be loaded, has no chat template
        (when required) or no eos token at all.
    """
    directory = _check_directory(path)
    from transformers import AutoTokenizer  # heavy import, deferred to first use

    try:
        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # transformers raises many types; report them one way
        raise ValueError(f"could not load tokenizer from {directory}: {e}") from e

    vocab = hf.get_vocab()
    eos_ids = _eos_ids(hf, vocab, directory)
    if not eos_ids:
        raise ValueError(
            f"tokenizer at {directory} has no eos token (no eos_token, <|im_end|>, "
            "<|endoftext|> or generation_config.json eos_token_id); RC needs stop tokens"
        )
    tok = Tokenizer(
        path=str(directory),
        hf=hf,
        eos_ids=eos_ids,
        pad_id=hf.pad_token_id if hf.pad_token_id is not None else eos_ids[0],
        think_start_id=vocab.get(THINK_START),
        think_end_id=vocab.get(THINK_END),
        vocab_size=len(hf),
    )
    if require_chat_template:
        tok._require_chat_template()
    return tok


def _check_directory(path: str | os.PathLike) -> Path:
    """Resolve `path` and check it is a directory with tokenizer files in it."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    if not directory.is_dir():
        raise ValueError(f"tokenizer path {directory} is not a directory")
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer files in {directory} (expected one of {', '.join(_TOKENIZER_FILES)})"
        )
    return directory


def _eos_ids(hf: Any, vocab: dict[str, int], directory: Path) -> tuple[int, ...]:
    """Ordered, de-duplicated stop ids (see `load_tokenizer`)."""
    ids: list[int] = []
    if hf.eos_token_id is not None:
        ids.append(int(hf.eos_token_id))
    ids.extend(vocab[t] for t in _EXTRA_EOS_TOKENS if t in vocab)
    ids.extend(_generation_config_eos(directory))
    return tuple(dict.fromkeys(ids))


def _generation_config_eos(directory: Path) -> list[int]:
    """eos_token_id(s) from generation_config.json, [] if absent."""
    file = directory / "generation_config.json"
    if not file.is_file():
        return []
    try:
        value = json.loads(file.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"cannot read eos_token_id from {file}: {e}") from e
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"eos_token_id in {file} must be an int or list of ints, got {value!r}")
    return list(values)


def _template_kwargs(
    enable_thinking: bool | None, open_think: bool, template_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Template variables for a chat prompt; `enable_thinking` only when set."""
    if open_think and enable_thinking is False:
        raise ValueError(
            "open_think=True contradicts enable_thinking=False: the template closes the "
            "think block that open_think would open"
        )
    kwargs = dict(template_kwargs)
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return kwargs


def _ends_with_think_block(text: str) -> bool:
    """Whether the prompt already ends with a think block, opened or (emptily) closed."""
    tail = text.rstrip()
    return tail.endswith(THINK_START) or tail.endswith(THINK_END)
