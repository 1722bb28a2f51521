"""Device-side sampling: token selection, prefill, and the `lax.while_loop` decode.

Everything here is traceable and shape-static, so it can be used both by the batched
`generate` API and inside bigger jitted programs (the RC engine runs these functions for
both of its phases inside one `while_loop`).

Shapes: B rows, P prompt bucket, N output buffer length, V vocabulary, C = P + N cache.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rc_jax.models import qwen3
from rc_jax.models.attention import target_platform
from rc_jax.models.config import ModelConfig
from rc_jax.parallel.context import constrain_kv_cache, sharding_context

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn.

    temperature 0 means greedy (argmax). top_k 0 and top_p 1 and min_p 0 disable
    truncation, and the sort of the vocabulary is then skipped entirely.
    """
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or int(self.top_k) != self.top_k:
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def truncates(self) -> bool:
        return self.top_p < 1 or self.top_k > 0 or self.min_p > 0

    def static_key(self) -> tuple[bool, bool]:
        """What changes the program; the numeric values are traced arguments."""
        return (self.greedy, self.truncates)

    def values(self) -> dict[str, jax.Array]:
        return {"temperature": jnp.float32(max(self.temperature, 1e-6)),
                "top_p": jnp.float32(self.top_p), "top_k": jnp.int32(self.top_k),
                "min_p": jnp.float32(self.min_p)}


def truncate_logits(logits: jax.Array, top_p: jax.Array, top_k: jax.Array,
                    min_p: jax.Array) -> jax.Array:
    """Masks (to -inf) tokens outside the top-k / nucleus / min-p set. logits: [B, V].

    The nucleus keeps the smallest prefix of tokens (by probability) whose mass reaches
    top_p; the most likely token is always kept. Tokens tied with the threshold logit are
    kept too.
    """
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    rank = jnp.arange(logits.shape[-1])[None]
    keep = mass_before < top_p
    keep &= (top_k <= 0) | (rank < top_k)
    keep &= probs >= min_p * probs[:, :1]
    keep = keep.at[:, 0].set(True)
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, _NEG_INF)


class TokenChoice(NamedTuple):
    token: jax.Array          # [B] int32
    logprob: jax.Array        # [B] log-prob under the sampling distribution
    model_logprob: jax.Array  # [B] log-prob under the unmodified model (temperature 1)


def choose_tokens(logits: jax.Array, keys: jax.Array, values: dict[str, jax.Array], *,
                  greedy: bool, truncates: bool) -> TokenChoice:
    """Picks one token per row from float32 logits [B, V] with per-row PRNG keys [B, 2].

    One key per row makes every row's draw independent of the batch it sits in, so
    results do not depend on batch size, padding, sharding or resume order.
    """
    model_logprobs = jax.nn.log_softmax(logits, axis=-1)
    if greedy:
        token = first_argmax(logits)
        logprob = jnp.zeros(token.shape, jnp.float32)  # the greedy distribution is one-hot
    else:
        scaled = logits / values["temperature"]
        if truncates:
            scaled = truncate_logits(scaled, values["top_p"], values["top_k"], values["min_p"])
        token = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
        logprob = _take(jax.nn.log_softmax(scaled, axis=-1), token)
    return TokenChoice(token, logprob, _take(model_logprobs, token))


def first_argmax(logits: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis ([..., V] -> [...] int32: the first maximum; the
    first NaN if any), as two plain reductions: XLA:CPU runs argmax's (value, index)
    reduction element by element (0.15 ms for one row of 49152 logits on the 2-core Xeon,
    4x these two)."""
    top = jnp.max(logits, axis=-1, keepdims=True)  # NaN if any logit is NaN
    hit = (logits == top) | jnp.isnan(logits)
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(hit, index, logits.shape[-1]), axis=-1)


def _take(table: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take_along_axis(table, index[:, None], axis=-1)[:, 0]


class Decoded(NamedTuple):
    """Result of `decode`: fixed-size buffers, valid up to `lengths` per row."""
    tokens: jax.Array          # [B, N] int32 (pad_id after the end)
    lengths: jax.Array         # [B] int32, stop token included
    stopped: jax.Array         # [B] bool: ended on a stop token (else: budget)
    logprobs: jax.Array        # [B, N] float32, sampling distribution
    model_logprobs: jax.Array  # [B, N] float32, unmodified model


PREFILL_CHUNK = 512


def prefill(params: Any, config: ModelConfig, tokens: jax.Array, mask: jax.Array,
            cache_length: int, chunk: int = PREFILL_CHUNK) -> tuple[jax.Array, qwen3.KVCache]:
    """Runs left-padded prompts [B, P] through the model into a fresh cache of cache_length.

    Prompts longer than `chunk` are prefilled `chunk` tokens at a time (a `lax.scan` that
    writes the same cache), so attention scores are [B, H, chunk, C] instead of
    [B, H, P, C]: a 19k-token RC summary prompt would otherwise need ~100 GiB of scores
    per row for a 4B model. Chunks that hold only left padding are skipped, so a short
    prompt in a wide bucket costs its own length (rounded up to a chunk). Requires
    P % chunk == 0 when P > chunk (the prompt buckets guarantee it).

    Returns the logits of each row's last prompt token [B, V] and the cache (index P).
    """
    b, p = tokens.shape
    # Pin the cache layout (rows on the batch axes, KV heads on `tensor`) instead of
    # leaving it to sharding propagation; a no-op outside `sharding_context`.
    cache = constrain_kv_cache(qwen3.init_cache(config, b, cache_length))
    positions = qwen3.positions_from_mask(mask)
    if p <= chunk:
        logits, cache = qwen3.forward(params, config, tokens, positions, cache,
                                      token_mask=mask, last_only=True)
        assert cache is not None  # forward returns the cache it was given
        return logits[:, -1], cache
    if p % chunk:
        raise ValueError(f"prompt width {p} is not a multiple of the prefill chunk {chunk}")

    def step(cache, xs):
        tok, pos, m = xs

        def run(cache):
            logits, cache = qwen3.forward(params, config, tok, pos, cache, token_mask=m,
                                          last_only=True)
            return cache, logits[:, -1]

        def skip(cache):  # a chunk of left padding only: nothing to compute or attend to
            return (cache.replace(index=cache.index + chunk),
                    jnp.zeros((b, config.vocab_size), jnp.float32))

        return jax.lax.cond(jnp.any(m), run, skip, cache)

    split = lambda x: x.reshape(b, p // chunk, chunk).swapaxes(0, 1)  # noqa: E731
    cache, last = jax.lax.scan(step, cache, (split(tokens), split(positions), split(mask)))
    return last[-1], cache


def repeat_rows(tree: Any, n: int, axis_of: Any) -> Any:
    """Repeats every row n times (row i -> rows i*n .. i*n+n-1)."""
    return jax.tree.map(lambda x, a: jnp.repeat(x, n, axis=a), tree, axis_of)


def repeat_cache(cache: qwen3.KVCache, n: int) -> qwen3.KVCache:
    if n == 1:
        return cache
    cache = qwen3.stack_cache(cache)
    return qwen3.KVCache(k=jnp.repeat(cache.k, n, axis=1), v=jnp.repeat(cache.v, n, axis=1),
                         valid=jnp.repeat(cache.valid, n, axis=0), index=cache.index)


def default_unroll_layers() -> bool:
    """Whether `decode` runs on the decode layout (`qwen3.pack_for_decode`) by default:
    on CPU only.

    XLA:CPU copies the slice of every stacked [L, ...] weight out of the scanned arrays
    before each matmul, so the whole model is read, written and read again per token, and
    its matmuls of few rows are fastest with the weight transposed as the left operand.
    The packed layout avoids both (about 2x faster decoding at batch 1-32 on 2 cores). The
    price is one copy of the weights per call, held while decoding, so accelerators keep
    the scan, whose slices they fuse into the matmuls.
    """
    return target_platform() == "cpu"


def resolve_unroll_layers(unroll_layers: bool | None, mesh: Any = None) -> bool:
    """`unroll_layers` as given, or when None `default_unroll_layers()` for the platform
    of `mesh` (None: the mesh in context, else JAX's default backend)."""
    if unroll_layers is not None:
        return unroll_layers
    with sharding_context(mesh):
        return default_unroll_layers()


def decode(params: Any, config: ModelConfig, cache: qwen3.KVCache, last_logits: jax.Array,
           next_positions: jax.Array, row_keys: jax.Array, max_new_tokens: jax.Array,
           stop_ids: jax.Array, values: dict[str, jax.Array], *, buffer_length: int,
           greedy: bool, truncates: bool, pad_id: int = 0,
           active: jax.Array | None = None, unroll_layers: bool | None = None) -> Decoded:
    """Autoregressive decoding as one `lax.while_loop` (no host round trip per token).

    Args:
      cache: the prefilled cache; must have room for `buffer_length` more tokens.
      last_logits: [B, V] logits predicting each row's first new token.
      next_positions: [B] rotary position of the first new token (= prompt length).
      row_keys: [B, 2] one PRNG key per row; token t of a row uses fold_in(key, t).
      max_new_tokens: [] traced budget (<= buffer_length): changing it never recompiles.
      stop_ids: [S] int32 ids that end a row (padded with -1).
      active: optional [B] bool; inactive rows (batch padding) are done from the start.
      unroll_layers: run the loop body unrolled over the layers, on the decode layout of
        the weights and a per-layer cache (`qwen3.pack_for_decode`, `qwen3.unstack_cache`,
        made once before the loop); None: `default_unroll_layers()`.
    """
    if resolve_unroll_layers(unroll_layers):
        params = qwen3.pack_for_decode(params, config)
        cache = qwen3.unstack_cache(cache)
    b = last_logits.shape[0]
    done0 = jnp.zeros((b,), bool) if active is None else ~active
    zeros_f = jnp.zeros((b, buffer_length), jnp.float32)
    init = dict(t=jnp.int32(0), cache=cache, logits=last_logits, done=done0,
                stopped=jnp.zeros((b,), bool), lengths=jnp.zeros((b,), jnp.int32),
                tokens=jnp.full((b, buffer_length), pad_id, jnp.int32),
                logprobs=zeros_f, model_logprobs=zeros_f)
    budget = jnp.minimum(max_new_tokens, buffer_length)

    def cond(c):
        return (c["t"] < budget) & ~jnp.all(c["done"])

    def body(c):
        t = c["t"]
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, t)
        choice = choose_tokens(c["logits"], keys, values,
                               greedy=greedy, truncates=truncates)
        live = ~c["done"]
        token = jnp.where(live, choice.token, pad_id)
        hit_stop = live & jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
        tokens = jax.lax.dynamic_update_slice(c["tokens"], token[:, None], (0, t))
        logprobs = jax.lax.dynamic_update_slice(
            c["logprobs"], jnp.where(live, choice.logprob, 0.0)[:, None], (0, t))
        model_logprobs = jax.lax.dynamic_update_slice(
            c["model_logprobs"], jnp.where(live, choice.model_logprob, 0.0)[:, None], (0, t))
        positions = (next_positions + t)[:, None]
        logits, cache = qwen3.forward(params, config, token[:, None], positions, c["cache"],
                                      token_mask=live[:, None])
        return dict(t=t + 1, cache=cache, logits=logits[:, 0], done=c["done"] | hit_stop,
                    stopped=c["stopped"] | hit_stop, lengths=c["lengths"] + live,
                    tokens=tokens, logprobs=logprobs, model_logprobs=model_logprobs)

    out = jax.lax.while_loop(cond, body, init)
    return Decoded(out["tokens"], out["lengths"], out["stopped"], out["logprobs"],
                   out["model_logprobs"])


def sample(params: Any, config: ModelConfig, tokens: jax.Array, mask: jax.Array,
           row_keys: jax.Array, max_new_tokens: jax.Array, stop_ids: jax.Array,
           values: dict[str, jax.Array], *, buffer_length: int, greedy: bool,
           truncates: bool, num_samples: int = 1, pad_id: int = 0,
           active: jax.Array | None = None, unroll_layers: bool | None = None) -> Decoded:
    """Prefill left-padded prompts [B, P] once, then decode `num_samples` rows per prompt.

    Output rows are ordered prompt-major: row i*num_samples + j is sample j of prompt i.
    row_keys: [B * num_samples, 2], one PRNG key per output row.
    """
    last_logits, cache = prefill(params, config, tokens, mask,
                                 tokens.shape[1] + buffer_length)
    next_positions = jnp.sum(mask, axis=-1).astype(jnp.int32)
    if num_samples > 1:
        cache = repeat_cache(cache, num_samples)
        last_logits = jnp.repeat(last_logits, num_samples, axis=0)
        next_positions = jnp.repeat(next_positions, num_samples, axis=0)
        active = None if active is None else jnp.repeat(active, num_samples, axis=0)
    return decode(params, config, cache, last_logits, next_positions, row_keys, max_new_tokens,
                  stop_ids, values, buffer_length=buffer_length, greedy=greedy,
                  truncates=truncates, pad_id=pad_id, active=active,
                  unroll_layers=unroll_layers)
