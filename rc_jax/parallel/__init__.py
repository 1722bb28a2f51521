"""Mesh, logical-axis sharding rules, and helpers producing NamedShardings."""
from rc_jax.parallel.mesh import (logical_to_spec, make_mesh, param_shardings, parse_mesh_shape,
                                  tree_shardings)
from rc_jax.parallel.rules import LOGICAL_AXIS_RULES, MESH_AXES

__all__ = ["make_mesh", "parse_mesh_shape", "logical_to_spec", "tree_shardings",
           "param_shardings", "LOGICAL_AXIS_RULES", "MESH_AXES"]
