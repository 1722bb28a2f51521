"""Recursive self-aggregation (RSA): a population improved by aggregating K of its members.

Round 0: `rsa.population` (N) independent solutions per (problem, sample). Each of
`rsa.generations` (G) later rounds replaces the population: every new member sees K =
`rsa.k` distinct members of the previous round, drawn uniformly at random (in random
order), and is asked for one better solution (`aggregate` prompt, `rsa.template`).
With `rsa.use_summaries` the members are shown as RC summaries of their solutions
instead of the full texts. Everything else (budgets, keys, record layout) is the
population scaffold's, see `rc_jax.methods.scaffold`. Notes: `rsa_notes[g-1][m]` is the
list of previous-round members member m of round g saw, in prompt order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rc_jax.methods import register
from rc_jax.methods.base import MethodContext
from rc_jax.methods.scaffold import Scaffold, candidates_field, run_scaffold
from rc_jax.records import RolloutRecord


class RSA(Scaffold):
    name = "rsa"
    kind = "aggregate"

    def __init__(self, ctx: MethodContext):
        c = ctx.config.rsa
        if not 1 <= c.k <= c.population:
            raise ValueError(f"config.rsa.k: must be in [1, rsa.population={c.population}], "
                             f"got {c.k}")
        super().__init__(ctx, population=c.population, rounds=c.generations,
                         template=c.template, use_summaries=c.use_summaries,
                         max_view_tokens=c.max_candidate_tokens,
                         store_population=c.store_population)
        self.k = c.k

    def round_fields(self, views, member, rng):
        chosen = [int(j) for j in rng.choice(len(views), size=self.k, replace=False)]
        return {"candidates": candidates_field(views, chosen)}, chosen


@register("rsa")
def run_rsa(problems: Sequence[str], keys: np.ndarray,
            ctx: MethodContext) -> list[RolloutRecord]:
    return run_scaffold(RSA(ctx), problems, keys, ctx)
