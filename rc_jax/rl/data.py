"""Deterministic, resumable stream of problem batches.

Epoch e visits the problems in the order of a permutation drawn from (seed, e) (or in
file order without shuffling), `batch_size` at a time; the incomplete last batch of an
epoch is dropped (the authors' dataloader uses drop_last). The position (epoch, offset)
is all the state there is, so a checkpoint restores the exact next batch.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rc_jax.data import Problem


class ProblemStream:
    """Batches of problems; `state_dict` / `load_state_dict` for checkpoints."""

    def __init__(self, problems: Sequence[Problem], batch_size: int, *, seed: int = 1,
                 shuffle: bool = True):
        if len(problems) < batch_size:
            raise ValueError(f"data: {len(problems)} problems cannot fill one batch of "
                             f"rl.batch_size={batch_size}")
        self.problems, self.batch_size = list(problems), batch_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.offset = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.problems) // self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.problems))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.problems))

    def next_batch(self) -> list[Problem]:
        if self.offset + self.batch_size > len(self.problems):
            self.epoch, self.offset = self.epoch + 1, 0
        order = self._order(self.epoch)[self.offset:self.offset + self.batch_size]
        self.offset += self.batch_size
        return [self.problems[i] for i in order]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed,
                "shuffle": self.shuffle, "num_problems": len(self.problems)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_problems") != len(self.problems):
            raise ValueError(f"checkpoint data position is for {state.get('num_problems')} "
                             f"problems; the data now has {len(self.problems)}")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
