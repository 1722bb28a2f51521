"""The one table that maps logical axis names to mesh axes.

Every parameter, activation and KV-cache dimension in rc_jax carries a *logical* name
(`embed`, `q_heads`, `activation_batch`, ...). Which mesh axis shards it is decided here
and only here, so changing a parallelism strategy never touches model code.

Mesh axes: `data` (batch / independent rollouts), `fsdp` (parameters and optimizer state
sharded, gathered per layer), `tensor` (Megatron-style heads / MLP split).
"""
from __future__ import annotations

from typing import Sequence

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or tuple of mesh axes or None=replicated)
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
        # parameters
        ("layers", None),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("q_heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("mlp", "tensor"),
        ("norm", None),
        # activations
        ("activation_batch", ("data", "fsdp")),
        ("activation_length", None),
        ("activation_embed", None),
        ("activation_heads", "tensor"),
        ("activation_kv_heads", "tensor"),
        ("activation_mlp", "tensor"),
        ("activation_vocab", "tensor"),
        # KV cache
        ("cache_layers", None),
        ("cache_batch", ("data", "fsdp")),
        ("cache_length", None),
        ("cache_kv_heads", "tensor"),
        ("cache_head_dim", None),
)


def check_rules(rules: Sequence[tuple[str, object]] = LOGICAL_AXIS_RULES) -> None:
    """Each logical name appears once and names only known mesh axes."""
    seen = set()
    for name, target in rules:
        if name in seen:
            raise ValueError(f"logical axis {name!r} appears twice in the sharding rules")
        seen.add(name)
        axes = target if isinstance(target, tuple) else (target,)
        for axis in axes:
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(f"rule for {name!r} names unknown mesh axis {axis!r}")
