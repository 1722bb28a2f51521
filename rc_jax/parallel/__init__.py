"""Mesh, logical-axis sharding rules, sharding context, multi-host helpers."""
from rc_jax.parallel.context import constrain_kv_cache, sharding_context
from rc_jax.parallel.distributed import (broadcast_from_main, is_main_process, maybe_initialize,
                                         process_split, put_global, to_host)
from rc_jax.parallel.mesh import (KV_CACHE_LOGICAL_AXES, batch_axes, batch_shards,
                                  kv_cache_shardings, logical_to_spec, make_mesh,
                                  param_shardings, parse_mesh_shape, tree_shardings)
from rc_jax.parallel.rules import LOGICAL_AXIS_RULES, MESH_AXES

__all__ = ["make_mesh", "parse_mesh_shape", "logical_to_spec", "tree_shardings",
           "param_shardings", "batch_axes", "batch_shards", "kv_cache_shardings",
           "KV_CACHE_LOGICAL_AXES", "LOGICAL_AXIS_RULES", "MESH_AXES", "sharding_context",
           "constrain_kv_cache", "maybe_initialize", "is_main_process", "process_split",
           "put_global", "to_host", "broadcast_from_main"]
