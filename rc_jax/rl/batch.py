"""From trained samples to fixed-shape device batches: mini-batches, token-budget
micro-batches, and packed rows.

A *sample* is one trained sequence: prompt ids + response ids, its advantage and its
group. One training step's samples are split into `M` mini-batches (one optimizer step
each) along group boundaries, in order (the authors do not shuffle). Each mini-batch is
cut into micro-batches whose padded size fits a per-shard token budget; gradients of
micro-batches add up (see `losses.aggregation_weights`). These physical micro-batches are
length-sorted, to waste little padding; since every sequence carries its own loss weight,
they need not be the micro-batches a weighting is defined on (the authors'
'microbatch_token_mean' weights come from `losses.token_balanced_partition`).

Shapes stay in a small known set, so few programs compile: a micro-batch is
[rows, length] with length a bucket of the longest sequence it holds (`length_bucket`)
and rows = shards x a power of two fixed by the bucket and the budget.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class Sample:
    """One trained sequence (a response to a group's prompt)."""
    prompt: list[int]
    response: list[int]
    advantage: float
    group_id: int
    reward: float = 0.0
    sampler_logprobs: np.ndarray | None = None  # [len(response)] from the sampler
    is_summary: bool = False  # a summarizer-training response (its own KL coefficient)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)


def length_bucket(n: int, per_octave: int = 16, minimum: int = 16) -> int:
    """n rounded up to one of `per_octave` evenly spaced sizes per power of two (1: plain
    powers of two). 16 per octave wastes at most ~6% to padding at long lengths while
    keeping the number of distinct shapes (compiles) small; tiny CPU runs use 1."""
    n = max(int(n), minimum)
    p = 1 << (n - 1).bit_length()
    step = max(minimum, p // (2 * per_octave)) if per_octave > 1 else p
    return -(-n // step) * step


def split_minibatches(group_ids: Sequence[int], num_minibatches: int) -> list[np.ndarray]:
    """Sample indices of each mini-batch: whole groups, in order, as even as possible.

    Raises if there are fewer groups than mini-batches (a mini-batch would be empty).
    """
    ids = np.asarray(group_ids).tolist()
    order = list(dict.fromkeys(ids))  # groups in order of appearance
    if len(order) < num_minibatches:
        raise ValueError(f"{len(order)} groups cannot fill {num_minibatches} mini-batches")
    parts = np.array_split(np.arange(len(order)), num_minibatches)
    position = {g: i for i, g in enumerate(order)}
    which = np.array([position[g] for g in ids])
    return [np.flatnonzero(np.isin(which, part)) for part in parts]


@dataclasses.dataclass(frozen=True)
class MicroPlan:
    """Which samples go into one micro-batch and its padded shape."""
    indices: np.ndarray  # [n <= rows] sample indices
    rows: int
    length: int


def plan_micro_batches(lengths: Sequence[int], token_budget: int, shards: int, *,
                       per_octave: int = 16, min_length: int = 16) -> list[MicroPlan]:
    """Greedy token-budget micro-batching of one mini-batch.

    Longest sequences first: each micro-batch takes the longest remaining sample, pads to
    its length bucket L and holds rows = shards x per_shard samples, where per_shard is
    the largest power of two <= max(1, token_budget // L) (token_budget is per batch
    shard, like verl's ppo_max_token_len_per_gpu), capped by what the whole mini-batch
    needs. Rows depend only on (L, mini-batch size), so a run compiles one program per
    length bucket; the last micro-batch of a bucket is padded with empty rows. A sample
    longer than the budget still gets one row per shard.
    """
    if shards < 1 or token_budget < 1:
        raise ValueError(f"shards ({shards}) and token_budget ({token_budget}) must be >= 1")
    lens = np.asarray(lengths)
    need = -(-len(lens) // shards)
    cap = 1 << max(0, (need - 1).bit_length())
    order = list(np.argsort(-lens, kind="stable"))
    plans = []
    while order:
        length = length_bucket(int(lens[order[0]]), per_octave, min_length)
        per_shard = min(max(1, token_budget // length), cap)
        per_shard = 1 << (per_shard.bit_length() - 1)
        rows = shards * per_shard
        take, order = order[:rows], order[rows:]
        plans.append(MicroPlan(np.asarray(take), rows, length))
    return plans


def pack_rows(samples: Sequence[Sample], plan: MicroPlan, seq_weights: np.ndarray,
              pad_id: int, kl_weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Host arrays for one micro-batch (padding rows have weight 0 and no response).

    `seq_weights` / `kl_weights` are per-sample weights of the policy loss and of the KL
    term over the whole mini-batch (`losses.aggregation_weights` /
    `losses.kl_aggregation_weights`; kl_weights defaults to seq_weights).

    Returns:
      tokens, positions [R, L] int32 (prompt + response, right-padded);
      mask [R, L] bool (real tokens); response_mask [R, L] bool (loss-bearing tokens);
      advantages, seq_weights, kl_weights [R] float32; summary_rows [R] bool (summary
      responses); sampler_logp [R, L] float32 (0 where unknown).
    """
    kl_weights = seq_weights if kl_weights is None else kl_weights
    r, length = plan.rows, plan.length
    out = {
        "tokens": np.full((r, length), pad_id, np.int32),
        "positions": np.zeros((r, length), np.int32),
        "mask": np.zeros((r, length), bool),
        "response_mask": np.zeros((r, length), bool),
        "advantages": np.zeros((r,), np.float32),
        "seq_weights": np.zeros((r,), np.float32),
        "kl_weights": np.zeros((r,), np.float32),
        "summary_rows": np.zeros((r,), bool),
        "sampler_logp": np.zeros((r, length), np.float32),
    }
    for row, i in enumerate(plan.indices):
        s = samples[i]
        p, n = len(s.prompt), s.length
        if n > length:
            raise ValueError(f"sample {i} has {n} tokens, more than its bucket {length}")
        out["tokens"][row, :n] = s.prompt + s.response
        out["positions"][row, :n] = np.arange(n)
        out["mask"][row, :n] = True
        out["response_mask"][row, p:n] = True
        out["advantages"][row] = s.advantage
        out["seq_weights"][row] = seq_weights[i]
        out["kl_weights"][row] = kl_weights[i]
        out["summary_rows"][row] = s.is_summary
        if s.sampler_logprobs is not None:
            out["sampler_logp"][row, p:n] = s.sampler_logprobs
    return out
