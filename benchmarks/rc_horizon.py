"""RC's cost per token stays flat in the number of steps T; one growing context does not.

Same weights, one run. For T = 1, 2, 4, 8 RC steps (every phase spends its whole budget:
no stop tokens), measure steady-state wall time and the compiled program's memory, and
compare with plain autoregressive generation of the same total number of tokens in one
growing context. The headline ratio is

    RC time(T) / (T x RC time(1))

i.e. RC versus generating the same tokens in fixed-size contexts (T independent single
steps); the goal is <= 1.05. Results: benchmarks/results/rc_horizon.{json,png}.

    python benchmarks/rc_horizon.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import jax  # noqa: E402  (imports below also follow the path setup)
import jax.numpy as jnp
import numpy as np

from rc_jax.models import ModelConfig, param_shapes
from rc_jax.rc.engine import Job, RCEngine, RCSettings
from rc_jax.sampling.keys import row_key
from rc_jax.sampling import SamplingParams, generate
from rc_jax.sampling.generate import Buckets
from rc_jax.tools.tiny_tokenizer import build_tiny_tokenizer
from rc_jax.tokenizer import load_tokenizer

OUT = Path(__file__).parent / "results"


def _params(config: ModelConfig, seed: int = 0):
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.05, s.dtype),
                        param_shapes(config))


def _best_time(fn, repeats: int) -> float:
    fn()  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--out_dir", default=str(OUT), help="where the JSON and PNG go")
    args = ap.parse_args()
    steps = [1, 2] if args.quick else [1, 2, 4, 8]
    h_r, h_s = (32, 16) if args.quick else (256, 64)
    batch, repeats = 4, (1 if args.quick else 2)
    config = ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=256,
                         intermediate_size=768, num_layers=4, num_heads=8, num_kv_heads=4,
                         head_dim=32)
    params = _params(config)
    tok = load_tokenizer(build_tiny_tokenizer(tempfile.mkdtemp(), 512))
    settings = RCSettings(num_steps=1, max_reasoning_tokens=h_r, max_summary_tokens=h_s)
    sampling = SamplingParams(temperature=1.0)
    buckets = Buckets(min_new_tokens=16)
    engine = RCEngine(config, tok, settings, sampling, slots=batch, buckets=buckets,
                      stop_ids=[], prompt_margin=3.0)  # random weights
    problems = [f"Compute {i} * {i + 3} and explain." for i in range(batch)]
    keys = np.stack([row_key(0, str(i), 0) for i in range(batch)])

    rows = []
    for t in steps:
        jobs = [Job(p, k, t) for p, k in zip(problems, keys)]
        run = lambda: engine.run(params, jobs)[0]  # noqa: E731
        secs = _best_time(run, repeats)
        out = run()
        generated = sum(sum(r.record.reasoning_tokens) + sum(r.record.summary_tokens)
                        for r in out)
        rows.append({"steps": t, "rc_seconds": secs, "rc_generated_tokens": generated})
        print(f"RC T={t}: {secs:.2f}s for {generated} generated tokens "
              f"({generated / secs:.0f} tok/s)")
    # One program serves every T: its memory does not depend on T.
    problem_tokens = max(len(tok.encode(p)) for p in problems)
    lowered = engine.lower(params, batch, problem_tokens)
    rc_mem = lowered.compile().memory_analysis()
    rc_bytes = int(rc_mem.temp_size_in_bytes + rc_mem.argument_size_in_bytes)

    # The growing context starts from RC's first prompt (reasoning template, empty
    # summary), so both sides prefill the same instructions and problem.
    first_prompt = engine.prompts.reasoning_ids(problems[0], "", conditioned=False)
    prompt = [first_prompt] * batch
    for row in rows:
        new = row["rc_generated_tokens"] // batch
        run = lambda: generate(params, config, prompt, sampling, jax.random.PRNGKey(0), new,  # noqa: E731
                               [], buckets=Buckets(min_new_tokens=16))
        row["ar_seconds"] = _best_time(run, repeats)
        row["ar_new_tokens_per_row"] = new
        row["ar_prompt_tokens"] = len(first_prompt)
        row["ar_cache_slots"] = buckets.prompt(len(prompt[0])) + buckets.new_tokens(new)
        row["ar_kv_cache_bytes"] = (2 * config.num_layers * batch * row["ar_cache_slots"]
                                    * config.num_kv_heads * config.head_dim * 4)
        row["rc_program_bytes"] = rc_bytes
        print(f"AR same tokens ({new}/row): {row['ar_seconds']:.2f}s")
    base = rows[0]["rc_seconds"]
    # Step 1 starts from the empty summary; later steps carry a summary in both prompts
    # (and random weights' summaries re-encode up to ~3x longer), so they cost more than
    # step 1 for reasons of content, not of the horizon. The marginal figure asks whether
    # every step after the first costs the same as the second.
    second = rows[1]["rc_seconds"] - base if len(rows) > 1 else None
    for row in rows:
        row["rc_over_fixed_contexts"] = row["rc_seconds"] / (row["steps"] * base)
        if second and row["steps"] > 1:
            row["rc_marginal_step_over_step2"] = ((row["rc_seconds"] - base)
                                                  / ((row["steps"] - 1) * second))
        row["rc_seconds_per_token"] = row["rc_seconds"] / row["rc_generated_tokens"]
        row["ar_seconds_per_token"] = row["ar_seconds"] / row["rc_generated_tokens"]
        row["rc_over_ar"] = row["rc_seconds"] / row["ar_seconds"]
    result = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "jax": jax.__version__, "device": str(jax.devices()[0])},
        "model": {"layers": config.num_layers, "hidden": config.hidden_size,
                  "params": config.num_params},
        "batch": batch, "H_R": h_r, "H_S": h_s,
        "rc_shapes": [vars(s) for s in engine.shapes(buckets.prompt(problem_tokens))],
        "quick": args.quick, "rows": rows,
        "goal": "rc_over_fixed_contexts <= 1.05 for every T (steps after the first cost as "
                "much as the second: rc_marginal_step_over_step2 <= 1.05)",
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "rc_horizon_quick" if args.quick else "rc_horizon"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    _plot(rows, out / f"{name}.png")
    print(json.dumps([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                      for r in rows], indent=1))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tokens = [r["rc_generated_tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(tokens, [1e3 * r["rc_seconds_per_token"] for r in rows], "o-", label="RC")
    ax.plot(tokens, [1e3 * r["ar_seconds_per_token"] for r in rows], "s--",
            label="one growing context")
    for r, x in zip(rows, tokens):
        ax.annotate(f"T={r['steps']}", (x, 1e3 * r["rc_seconds_per_token"]),
                    textcoords="offset points", xytext=(0, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("total generated tokens (batch)")
    ax.set_ylabel("ms per generated token")
    ax.set_title("Cost per token vs horizon")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
