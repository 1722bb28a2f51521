"""Training checkpoints with Orbax: params, optimizer state and everything needed to
continue exactly (step, data position, RNG seed, replay buffer, config hash).

Layout: `<directory>/<step>/{state, meta, replay}`; `state` is the sharded array tree
{params, opt_state} (each host writes its own shards; restoring places every array
straight onto its target sharding), `meta` and `replay` are JSON. The frozen reference
model is not saved: it is reloaded from its HF directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class TrainCheckpointer:
    """Saves every `save_every` steps (and on demand), keeps the last `keep`."""

    def __init__(self, directory: str | Path, *, save_every: int, keep: int):
        self.directory = Path(directory).absolute()
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta", "replay"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any],
             replay: dict[str, Any] | None) -> None:
        """Asynchronous: arrays are copied off-device, files written in the background."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
            replay=ocp.args.JsonSave(replay or {})), force=True)

    def restore(self, step: int, like: dict[str, Any]) -> tuple[dict, dict, dict]:
        """(state, meta, replay) of `step`; arrays take the shapes, dtypes and shardings
        of the arrays in `like`."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore(),
            replay=ocp.args.JsonRestore()))
        return out["state"], out["meta"], out["replay"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
