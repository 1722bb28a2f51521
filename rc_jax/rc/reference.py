"""The RC reference loop: RC's semantics, one phase at a time, over strings.

fill template -> chat template -> encode the whole string -> sample -> decode -> store the
raw text -> clean -> next prompt. It is the readable specification of RC (docs/design.md)
and the oracle the device engine (`engine.py`) is tested against, token id for token id.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from rc_jax.models.config import ModelConfig
from rc_jax.rc.engine import RCSettings
from rc_jax.rc.rollout import REASON, SUMMARIZE, PhasePrompts, Rollout
from rc_jax.records import RolloutRecord
from rc_jax.sampling.core import SamplingParams
from rc_jax.sampling.generate import Buckets, generate
from rc_jax.sampling.keys import fold
from rc_jax.tokenizer import Tokenizer


def run_text_reference(params: Any, config: ModelConfig, tokenizer: Tokenizer,
                       settings: RCSettings, sampling: SamplingParams,
                       problems: Sequence[str], keys: np.ndarray, *,
                       buckets: Buckets = Buckets(),
                       summarizer: tuple[Any, ModelConfig] | None = None,
                       summarizer_tokenizer: Tokenizer | None = None,
                       summarizer_sampling: SamplingParams | None = None,
                       record_prompts: bool = False,
                       stop_ids: Sequence[int] | None = None) -> list[RolloutRecord]:
    """RC for each problem (one rollout each), all `settings.num_steps` steps; returns each
    rollout's `RolloutRecord` (with `record_prompts`, every prompt's ids in `prompts[t]` /
    `summary_prompts[t]`), the same records the device engine's rollouts hold.

    keys: [len(problems), 2] per-rollout PRNG keys; phase p of step t samples token i with
    fold_in(fold_in(key, 2t + p), i), the device engine's scheme.
    stop_ids: ids that end a phase (default: each tokenizer's eos ids).
    """
    s_params, s_config = summarizer or (params, config)
    s_tok = summarizer_tokenizer or tokenizer
    prompts = PhasePrompts(tokenizer, settings.reasoning_template, settings.summary_template,
                           settings.use_think_tags, summary_tokenizer=s_tok)
    rollouts = [Rollout(p, np.asarray(k), settings.num_steps) for p, k in zip(problems, keys)]

    def phase(p, cfg, tok, samp, phase_id, budget, step):
        ids = [r.next_prompt(prompts, phase_id) for r in rollouts]
        stops = tok.eos_ids if stop_ids is None else stop_ids
        res = generate(p, cfg, ids, samp, jax.random.PRNGKey(0), budget, stops,
                       pad_id=tok.pad_id, buckets=buckets,
                       row_keys=fold(keys, 2 * step + phase_id))
        raw = [tok.decode(t, skip_special_tokens=True) for t in res.tokens]
        return ids, raw, res

    for step in range(settings.num_steps):
        # 1. Reason from (problem, summary).
        ids, raw, res = phase(params, config, tokenizer, sampling, REASON,
                              settings.max_reasoning_tokens, step)
        for r, x, text, gen, fin in zip(rollouts, ids, raw, res.tokens, res.finish_reasons):
            if record_prompts:
                r.record.prompts.append([x])
            r.finish_reasoning(text, len(x), len(gen), fin)
        # 2. Summarize (problem, summary, cleaned reasoning) into the new summary.
        ids, raw, res = phase(s_params, s_config, s_tok, summarizer_sampling or sampling,
                              SUMMARIZE, settings.max_summary_tokens, step)
        # 3. The reasoning is discarded: only the cleaned summary reaches the next step.
        for r, x, text, gen, fin in zip(rollouts, ids, raw, res.tokens, res.finish_reasons):
            if record_prompts:
                r.record.summary_prompts.append([x])
            r.finish_summary(text, len(x), len(gen), fin)
    return [r.record for r in rollouts]
