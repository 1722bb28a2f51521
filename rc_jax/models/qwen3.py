"""Pure-functional dense decoder (Qwen3, Qwen2/2.5, Llama) in Flax linen.

The modules are only a way to declare parameters with logical axis names; they are always
applied functionally: `forward(params, config, tokens, positions, cache)`. Parameters are
a plain pytree of arrays; the KV cache is an explicit pytree argument and result, so a
`jax.lax.while_loop` can carry it.

Notation in shapes: B batch, S query length (chunk), C cache length, L layers,
E hidden size, H query heads, K key/value heads, G = H // K, D head dim, I MLP width,
V vocabulary.

Decoder layers are stacked along a leading `layers` axis and run with `nn.scan`, so
compile time does not grow with depth. Numerics follow the HF implementations:
RMSNorm, softmax and logits are computed in float32 whatever the activation dtype.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rc_jax.models.config import ModelConfig

Params = Any  # nested dict of arrays
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully-masked rows stay NaN-free


@flax.struct.dataclass
class KVCache:
    """Preallocated key/value cache, shared write position for all rows.

    Attributes:
      k, v: [L, B, C, K, D] keys/values (rotary already applied to keys).
      valid: [B, C] bool, True where a slot holds a real (non-padding) token.
      index: [] int32, the next slot to write (same for every row: prompts are
        left-padded so that rows stay aligned).
    """
    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array

    @property
    def length(self) -> int:
        return self.k.shape[2]


def init_cache(config: ModelConfig, batch: int, length: int, dtype: Any = None) -> KVCache:
    """An empty cache of `length` slots per row."""
    dtype = dtype or config.jnp_dtype
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   valid=jnp.zeros((batch, length), bool), index=jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- layers
def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...],
           init: Any) -> jax.Array:
    cfg: ModelConfig = module.config
    return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                        cfg.jnp_param_dtype)


def _dense_init(fan_in_axes: int = 1):
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                            in_axis=tuple(range(fan_in_axes)),
                                            out_axis=-1)


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), statistics in float32. x: [..., dim]."""
    config: ModelConfig
    dim: int
    axis: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (self.dim,), (self.axis,), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True)
                                     + self.config.rms_norm_eps)
        # HF casts back to the activation dtype before scaling; keep that rounding order.
        return scale.astype(x.dtype) * normed.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, S, D/2] (float32) for integer positions [B, S]."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding in the 'rotate half' layout HF uses. x: [B, S, N, D]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention reading and writing an explicit per-layer cache."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x, layer_k, layer_v, ctx):
        """x: [B, S, E]; layer_k/v: [B, C, K, D]. Returns (out [B,S,E], new k, new v)."""
        cfg = self.config
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt = cfg.jnp_dtype
        wq = _param(self, "q_proj", (e, h, d), ("embed", "q_heads", "head_dim"), _dense_init())
        wk = _param(self, "k_proj", (e, k, d), ("embed", "kv_heads", "head_dim"), _dense_init())
        wv = _param(self, "v_proj", (e, k, d), ("embed", "kv_heads", "head_dim"), _dense_init())
        wo = _param(self, "o_proj", (h, d, e), ("q_heads", "head_dim", "embed"), _dense_init(2))
        q = jnp.einsum("bse,ehd->bshd", x, wq.astype(dt))
        kk = jnp.einsum("bse,ekd->bskd", x, wk.astype(dt))
        vv = jnp.einsum("bse,ekd->bskd", x, wv.astype(dt))
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            q += _param(self, "q_bias", (h, d), ("q_heads", "head_dim"), zeros).astype(dt)
            kk += _param(self, "k_bias", (k, d), ("kv_heads", "head_dim"), zeros).astype(dt)
            vv += _param(self, "v_bias", (k, d), ("kv_heads", "head_dim"), zeros).astype(dt)
        if cfg.qk_norm:
            q = RMSNorm(cfg, d, "head_dim", name="q_norm")(q)
            kk = RMSNorm(cfg, d, "head_dim", name="k_norm")(kk)
        q = apply_rope(q, ctx["cos"], ctx["sin"])
        kk = apply_rope(kk, ctx["cos"], ctx["sin"])
        q = nn.with_logical_constraint(
            q, ("activation_batch", "activation_length", "activation_heads", None))

        # Write this chunk into the cache at the shared write index, then attend to all of it.
        start = (0, ctx["write_index"], 0, 0)
        layer_k = jax.lax.dynamic_update_slice(layer_k, kk.astype(layer_k.dtype), start)
        layer_v = jax.lax.dynamic_update_slice(layer_v, vv.astype(layer_v.dtype), start)

        b, s = x.shape[:2]
        qg = q.reshape(b, s, k, h // k, d)
        scores = jnp.einsum("bskgd,bckd->bkgsc", qg, layer_k.astype(dt),
                            preferred_element_type=jnp.float32) * (d ** -0.5)
        scores = jnp.where(ctx["mask"][:, None, None], scores, _MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        out = jnp.einsum("bkgsc,bckd->bskgd", probs, layer_v.astype(dt)).reshape(b, s, h, d)
        y = jnp.einsum("bshd,hde->bse", out, wo.astype(dt))
        if cfg.o_bias:
            y += _param(self, "o_bias", (e,), ("embed",), nn.initializers.zeros).astype(dt)
        return y, layer_k, layer_v


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). x: [B, S, E]."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        e, i, dt = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_dtype
        gate = _param(self, "gate_proj", (e, i), ("embed", "mlp"), _dense_init())
        up = _param(self, "up_proj", (e, i), ("embed", "mlp"), _dense_init())
        down = _param(self, "down_proj", (i, e), ("mlp", "embed"), _dense_init())
        hidden = nn.silu(x @ gate.astype(dt)) * (x @ up.astype(dt))
        hidden = nn.with_logical_constraint(
            hidden, ("activation_batch", "activation_length", "activation_mlp"))
        return hidden @ down.astype(dt)


class DecoderLayer(nn.Module):
    """Pre-norm attention + MLP block; scanned over the layer axis."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x, layer_kv, ctx):
        cfg = self.config
        layer_k, layer_v = layer_kv
        attn_out, layer_k, layer_v = Attention(cfg, name="attn")(
            RMSNorm(cfg, cfg.hidden_size, "embed", name="attn_norm")(x), layer_k, layer_v, ctx)
        x = x + attn_out
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg, cfg.hidden_size, "embed", name="mlp_norm")(x))
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed"))
        return x, (layer_k, layer_v)


_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Decoder(nn.Module):
    """Embeddings -> L decoder layers -> final norm -> logits."""
    config: ModelConfig

    @nn.compact
    def __call__(self, tokens, cos, sin, mask, write_index, cache_k, cache_v):
        cfg = self.config
        embedding = _param(self, "embedding", (cfg.vocab_size, cfg.hidden_size),
                           ("vocab", "embed"), nn.initializers.normal(0.02))
        x = jnp.take(embedding, tokens, axis=0).astype(cfg.jnp_dtype)
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed"))
        ctx = {"cos": cos, "sin": sin, "mask": mask, "write_index": write_index}

        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(DecoderLayer, policy=_REMAT[cfg.remat_policy],
                                 prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(layer_cls, variable_axes={"params": 0},
                            split_rngs={"params": True}, in_axes=(0, nn.broadcast),
                            length=cfg.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, (cache_k, cache_v) = stack(cfg, name="layers")(x, (cache_k, cache_v), ctx)
        else:
            raise NotImplementedError("scan_layers=False is not implemented; params are "
                                      "always stacked along the layer axis")

        x = RMSNorm(cfg, cfg.hidden_size, "embed", name="final_norm")(x)
        if cfg.tie_word_embeddings:
            logits = jnp.einsum("bse,ve->bsv", x, embedding.astype(cfg.jnp_dtype),
                                preferred_element_type=jnp.float32)
        else:
            head = _param(self, "lm_head", (cfg.hidden_size, cfg.vocab_size),
                          ("embed", "vocab"), _dense_init())
            logits = jnp.einsum("bse,ev->bsv", x, head.astype(cfg.jnp_dtype),
                                preferred_element_type=jnp.float32)
        logits = nn.with_logical_constraint(
            logits, ("activation_batch", "activation_length", "activation_vocab"))
        return logits, cache_k, cache_v


# ------------------------------------------------------------------------- functional API
def attention_mask(valid: jax.Array, write_index: jax.Array, chunk: int) -> jax.Array:
    """[B, S, C] bool: query s (at slot write_index+s) sees slot c iff c is valid and c <= it."""
    slots = jnp.arange(valid.shape[1])
    query_slots = write_index + jnp.arange(chunk)
    causal = slots[None, :] <= query_slots[:, None]
    return valid[:, None, :] & causal[None]


def forward(params: Params, config: ModelConfig, tokens: jax.Array, positions: jax.Array,
            cache: KVCache | None = None, *, token_mask: jax.Array | None = None
            ) -> tuple[jax.Array, KVCache | None]:
    """Runs the decoder on a chunk of tokens.

    Args:
      params: the parameter pytree (as returned by `init_params` or `load_hf_checkpoint`).
      config: the model config (static).
      tokens: [B, S] int token ids (left padding allowed).
      positions: [B, S] int rotary positions (for left-padded rows, count from the first
        real token: padding positions are ignored).
      cache: a `KVCache` to write this chunk into at `cache.index` (slots
        index..index+S-1) and attend to; None runs a plain causal forward over the chunk.
      token_mask: [B, S] bool, False on padding tokens; padding is never attended to.
        Defaults to all True.

    Returns:
      logits [B, S, V] float32, and the updated cache (index advanced by S), or None when
      no cache was given.
    """
    b, s = tokens.shape
    if token_mask is None:
        token_mask = jnp.ones((b, s), bool)
    given_cache = cache is not None
    if cache is None:
        cache = init_cache(config, b, s)
    valid = jax.lax.dynamic_update_slice(cache.valid, token_mask.astype(bool),
                                         (0, cache.index))
    mask = attention_mask(valid, cache.index, s)
    cos, sin = rope_tables(positions, config.head_dim, config.rope_theta)
    logits, k, v = Decoder(config).apply({"params": params}, tokens, cos, sin, mask,
                                         cache.index, cache.k, cache.v)
    if not given_cache:
        return logits, None
    return logits, KVCache(k=k, v=v, valid=valid, index=cache.index + s)


def _abstract_boxed_params(config: ModelConfig):
    b, s = 1, 1
    cache = jax.eval_shape(lambda: init_cache(config, b, s))
    args = (jnp.zeros((b, s), jnp.int32), jnp.zeros((b, s, config.head_dim // 2)),
            jnp.zeros((b, s, config.head_dim // 2)), jnp.ones((b, s, s), bool),
            jnp.zeros((), jnp.int32), cache.k, cache.v)
    return Decoder(config), args


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Random parameters (plain arrays) for `config`. Shapes: see `param_shapes`."""
    model, args = _abstract_boxed_params(config)
    shaped = [jnp.zeros(a.shape, a.dtype) if hasattr(a, "shape") else a for a in args]
    boxed = jax.jit(lambda r: model.init(r, *shaped))(rng)
    return nn.meta.unbox(boxed)["params"]


def param_shapes(config: ModelConfig) -> Params:
    """Abstract parameter pytree (`jax.ShapeDtypeStruct` leaves), no memory used."""
    model, args = _abstract_boxed_params(config)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    return nn.meta.unbox(boxed)["params"]


def param_logical_axes(config: ModelConfig) -> Params:
    """Pytree of `PartitionSpec`s of *logical* axis names, one per parameter."""
    model, args = _abstract_boxed_params(config)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    return nn.get_partition_spec(boxed)["params"]


def positions_from_mask(token_mask: jax.Array) -> jax.Array:
    """[B, S] positions counting real tokens from 0 (padding gets the next position's value)."""
    return jnp.maximum(jnp.cumsum(token_mask.astype(jnp.int32), axis=-1) - 1, 0)
