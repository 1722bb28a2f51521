"""Continuous batching vs lockstep in the RC engine: useful tokens per second and slot use.

Same weights, same jobs, same run; the two schedules give identical rollouts (checked
here), so the only difference is time. Two workloads:

* synthetic: a random Qwen3-shaped model whose stop set is a slice of the vocabulary,
  so phase lengths are roughly geometric with a mean of about half the budget (the
  measured mean is reported);
* smollm2: SmolLM2-135M-Instruct (the demo model) on the demo problems with its real
  stop tokens at temperature 0.6 (skipped with a note when the model is unavailable).

Slot utilization = useful token-steps / slot-steps (a slot-step is one slot in one
decode iteration). Results: benchmarks/results/rc_throughput.{json,png}.

    python benchmarks/rc_throughput.py [--quick] [--skip_smollm2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rc_horizon import _cpu, _params  # noqa: E402  (the RC benchmarks' shared helpers)
from rc_jax.models import ModelConfig  # noqa: E402
from rc_jax.rc.engine import Job, RCEngine, RCSettings  # noqa: E402
from rc_jax.sampling.keys import row_key  # noqa: E402
from rc_jax.sampling import SamplingParams  # noqa: E402
from rc_jax.sampling.generate import Buckets  # noqa: E402
from rc_jax.tools.tiny_tokenizer import build_tiny_tokenizer  # noqa: E402
from rc_jax.tokenizer import load_tokenizer  # noqa: E402

OUT = Path(__file__).parent / "results"


def compare(name, config, params, tok, settings, sampling, problems, samples, slots,
            stop_ids=None, buckets=Buckets(), margin=1 / 16, repeats=2):
    """Runs both schedules (after a warm-up of each), `repeats` times interleaved, and
    returns one result row with each schedule's best wall time (this machine's timings
    vary by ~15% from run to run; the best of several is the least disturbed)."""
    jobs = [Job(p, row_key(0, p, j), settings.num_steps) for p in problems
            for j in range(samples)]
    row = {"workload": name, "slots": slots, "rollouts": len(jobs),
           "steps": settings.num_steps, "H_R": settings.max_reasoning_tokens,
           "H_S": settings.max_summary_tokens}
    results, engines, walls = {}, {}, {"lockstep": [], "continuous": []}
    for scheduling in walls:
        engines[scheduling] = RCEngine(config, tok, settings, sampling, slots=slots,
                                       scheduling=scheduling, stop_ids=stop_ids,
                                       buckets=buckets, prompt_margin=margin)
        engines[scheduling].run(params, jobs[:slots])  # compile, warm up (program shared)
    for _ in range(repeats):
        for scheduling, engine in engines.items():
            t0 = time.perf_counter()
            rollouts, stats = engine.run(params, jobs)
            walls[scheduling].append(time.perf_counter() - t0)
            results[scheduling] = rollouts
            wall = min(walls[scheduling])
            tokens = sum(sum(r.record.reasoning_tokens) + sum(r.record.summary_tokens)
                         for r in rollouts)
            row[scheduling] = {"seconds": wall, "all_seconds": walls[scheduling],
                               "useful_tokens": tokens, "useful_tokens_per_s": tokens / wall,
                               "utilization": stats.utilization,
                               "decode_iterations": stats.decode_steps[0],
                               "host_callbacks": stats.services}
            print(f"{name} {scheduling:>10}: {walls[scheduling][-1]:7.2f}s, {tokens} tokens, "
                  f"{tokens / walls[scheduling][-1]:7.1f} tok/s, utilization "
                  f"{stats.utilization:.3f}, {stats.services} callbacks", flush=True)
    same = all(a.record == b.record for a, b in zip(results["lockstep"], results["continuous"]))
    lengths = [n for r in results["continuous"] for n in r.record.reasoning_tokens]
    row["identical_rollouts"] = same
    row["mean_reasoning_tokens"] = float(np.mean(lengths))
    row["continuous_over_lockstep"] = (row["continuous"]["useful_tokens_per_s"]
                                       / row["lockstep"]["useful_tokens_per_s"])
    print(f"{name}: continuous / lockstep = {row['continuous_over_lockstep']:.2f}x, "
          f"identical rollouts: {same}, mean reasoning length {row['mean_reasoning_tokens']:.1f}"
          f" of {settings.max_reasoning_tokens}")
    return row


def synthetic(quick: bool, repeats: int, long: bool = False) -> dict:
    """`long=False`: short budgets (H_R 128) under 300-700-token prompts, so prefill
    dominates on CPU; `long=True`: H_R 1024, so decode dominates as at the paper's budgets
    (H_R 16k under prompts of at most a few thousand tokens)."""
    config = ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=256,
                         intermediate_size=768, num_layers=4, num_heads=8, num_kv_heads=4,
                         head_dim=32)
    tok = load_tokenizer(build_tiny_tokenizer(tempfile.mkdtemp(), 512))
    if quick:
        h_r, h_s, steps, problems, samples = 32, 8, 2, 4, 2
    elif long:
        h_r, h_s, steps, problems, samples = 1024, 32, 2, 12, 16
    else:
        h_r, h_s, steps, problems, samples = 128, 32, 3, 16, 8
    settings = RCSettings(num_steps=steps, max_reasoning_tokens=h_r, max_summary_tokens=h_s)
    # Near-uniform next-token distribution: k stop ids end a phase with chance ~k/V per
    # token, i.e. geometric lengths with mean ~V/k; V/k = H_R/2 gives "mean half the budget".
    k = max(1, round(2 * config.vocab_size / h_r))
    stops = list(range(100, 100 + k))
    texts = [f"Compute {i} * {i + 3} and explain." for i in range(problems)]
    return compare("synthetic_long" if long else "synthetic", config, _params(config), tok,
                   settings, SamplingParams(temperature=1.0), texts, samples,
                   4 if quick else 16,
                   stop_ids=stops, margin=3.0,  # random weights: see text_bound
                   repeats=repeats)


def smollm2(quick: bool, repeats: int) -> dict | None:
    from rc_jax.data import demo_problems_path, load_problems
    from rc_jax.models import load_hf_checkpoint
    from rc_jax.tools.prepare_demo_model import DemoModelUnavailableError, ensure_demo_model
    try:
        path = ensure_demo_model()
    except DemoModelUnavailableError as e:
        print(f"smollm2: skipped ({e})")
        return None
    config, params = load_hf_checkpoint(path)
    tok = load_tokenizer(path)
    problems = [p.problem for p in load_problems(str(demo_problems_path()))][:2 if quick else 8]
    settings = RCSettings(num_steps=2, max_reasoning_tokens=32 if quick else 160,
                          max_summary_tokens=16 if quick else 64)
    return compare("smollm2", config, params, tok, settings,
                   SamplingParams(temperature=0.6), problems, 2, 4 if quick else 8,
                   repeats=repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--skip_smollm2", action="store_true")
    ap.add_argument("--skip_short", action="store_true", help="skip the H_R 128 synthetic row")
    ap.add_argument("--skip_long", action="store_true", help="skip the H_R 1024 synthetic row")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed runs per schedule, interleaved; the best is reported")
    ap.add_argument("--out_dir", default=str(OUT))
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    rows = [] if args.skip_short else [synthetic(args.quick, repeats)]
    if not (args.quick or args.skip_long):
        rows.append(synthetic(False, repeats, long=True))
    if not args.skip_smollm2:
        row = smollm2(args.quick, repeats)
        if row is not None:
            rows.append(row)
    result = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(),
                          "platform": platform.platform(), "jax": jax.__version__,
                          "device": str(jax.devices()[0])},
              "quick": args.quick, "rows": rows,
              "goal": "synthetic, 16 slots: continuous utilization >= 0.9 and >= 1.5x "
                      "lockstep useful tokens/s"}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "rc_throughput_quick" if args.quick else "rc_throughput"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    _plot(rows, out / f"{name}.png")


def _plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["workload"] for r in rows]
    x = np.arange(len(rows))
    for ax, key, label in ((axes[0], "useful_tokens_per_s", "useful tokens / s"),
                           (axes[1], "utilization", "slot utilization")):
        for off, sched in ((-0.2, "lockstep"), (0.2, "continuous")):
            ax.bar(x + off, [r[sched][key] for r in rows], 0.4, label=sched)
        ax.set_xticks(x, names)
        ax.set_ylabel(label)
    axes[1].set_ylim(0, 1)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
