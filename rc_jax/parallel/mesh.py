"""Mesh construction and logical-axis -> `NamedSharding` helpers."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rc_jax.models import qwen3
from rc_jax.parallel.rules import LOGICAL_AXIS_RULES, MESH_AXES, check_rules


def parse_mesh_shape(spec: str | Mapping[str, int]) -> dict[str, int]:
    """'data:2,fsdp:4,tensor:1' or a mapping -> {axis: size}; sizes may be -1 (the rest)."""
    if isinstance(spec, str):
        out = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, size = part.partition(":")
            if name not in MESH_AXES or not size.lstrip("-").isdigit():
                raise ValueError(f"mesh: bad entry {part!r}; expected e.g. 'data:2,fsdp:-1'")
            out[name] = int(size)
        return out
    return dict(spec)


def mesh_axis_sizes(shape: str | Mapping[str, int] | None, device_count: int) -> dict[str, int]:
    """{axis: size} of the mesh `make_mesh(shape)` builds over `device_count` devices:
    missing axes get size 1; one axis may be -1 to take all remaining devices. Default:
    everything on 'data'."""
    sizes = {"data": -1, "fsdp": 1, "tensor": 1} if not shape else {
        a: 1 for a in MESH_AXES} | parse_mesh_shape(shape)
    unknown = [a for a in sizes if a not in MESH_AXES]
    if unknown:
        raise ValueError(f"mesh: unknown axis {unknown[0]!r}; axes are {MESH_AXES}")
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: only one axis may be -1, got {free}")
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if free:
        if device_count % fixed:
            raise ValueError(f"mesh: {device_count} devices do not divide by {fixed}")
        sizes[free[0]] = device_count // fixed
    total = int(np.prod(list(sizes.values())))
    if total != device_count:
        raise ValueError(f"mesh: axes {sizes} need {total} devices, have {device_count}")
    return sizes


def make_mesh(shape: str | Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over axes ('data', 'fsdp', 'tensor'). Missing axes get size 1; one axis may
    be -1 to take all remaining devices. Default: everything on 'data'."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_axis_sizes(shape, len(devices))
    dims = [sizes[a] for a in MESH_AXES]
    grid = np.asarray(devices).reshape(dims)
    if devices[0].platform == "tpu" and len({d.slice_index if hasattr(d, "slice_index")
                                             else 0 for d in devices}) == 1:
        # Within one TPU slice, order devices along the physical torus so that each mesh
        # axis maps to ICI links (what jax.make_mesh does); fall back to plain order.
        try:
            grid = mesh_utils.create_device_mesh(dims, devices,
                                                 allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            pass
    return Mesh(grid, MESH_AXES)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """Mesh PartitionSpec for one array. A dimension that the mapped mesh axes do not
    divide evenly is replicated instead (e.g. 2 KV heads on a tensor axis of 4), and a
    mesh axis is used at most once per array."""
    check_rules(rules)
    table = dict(rules)
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for name, size in zip(logical, shape):
        target = table.get(name) if name is not None else None
        axes = tuple(a for a in (target if isinstance(target, tuple) else (target,))
                     if a is not None and mesh.shape.get(a, 1) > 1 and a not in used)
        n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or size % n:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes if len(axes) > 1 else axes[0])
    return PartitionSpec(*spec)


def tree_shardings(logical_tree: Any, shapes_tree: Any, mesh: Mesh,
                   rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a pytree, from a matching tree of logical PartitionSpecs."""
    return jax.tree.map(
        lambda logical, shape: NamedSharding(
            mesh, logical_to_spec(tuple(logical), shape.shape, mesh, rules)),
        logical_tree, shapes_tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_shardings(config, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for the model's params pytree on `mesh`."""
    return tree_shardings(qwen3.param_logical_axes(config), qwen3.param_shapes(config), mesh,
                          rules)


def batch_axes(mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> tuple[str, ...]:
    """Mesh axes (of size > 1) that shard the batch of rows, from the `activation_batch`
    rule: inputs and outputs of the sampler and RC engine are split over these, and
    their batch is padded to a multiple of `batch_shards`."""
    target = dict(rules).get("activation_batch")
    axes = target if isinstance(target, tuple) else (target,)
    return tuple(a for a in axes if a is not None and mesh.shape.get(a, 1) > 1)


def batch_shards(mesh: Mesh | None, axes: Sequence[str] | None = None) -> int:
    """How many ways the rows are split (1 without a mesh)."""
    if mesh is None:
        return 1
    axes = batch_axes(mesh) if axes is None else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def batch_shards_of(shape: str | Mapping[str, int] | None, device_count: int,
                    rules=LOGICAL_AXIS_RULES) -> int:
    """`batch_shards` of the mesh `make_mesh(shape)` would build over `device_count`
    devices, without building it (config validation)."""
    target = dict(rules).get("activation_batch")
    axes = target if isinstance(target, tuple) else (target,)
    sizes = mesh_axis_sizes(shape, device_count)
    return int(np.prod([sizes[a] for a in axes if a is not None]))


# KV cache layout of `rc_jax.models.qwen3.KVCache` (stacked form, k and v [L, B, C, K, D]),
# in logical names.
KV_CACHE_LOGICAL_AXES = {
    "k": ("cache_layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_head_dim"),
    "v": ("cache_layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_head_dim"),
    "valid": ("cache_batch", "cache_length"),
    "index": (),
}


def kv_cache_shardings(config, mesh: Mesh, batch: int, length: int,
                       rules=LOGICAL_AXIS_RULES) -> dict[str, NamedSharding]:
    """NamedShardings of a stacked KV cache of `batch` rows x `length` slots, by field."""
    shapes = jax.eval_shape(lambda: qwen3.init_cache(config, batch, length))
    return {name: NamedSharding(mesh, logical_to_spec(axes, getattr(shapes, name).shape,
                                                      mesh, rules))
            for name, axes in KV_CACHE_LOGICAL_AXES.items()}


class IdentityKey:
    """Hashes and compares by identity, so that unhashable pytrees (e.g. of shardings) can
    key a cache of compiled programs; the holder must keep the value alive."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, IdentityKey) and other.value is self.value
