"""Making the model's logical activation constraints take effect.

`nn.with_logical_constraint` in `rc_jax.models.qwen3` is a no-op unless, *while the
program is traced*, logical-axis rules are installed (`nn.logical_axis_rules`) and a mesh
is in context (`jax.set_mesh`). `sharding_context(mesh)` does both; callers enter it
around the call of a jitted function (tracing happens at the first call, so the context
must be active then, not when `jax.jit` is applied):

    with sharding_context(mesh):
        out = program(params, tokens, ...)

The jit cache key includes the mesh in context, so a program traced with constraints is
never reused without them. Shardy accepts constraints that do not divide a dimension
(it pads); the divisibility fallback of `logical_to_spec` only applies to jit inputs and
outputs.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import flax.linen as nn
import jax
from jax.sharding import Mesh

from rc_jax.parallel.mesh import KV_CACHE_LOGICAL_AXES
from rc_jax.parallel.rules import LOGICAL_AXIS_RULES, check_rules


@contextlib.contextmanager
def sharding_context(mesh: Mesh | None, rules=LOGICAL_AXIS_RULES) -> Iterator[None]:
    """Mesh + logical-axis rules in context; does nothing when `mesh` is None."""
    if mesh is None:
        yield
        return
    check_rules(rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def constrain_kv_cache(cache):
    """`with_logical_constraint` on every field of a stacked `KVCache`; a no-op outside
    `sharding_context`. Meant for code that builds a cache inside a jitted program."""
    return cache.replace(**{name: nn.with_logical_constraint(getattr(cache, name), axes)
                            for name, axes in KV_CACHE_LOGICAL_AXES.items() if axes})
