"""Multi-host runs: start-up, and how host data reaches and leaves a mesh spanning processes.

The model is SPMD with one controller per host: every process runs the *same* program on
the *same* global inputs. Host inputs (prompts, keys, budgets) are identical on every
process, so each process hands its own devices their slices of them (`put_global`);
results are gathered back to every host (`to_host`); only the main process (index 0)
writes files and logs (`is_main_process`). With one process all of this reduces to
ordinary single-host JAX, so the same code runs on a laptop, a GPU box and a pod.

Start-up (`maybe_initialize`) calls `jax.distributed.initialize()` only when the
environment describes a multi-process job:
  * `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`): explicit, e.g.
    several GPU hosts, or the localhost test;
  * `RC_JAX_DISTRIBUTED=1`: let JAX detect the cluster (Cloud TPU VM metadata, SLURM,
    Open MPI, GKE); `launch/tpu_pod.sh` sets it on every worker. `=0` disables;
  * TPU/Megascale/SLURM/MPI variables naming more than one process.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Sequence, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def _env_int(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ValueError(f"environment variable {name}={os.environ[name]!r} is not an integer"
                         ) from None


def multi_process_env() -> str | None:
    """Why this environment is a multi-process job (a short reason), or None."""
    flag = os.environ.get("RC_JAX_DISTRIBUTED", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return None
    if flag in ("1", "true", "yes", "on"):
        return "RC_JAX_DISTRIBUTED=1"
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "TPU_WORKER_HOSTNAMES"
    if os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "MEGASCALE_COORDINATOR_ADDRESS"
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if _env_int(name, 1) > 1:
            return name
    return None


def maybe_initialize() -> bool:
    """Initializes `jax.distributed` for a multi-process job; call before any JAX use.

    Returns True when this is a multi-process run (already initialized counts).
    """
    if jax.distributed.is_initialized():
        return True
    reason = multi_process_env()
    if reason is None:
        return False
    kwargs: dict[str, Any] = {}
    if reason == "JAX_COORDINATOR_ADDRESS":
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
        if "JAX_NUM_PROCESSES" in os.environ:
            kwargs["num_processes"] = _env_int("JAX_NUM_PROCESSES")
        if "JAX_PROCESS_ID" in os.environ:
            kwargs["process_id"] = _env_int("JAX_PROCESS_ID")
    jax.distributed.initialize(**kwargs)
    return True


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """True on the process that writes results, checkpoints and logs (index 0)."""
    return jax.process_index() == 0


def process_split(items: Sequence[T], index: int | None = None,
                  count: int | None = None) -> list[T]:
    """This process's contiguous share of `items` (sizes differ by at most one).

    For host-side work that is *not* one global program (grading, preprocessing, writing
    per-process shards). Inputs of a jitted program on a global mesh are never split:
    every process passes the whole batch and `put_global` keeps each device's rows.
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} outside [0, {count})")
    base, extra = divmod(len(items), count)
    start = index * base + min(index, extra)
    return list(items[start:start + base + (index < extra)])


def _put_one(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    if isinstance(x, jax.Array):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if jax.process_count() == 1:  # jit reshards single-host arrays itself
            return x
        if not x.is_fully_addressable:
            raise ValueError(f"cannot re-place a global array with sharding {x.sharding} "
                             f"onto {sharding}; pass it with the expected sharding")
        x = np.asarray(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_global(tree: Any, shardings: Any) -> Any:
    """Host values (identical on every process) -> global `jax.Array`s on `shardings`.

    `shardings` is a Sharding or a pytree of them that is a prefix of `tree` (one
    Sharding then covers a whole subtree, e.g. replicated params). Each process only
    transfers the slices its own devices hold; arrays already placed are left alone.
    """
    is_sharding = lambda s: isinstance(s, jax.sharding.Sharding)  # noqa: E731
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: _put_one(x, s), sub),
                        shardings, tree, is_leaf=is_sharding)


def to_host(tree: Any) -> Any:
    """numpy copies of (possibly multi-process) global arrays, complete on every process."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(one, tree)


def broadcast_from_main(obj: T, is_source: bool | None = None) -> T:
    """The source process's `obj` (any picklable value) on every process; identity with
    one process. The source is process 0 unless `is_source` says otherwise (exactly one
    process must pass True). Every process must call it at the same point.
    """
    if jax.process_count() == 1:
        return obj
    source = is_main_process() if is_source is None else bool(is_source)
    blob = np.frombuffer(pickle.dumps(obj), np.uint8) if source else None
    size = int(multihost_utils.broadcast_one_to_all(
        np.int32(0 if blob is None else blob.size), is_source=source))
    buf = np.zeros((size,), np.uint8) if blob is None else blob.copy()
    buf = np.asarray(multihost_utils.broadcast_one_to_all(buf, is_source=source))
    return pickle.loads(buf.tobytes())
