"""The RC text reference loop: DESIGN §1, literally, over strings.

format template -> chat template -> tokenize -> sample -> decode -> post-process, one
phase at a time for a batch of rollouts. It is the readable specification of RC and the
oracle for prompt strings; the device engine (`engine.py`) is what runs at scale.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rc_jax.models.config import ModelConfig
from rc_jax.rc.engine import RCSettings
from rc_jax.rc.prompts import load_template, reasoning_text, summary_text
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.sampling.core import SamplingParams
from rc_jax.sampling.generate import Buckets, generate
from rc_jax.tokenizer import Tokenizer


@dataclasses.dataclass
class TextRollout:
    """Per step: the exact prompt strings, the cleaned texts, and token counts."""
    reasoning_prompts: list[str] = dataclasses.field(default_factory=list)
    summary_prompts: list[str] = dataclasses.field(default_factory=list)
    reasoning_text: list[str] = dataclasses.field(default_factory=list)
    summary_text: list[str] = dataclasses.field(default_factory=list)
    prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_prompt_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_tokens: list[int] = dataclasses.field(default_factory=list)
    summary_tokens: list[int] = dataclasses.field(default_factory=list)
    reasoning_finish: list[str] = dataclasses.field(default_factory=list)
    summary_finish: list[str] = dataclasses.field(default_factory=list)


def reasoning_prompt(tokenizer: Tokenizer, settings: RCSettings, problem: str,
                     summary: str) -> str:
    """Step 1 prompt: template(problem, summary) as one chat user message."""
    text = reasoning_text(load_template(settings.reasoning_template, "reasoning"), problem,
                          summary)
    think = settings.use_think_tags and tokenizer.think_start_id is not None
    return tokenizer.chat_prompt_text(text, **({"enable_thinking": True, "open_think": True}
                                               if think else {}))


def summary_prompt(tokenizer: Tokenizer, settings: RCSettings, problem: str, summary: str,
                   reasoning: str) -> str:
    """Step 2 prompt: template(problem, summary, reasoning) as one chat user message."""
    text = summary_text(load_template(settings.summary_template, "summary"), problem, summary,
                        reasoning)
    return tokenizer.chat_prompt_text(text, **({"enable_thinking": False}
                                               if settings.use_think_tags else {}))


def run_text_reference(params: Any, config: ModelConfig, tokenizer: Tokenizer,
                       settings: RCSettings, sampling: SamplingParams,
                       problems: Sequence[str], keys: np.ndarray, *,
                       buckets: Buckets = Buckets(),
                       summarizer: tuple[Any, ModelConfig] | None = None) -> list[TextRollout]:
    """RC for each problem (one rollout each), following DESIGN §1 on strings.

    keys: [len(problems), 2] per-row PRNG keys; phase p of step t samples with
    fold_in(key, 2t + p), the same scheme as the device engine.
    """
    s_params, s_config = summarizer or (params, config)
    summaries = [""] * len(problems)
    outs = [TextRollout() for _ in problems]
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))

    def sample(p, cfg, prompts, budget, phase_keys):
        ids = [tokenizer.encode(x) for x in prompts]
        res = generate(p, cfg, ids, sampling, jax.random.PRNGKey(0), budget, tokenizer.eos_ids,
                       pad_id=tokenizer.pad_id, buckets=buckets, row_keys=phase_keys)
        return res, [tokenizer.decode(t, skip_special_tokens=True) for t in res.tokens], ids

    keys = jnp.asarray(keys, jnp.uint32)
    for step in range(settings.num_steps):
        k_r, k_s = np.asarray(fold(keys, 2 * step)), np.asarray(fold(keys, 2 * step + 1))
        # 1. Reason from (problem, summary).
        prompts = [reasoning_prompt(tokenizer, settings, p, s) for p, s in zip(problems, summaries)]
        res, texts, ids = sample(params, config, prompts, settings.max_reasoning_tokens, k_r)
        reasoning = [clean_reasoning(t) for t in texts]
        for o, prompt, r, n, raw, fin in zip(outs, prompts, reasoning, ids, res.tokens,
                                             res.finish_reasons):
            o.reasoning_prompts.append(prompt)
            o.reasoning_text.append(r)
            o.prompt_tokens.append(len(n))
            o.reasoning_tokens.append(len(raw))
            o.reasoning_finish.append(fin)
        # 2. Summarize (problem, summary, reasoning) into the new summary.
        prompts = [summary_prompt(tokenizer, settings, p, s, r)
                   for p, s, r in zip(problems, summaries, reasoning)]
        res, texts, ids = sample(s_params, s_config, prompts, settings.max_summary_tokens, k_s)
        summaries = [clean_summary(t) for t in texts]
        # 3. The reasoning is discarded: only `summaries` carries over.
        for o, prompt, s, n, raw, fin in zip(outs, prompts, summaries, ids, res.tokens,
                                             res.finish_reasons):
            o.summary_prompts.append(prompt)
            o.summary_prompt_tokens.append(len(n))
            o.summary_text.append(s)
            o.summary_tokens.append(len(raw))
            o.summary_finish.append(fin)
    return outs
