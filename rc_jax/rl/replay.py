"""Summary replay buffer: summaries from earlier online chains seed later chains.

After each training step every chain summary s_1..s_T is stored under its problem *text*
(as the authors key it, so a problem repeated under another id shares an entry) with its
chain depth (seed depth + position in the chain). When a stored problem is drawn again,
its online chains start from summaries sampled uniformly *without replacement* (k per
problem) instead of the empty summary; each sampled summary seeds `rl.chains_per_problem`
chains, as the empty summary of a fresh problem does. Stored summaries only condition the chain: they
are never trained on and need no importance weight.

Beyond the authors' (unbounded) buffer, `capacity` (total summaries, oldest evicted
first) and `max_age` (in training steps) bound it. `purge_on_add` drops a problem's old
summaries when its new ones arrive, as the authors' Stage-II script sets.

The buffer is plain data (`state_dict` / `load_state_dict`), saved with checkpoints and
loadable from a JSON file to warm-start (`load`). `load` also reads the file the authors'
trainer saves: a JSON list with one object per problem holding `problem`, `problem_id`,
`prompt_id`, `sample_id`, `label`, `starting_steps` and `summaries` (`reasoning_traces`
instead of `summaries` for the summary-free variant); `starting_steps[j]` is the chain
depth of `summaries[j]`, exactly rc_jax's `Entry.depth`. A compact warm-start layout,
{problem: {"summaries": [...], "starting_steps": [...]}} (rc_jax's own, written by the
toy pipeline), is read too.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass
class Entry:
    """One stored summary."""
    text: str
    depth: int            # chain depth: 1 for s_1 of a chain started from ""
    step: int             # training step that produced it
    ids: list[int] | None = None  # token ids when known (exact; text is re-encoded otherwise)
    seq: int = 0          # global insertion counter (eviction order)


class SummaryReplayBuffer:
    """Summaries per problem text, with optional capacity and age limits."""

    def __init__(self, capacity: int = 0, max_age: int = 0, purge_on_add: bool = False):
        if capacity < 0 or max_age < 0:
            raise ValueError(f"capacity ({capacity}) and max_age ({max_age}) must be >= 0 "
                             "(0 = unbounded)")
        self.capacity, self.max_age, self.purge_on_add = capacity, max_age, purge_on_add
        self.entries: dict[str, list[Entry]] = {}
        self._seq = 0

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def __contains__(self, problem: str) -> bool:
        return bool(self.entries.get(problem))

    def summaries(self, problem: str) -> list[Entry]:
        return list(self.entries.get(problem, ()))

    # ------------------------------------------------------------------ updates
    def add(self, problem: str, texts: Sequence[str], *, start_depth: int, step: int,
            ids: Sequence[Sequence[int]] | None = None) -> None:
        """Stores one chain's summaries s_1..s_T; s_j gets depth start_depth + j."""
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} id lists for {len(texts)} summaries")
        bucket = self.entries.setdefault(problem, [])
        for j, text in enumerate(texts):
            self._seq += 1
            bucket.append(Entry(text, start_depth + j + 1, step,
                                None if ids is None else list(ids[j]), self._seq))
        self._evict_over_capacity()

    def add_chains(self, chains: Sequence[tuple[str, Sequence[str], int,
                                                 Sequence[Sequence[int]] | None]],
                   step: int) -> None:
        """Adds a whole step's chains: (problem, summaries, start_depth, ids) each.

        With `purge_on_add`, every problem of this step first loses its stored summaries
        (so the buffer then holds this step's chains for it), as in the authors' code.
        """
        if self.purge_on_add:
            for problem in {c[0] for c in chains}:
                self.entries.pop(problem, None)
        for problem, texts, depth, ids in chains:
            self.add(problem, texts, start_depth=depth, step=step, ids=ids)

    def expire(self, step: int) -> None:
        """Drops summaries older than `max_age` steps (no-op when max_age is 0)."""
        if not self.max_age:
            return
        for problem in list(self.entries):
            kept = [e for e in self.entries[problem] if step - e.step <= self.max_age]
            if kept:
                self.entries[problem] = kept
            else:
                del self.entries[problem]

    def _evict_over_capacity(self) -> None:
        if not self.capacity:
            return
        excess = len(self) - self.capacity
        if excess <= 0:
            return
        oldest = sorted((e.seq, p) for p, es in self.entries.items() for e in es)[:excess]
        drop: dict[str, set[int]] = {}
        for seq, p in oldest:
            drop.setdefault(p, set()).add(seq)
        for p, seqs in drop.items():
            kept = [e for e in self.entries[p] if e.seq not in seqs]
            if kept:
                self.entries[p] = kept
            else:
                del self.entries[p]

    # ------------------------------------------------------------------ sampling
    def sample(self, problem: str, k: int, rng: np.random.Generator, *,
               step: int | None = None) -> list[Entry]:
        """min(k, stored) summaries of `problem`, uniformly without replacement.

        With `step` given, summaries older than `max_age` are dropped first.
        Returns [] for a problem not in the buffer (its chain starts from "").
        """
        if step is not None:
            self.expire(step)
        stored = self.entries.get(problem, [])
        if not stored or k <= 0:
            return []
        pick = rng.choice(len(stored), size=min(k, len(stored)), replace=False)
        return [stored[i] for i in sorted(pick)]

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "seq": self._seq,
                "entries": {p: [dataclasses.asdict(e) for e in es]
                            for p, es in self.entries.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> "SummaryReplayBuffer":
        self.entries = {p: [Entry(**e) for e in es] for p, es in state["entries"].items()}
        self._seq = int(state.get("seq", len(self)))
        return self

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.state_dict()))
        tmp.replace(path)
        return path

    def load(self, path: str | Path, step: int = 0) -> "SummaryReplayBuffer":
        """Loads a buffer saved by `save`, the authors' saved buffer (a JSON list of
        per-problem objects) or the compact layout (see the module docstring). The authors' summaries get
        training step `step` and no token ids (they are re-encoded when used); their
        `problem_id` / `prompt_id` / `sample_id` / `label` are not needed (entries are
        keyed by problem text, as theirs are). A problem with an empty list is skipped
        (its chains start from the empty summary)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"replay buffer file {path}: cannot read ({e})") from None
        if isinstance(data, dict) and data.get("version") == 1 and "entries" in data:
            return self.load_state_dict(data)
        if isinstance(data, dict):  # compact layout {problem: {summaries, starting_steps}}
            data = [dict(value, problem=problem) if isinstance(value, dict) else value
                    for problem, value in data.items()]
        if not isinstance(data, list):
            raise ValueError(f"replay buffer file {path}: expected a buffer saved by rc_jax "
                             "or the authors' JSON list of per-problem objects")
        self.entries, self._seq = {}, 0
        for n, item in enumerate(data):
            where = f"replay buffer file {path}: item {n}"
            if not isinstance(item, dict) or not isinstance(item.get("problem"), str):
                raise ValueError(f"{where}: expected an object with a 'problem' string")
            key = "summaries" if "summaries" in item else "reasoning_traces"
            texts = item.get(key)
            if not isinstance(texts, list):
                raise ValueError(f"{where} ({item['problem'][:40]!r}) has no 'summaries' "
                                 "(or 'reasoning_traces') list")
            depths = item.get("starting_steps")
            if not isinstance(depths, list) or len(depths) != len(texts):
                raise ValueError(f"{where} ({item['problem'][:40]!r}): {len(texts)} {key} "
                                 f"but starting_steps is {depths!r:.60}")
            for text, depth in zip(texts, depths):
                self._seq += 1
                self.entries.setdefault(item["problem"], []).append(
                    Entry(str(text), int(depth), step, None, self._seq))
        self._evict_over_capacity()
        return self
