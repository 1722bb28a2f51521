"""Results files: append one JSON line per finished (problem, sample), resume from them.

Lines are flushed and fsync'ed as they are written, so a crash loses at most the batch in
flight; a partial last line (the crash happened mid-write) is cut off on resume.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


class ResultsFile:
    """`<output_dir>/results.jsonl` plus `config.json` describing the run."""

    def __init__(self, output_dir: str | Path, config_json: dict[str, Any], config_hash: str):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "results.jsonl"
        self.config_hash = config_hash
        self.done: set[tuple[str, int]] = set()
        self._check_config(config_json)
        self._recover()

    def _check_config(self, config_json: dict[str, Any]) -> None:
        file = self.dir / "config.json"
        if file.exists() and self.path.exists() and self.path.stat().st_size:
            old = json.loads(file.read_text())
            if old.get("config_hash") != self.config_hash:
                raise ValueError(
                    f"{self.dir} holds results of a different configuration (hash "
                    f"{old.get('config_hash')} vs {self.config_hash}); use another "
                    "output_dir or delete the old results")
        file.write_text(json.dumps({"config_hash": self.config_hash, "config": config_json},
                                   indent=2))

    def _recover(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good = raw.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if good < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        for n, line in enumerate(raw[:good].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{n}: not valid JSON ({e})") from None
            self.done.add((str(rec["problem_id"]), int(rec["sample_id"])))

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                self.done.add((str(rec["problem_id"]), int(rec["sample_id"])))
            f.flush()
            os.fsync(f.fileno())
