"""Length-aware attention over a KV cache as a Pallas TPU kernel (`model.attention=pallas`
for decode steps and prefill chunks).

Each row of rc_jax's cache is contiguous (`[B, C, K, D]` per layer, slot c of row b holds
the row's c-th token), so "ragged" decoding needs no page table: a row's live keys are one
range of key blocks, [first, last), found from the factored `Mask`. The kernel's grid is
(rows, query blocks, key blocks); for key blocks outside a row's range the index map
repeats the nearest live block, so the pipeline issues no copy, and the body does no work.
A step at slot 300 of a 20k-slot cache reads ~300 slots of that row, whatever the other
rows hold, and no [S, C] mask or bias exists anywhere.

Shapes (one device's part; `attention._per_device` splits rows and kv heads on a mesh):
  q: [B, S, K, G, D]; k, v: [B, C, K, D]; mask: `attention.Mask`; returns [B, S, K, G, D].
Inside, keys and values are read head-major, [B, K, C, D]: a transpose that XLA:TPU turns
into a layout choice (its own attention ops store the cache head-major too; a kernel
reading [B, C, K, D] blocks made XLA keep the cache in that layout and copy it, 5.5 GiB
more per chip in the RC plan of docs/scaling.md). A key block is then [K, block_k, D],
and kv head h's keys are the [block_k, D] tile k_ref[h]. Queries are regrouped (a small
copy) as [B, K, S*G, D]: one kv head's queries are the rows of one matrix.

Exactness: a row's output depends only on its own queries, keys and mask (each grid row
runs its own online softmax; a masked key adds an exact 0 and a rescale by exactly 1), so
the RC engine's continuous == lockstep identity holds with this kernel too.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rc_jax.models.attention import _MASK_VALUE as MASK_VALUE

BLOCK_K = 512  # key slots per block: [K, 512, D] bf16 keys + values, double-buffered, ~4 MiB
# Query rows (queries x G) per block when a prefill chunk has more (decode: one block);
# with K = 8 kv heads and D = 128, a block's queries, output and float32 softmax state
# take ~6 MiB of VMEM, the key/value blocks ~4 MiB: inside the 16 MiB default.
BLOCK_ROWS = 256
LANES = 128    # softmax statistics are kept lane-broadcast, as Mosaic prefers


def key_block(c: int) -> int:
    """Key slots per block for a cache of `c` slots: all of them when c <= BLOCK_K, else
    BLOCK_K (a last, partial block is masked)."""
    return c if c <= BLOCK_K else BLOCK_K


def query_block(s: int, g: int) -> int:
    """Queries per block for `s` queries of `g` heads per kv head: all of them when they
    fit in BLOCK_ROWS rows (decode: always), else a multiple of 8 rows (Mosaic's rule)."""
    bq = max(8, BLOCK_ROWS // g // 8 * 8)
    return s if s <= bq else bq


def live_blocks(mask, bq: int, bk: int) -> tuple[jax.Array, jax.Array]:
    """([B * nq] first, [B * nq] end) key blocks of `bk` slots that the queries of each
    (row, block of `bq` queries) may see; first == end == 0 where they see nothing."""
    b, s, c = mask.shape
    s_pad = -(-s // bq) * bq
    slots = jnp.pad(mask.query_slots, ((0, 0), (0, s_pad - s)), constant_values=-1)
    last = slots.reshape(b, -1, bq).max(axis=-1)  # [B, nq]
    nk = -(-c // bk)
    valid = jnp.pad(mask.valid, ((0, 0), (0, nk * bk - c)))
    keys = jnp.arange(nk * bk)
    seen = valid[:, None, :] & (keys[None, None, :] <= last[:, :, None])  # [B, nq, nk*bk]
    blocks = seen.reshape(b, -1, nk, bk).any(axis=-1)  # [B, nq, nk]
    any_ = blocks.any(axis=-1)
    first = jnp.where(any_, jnp.argmax(blocks, axis=-1), 0)
    end = jnp.where(any_, nk - jnp.argmax(blocks[..., ::-1], axis=-1), 0)
    return first.reshape(-1).astype(jnp.int32), end.reshape(-1).astype(jnp.int32)


def _kernel(first_ref, end_ref, q_ref, k_ref, v_ref, valid_ref, slot_ref, o_ref,
            m_ref, l_ref, acc_ref, *, kv_heads: int, head_dim: int, bk: int, c: int):
    """One (row, query block, key block) step. q_ref/o_ref: [K, R, D] (R = queries x G);
    k_ref/v_ref: [K, bk, D]; valid_ref: [1, bk] int32; slot_ref: [R, 1] int32 (each query
    row's cache slot); scratch m/l: [K, R, LANES], acc: [K, R, D] float32."""
    b, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    n = b * pl.num_programs(1) + i
    d = head_dim

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when((j >= first_ref[n]) & (j < end_ref[n]))
    def _step():
        keys = j * bk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
        sees = (valid_ref[...] != 0) & (keys <= slot_ref[...])  # [R, bk]
        if c % bk:  # a partial last block reads past the cache (and `valid`): mask it out
            sees &= keys < c
            in_cache = jax.lax.broadcasted_iota(jnp.int32, (bk, 1), 0) + j * bk < c
        for h in range(kv_heads):
            q = q_ref[h]  # [R, D]
            kh = k_ref[h]  # [bk, D]
            vh = v_ref[h]
            if c % bk:  # keep what lies past the cache out of p @ v (0 * NaN is NaN)
                vh = jnp.where(in_cache, vh, jnp.zeros_like(vh))
            sc = jax.lax.dot_general(q, kh, (((1,), (1,)), ((), ())),
                                     preferred_element_type=jnp.float32) * (d ** -0.5)
            sc = jnp.where(sees, sc, MASK_VALUE)
            m_prev = m_ref[h][:, :1]  # [R, 1]
            m_new = jnp.maximum(m_prev, sc.max(axis=-1, keepdims=True))
            p = jnp.where(sees, jnp.exp(sc - m_new), 0.0)
            alpha = jnp.exp(m_prev - m_new)
            l_new = l_ref[h][:, :1] * alpha + p.sum(axis=-1, keepdims=True)
            pv = jax.lax.dot_general(p.astype(vh.dtype), vh, (((1,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)
            acc_ref[h] = acc_ref[h] * alpha + pv
            m_ref[h] = jnp.broadcast_to(m_new, m_ref.shape[1:])
            l_ref[h] = jnp.broadcast_to(l_new, l_ref.shape[1:])

    @pl.when(j == pl.num_programs(2) - 1)
    def _finish():
        l = l_ref[...][..., :1]
        o_ref[...] = (acc_ref[...] / jnp.where(l == 0, 1.0, l)).astype(o_ref.dtype)


def ragged_attention(q, k, v, mask, *, interpret: bool = False) -> jax.Array:
    """Masked GQA attention of `q` over the cache `k`, `v` (shapes in the module
    docstring), reading only each row's live key blocks. `interpret`: run the kernel in
    Pallas' TPU interpret mode (CPU tests)."""
    b, s, kh, g, d = q.shape
    c = k.shape[1]
    bk = key_block(c)
    bq = query_block(s, g)
    s_pad = -(-s // bq) * bq
    nq, nk = s_pad // bq, -(-c // bk)
    r = bq * g
    first, end = live_blocks(mask, bq, bk)
    # [B, K, S*G, D]: row s*G + g of head h is query head h*G + g at position s.
    qt = jnp.pad(q, ((0, 0), (0, s_pad - s), (0, 0), (0, 0), (0, 0)))
    qt = qt.transpose(0, 2, 1, 3, 4).reshape(b, kh, s_pad * g, d)
    slots = jnp.pad(mask.query_slots, ((0, 0), (0, s_pad - s)), constant_values=-1)
    slots = jnp.repeat(slots, g, axis=1)[..., None]  # [B, S*G, 1]
    valid = mask.valid.astype(jnp.int32)[:, None, :]  # [B, 1, C]

    def kv_index(bi, i, j, first_ref, end_ref):
        n = bi * nq + i
        live = jnp.minimum(jnp.maximum(j, first_ref[n]), jnp.maximum(end_ref[n] - 1, 0))
        return bi, 0, live, 0

    def valid_index(bi, i, j, first_ref, end_ref):
        return bi, 0, kv_index(bi, i, j, first_ref, end_ref)[2]

    q_spec = pl.BlockSpec((None, kh, r, d), lambda bi, i, j, *_: (bi, 0, i, 0))
    kv_spec = pl.BlockSpec((None, kh, bk, d), kv_index)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, nq, nk),
        in_specs=[q_spec, kv_spec, kv_spec,
                  pl.BlockSpec((None, 1, bk), valid_index),
                  pl.BlockSpec((None, r, 1), lambda bi, i, j, *_: (bi, i, 0))],
        out_specs=q_spec,
        scratch_shapes=[pltpu.VMEM((kh, r, LANES), jnp.float32),
                        pltpu.VMEM((kh, r, LANES), jnp.float32),
                        pltpu.VMEM((kh, r, d), jnp.float32)])
    kernel = functools.partial(_kernel, kv_heads=kh, head_dim=d, bk=bk, c=c)
    mode: contextlib.AbstractContextManager = (
        pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext())
    with mode:  # read when the call is built
        out = pl.pallas_call(
            kernel, grid_spec=grid_spec,
            out_shape=jax.ShapeDtypeStruct((b, kh, s_pad * g, d), q.dtype),
            compiler_params=pltpu.CompilerParams(
                dimension_semantics=("parallel", "parallel", "arbitrary")),
        )(first, end, qt, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), valid, slots)
    out = out.reshape(b, kh, s_pad, g, d).transpose(0, 2, 1, 3, 4)
    return out[:, :s]

