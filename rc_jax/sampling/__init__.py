"""Jitted KV-cached sampler: batched prefill + `lax.while_loop` decode."""
from rc_jax.sampling.core import Decoded, SamplingParams, choose_tokens, decode, prefill, sample
from rc_jax.sampling.generate import Buckets, GenerationResult, generate

__all__ = ["SamplingParams", "Buckets", "GenerationResult", "generate", "Decoded",
           "choose_tokens", "decode", "prefill", "sample"]
