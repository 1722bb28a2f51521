"""The RL math as pure functions: group advantages, KL estimators, the clipped policy
loss and loss-aggregation weights. Everything here is unit-testable with numbers.

Estimators, policy losses, KL penalties and aggregation modes are picked by *name* from
the small registries below (`ADVANTAGE_ESTIMATORS`, `POLICY_LOSSES`, `KL_PENALTIES`,
`LOSS_AGG_MODES`); configs name them and `rc_jax.config.validate` checks the names.

Shapes: N sequences, B rows of a micro-batch, S token positions.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------- advantages


def _group_index(group_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inverse index [N], counts [G]) of `group_ids` (any hashable ints)."""
    _, inverse, counts = np.unique(np.asarray(group_ids), return_inverse=True,
                                   return_counts=True)
    return inverse.reshape(-1), counts


def _group_stats(rewards: np.ndarray, group_ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sequence (group mean, population std, group size), each [N], in float64."""
    r = np.asarray(rewards, np.float64)
    inv, counts = _group_index(group_ids)
    sums = np.bincount(inv, weights=r)
    mean = sums / counts
    var = np.bincount(inv, weights=(r - mean[inv]) ** 2) / counts  # ddof = 0
    return mean[inv], np.sqrt(var)[inv], counts[inv].astype(np.float64)


def grpo_advantages(rewards: np.ndarray, group_ids: np.ndarray, eps: float = 1e-6
                    ) -> np.ndarray:
    """(r - group mean) / (group population std + eps). [N] -> [N] float32.

    The authors' estimator (RC/advantage.py): population std (ddof=0), not leave-one-out.
    A group whose rewards are all equal gets advantage exactly 0. (A group of one has
    mean r and std 0, hence advantage 0; the config rejects group size 1 for this
    estimator because it could never learn.)
    """
    r = np.asarray(rewards, np.float64)
    mean, std, _ = _group_stats(r, group_ids)
    return ((r - mean) / (std + eps)).astype(np.float32)


def grpo_no_std_advantages(rewards: np.ndarray, group_ids: np.ndarray, eps: float = 1e-6
                           ) -> np.ndarray:
    """r - group mean (no std normalisation, as in Dr. GRPO). [N] -> [N] float32."""
    del eps
    r = np.asarray(rewards, np.float64)
    mean, _, _ = _group_stats(r, group_ids)
    return (r - mean).astype(np.float32)


def rloo_advantages(rewards: np.ndarray, group_ids: np.ndarray, eps: float = 1e-6
                    ) -> np.ndarray:
    """r - mean of the *other* members of the group (leave-one-out). [N] -> [N]."""
    del eps
    r = np.asarray(rewards, np.float64)
    mean, _, n = _group_stats(r, group_ids)
    if np.any(n < 2):
        raise ValueError("rloo advantages need groups of at least 2 responses")
    return ((r - mean) * n / (n - 1)).astype(np.float32)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {
    "grpo": grpo_advantages,
    "grpo_no_std": grpo_no_std_advantages,
    "rloo": rloo_advantages,
}
# Estimators that divide by the group std: meaningless for groups of one.
STD_NORMALISED = ("grpo",)


def compute_advantages(name: str, rewards: np.ndarray, group_ids: np.ndarray, *,
                       group_size: int | None = None, eps: float = 1e-6) -> np.ndarray:
    """Advantages by estimator name. If `group_size` is given, every group must have
    exactly that many members (a wrong grouping fails loudly instead of silently
    mixing baselines)."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; "
                         f"choose from {', '.join(ADVANTAGE_ESTIMATORS)}")
    rewards, group_ids = np.asarray(rewards), np.asarray(group_ids)
    if rewards.shape != group_ids.shape or rewards.ndim != 1:
        raise ValueError(f"rewards {rewards.shape} and group_ids {group_ids.shape} must be "
                         "equal-length vectors")
    if group_size is not None:
        ids, counts = np.unique(group_ids, return_counts=True)
        bad = ids[counts != group_size]
        if bad.size:
            raise ValueError(f"group {bad[0].item()!r} has {counts[counts != group_size][0]} "
                             f"responses, expected group_size={group_size}")
    return ADVANTAGE_ESTIMATORS[name](rewards, group_ids, eps)


def zero_variance_groups(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """[N] bool: True for members of groups whose rewards are all equal (advantage 0)."""
    _, std, _ = _group_stats(rewards, group_ids)
    return std == 0


# ----------------------------------------------------------------------------- KL


def _kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    return logp - ref_logp


def _kl_abs(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    return jnp.abs(logp - ref_logp)


def _kl_k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    return 0.5 * jnp.square(logp - ref_logp)


def _kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Schulman's k3, exp(ref - logp) - (ref - logp) - 1, unbiased and >= 0.

    Clamped to [-10, 10] as in the authors' stack; the log-ratio is also clamped to
    [-20, 20] before the exp (verl does the same) so one wild token cannot overflow.
    """
    log_ratio = jnp.clip(ref_logp - logp, -20.0, 20.0)
    return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)


KL_PENALTIES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "kl": _kl_k1,            # k1
    "abs": _kl_abs,
    "mse": _kl_k2,           # k2
    "low_var_kl": _kl_k3,    # k3 (the paper's)
}


def kl_penalty(name: str, logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token KL(pi || pi_ref) estimate by name; any matching shapes."""
    if name not in KL_PENALTIES:
        raise ValueError(f"unknown kl_type {name!r}; choose from {', '.join(KL_PENALTIES)}")
    return KL_PENALTIES[name](logp, ref_logp)


# ----------------------------------------------------------------------------- policy loss


class PolicyLoss(NamedTuple):
    """Per-token policy loss and clip indicators, each shaped like the inputs."""
    loss: jax.Array        # float
    clipped_high: jax.Array  # bool: A > 0 and ratio > 1 + eps_high (gradient cut)
    clipped_low: jax.Array   # bool: A < 0 and ratio < 1 - eps_low (gradient cut)
    dual_clipped: jax.Array  # bool: A < 0 and the loss was capped at -c * A
    ratio: jax.Array


def ppo_clip_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, *,
                  clip_low: float, clip_high: float, clip_c: float = 0.0) -> PolicyLoss:
    """PPO clipped surrogate with asymmetric clip and optional dual clip, per token.

    ratio = exp(logp - old_logp) (log-ratio clamped to [-20, 20]);
    loss  = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high));
    if clip_c > 0, for A < 0: loss = min(loss, -clip_c * A)   (dual clip, Ye et al. 2020)
    which bounds how hard one very unlikely-now token with negative advantage can push.
    All arguments broadcast together (e.g. [B, S] and advantages [B, 1]).
    """
    ratio = jnp.exp(jnp.clip(logp - old_logp, -20.0, 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(unclipped, clipped)
    active = clipped > unclipped
    dual = jnp.zeros_like(active)
    if clip_c > 0:
        cap = -advantages * clip_c
        dual = (advantages < 0) & (loss > cap)
        loss = jnp.where(advantages < 0, jnp.minimum(loss, cap), loss)
    return PolicyLoss(loss, active & (advantages > 0), active & (advantages < 0), dual, ratio)


def _ppo(logp, old_logp, advantages, *, clip_low, clip_high, clip_c):
    return ppo_clip_loss(logp, old_logp, advantages, clip_low=clip_low, clip_high=clip_high,
                         clip_c=0.0)


def _ppo_dual_clip(logp, old_logp, advantages, *, clip_low, clip_high, clip_c):
    return ppo_clip_loss(logp, old_logp, advantages, clip_low=clip_low, clip_high=clip_high,
                         clip_c=clip_c)


POLICY_LOSSES: dict[str, Callable[..., PolicyLoss]] = {
    "ppo": _ppo,                       # asymmetric clip only
    "ppo_dual_clip": _ppo_dual_clip,   # + dual clip for A < 0 (the paper's)
}


def truncated_importance_weight(old_logp: jax.Array, sampler_logp: jax.Array,
                                cap: float) -> jax.Array:
    """min(pi_old / pi_sampler, cap), no gradient (truncated importance sampling).

    Corrects for the sampler's numerics differing from the trainer's: the trainer's
    ratio is taken against `old_logp`, but the tokens were drawn from the sampler.
    """
    w = jnp.exp(jnp.clip(old_logp - sampler_logp, -20.0, 20.0))
    return jax.lax.stop_gradient(jnp.minimum(w, cap))


# ----------------------------------------------------------------------------- aggregation
#
# Every mode is a per-sequence weight w_i on the masked per-token loss:
#     loss = sum_i w_i * sum_t mask_it * l_it
# so a micro-batch's contribution is just sum(weights * mask * loss), gradients of
# micro-batches add up to the mini-batch gradient, and padding rows (w = 0) are free.


def _token_mean(lengths, micro_ids):
    """Global token mean over the whole mini-batch: w_i = 1 / sum_j len_j."""
    return np.full(lengths.shape, 1.0 / max(lengths.sum(), 1))


def _seq_mean_token_mean(lengths, micro_ids):
    """Mean over sequences of each sequence's token mean: w_i = 1 / (len_i * N)."""
    return 1.0 / (np.maximum(lengths, 1) * len(lengths))


def _seq_mean_token_sum(lengths, micro_ids):
    """Mean over sequences of each sequence's token sum: w_i = 1 / N."""
    return np.full(lengths.shape, 1.0 / len(lengths))


def _microbatch_token_mean(lengths, micro_ids):
    """The authors' (verl, dynamic batch size) mode: a token mean inside each micro-batch,
    scaled by that micro-batch's share of the sequences. w_i = (n_m / N) / tokens_m.
    With D equal data-parallel parts of N / D sequences this is exactly verl's weight:
    each worker scales its micro-batch's token mean by n_m / (N / D) and the gradients
    are averaged over the D workers.

    The micro-batches that matter here are the *logical* ones of `micro_ids`: for the
    authors' weighting they must be token-balanced, mixed-length partitions
    (`token_balanced_partition`), not rc_jax's length-sorted physical micro-batches."""
    w = np.zeros(lengths.shape)
    for m in np.unique(micro_ids):
        sel = micro_ids == m
        w[sel] = (sel.sum() / len(lengths)) / max(lengths[sel].sum(), 1)
    return w


LOSS_AGG_MODES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
    "microbatch_token_mean": _microbatch_token_mean,
}


def aggregation_weights(mode: str, response_lengths: np.ndarray,
                        micro_ids: np.ndarray | None = None) -> np.ndarray:
    """Per-sequence loss weights [N] (float32) for one mini-batch.

    Args:
      mode: a `LOSS_AGG_MODES` name.
      response_lengths: [N] number of loss-bearing tokens of each sequence.
      micro_ids: [N] micro-batch index of each sequence (only the authors'
        'microbatch_token_mean' depends on it).
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; "
                         f"choose from {', '.join(LOSS_AGG_MODES)}")
    lengths = np.asarray(response_lengths, np.float64)
    micro_ids = np.zeros(lengths.shape, np.int64) if micro_ids is None else np.asarray(micro_ids)
    return LOSS_AGG_MODES[mode](lengths, micro_ids).astype(np.float32)


def kl_aggregation_weights(mode: str, response_lengths: np.ndarray,
                           micro_ids: np.ndarray | None = None) -> np.ndarray:
    """Per-sequence weights [N] (float32) of the KL term: a plain token mean whatever the
    policy loss's `mode`, as in the authors' actor (their KL is always a token mean).

    It is the token mean of the aggregation's own unit: the whole mini-batch, except in
    'microbatch_token_mean', where (as in the authors' actor) the token mean is taken
    inside each micro-batch and scaled by its share of the sequences, i.e. the same
    weights as that mode's policy loss.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; "
                         f"choose from {', '.join(LOSS_AGG_MODES)}")
    kl_mode = "microbatch_token_mean" if mode == "microbatch_token_mean" else "token_mean"
    return aggregation_weights(kl_mode, response_lengths, micro_ids)


def token_balanced_partition(lengths: np.ndarray, token_budget: int, shards: int
                             ) -> np.ndarray:
    """Logical micro-batch ids [N] for 'microbatch_token_mean': the authors' (verl dynamic
    batch size) micro-batches, token-balanced partitions that mix lengths.

    The mini-batch is cut into `shards` contiguous, equal parts (one per data-parallel
    worker; as equal as possible when they do not divide, e.g. after dropping
    zero-advantage groups). Each part of total length L_s gets K_s = ceil(L_s / token_budget)
    micro-batches, filled by greedy longest-processing-time bin packing: sequences in
    order of decreasing length, each into the micro-batch with the fewest tokens so far
    (ties: the lowest index). verl balances with Karmarkar-Karp instead; both give
    micro-batches of similar total length holding long and short sequences together.
    `lengths` are the partitioning lengths (prompt + response tokens, as verl counts
    the attention mask). Ids are unique over the whole mini-batch (part by part).
    """
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    if shards < 1 or token_budget < 1:
        raise ValueError(f"shards ({shards}) and token_budget ({token_budget}) must be >= 1")
    ids = np.zeros(n, np.int64)
    offset = 0
    for part in np.array_split(np.arange(n), shards):
        if not len(part):
            continue
        k = max(1, -(-int(lengths[part].sum()) // token_budget))
        k = min(k, len(part))
        load = np.zeros(k, np.int64)
        for i in part[np.argsort(-lengths[part], kind="stable")]:
            b = int(np.argmin(load))  # argmin returns the first minimum: lowest index
            ids[i] = offset + b
            load[b] += lengths[i]
        offset += k
    return ids


def aggregate(per_token: jax.Array, mask: jax.Array, seq_weights: jax.Array) -> jax.Array:
    """sum_i w_i * sum_t mask_it * x_it.  per_token, mask: [B, S]; seq_weights: [B]."""
    return jnp.sum(per_token * mask * seq_weights[:, None])
