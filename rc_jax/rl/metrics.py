"""Per-step training metrics: console progress bar, JSONL file, TensorBoard if present.

The JSONL file (`<output_dir>/metrics.jsonl`, one object per step) is the record of a
run; on resume, lines for steps after the restored checkpoint are dropped so the file
always describes one consistent history. TensorBoard needs `tensorboardX` or TensorFlow
(imported lazily; neither is a dependency); without them only JSONL is written.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

# The metrics the progress bar shows, with short names.
_CONSOLE = (("reward", "reward_mean"), ("kl", "kl"), ("gnorm", "grad_norm"),
            ("zero_adv", "zero_adv_frac"), ("gen_s", "time_generation_s"),
            ("train_s", "time_update_s"))


def _tensorboard_writer(logdir: Path):
    try:
        from tensorboardX import SummaryWriter  # type: ignore
        return SummaryWriter(str(logdir)), "add_scalar"
    except ImportError:
        pass
    try:
        from flax.metrics.tensorboard import SummaryWriter  # needs TensorFlow
        return SummaryWriter(str(logdir)), "scalar"
    except Exception:  # ImportError, or TensorFlow missing underneath
        return None, None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class MetricsLogger:
    """Writes one record per step; `close()` flushes."""

    def __init__(self, output_dir: str | Path, *, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb, self._tb_method, self._bar = None, None, None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        if tensorboard:
            self._tb, self._tb_method = _tensorboard_writer(Path(output_dir) / "tensorboard")
        if progress:
            self._bar = tqdm(total=total_steps, initial=start_step, desc="rct", unit="step")

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                break  # a torn last line from a crash
        self.path.write_text("".join(l + "\n" for l in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    getattr(self._tb, str(self._tb_method))(k, v, step)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({short: f"{metrics[key]:.3g}" for short, key in _CONSOLE
                                   if isinstance(metrics.get(key), (int, float))})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            flush = getattr(self._tb, "flush", None)
            if flush:
                flush()
            self._tb.close()
