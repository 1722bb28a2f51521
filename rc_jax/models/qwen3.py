"""Pure-functional dense decoder (Qwen3, Qwen2/2.5, Llama) in Flax linen.

The modules are only a way to declare parameters with logical axis names; they are always
applied functionally: `forward(params, config, tokens, positions, cache)`. Parameters are
a plain pytree of arrays; the KV cache is an explicit pytree argument and result, so a
`jax.lax.while_loop` can carry it.

Notation in shapes: B batch, S query length (chunk), C cache length, L layers,
E hidden size, H query heads, K key/value heads, G = H // K, D head dim, I MLP width,
V vocabulary.

Decoder layers are stacked along a leading `layers` axis and run with `nn.scan`, so
compile time does not grow with depth. For decoding, `pack_for_decode` makes a second
layout (per-layer, fused and transposed projections) that `forward` runs as an unrolled
Python loop with per-layer caches (`unstack_cache`): no per-step slicing of stacked
weights, which XLA:CPU otherwise copies before every matmul (see
`rc_jax.sampling.core.decode`). Numerics follow the HF implementations: RMSNorm,
softmax and logits are computed in float32 whatever the activation dtype.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rc_jax.models import cpu_kernels
from rc_jax.models.attention import (Mask, attend, cached_attention, decode_attention,
                                     decode_kernel_writes, decode_segments, target_platform)
from rc_jax.models.config import ModelConfig
from rc_jax.models.quant import (concat_out, operand, quantize_params, quantized_logical_axes,
                                 scale_output, tie, to_out_in)

Params = Any  # nested dict of arrays


@flax.struct.dataclass
class KVCache:
    """Preallocated key/value cache, shared write position for all rows.

    Attributes:
      k, v: [L, B, C, K, D] keys/values (rotary already applied to keys).
      valid: [B, C] bool, True where a slot holds a real (non-padding) token.
      index: [] int32, the next slot to write (same for every row: prompts are
        left-padded so that rows stay aligned), or [B] int32, each row's own next slot
        (the RC scheduler's layout: rows hold unrelated prompts that start at slot 0).

    `unstack_cache` makes the per-layer decode form: k and v tuples of L layers, each a
    tuple of slot segments, keys [B*K, D, Cj] and values [B*K, Cj, D], the layouts in
    which attention is plain batched matmuls; `forward` accepts and returns either form.
    """
    k: Any
    v: Any
    valid: jax.Array
    index: jax.Array

    if TYPE_CHECKING:  # added by flax.struct.dataclass at runtime
        def replace(self, **updates: Any) -> "KVCache": ...

    @property
    def length(self) -> int:
        return self.valid.shape[1]


def init_cache(config: ModelConfig, batch: int, length: int, dtype: Any = None) -> KVCache:
    """An empty (stacked) cache of `length` slots per row."""
    dtype = dtype or config.jnp_dtype
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   valid=jnp.zeros((batch, length), bool), index=jnp.zeros((), jnp.int32))


def cache_is_unstacked(cache: KVCache) -> bool:
    return isinstance(cache.k, (tuple, list))


def unstack_cache(cache: KVCache) -> KVCache:
    """The per-layer decode form of a cache: k and v are tuples over layers, each a tuple
    over the slot segments of `attention.decode_segments` of keys [B*K, D, Cj] and values
    [B*K, Cj, D] (batch and kv heads merged, so there is no size-1 batch dim for XLA to
    strip at B = 1, which would make it copy the cache every step; segments so that decode
    attention can skip the slots no row has reached without slicing). A copy when traced;
    a no-op if already unstacked."""
    if cache_is_unstacked(cache):
        return cache
    n, b, c, k, d = cache.k.shape
    bounds = decode_segments(c)

    def split(x, axis):
        return tuple(jax.lax.slice_in_dim(x, lo, hi, axis=axis)
                     for lo, hi in zip(bounds[:-1], bounds[1:]))
    return cache.replace(
        k=tuple(split(cache.k[i].transpose(0, 2, 3, 1).reshape(b * k, d, c), 2)
                for i in range(n)),
        v=tuple(split(cache.v[i].transpose(0, 2, 1, 3).reshape(b * k, c, d), 1)
                for i in range(n)))


def stack_cache(cache: KVCache) -> KVCache:
    """Inverse of `unstack_cache`."""
    if not cache_is_unstacked(cache):
        return cache
    b = cache.valid.shape[0]
    bk, d, c = cache.k[0][0].shape[0], cache.k[0][0].shape[1], cache.valid.shape[1]
    k = bk // b
    layer_k = [jnp.concatenate(x, axis=2) for x in cache.k]
    layer_v = [jnp.concatenate(x, axis=1) for x in cache.v]
    return cache.replace(
        k=jnp.stack([x.reshape(b, k, d, c).transpose(0, 3, 1, 2) for x in layer_k]),
        v=jnp.stack([x.reshape(b, k, c, d).transpose(0, 2, 1, 3) for x in layer_v]))


# ----------------------------------------------------------------------------- layers
def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...],
           init: Any) -> jax.Array:
    cfg: ModelConfig = module.config
    # flax hands back the unboxed array; its annotation names the boxed initializer output.
    return cast(jax.Array, module.param(name, nn.with_logical_partitioning(init, axes), shape,
                                        cfg.jnp_param_dtype))


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


def dense_t(x: jax.Array, w_t: jax.Array, preferred_element_type: Any = None) -> jax.Array:
    """x [..., in] times a transposed weight w_t [out, in] -> [..., out].

    Computed as w_t @ x^T, the weight being the left operand: XLA:CPU's fast form when x
    has few rows (decode), 1.2-2x faster than x @ w at 1-32 rows. The barrier keeps XLA
    from folding the transpose of the result back into the dot, which would undo that.
    """
    lead = x.shape[:-1]
    y = jnp.einsum("oi,ni->on", w_t, x.reshape(-1, x.shape[-1]),
                   preferred_element_type=preferred_element_type)
    return jax.lax.optimization_barrier(y).T.reshape(*lead, w_t.shape[0])


def project_t(x: jax.Array, w: Any, dtype: Any, preferred_element_type: Any = None) -> jax.Array:
    """x [..., in] times a decode-layout weight [out, in] (float or `QuantizedWeight`)
    -> [..., out]. Decode-sized calls in a CPU program go through rc_jax's CPU kernels
    (`cpu_kernels`: software-prefetched weight streaming; int8 read at 1 byte per weight);
    otherwise `dense_t` on the weight's operand."""
    if cpu_kernels.usable(x, w, target_platform()):
        return cpu_kernels.matmul_t(x, w)
    return scale_output(dense_t(x, operand(w, dtype), preferred_element_type), w)


class Attention(nn.Module):
    """Grouped-query attention reading and writing an explicit per-layer cache.

    `packed` selects the decode parameter layout of `pack_for_decode`: one transposed
    q|k|v projection `qkv_t` [(H+2K)*D, E] and `o_t` [E, H*D], used through `dense_t`.
    `cached`: the call reads a KV cache (prefill or decode, never differentiated), so
    `auto`/`blockwise` attention may skip the key blocks no row can see.
    """
    config: ModelConfig
    packed: bool = False
    cached: bool = False

    @nn.compact
    def __call__(self, x, layer_k, layer_v, ctx):
        """x: [B, S, E]; layer_k/v: [B, C, K, D] (a layer of the stacked cache), or the
        per-layer decode form of `unstack_cache`: layer_k [B*K, D, C], layer_v [B*K, C, D].

        Returns (out [B, S, E], new layer_k, new layer_v).
        """
        cfg = self.config
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt = cfg.jnp_dtype
        b, s = x.shape[:2]
        zeros = nn.initializers.zeros
        if self.packed:
            wqkv = _param(self, "qkv_t", ((h + 2 * k) * d, e), ("qkv", "embed"), _dense_init())
            wo = _param(self, "o_t", (e, h * d), ("embed", "qkv"), _dense_init())
            qkv = project_t(x, wqkv, dt)
            if cfg.qkv_bias:
                qkv += _param(self, "qkv_bias", ((h + 2 * k) * d,), ("qkv",), zeros).astype(dt)
            q = qkv[..., :h * d].reshape(b, s, h, d)
            kk = qkv[..., h * d:(h + k) * d].reshape(b, s, k, d)
            vv = qkv[..., (h + k) * d:].reshape(b, s, k, d)
        else:
            wq = _param(self, "q_proj", (e, h, d), ("embed", "q_heads", "head_dim"),
                        _dense_init())
            wk = _param(self, "k_proj", (e, k, d), ("embed", "kv_heads", "head_dim"),
                        _dense_init())
            wv = _param(self, "v_proj", (e, k, d), ("embed", "kv_heads", "head_dim"),
                        _dense_init())
            wo = _param(self, "o_proj", (h, d, e), ("q_heads", "head_dim", "embed"),
                        _dense_init(2))
            x, wq, wk, wv, wo = tie(x, wq, wk, wv, wo)  # int8: convert inside the loops
            q = scale_output(jnp.einsum("bse,ehd->bshd", x, operand(wq, dt)), wq)
            kk = scale_output(jnp.einsum("bse,ekd->bskd", x, operand(wk, dt)), wk)
            vv = scale_output(jnp.einsum("bse,ekd->bskd", x, operand(wv, dt)), wv)
            if cfg.qkv_bias:
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
        index, g = ctx["write_index"], h // k
        per_row = jnp.ndim(index) == 1  # continuous batching: each row has its own slot
        if per_row:
            slots = index[:, None] + jnp.arange(s)[None, :]  # [B, S]
        if not isinstance(layer_k, tuple):  # stacked cache layout [B, C, K, D]
            if per_row:
                rows = jnp.arange(b)[:, None]
                layer_k = layer_k.at[rows, slots].set(kk.astype(layer_k.dtype), mode="drop")
                layer_v = layer_v.at[rows, slots].set(vv.astype(layer_v.dtype), mode="drop")
            else:
                start = (0, index, 0, 0)
                layer_k = jax.lax.dynamic_update_slice(layer_k, kk.astype(layer_k.dtype), start)
                layer_v = jax.lax.dynamic_update_slice(layer_v, vv.astype(layer_v.dtype), start)
            # cfg.attention: dense | blockwise | cudnn | pallas | auto (rc_jax.models.attention);
            # over a cache, auto and blockwise read only the blocks some row can see.
            qk = q.reshape(b, s, k, g, d)
            if self.cached and cfg.attention in ("auto", "blockwise"):
                out = cached_attention(qk, layer_k, layer_v, ctx["mask"])
            else:
                out = attend(qk, layer_k, layer_v, ctx["mask"], impl=cfg.attention,
                             self_causal=not self.cached)
            out = out.reshape(b, s, h * d)
        else:  # decode form: segments of keys [B*K, D, Cj] and values [B*K, Cj, D]
            new_k = jnp.transpose(kk, (0, 2, 3, 1)).reshape(b * k, d, s)
            new_v = jnp.transpose(vv, (0, 2, 1, 3)).reshape(b * k, s, d)
            new = None
            # Rows aligned: XLA's in-place slice write, unless the CPU attention kernel
            # writes (cheaper than XLA's strided write of a key column, `decode_attention`).
            if (len(layer_k) == 1 and not per_row
                    and not decode_kernel_writes(q, layer_k[0], layer_v[0])):
                layer_k = (jax.lax.dynamic_update_slice(
                    layer_k[0], new_k.astype(layer_k[0].dtype), (0, 0, index)),)
                layer_v = (jax.lax.dynamic_update_slice(
                    layer_v[0], new_v.astype(layer_v[0].dtype), (0, index, 0)),)
            else:  # row n = b * K + kv head writes at the slots of row b
                if not per_row:
                    slots = jnp.broadcast_to(index + jnp.arange(s)[None, :], (b, s))
                new = (jnp.repeat(slots, k, axis=0), jnp.swapaxes(new_k, 1, 2), new_v)
            # Length-aware on CPU without slicing the cache (see `decode_attention`).
            out, layer_k, layer_v = decode_attention(q, layer_k, layer_v, ctx["mask"], k, new)
        if self.packed:
            y = project_t(out, wo, dt)
        else:
            # One contracting dim: with (h, d) XLA:CPU may relayout the weight per call.
            y = scale_output(jnp.einsum("bsf,fe->bse", out, operand(wo, dt).reshape(h * d, e)),
                             wo)
        if cfg.o_bias:
            y += _param(self, "o_bias", (e,), ("embed",), nn.initializers.zeros).astype(dt)
        return y, layer_k, layer_v


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). x: [B, S, E].

    `packed`: decode layout, `gate_up_t` [2I, E] (gate rows, then up) and `down_t` [E, I].
    """
    config: ModelConfig
    packed: bool = False

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        e, i, dt = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_dtype
        if self.packed:
            gate_up = _param(self, "gate_up_t", (2 * i, e), ("mlp", "embed"), _dense_init())
            down = _param(self, "down_t", (e, i), ("embed", "mlp"), _dense_init())
            gu = project_t(x, gate_up, dt)
            return project_t(nn.silu(gu[..., :i]) * gu[..., i:], down, dt)
        gate = _param(self, "gate_proj", (e, i), ("embed", "mlp"), _dense_init())
        up = _param(self, "up_proj", (e, i), ("embed", "mlp"), _dense_init())
        down = _param(self, "down_proj", (i, e), ("mlp", "embed"), _dense_init())
        x, gate, up, down = tie(x, gate, up, down)  # int8: convert inside the loops
        hidden = (nn.silu(scale_output(x @ operand(gate, dt), gate))
                  * scale_output(x @ operand(up, dt), up))
        hidden = nn.with_logical_constraint(
            hidden, ("activation_batch", "activation_length", "activation_mlp"))
        return scale_output(hidden @ operand(down, dt), down)


class DecoderLayer(nn.Module):
    """Pre-norm attention + MLP block; scanned over the layer axis (or, `packed`, one
    unrolled layer of the decode layout)."""
    config: ModelConfig
    packed: bool = False
    cached: bool = False

    @nn.compact
    def __call__(self, x, layer_kv, ctx):
        cfg = self.config
        layer_k, layer_v = layer_kv
        attn_out, layer_k, layer_v = Attention(cfg, self.packed, self.cached, name="attn")(
            RMSNorm(cfg, cfg.hidden_size, "embed", name="attn_norm")(x), layer_k, layer_v, ctx)
        x = x + attn_out
        x = x + MLP(cfg, self.packed, name="mlp")(
            RMSNorm(cfg, cfg.hidden_size, "embed", name="mlp_norm")(x))
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed"))
        return x, (layer_k, layer_v)


_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class PackedLayers(nn.Module):
    """The decoder layers in the decode layout (`pack_for_decode`): L parameter sets named
    '0'..'L-1', run by an unrolled Python loop, each layer reading and writing its own
    cache arrays (tuples of L)."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x, layer_kv, ctx):
        cfg = self.config
        ks, vs = list(layer_kv[0]), list(layer_kv[1])
        for i in range(cfg.num_layers):
            x, (ks[i], vs[i]) = DecoderLayer(cfg, packed=True, cached=True, name=str(i))(
                x, (ks[i], vs[i]), ctx)
        return x, (tuple(ks), tuple(vs))


class Decoder(nn.Module):
    """Embeddings -> L decoder layers -> final norm -> logits.

    `packed` selects the decode layout of `pack_for_decode`; the cache k/v are then tuples
    of per-layer arrays, else stacked [L, ...] arrays.
    """
    config: ModelConfig
    packed: bool = False
    cached: bool = False  # reads a given KV cache (see Attention)

    @nn.compact
    def __call__(self, tokens, cos, sin, mask, write_index, cache_k, cache_v,
                 last_only: bool = False):
        cfg = self.config
        embedding = _param(self, "embedding", (cfg.vocab_size, cfg.hidden_size),
                           ("vocab", "embed"), nn.initializers.normal(0.02))
        x = jnp.take(embedding, tokens, axis=0).astype(cfg.jnp_dtype)
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed"))
        ctx = {"cos": cos, "sin": sin, "mask": mask, "write_index": write_index}

        if self.packed:
            x, (cache_k, cache_v) = PackedLayers(cfg, name="layers")(x, (cache_k, cache_v), ctx)
        else:  # params are stacked along the layer axis: scan one layer over it
            layer_cls = DecoderLayer
            if cfg.remat_policy != "none":
                # prevent_cse=False: nn.scan already keeps XLA from merging across layers.
                layer_cls = nn.remat(DecoderLayer, policy=_REMAT[cfg.remat_policy],
                                     prevent_cse=False)
            stack = nn.scan(layer_cls, variable_axes={"params": 0},
                            split_rngs={"params": True}, in_axes=(0, nn.broadcast),
                            length=cfg.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, (cache_k, cache_v) = stack(cfg, cached=self.cached, name="layers")(
                x, (cache_k, cache_v), ctx)

        if last_only:
            x = x[:, -1:]
        x = RMSNorm(cfg, cfg.hidden_size, "embed", name="final_norm")(x)
        dt = cfg.jnp_dtype
        if cfg.tie_word_embeddings and self.packed:
            logits = project_t(x, embedding, dt, preferred_element_type=jnp.float32)
        elif cfg.tie_word_embeddings:
            logits = jnp.einsum("bse,ve->bsv", x, embedding.astype(dt),
                                preferred_element_type=jnp.float32)
        elif self.packed:
            head = _param(self, "lm_head_t", (cfg.vocab_size, cfg.hidden_size),
                          ("vocab", "embed"), _dense_init())
            logits = project_t(x, head, dt, preferred_element_type=jnp.float32)
        else:
            head = _param(self, "lm_head", (cfg.hidden_size, cfg.vocab_size),
                          ("embed", "vocab"), _dense_init())
            x, head = tie(x, head)
            logits = scale_output(jnp.einsum("bse,ev->bsv", x, operand(head, dt),
                                             preferred_element_type=jnp.float32), head)
        logits = nn.with_logical_constraint(
            logits, ("activation_batch", "activation_length", "activation_vocab"))
        return logits, cache_k, cache_v


def is_packed(params: Params) -> bool:
    """True for the decode layout made by `pack_for_decode`."""
    return "0" in params["layers"]


def pack_for_decode(params: Params, config: ModelConfig) -> Params:
    """The parameters in the decode layout that `forward` runs as an unrolled layer loop.

    Per layer ('0'..'L-1'), projections fused and transposed to [out, in] for `dense_t`:
    attn.qkv_t = [q|k|v]^T [(H+2K)*D, E] (+ qkv_bias), attn.o_t [E, H*D],
    mlp.gate_up_t = [gate|up]^T [2I, E], mlp.down_t [E, I]; norms unchanged; an untied
    lm_head becomes lm_head_t [V, E]. No slicing of stacked weights remains, which XLA:CPU
    would otherwise copy before every matmul. Inside `jit` this is one copy of the
    weights (made once, e.g. before a decode loop); a no-op if already packed.
    """
    if is_packed(params):
        return params
    e, h, d = config.hidden_size, config.num_heads, config.head_dim

    def layer(i: int) -> dict:
        p = jax.tree.map(lambda a: a[i], params["layers"])
        a, m = p["attn"], p["mlp"]
        attn = {"qkv_t": concat_out([to_out_in(a[n], e) for n in ("q_proj", "k_proj", "v_proj")]),
                "o_t": to_out_in(a["o_proj"], h * d)}
        if config.qkv_bias:
            attn["qkv_bias"] = jnp.concatenate([a["q_bias"].reshape(-1),
                                                a["k_bias"].reshape(-1),
                                                a["v_bias"].reshape(-1)])
        for name in ("q_norm", "k_norm", "o_bias"):
            if name in a:
                attn[name] = a[name]
        mlp = {"gate_up_t": concat_out([to_out_in(m["gate_proj"], e), to_out_in(m["up_proj"], e)]),
               "down_t": to_out_in(m["down_proj"], config.intermediate_size)}
        return {"attn": attn, "mlp": mlp, "attn_norm": p["attn_norm"],
                "mlp_norm": p["mlp_norm"]}

    packed = {name: value for name, value in params.items()
              if name not in ("layers", "lm_head")}
    packed["layers"] = {str(i): layer(i) for i in range(config.num_layers)}
    if "lm_head" in params:
        packed["lm_head_t"] = to_out_in(params["lm_head"], e)
    return packed


# ------------------------------------------------------------------------- functional API
def attention_mask(valid: jax.Array, write_index: jax.Array, chunk: int) -> Mask:
    """The `Mask` of a chunk written at write_index: query s (at slot write_index + s)
    sees slot c iff c is valid and c <= its slot. valid: [B, C];
    write_index: [] (rows aligned) or [B] (each row writes at its own slot)."""
    b = valid.shape[0]
    index = jnp.broadcast_to(write_index, (b,)) if jnp.ndim(write_index) == 0 else write_index
    return Mask(valid, (index[:, None] + jnp.arange(chunk)[None, :]).astype(jnp.int32))


def forward(params: Params, config: ModelConfig, tokens: jax.Array, positions: jax.Array,
            cache: KVCache | None = None, *, token_mask: jax.Array | None = None,
            last_only: bool = False) -> tuple[jax.Array, KVCache | None]:
    """Runs the decoder on a chunk of tokens.

    Args:
      params: the parameter pytree (as returned by `init_params` or `load_hf_checkpoint`),
        or its decode layout from `pack_for_decode` (then the layers run unrolled).
      config: the model config (static).
      tokens: [B, S] int token ids (left padding allowed).
      positions: [B, S] int rotary positions (for left-padded rows, count from the first
        real token: padding positions are ignored).
      cache: a `KVCache` (stacked or unstacked) to write this chunk into at `cache.index`
        (slots index..index+S-1) and attend to; None runs a plain causal forward over
        the chunk.
      token_mask: [B, S] bool, False on padding tokens; padding is never attended to.
        Defaults to all True.
      last_only: compute logits for the last position only (prefill of left-padded
        prompts); the vocabulary projection of the other positions is skipped.

    Returns:
      logits [B, S, V] float32 ([B, 1, V] with last_only), and the updated cache (index
      advanced by S, same stacked/unstacked form as given), or None when no cache was
      given.
    """
    b, s = tokens.shape
    if token_mask is None:
        token_mask = jnp.ones((b, s), bool)
    given_cache = cache is not None
    if cache is None:
        cache = init_cache(config, b, s)
    packed = is_packed(params)
    given_unstacked = cache_is_unstacked(cache)
    work = unstack_cache(cache) if packed else stack_cache(cache)
    if jnp.ndim(cache.index) == 1:  # per-row write slots (continuous batching)
        slots = cache.index[:, None] + jnp.arange(s)[None, :]
        valid = cache.valid.at[jnp.arange(b)[:, None], slots].set(token_mask.astype(bool),
                                                                   mode="drop")
    else:
        valid = jax.lax.dynamic_update_slice(cache.valid, token_mask.astype(bool),
                                             (0, cache.index))
    mask = attention_mask(valid, cache.index, s)
    cos, sin = rope_tables(positions, config.head_dim, config.rope_theta)
    logits, k, v = cast(tuple[jax.Array, Any, Any], Decoder(
        config, packed=packed, cached=given_cache).apply(
        {"params": params}, tokens, cos, sin, mask, cache.index, work.k, work.v,
        last_only=last_only))
    if not given_cache:
        return logits, None
    out = KVCache(k=k, v=v, valid=valid, index=cache.index + s)
    return logits, (unstack_cache(out) if given_unstacked else stack_cache(out))


def _abstract_boxed_params(config: ModelConfig):
    b, s = 1, 1
    cache = jax.eval_shape(lambda: init_cache(config, b, s))
    args = (jnp.zeros((b, s), jnp.int32), jnp.zeros((b, s, config.head_dim // 2)),
            jnp.zeros((b, s, config.head_dim // 2)),
            Mask(jnp.ones((b, s), bool), jnp.zeros((b, s), jnp.int32)),
            jnp.zeros((), jnp.int32), cache.k, cache.v)
    # The parameters do not depend on the attention implementation, and this one-token
    # init forward must not need a fused kernel's platform (a TPU plan on a CPU host).
    return Decoder(config.replace(attention="dense")), args


def _quantized(config: ModelConfig, params: Params) -> Params:
    """`params` as `config.quantization` stores them (rc_jax.models.quant)."""
    return quantize_params(params) if config.quantization == "int8" else params


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Random parameters (plain arrays) for `config`. Shapes: see `param_shapes`.
    With `config.quantization="int8"`, the random float weights quantized."""
    model, args = _abstract_boxed_params(config)
    shaped = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), args)
    return jax.jit(lambda r: _quantized(
        config, nn.meta.unbox(model.init(r, *shaped))["params"]))(rng)


def param_shapes(config: ModelConfig) -> Params:
    """Abstract parameter pytree (`jax.ShapeDtypeStruct` leaves), no memory used
    (`QuantizedWeight`s of int8 values and float32 scales with `quantization="int8"`)."""
    model, args = _abstract_boxed_params(config)
    return jax.eval_shape(lambda r, *a: _quantized(
        config, nn.meta.unbox(model.init(r, *a))["params"]), jax.random.PRNGKey(0), *args)


def param_logical_axes(config: ModelConfig) -> Params:
    """Pytree of `PartitionSpec`s of *logical* axis names, one per parameter."""
    model, args = _abstract_boxed_params(config)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    axes = nn.get_partition_spec(boxed)["params"]
    return quantized_logical_axes(axes) if config.quantization == "int8" else axes


def positions_from_mask(token_mask: jax.Array) -> jax.Array:
    """[B, S] positions counting real tokens from 0 (padding gets the next position's value)."""
    return jnp.maximum(jnp.cumsum(token_mask.astype(jnp.int32), axis=-1) - 1, 0)
