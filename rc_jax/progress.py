"""Durable per-step progress: each finished RC step of each rollout, one fsync'd line.

`results.jsonl` gets a line when a rollout has done all its steps; with the paper's
budgets that is hours of accelerator time per rollout. `progress.jsonl` beside it gets a
line per finished step (the step's raw outputs, cleaned texts and token counts: all a
rollout needs to continue), flushed and fsync'd before the loop goes on. After a crash or
`kill -9`, re-running the same command restarts every unfinished rollout from its last
finished step; since every token's PRNG key depends only on (rollout, step, phase,
position), the final records equal an uninterrupted run's.

A torn last line (the process died mid-write) is dropped when the file is opened.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILE = "progress.jsonl"
_HEADER = ("problem_id", "sample_id", "step", "config_hash")  # a line's keys beside the step


class StepLog:
    """Appends and reads per-step progress lines for one run (one config hash)."""

    def __init__(self, output_dir: str | os.PathLike, config_hash: str):
        """A step is a JSON object whose layout the method's engine host defines (RC:
        `RolloutRecord.step_json`; Delethink: the chunk's ids and finish reason); the log
        adds the (problem, sample, step, config hash) header to each line."""
        self.path = Path(output_dir) / FILE
        self.config_hash = config_hash
        self._repair()

    def _repair(self) -> None:
        """Cuts a torn final line so appends start on a line boundary."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def load(self) -> dict[tuple[str, int], list[dict[str, Any]]]:
        """Finished steps per (problem_id, sample_id), in step order, of this config (each
        as `append` got it)."""
        out: dict[tuple[str, int], list[dict[str, Any]]] = {}
        if not self.path.exists():
            return out
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{n}: not JSON ({e}); delete the file to "
                                 "restart unfinished rollouts from step 1") from None
            if d.get("config_hash") != self.config_hash:
                continue
            steps = out.setdefault((str(d["problem_id"]), int(d["sample_id"])), [])
            if d["step"] == len(steps):  # a step logged twice (resumed twice) counts once
                steps.append({k: v for k, v in d.items() if k not in _HEADER})
        return out

    def append(self, problem_id: str, sample_id: int, step: int, fields: dict[str, Any]
               ) -> None:
        """Writes step `step` of (problem_id, sample_id) and fsyncs it before returning."""
        line = json.dumps({"problem_id": problem_id, "sample_id": sample_id, "step": step,
                           "config_hash": self.config_hash, **fields}) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
