"""Grouped-query attention with selectable implementations (`ModelConfig.attention`).

One entry point, `attend(q, k, v, mask, impl=...)`, computes softmax(q k^T / sqrt(D)) v
with a boolean mask, for queries grouped by key/value head (GQA without repeating K/V):

  q: [B, S, K, G, D]   queries (G = query heads per kv head)
  k, v: [B, C, K, D]   keys / values (a layer of the stacked cache)
  mask: a `Mask`: query s of row b may attend slot c iff valid[b, c] and
        c <= query_slots[b, s] (padding, causality and the per-row cache write index
        all reduce to this; see `qwen3.attention_mask`). Factored, so no [B, S, C]
        array exists unless an implementation needs one (dense, cudnn, pallas).
  returns [B, S, K, G, D] in q's dtype.

Implementations:
  dense      the reference: float32 scores [B, K, G, S, C], softmax, one matmul each way.
  blockwise  pure-JAX flash attention: online softmax over key blocks with a custom VJP
             (the FlashAttention-2 backward, which recomputes each block's scores from the
             saved log-sum-exp), so neither the forward nor the backward holds more than
             [block_q, block_k] scores per head. Blocks whose mask is all False (e.g. above
             the causal diagonal) are skipped with `lax.cond`. Works on every backend.
  cudnn      `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16).
  pallas     Pallas TPU kernels, TPU only: without a cache (training) the flash-attention
             kernel shipped with JAX (`jax.experimental.pallas.ops.tpu.flash_attention`),
             the mask going in as segment ids + the causal flag; over a cache (prefill
             chunks, decode) rc_jax's own length-aware kernel,
             `rc_jax.models.ragged_attention`, which reads only each row's live key
             blocks.
  auto       `resolve()` picks: GPU cudnn (bf16/fp16); CPU dense for short inputs and
             blockwise for long ones; everything else (TPU included: see `resolve`)
             blockwise.

Over a KV cache (prefill chunks and decode; `qwen3.Attention(cached=True)`), `auto` and
`blockwise` use `cached_attention`: the same online softmax over key blocks, but only
from the first to the last block that some row can see, so the cost of a step follows the
filled length, not the cache bucket. `dense` stays dense everywhere (the reference).
The CPU decode form of the cache (`qwen3.unstack_cache`) has its own length-aware path,
whatever `model.attention` says: `decode_attention` over cache segments.

Rows whose mask is entirely False (left-padding queries) produce a uniform average in
`dense` and zeros in `blockwise`; such rows are never read by real tokens.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rc_jax.models import cpu_kernels
from rc_jax.models.config import ATTENTION_IMPLS
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully-masked rows stay NaN-free
# `auto` on CPU: dense while its float32 scores per layer stay below this many elements
# (B*H*S*C); beyond, blockwise.
AUTO_DENSE_MAX_SCORES = 1 << 24
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512
# Key block of `cached_attention` (inference over a KV cache): small enough that a decode
# step reads little past the longest row, large enough that the loop's per-block cost
# stays small next to the block's work.
DEFAULT_BLOCK_KV = 256


class Mask(NamedTuple):
    """Which cache slots each query may see, factored: query s of row b sees slot c iff
    valid[b, c] and c <= query_slots[b, s].

    valid: [B, C] bool, True where a slot holds a real token.
    query_slots: [B, S] int32, the cache slot each query sits at (its causal limit);
      -1 for a query that sees nothing (e.g. padding added to fill a block).
    """
    valid: jax.Array
    query_slots: jax.Array

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, S, C) of the dense mask this stands for."""
        b, s = self.query_slots.shape
        return b, s, self.valid.shape[1]

    def block(self, q0, bq: int, k0, bk: int) -> jax.Array:
        """[B, bq, bk] bool for queries q0.. and slots k0.. (starts may be traced)."""
        valid = jax.lax.dynamic_slice_in_dim(self.valid, k0, bk, axis=1)
        slots = jax.lax.dynamic_slice_in_dim(self.query_slots, q0, bq, axis=1)
        keys = k0 + jnp.arange(bk)
        return valid[:, None, :] & (keys[None, None, :] <= slots[:, :, None])

    def dense(self) -> jax.Array:
        """The whole [B, S, C] bool mask (for the implementations that need it)."""
        b, s, c = self.shape
        return self.block(0, s, 0, c)

    def seen(self) -> jax.Array:
        """[C] bool: slots that some query of the batch may see."""
        last = jnp.max(self.query_slots, axis=1)  # [B]
        return jnp.any(self.valid & (jnp.arange(self.valid.shape[1])[None, :]
                                     <= last[:, None]), axis=0)

    def pad(self, queries: int, keys: int) -> "Mask":
        """Padded with queries that see nothing and slots that hold nothing."""
        return Mask(jnp.pad(self.valid, ((0, 0), (0, keys))),
                    jnp.pad(self.query_slots, ((0, 0), (0, queries)), constant_values=-1))

    def slots(self, lo: int, hi: int) -> "Mask":
        """The mask over slots lo..hi-1 only (a segment of the cache), renumbered from 0."""
        return Mask(self.valid[:, lo:hi], self.query_slots - lo)


def target_platform() -> str:
    """The platform the program being traced is compiled for: that of the mesh in context
    (`jax.set_mesh`; an ahead-of-time TPU plan traces on a CPU host under a mesh of TPU
    devices), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def resolve(impl: str, q_shape: tuple[int, ...], c: int, dtype: Any,
            backend: str | None = None) -> str:
    """The implementation `impl` means for these shapes on `backend` (default:
    `target_platform()`)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention implementation {impl!r} unknown; choose from "
                         f"{ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    backend = backend or target_platform()
    b, s, k, g, _ = q_shape
    # TPU: blockwise. `pallas` is a choice (tested in interpret mode, compiled for TPU
    # ahead of time) but not the default: no TPU has run it for this project yet.
    if backend in ("gpu", "cuda", "rocm") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if backend == "cpu" and b * k * g * s * c <= AUTO_DENSE_MAX_SCORES:
        return "dense"
    return "blockwise"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask, *,
           impl: str = "dense", block_q: int | None = None,
           block_k: int | None = None, self_causal: bool = False) -> jax.Array:
    """Masked GQA attention; shapes in the module docstring. `impl`: ATTENTION_IMPLS.
    Block sizes default to DEFAULT_BLOCK_Q / DEFAULT_BLOCK_K, read at trace time.
    `self_causal`: the caller promises that queries and keys are the same positions and
    query s sits at slot s (a forward without a cache), so the mask is padding + causal;
    `pallas` then uses segment ids and its causal flag instead of a dense bias."""
    impl = resolve(impl, q.shape, k.shape[1], q.dtype)
    if impl == "dense":
        return dense_attention(q, k, v, mask)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, mask, block_q=block_q or DEFAULT_BLOCK_Q,
                                   block_k=block_k or DEFAULT_BLOCK_K)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, mask)
    return pallas_attention(q, k, v, mask, self_causal=self_causal)


# ------------------------------------------------------------------------------- dense
def dense_attention(q, k, v, mask):
    """The reference (and qwen3's historical) form: float32 scores [B, K, G, S, C]."""
    dt, d = q.dtype, q.shape[-1]
    scores = jnp.einsum("bskgd,bckd->bkgsc", q, k.astype(dt),
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    scores = jnp.where(mask.dense()[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    return jnp.einsum("bkgsc,bckd->bskgd", probs, v.astype(dt))


# --------------------------------------------------------------------------- blockwise
def blockwise_attention(q, k, v, mask, *, block_q: int = DEFAULT_BLOCK_Q,
                        block_k: int = DEFAULT_BLOCK_K):
    """Flash-style attention; see the module docstring. Lengths that are not a multiple of
    the block are padded (padded keys are masked, padded query rows dropped)."""
    b, s, kh, g, d = q.shape
    c = k.shape[1]
    bq, bk = min(block_q, s), min(block_k, c)
    ps, pc = -s % bq, -c % bk
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if ps or pc:
        q = jnp.pad(q, ((0, 0), (0, ps), (0, 0), (0, 0), (0, 0)))
        mask = mask.pad(ps, pc)
    if pc:
        k = jnp.pad(k, ((0, 0), (0, pc), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pc), (0, 0), (0, 0)))
    out = _flash(q, k, v, mask, bq, bk)
    return out[:, :s] if ps else out


def _scores(qb, kb, mb):
    """Masked float32 scores [B, K, G, bq, bk] of a query block and a key block."""
    d = qb.shape[-1]
    sc = jnp.einsum("bqkgd,bckd->bkgqc", qb, kb,
                    preferred_element_type=jnp.float32) * (d ** -0.5)
    return jnp.where(mb[:, None, None], sc, _MASK_VALUE)


def _online_update(carry, sc, mb, pv_fn):
    """One key block of the online softmax. carry: (running max m, denominator l
    [B, K, G, S], float32 accumulator acc [B, K, G, S, D]); sc: masked scores
    [B, K, G, S, bk]; mb: [B, S, bk]; pv_fn(p) -> p @ block values, [B, K, G, S, D].

    A block that is all masked for a row leaves that row's carry bit-identical (its
    probabilities are exactly 0 and its rescale factor exactly 1), which is what makes a
    row's result independent of how many blocks a batch processes."""
    m, l, acc = carry
    m_new = jnp.maximum(m, sc.max(axis=-1))
    p = jnp.where(mb[:, None, None], jnp.exp(sc - m_new[..., None]), 0.0)
    alpha = jnp.exp(m - m_new)
    return m_new, l * alpha + p.sum(axis=-1), acc * alpha[..., None] + pv_fn(p)


def _softmax_init(b, kh, g, s, d):
    return (jnp.full((b, kh, g, s), _MASK_VALUE, jnp.float32),
            jnp.zeros((b, kh, g, s), jnp.float32),
            jnp.zeros((b, kh, g, s, d), jnp.float32))


def _flash_forward(q, k, v, mask, bq, bk):
    """(out [B, S, K, G, D] in q.dtype, lse [B, K, G, S] float32)."""
    b, s, kh, g, d = q.shape
    c = k.shape[1]
    dt = q.dtype
    nq, nk = s // bq, c // bk

    def q_block(i):
        qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)

        def k_step(carry, j):
            mb = mask.block(i * bq, bq, j * bk, bk)

            def update(carry):
                kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
                vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)
                return _online_update(carry, _scores(qb, kb, mb), mb, lambda p: jnp.einsum(
                    "bkgqc,bckd->bkgqd", p.astype(dt), vb, preferred_element_type=jnp.float32))

            return jax.lax.cond(mb.any(), jax.checkpoint(update), lambda x: x, carry), None

        (m, l, acc), _ = jax.lax.scan(k_step, _softmax_init(b, kh, g, bq, d), jnp.arange(nk))
        out = acc / jnp.where(l == 0, 1.0, l)[..., None]
        lse = m + jnp.log(jnp.maximum(l, jnp.finfo(jnp.float32).tiny))
        return out.astype(dt).transpose(0, 3, 1, 2, 4), lse  # [B, bq, K, G, D]

    # The checkpoints (here and on `update`) are a guard: without them, inside flax's
    # nn.scan (the model's layer stack), JAX 0.10.2 differentiated this forward itself
    # instead of calling the custom VJP, saving every block's probabilities (S x C
    # again). With them the custom VJP is used there too (benchmarks/attention.py's
    # memory shows it), and were it bypassed, autodiff would still keep one block's
    # scores at a time. Outputs: [nq, B, bq, K, G, D] and [nq, B, K, G, bq].
    outs, lses = jax.lax.map(jax.checkpoint(q_block), jnp.arange(nq))
    out = outs.transpose(1, 0, 2, 3, 4, 5).reshape(b, s, kh, g, d)
    lse = lses.transpose(1, 2, 3, 0, 4).reshape(b, kh, g, s)
    return out, lse


def _flash(q, k, v, mask, bq, bk):
    return _flash_fn(bq, bk)(q, k, v, mask)


@functools.lru_cache(maxsize=None)
def _flash_fn(bq: int, bk: int):
    """The custom-VJP attention for one block shape (block sizes closed over, not passed
    as nondiff_argnums)."""
    @jax.custom_vjp
    def flash(q, k, v, mask):
        return _flash_forward(q, k, v, mask, bq, bk)[0]

    def fwd(q, k, v, mask):
        out, lse = _flash_forward(q, k, v, mask, bq, bk)
        return out, (q, k, v, mask, out, lse)

    def bwd(res, dout):
        return _flash_bwd(bq, bk, res, dout)

    flash.defvjp(fwd, bwd)
    return flash


def _flash_bwd(bq, bk, res, dout):
    """FlashAttention-2 backward: outer loop over key blocks (accumulating dK, dV of the
    block), inner loop over query blocks (accumulating into dQ); each block's
    probabilities are recomputed from the saved log-sum-exp."""
    q, k, v, mask, out, lse = res
    b, s, kh, g, d = q.shape
    c = k.shape[1]
    dt = q.dtype
    nq, nk = s // bq, c // bk
    scale = d ** -0.5
    # delta_i = sum_d dO * O, [B, K, G, S]
    delta = jnp.einsum("bskgd,bskgd->bkgs", dout.astype(jnp.float32), out.astype(jnp.float32))
    dout = dout.astype(dt)

    def k_block(dq, j):
        kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
        vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)

        def q_step(carry, i):
            mb = mask.block(i * bq, bq, j * bk, bk)

            def update(carry):
                dq, dk, dv = carry
                qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)
                dob = jax.lax.dynamic_slice_in_dim(dout, i * bq, bq, axis=1)
                lb = jax.lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)
                db = jax.lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)
                sc = _scores(qb, kb, mb)
                p = jnp.where(mb[:, None, None], jnp.exp(sc - lb[..., None]), 0.0)
                dv = dv + jnp.einsum("bkgqc,bqkgd->bckd", p.astype(dt), dob,
                                     preferred_element_type=jnp.float32)
                dp = jnp.einsum("bqkgd,bckd->bkgqc", dob, vb,
                                preferred_element_type=jnp.float32)
                ds = (p * (dp - db[..., None]) * scale).astype(dt)
                dk = dk + jnp.einsum("bkgqc,bqkgd->bckd", ds, qb,
                                     preferred_element_type=jnp.float32)
                dqb = jnp.einsum("bkgqc,bckd->bqkgd", ds, kb,
                                 preferred_element_type=jnp.float32)
                old = jax.lax.dynamic_slice_in_dim(dq, i * bq, bq, axis=1)
                dq = jax.lax.dynamic_update_slice_in_dim(dq, old + dqb, i * bq, axis=1)
                return dq, dk, dv

            return jax.lax.cond(mb.any(), update, lambda x: x, carry), None

        init = (dq, jnp.zeros((b, bk, kh, d), jnp.float32),
                jnp.zeros((b, bk, kh, d), jnp.float32))
        (dq, dk, dv), _ = jax.lax.scan(q_step, init, jnp.arange(nq))
        return dq, (dk, dv)

    dq, (dks, dvs) = jax.lax.scan(k_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(nk))
    dk = dks.transpose(1, 0, 2, 3, 4).reshape(b, c, kh, d)
    dv = dvs.transpose(1, 0, 2, 3, 4).reshape(b, c, kh, d)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


# ------------------------------------------------------------------- cached (inference)
def kv_block(c: int, block: int | None = None) -> int:
    """The key block `cached_attention` uses for a cache of `c` slots: the largest power
    of two <= `block` (default DEFAULT_BLOCK_KV) dividing c (at least 16), or c itself
    (one block: plain dense)."""
    bk = block or DEFAULT_BLOCK_KV
    while bk >= 16 and c % bk:
        bk //= 2
    return bk if bk >= 16 and c > bk else c


def _live_blocks(mask: Mask, bk: int) -> tuple[jax.Array, jax.Array]:
    """[first, last) key blocks that any query of the batch may see ([] int32 each)."""
    cols = mask.seen().reshape(-1, bk).any(axis=-1)  # [C / bk]
    n = cols.shape[0]
    first = jnp.argmax(cols).astype(jnp.int32)
    last = jnp.where(cols.any(), n - jnp.argmax(cols[::-1]), first).astype(jnp.int32)
    return first, last


def cached_attention(q, k, v, mask, *, block: int | None = None):
    """Length-aware attention over a KV cache (prefill chunks and decode; no gradient):
    an online softmax over key blocks, from the first to the last block any row may see
    (a `fori_loop` with a traced trip count), so a step at slot 300 of a 20k-slot cache
    reads ~300 slots, not 20k, and left padding before every row's prompt is skipped.
    Shapes as `attend` (k, v: a layer of the stacked cache [B, C, K, D]).

    Exact in the sense the RC engine needs: a row's output does not depend on the other
    rows (blocks outside a row's keys leave its softmax state bit-identical, see
    `_online_update`). It differs from `dense_attention` only by float32 rounding.
    """
    b, s, kh, g, d = q.shape
    c = mask.shape[-1]
    dt = q.dtype
    bk = kv_block(c, block)
    if bk == c:
        return dense_attention(q, k, v, mask)

    def body(j, carry):
        mb = mask.block(0, s, j * bk, bk)
        kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1).astype(dt)
        vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1).astype(dt)
        return _online_update(carry, _scores(q, kb, mb), mb, lambda p: jnp.einsum(
            "bkgsc,bckd->bkgsd", p.astype(dt), vb, preferred_element_type=jnp.float32))

    first, last = _live_blocks(mask, bk)
    m, l, acc = jax.lax.fori_loop(first, last, body, _softmax_init(b, kh, g, s, d))
    out = acc / jnp.where(l == 0, 1.0, l)[..., None]
    return out.astype(dt).transpose(0, 3, 1, 2, 4)


# --------------------------------------------------------------- decode form (CPU)
# The decode form of the cache (`qwen3.unstack_cache`, the CPU decode path) splits each
# layer's slots into segments of doubling size: 0-512, 512-1024, 1024-2048, ... (the last
# one ends at the cache length). Each segment is its own array, so attention can skip the
# segments no row has reached without slicing: on XLA:CPU every slice of a cache array
# feeding a dot is a copy that costs more than the dot itself (docs/design.md,
# "Attention"). A step then reads at most twice the longest row's filled slots.
DECODE_FIRST_SEGMENT = 512


def decode_segments(c: int) -> tuple[int, ...]:
    """Segment boundaries (0, ..., c) of a decode-form cache of `c` slots: one segment
    when c <= 2 * DECODE_FIRST_SEGMENT (short caches keep the plain dense form), else
    0, 512, 1024, 2048, ... doubling, the last boundary being c."""
    first = DECODE_FIRST_SEGMENT
    if c <= 2 * first:
        return (0, c)
    bounds = [0, first]
    while bounds[-1] < c:
        bounds.append(min(c, 2 * bounds[-1]))
    return tuple(bounds)


def _group_queries(q, kv_heads: int):
    """q [B, S, H, D] -> [B*K, G*S, D]: queries grouped under their kv head's cache row."""
    b, s, h, d = q.shape
    g = h // kv_heads
    return q.reshape(b, s, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b * kv_heads, g * s, d)


def _ungroup(out, b: int, s: int, kv_heads: int):
    """[B*K, G*S, D] -> [B, S, H*D] (inverse of `_group_queries`, heads flattened)."""
    d = out.shape[-1]
    g = out.shape[1] // s
    return out.reshape(b, kv_heads, g, s, d).transpose(0, 3, 1, 2, 4).reshape(b, s, -1)


def _segment_scores(qg, keys, mask: Mask, kv_heads: int):
    """Masked float32 scores [B, K, G, S, Cj] of grouped queries against one segment
    (`mask` over that segment's slots)."""
    b, s, c = mask.shape
    d = qg.shape[-1]
    scores = jnp.einsum("nmd,ndc->nmc", qg, keys.astype(qg.dtype),
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    scores = scores.reshape(b, kv_heads, -1, s, c)
    return jnp.where(mask.dense()[:, None, None], scores, _MASK_VALUE)


def decode_kernel_writes(q, keys, values) -> bool:
    """Whether `decode_attention` writes the step's keys / values inside rc_jax's CPU
    kernel (q and the segment's keys / values as `decode_attention` gets them)."""
    return cpu_kernels.attention_usable(q, keys, values, target_platform())


def _write_and_attend(qg, keys, values, mask, kv_heads: int, new=None):
    """One segment (keys [N, D, Cj], values [N, Cj, D]) with this chunk's keys and values
    written first (new: None or (slots [N, S] local to the segment, out-of-range slots
    dropped; new_k, new_v [N, S, D])), and its softmax parts: max m [N, M], sum l [N, M]
    of exp(score - m), and sum_c exp(score - m) v [N, M, D] (N = B*K, M = G*S).
    Returns (keys, values, (m, l, o)). On CPU (float32), rc_jax's kernel
    (`cpu_kernels.decode_attention_parts`: writes in place, then reads each cache row
    once, up to its last visible slot); else a scatter and XLA's ops over the segment."""
    if decode_kernel_writes(qg, keys, values):
        return cpu_kernels.decode_attention_parts(qg, keys, values, mask.valid,
                                                  mask.query_slots, new)
    if new is not None:
        keys, values = _write_segment(keys, values, *new)
    return keys, values, _segment_parts(qg, keys, values, mask, kv_heads)


def _segment_parts(qg, keys, values, mask, kv_heads: int):
    """One segment's softmax parts (as `_write_and_attend`'s) by XLA's ops."""
    n, mm, _ = qg.shape
    scores = _segment_scores(qg, keys, mask, kv_heads)
    m = jnp.max(scores, axis=-1, keepdims=True)
    p = jnp.exp(scores - m)
    o = jnp.einsum("nmc,ncd->nmd", p.astype(qg.dtype).reshape(n, mm, -1),
                   values.astype(qg.dtype), preferred_element_type=jnp.float32)
    return m.reshape(n, mm), jnp.sum(p, axis=-1).reshape(n, mm), o


def _normalized(o, l, dtype):
    """Softmax output o / l from its parts ([N, M, D], [N, M]); 0 where nothing is seen."""
    return (o / jnp.where(l == 0, 1.0, l)[..., None]).astype(dtype)


def _tree_sum(x, axis: int):
    """Sum over `axis` as a balanced binary tree over a power-of-two length (zero padded):
    appending zero terms leaves the result bit-identical, which is what keeps a row's
    output independent of how many segments the other rows needed."""
    n = x.shape[axis]
    width = 1 << (n - 1).bit_length()
    if width != n:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, width - n)
        x = jnp.pad(x, pad)
    while x.shape[axis] > 1:
        half = x.shape[axis] // 2
        x = (jax.lax.slice_in_dim(x, 0, half, axis=axis)
             + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis))
    return jnp.squeeze(x, axis)


def _write_segment(keys, values, slots, new_k, new_v):
    """One decode-form segment (keys [N, D, Cj], values [N, Cj, D]) with new_k / new_v
    [N, S, D] written at slots [N, S] (local to the segment; out-of-range slots dropped)."""
    rows = jnp.arange(keys.shape[0])[:, None]
    return (keys.at[rows, :, slots].set(new_k.astype(keys.dtype), mode="drop"),
            values.at[rows, slots].set(new_v.astype(values.dtype), mode="drop"))


def decode_attention(q, keys, values, mask, kv_heads: int, new=None):
    """Attention on the decode form of the cache (`qwen3.unstack_cache`), after writing
    this chunk's keys and values into it.

    q: [B, S, H, D]; keys: tuple over segments of [B*K, D, Cj]; values: tuple of
    [B*K, Cj, D]; mask: a `Mask` over all C = sum of Cj slots; new: None or (slots [B*K, S] (cache
    slots of the chunk's tokens), new_k [B*K, S, D], new_v [B*K, S, D]) to write first.
    Returns (out [B, S, H*D], keys, values).

    One segment: its softmax parts (`_write_and_attend`: on CPU rc_jax's kernel, which
    writes the new entries in place and reads each row only up to its last visible slot),
    normalized. Several: each segment
    past the first is written and read under one `lax.cond` on whether any query may see
    it (a real token always sees its own slot), so the cost of a step follows the longest
    row's length, not the bucket; the segments' softmax parts are merged with one shared
    max and `_tree_sum`, so a row's output is bit-identical whatever the other rows'
    lengths (skipped and fully masked segments both contribute exact zeros). It differs
    from the one-segment form only by float32 rounding.
    """
    b, s = q.shape[:2]
    qg = _group_queries(q, kv_heads)
    n, mm, d = qg.shape
    if len(keys) == 1:
        kj, vj = keys[0], values[0]
        if decode_kernel_writes(qg, kj, vj):
            kj, vj, (_, l, o) = cpu_kernels.decode_attention_parts(
                qg, kj, vj, mask.valid, mask.query_slots, new)
            out = _normalized(o, l, q.dtype)
        else:  # XLA: the plain softmax (short caches keep its numerics)
            if new is not None:
                kj, vj = _write_segment(kj, vj, *new)
            scores = _segment_scores(qg, kj, mask, kv_heads)
            probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype).reshape(n, mm, -1)
            out = jnp.einsum("nmc,ncd->nmd", probs, vj.astype(q.dtype))
        return _ungroup(out, b, s, kv_heads), (kj,), (vj,)

    seen = mask.seen()  # [C]
    parts, out_k, out_v, lo = [], [], [], 0
    for j, (kj, vj) in enumerate(zip(keys, values)):
        hi = lo + kj.shape[-1]

        def run(qg, kj, vj, mj, lo=lo, hi=hi):
            local = None
            if new is not None:
                slots = new[0] - lo
                slots = jnp.where((slots >= 0) & (slots < hi - lo), slots, hi - lo)  # dropped
                local = (slots, new[1], new[2])
            return _write_and_attend(qg, kj, vj, mj, kv_heads, local)

        def skipped(qg, kj, vj, mj):
            return kj, vj, (jnp.full((n, mm), _MASK_VALUE, jnp.float32),
                            jnp.zeros((n, mm), jnp.float32), jnp.zeros((n, mm, d), jnp.float32))

        args = (qg, kj, vj, mask.slots(lo, hi))
        kj, vj, part = (run(*args) if j == 0 else
                        jax.lax.cond(jnp.any(seen[lo:hi]), run, skipped, *args))
        out_k.append(kj)
        out_v.append(vj)
        parts.append(part)
        lo = hi
    ms = jnp.stack([m for m, _, _ in parts], axis=-1)  # [N, M, segments]
    top = jnp.max(ms, axis=-1, keepdims=True)
    w = jnp.exp(ms - top)  # 0 for segments a row cannot see (their max is _MASK_VALUE)
    l = _tree_sum(w * jnp.stack([l for _, l, _ in parts], axis=-1), -1)
    o = _tree_sum(w[:, :, None] * jnp.stack([o for _, _, o in parts], axis=-1), -1)
    return _ungroup(_normalized(o, l, q.dtype), b, s, kv_heads), tuple(out_k), tuple(out_v)


# ------------------------------------------------------------------------------ fused
def cudnn_attention(q, k, v, mask):
    """cuDNN flash attention through `jax.nn.dot_product_attention` (GPU, bf16/fp16).

    The general mask is passed as cuDNN's mask operand (it becomes a bias of [B, 1, S, C]),
    which handles left padding, chunked prefill and per-row write indices alike."""
    if target_platform() not in ("gpu", "cuda"):
        raise ValueError(f"model.attention='cudnn' needs a CUDA GPU; the program is compiled "
                         f"for {target_platform()!r} (use 'auto', 'blockwise' or 'dense')")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"model.attention='cudnn' needs bfloat16 or float16 activations, "
                         f"got {q.dtype} (set model.dtype, or use 'blockwise')")
    b, s, kh, g, d = q.shape
    out = jax.nn.dot_product_attention(
        q.reshape(b, s, kh * g, d), k.astype(q.dtype), v.astype(q.dtype),
        mask=mask.dense()[:, None], implementation="cudnn")
    return out.reshape(b, s, kh, g, d)


def _pallas_available() -> bool:
    try:
        from jax.experimental.pallas.ops.tpu import flash_attention  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return False
    return True


def pallas_attention(q, k, v, mask, *, self_causal: bool = False, interpret: bool = False):
    """Pallas TPU kernels (`interpret`: run them in Pallas' TPU interpret mode, e.g. on
    CPU in tests). With `self_causal` (see `attend`: a forward without a cache, i.e.
    training) JAX's flash-attention kernel, which has no GQA (K/V are repeated per query
    head): the mask goes in as segment ids (1 on real tokens, 0 on padding) plus the
    kernel's causal flag, so nothing of size [S, C] exists; a real query then sees exactly
    the real keys up to itself (a padding query sees padding, and is never read); lengths
    are padded to multiples of 128 (its block). Otherwise (prefill chunks and decode over
    a cache) `ragged_attention.ragged_attention`: GQA without repeats, the factored mask
    read block by block, only each row's live key blocks read."""
    if target_platform() != "tpu" and not interpret:
        raise ValueError(f"model.attention='pallas' runs the Pallas TPU kernel and needs a "
                         f"TPU; the program is compiled for {target_platform()!r} (use "
                         "'auto', 'blockwise' or 'dense')")
    if self_causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"self_causal attention needs as many queries as keys, got "
                         f"{q.shape[1]} queries and {k.shape[1]} keys")
    local = functools.partial(_pallas_local, self_causal=self_causal, interpret=interpret)
    return _per_device(local, q, k, v, mask)


def _per_device(fn, q, k, v, mask):
    """fn(q, k, v, mask) run on each device's rows and kv heads under `shard_map` over the
    mesh in context (Mosaic kernels are not partitioned automatically); rows split as
    the `activation_batch` rule says, kv heads as `activation_kv_heads` (a dimension its
    axes do not divide is replicated). Without a mesh of several devices: fn itself."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, mask)
    P = jax.sharding.PartitionSpec
    rows, heads = nn.logical_to_mesh_axes(("activation_batch", "activation_kv_heads"))

    def fits(axes, size):
        names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
        return axes if size % math.prod(mesh.shape[a] for a in names) == 0 else None
    rows, heads = fits(rows, q.shape[0]), fits(heads, q.shape[2])
    q_spec = P(rows, None, heads, None, None)
    kv_spec = P(rows, None, heads, None)
    mask_spec = Mask(P(rows, None), P(rows, None))
    return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, mask_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, mask)


def _pallas_local(q, k, v, mask, *, self_causal: bool, interpret: bool):
    """`pallas_attention` on one device's arrays."""
    # why: the Pallas TPU kernels are optional (a TPU jaxlib); other attentions never load them
    if not self_causal:
        from rc_jax.models.ragged_attention import ragged_attention
        return ragged_attention(q, k, v, mask, interpret=interpret)
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu.flash_attention import SegmentIds, flash_attention
    b, s, kh, g, d = q.shape
    pad = -s % 128
    qh = jnp.pad(q.reshape(b, s, kh * g, d), ((0, 0), (0, pad), (0, 0), (0, 0)))
    kv = [jnp.pad(jnp.repeat(x.astype(q.dtype), g, axis=2), ((0, 0), (0, pad), (0, 0), (0, 0)))
          .transpose(0, 2, 1, 3) for x in (k, v)]
    ids = jnp.pad(mask.valid.astype(jnp.int32), ((0, 0), (0, pad)))
    mode: contextlib.AbstractContextManager = (
        pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext())
    with mode:
        out = flash_attention(qh.transpose(0, 2, 1, 3), kv[0], kv[1], sm_scale=d ** -0.5,
                              segment_ids=SegmentIds(q=ids, kv=ids), causal=True)
    return out.transpose(0, 2, 1, 3)[:, :s].reshape(b, s, kh, g, d)


def live_score_bytes(impl: str, rows: int, heads: int, queries: int, keys: int,
                     backend: str = "cpu", dtype: Any = jnp.float32,
                     self_causal: bool = False) -> int:
    """Analytic bytes of one layer's attention scores live at once (for memory plans):
    float32 [rows, heads, queries, keys] for dense, three [block_q, block_k] float32
    blocks per head (scores, probabilities, their gradient) for blockwise and for pallas
    with `self_causal` (a forward without a cache: segment ids, no bias; its blocks are
    128 wide), two (scores, probabilities) of 128 x 512 for pallas over a cache (the
    ragged kernel; no gradient), and cuDNN's [rows, 1, queries, keys] mask bias for cudnn.
    (The mask itself is factored, `Mask`: [rows, keys] + [rows, queries].)"""
    impl = resolve(impl, (rows, queries, heads, 1, 1), keys, dtype, backend=backend)
    if impl == "pallas":
        if self_causal:
            return 3 * rows * heads * min(128, queries) * min(128, keys) * 4
        return 2 * rows * heads * min(128, queries) * min(512, keys) * 4
    if impl == "dense":
        return rows * heads * queries * keys * 4
    if impl == "cudnn":
        return rows * queries * keys * jnp.dtype(dtype).itemsize
    return 3 * rows * heads * min(DEFAULT_BLOCK_Q, queries) * min(DEFAULT_BLOCK_K, keys) * 4
