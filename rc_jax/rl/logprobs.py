"""Per-token log-probabilities and entropies of packed sequences under the model.

A packed row is `prompt + response` (right-padded). `logp[:, t]` is
log pi(tokens[t] | tokens[:t]) (0 at t = 0), so it lines up with the token it scores
and the response mask can be applied directly.

Two ways to get there, same numbers:
* `chunk = 0`: the model's own logits [B, S, V] (simple; V * S floats per row).
* `chunk > 0`: the final hidden states are taken from the model (the output of its
  `final_norm` module, captured with `flax.linen.intercept_methods`, so the model code
  stays untouched) and projected to the vocabulary `chunk` positions at a time under
  `jax.checkpoint`, so at most [B, chunk, V] logits exist at once, forward or backward.
  For Qwen3-4B at 18k tokens that is the difference between ~11 GB and ~1 GB of f32
  logits per row. The model's own (then unused) logits are removed by XLA.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rc_jax.models import forward
from rc_jax.models.config import ModelConfig

_FINAL_NORM = "final_norm"


def final_hidden(params: Any, config: ModelConfig, tokens: jax.Array, positions: jax.Array,
                 mask: jax.Array) -> jax.Array:
    """Hidden states after the final norm, [B, S, E] (what the LM head multiplies)."""
    captured: list[jax.Array] = []

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == _FINAL_NORM and context.method_name == "__call__":
            captured.append(out)
        return out

    with nn.intercept_methods(capture):
        forward(params, config, tokens, positions, token_mask=mask)
    if len(captured) != 1:
        raise RuntimeError(f"could not capture the model's '{_FINAL_NORM}' output (found "
                           f"{len(captured)}); use rl.logprob_chunk=0")
    return captured[0]


def lm_head(params: Any, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """[B, S, E] -> float32 logits [B, S, V], exactly as the model computes them."""
    dt = config.jnp_dtype
    if config.tie_word_embeddings:
        return jnp.einsum("bse,ve->bsv", hidden, params["embedding"].astype(dt),
                          preferred_element_type=jnp.float32)
    return jnp.einsum("bse,ev->bsv", hidden, params["lm_head"].astype(dt),
                      preferred_element_type=jnp.float32)


def _score(logits: jax.Array, targets: jax.Array, temperature: float
           ) -> tuple[jax.Array, jax.Array]:
    """logits [B, S, V], targets [B, S] -> (log p(target) [B, S], entropy [B, S])."""
    logz = jax.nn.log_softmax(logits / temperature, axis=-1)
    logp = jnp.take_along_axis(logz, targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logz) * logz, axis=-1)
    return logp, entropy


def token_logprobs(params: Any, config: ModelConfig, tokens: jax.Array, positions: jax.Array,
                   mask: jax.Array, *, temperature: float = 1.0, chunk: int = 0
                   ) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies of every token given its prefix.

    Args:
      tokens, positions: [B, S] int32 packed rows (right padding).
      mask: [B, S] bool, True on real tokens.
      temperature: logits are divided by it (as the sampler does), so ratios compare
        like with like.
      chunk: 0 for one full-vocabulary projection; else positions per projection chunk.

    Returns:
      logp [B, S] float32 with logp[:, t] = log pi(tokens[t] | tokens[:t]) (0 at t=0),
      entropy [B, S] float32 of the distribution that predicts tokens[t] (0 at t=0).
    """
    b, s = tokens.shape
    targets = tokens[:, 1:]
    if chunk <= 0:
        logits, _ = forward(params, config, tokens, positions, token_mask=mask)
        logp, ent = _score(logits[:, :-1], targets, temperature)
    else:
        hidden = final_hidden(params, config, tokens, positions, mask)[:, :-1]
        n = -(-(s - 1) // chunk)
        pad = n * chunk - (s - 1)
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        tgt = jnp.pad(targets, ((0, 0), (0, pad)))
        # [n, B, chunk, ...]: lax.map runs the chunks in sequence; checkpoint keeps only
        # each chunk's hidden states for the backward pass, never its logits.
        hs = hidden.reshape(b, n, chunk, -1).transpose(1, 0, 2, 3)
        ts = tgt.reshape(b, n, chunk).transpose(1, 0, 2)

        @jax.checkpoint
        def one(args):
            h, t = args
            return _score(lm_head(params, config, h), t, temperature)

        logp, ent = jax.lax.map(one, (hs, ts))
        logp = logp.transpose(1, 0, 2).reshape(b, n * chunk)[:, :s - 1]
        ent = ent.transpose(1, 0, 2).reshape(b, n * chunk)[:, :s - 1]
    zero = jnp.zeros((b, 1), jnp.float32)
    return (jnp.concatenate([zero, logp], axis=1), jnp.concatenate([zero, ent], axis=1))
