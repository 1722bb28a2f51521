"""The batching loop of the batched runners: (problem, sample) pairs, `batch_size` at a time.

The method runners (`rc_jax.methods`) and RC's reference loop take a list of problems and
their row keys and return one `RolloutRecord` each; the CLI (`rc_jax.main`) and the toy
(`experiments/toy/evaluate.py`) feed them through this one loop, so keys, timing and the
records' identity are set the same way everywhere. (RC and Delethink on the device engine
stream all pairs through the engine's slots instead.)
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from rc_jax.records import RolloutRecord
from rc_jax.sampling.keys import row_key

# problems, row keys [len(problems), 2] -> one record per problem, in order.
BatchRunner = Callable[[list[str], np.ndarray], Sequence[RolloutRecord]]


def run_batches(run_batch: BatchRunner, todo: Sequence[tuple[Any, int]], batch_size: int,
                seed: int, method: str, config_hash: str = "") -> Iterator[list[RolloutRecord]]:
    """Runs `todo` ((`rc_jax.data.Problem`, sample id) pairs) in order, `batch_size` pairs
    per `run_batch` call, and yields each batch's records stamped with their identity
    (`RolloutRecord.with_identity`; wall = the batch's seconds).

    Row i's key is `row_key(seed, problem_id, sample_id)`, so a rollout's tokens depend
    on neither the batch size nor the batch it falls in (and a resumed run, which skips
    finished pairs, gets the same records).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        keys = np.stack([row_key(seed, p.problem_id, j) for p, j in chunk])
        t0 = time.perf_counter()
        records = run_batch([p.problem for p, _ in chunk], keys)
        wall = time.perf_counter() - t0
        yield [r.with_identity(p, j, method, wall, config_hash)
               for (p, j), r in zip(chunk, records)]
