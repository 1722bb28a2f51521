"""The one PRNG key scheme of evaluation, the baselines and RL.

A row's key depends only on (seed, label, sample), where the label names what is sampled
(a problem id in evaluation; step/problem/chain/... in RL), never on batch size, batch
order or sharding:

    row_key(seed, label, j) = fold_in(fold_in(PRNGKey(seed), h(label)), j)

with h the first 4 bytes of sha256(label), little-endian, masked to 31 bits. Everything
a row samples later is derived by folding tags into its key (`fold`): the RC engine's
phase 2t + p of step t, a baseline's step, a scaffold's member, Delethink's chunk; token
i of a generation folds in i (`rc_jax.sampling.core.decode`).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def label_digest(label: str) -> int:
    """h(label): the 31-bit integer folded into the seed's key."""
    return int.from_bytes(hashlib.sha256(str(label).encode()).digest()[:4], "little") & 0x7FFFFFFF


def row_key(seed: int, label: str, sample: int) -> np.ndarray:
    """[2] uint32: the key of (seed, label, sample)."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), label_digest(label))
    return np.asarray(jax.random.fold_in(key, sample))


def row_keys(seed: int, labels: Sequence[str], samples: int = 1) -> np.ndarray:
    """[len(labels) * samples, 2] uint32: row i * samples + j is `row_key(seed, labels[i], j)`
    (label-major), computed in one vectorized call."""
    digests = np.array([label_digest(label) for label in labels], np.uint32)
    base = jax.random.PRNGKey(seed)
    keys = jax.vmap(lambda d: jax.vmap(lambda j: jax.random.fold_in(
        jax.random.fold_in(base, d), j))(jnp.arange(samples)))(jnp.asarray(digests))
    return np.asarray(keys, np.uint32).reshape(len(labels) * samples, 2)


@jax.jit
def _fold(keys: jax.Array, data: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in)(keys, data)


def fold(keys: np.ndarray | jax.Array, *tags: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """keys [R, 2] -> [R, 2] uint32: each row's key with `tags` folded in, in order.

    A tag is an int (same for every row) or one int per row (e.g. a member index).
    """
    out = jnp.asarray(np.asarray(keys, np.uint32))
    for tag in tags:
        data = np.broadcast_to(np.asarray(tag, np.uint32), (out.shape[0],))
        out = _fold(out, jnp.asarray(data))
    return np.asarray(out)
