"""int8 vs float32 weights: RC accuracy of a model that solves its task (issue 21 item 3).

The demo model (SmolLM2-135M) reaches no final answers on the demo problems, so its eval
accuracy is 0 with either weight format and cannot tell them apart (benchmarks/README.md).
The toy model (docs/toy.md) does solve its task, so here it is the model under test:

  1. SFT of the toy's base variant (`experiments.toy.pipeline.train_or_load_sft`; reused
     from <work_dir>/sft when its settings match). `--sft_stop_step` stops SFT early, for a
     model that still makes mistakes (a near-perfect model hides small differences).
  2. RC decoding (the project's `RCEngine`, T = 1..t_eval steps, temperature 1, the toy's
     prompts) of the toy's evaluation problems, with the float32 weights and with the
     same weights quantized at load (`model.quantization = int8`, `quantize_params`),
     the same per-row sampling keys on both sides (a paired comparison).
  3. Exact-match grading (`rc_jax.eval.grading.StringMatchGrader`, the toy's grader) of
     every step's answer: accuracy at every T for both, the paired difference int8 - fp32
     with its standard error, and how many (rollout, step) texts are identical.

    python benchmarks/int8_accuracy.py                      # ~15-25 min on 2 cores
    python benchmarks/int8_accuracy.py --sft_stop_step 600  # a weaker model
    python benchmarks/int8_accuracy.py --smoke              # tiny sizes (a minute)

Writes benchmarks/results/int8_accuracy.json (--out to change).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from experiments.toy import evaluate, pipeline, task  # noqa: E402
from experiments.toy.tokenizer import build_toy_tokenizer  # noqa: E402
from rc_jax.data import Problem  # noqa: E402
from rc_jax.models.quant import quantize_params  # noqa: E402
from rc_jax.rc.engine import RCEngine, RCSettings  # noqa: E402
from rc_jax.sampling import Buckets, SamplingParams  # noqa: E402
from rc_jax.tokenizer import load_tokenizer  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "int8_accuracy.json"


def accuracy(graded: dict, step: int) -> float:
    return float(np.mean([g[step - 1] for g in graded.values()]))


def same_texts(a: list[dict], b: list[dict]) -> dict[str, int]:
    """(rollout, step) pairs whose raw reasoning and summary texts are identical, of those
    both sides have (rollouts are in the same order on both)."""
    same = total = 0
    for ra, rb in zip(a, b):
        steps = zip(ra["reasoning_store"], rb["reasoning_store"], ra["summarization_store"],
                    rb["summarization_store"])
        for reason_a, reason_b, summary_a, summary_b in steps:
            total += 1
            same += reason_a == reason_b and summary_a == summary_b
    return {"identical": same, "pairs": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (smoke run)")
    ap.add_argument("--sft_stop_step", type=int, default=None)
    ap.add_argument("--work_dir", default=None)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    s = pipeline.SMOKE if args.smoke else pipeline.Settings()
    if args.sft_stop_step is not None:
        s = dataclasses.replace(s, sft_stop_step=args.sft_stop_step)
    work_dir = Path(args.work_dir or ROOT / "outputs" / ("toy_int8_smoke" if args.smoke
                                                         else "toy_int8"))
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    tok_dir = build_toy_tokenizer(work_dir / "tokenizer")
    tokenizer = load_tokenizer(tok_dir)
    rng = np.random.default_rng([s.seed, 0])  # the toy's own evaluation problems
    records = task.problem_records(task.sample_problems(
        rng, s.eval_per_ops * (s.eval_max_ops - s.eval_min_ops + 1), s.eval_min_ops,
        s.eval_max_ops), "eval")
    problems = [Problem(r["problem_id"], r["problem"], r["answer"]) for r in records]
    config, params, history = pipeline.train_or_load_sft(s, work_dir, tokenizer, tok_dir,
                                                         reuse_sft=True)
    sft_s = time.perf_counter() - start

    settings = RCSettings(num_steps=s.t_eval, max_reasoning_tokens=s.max_reasoning_tokens,
                          max_summary_tokens=s.max_summary_tokens,
                          reasoning_template=str(pipeline.REASONING_TEMPLATE),
                          summary_template=str(pipeline.SUMMARY_TEMPLATE))
    sampling = SamplingParams(temperature=s.temperature)
    buckets = Buckets(min_prompt=16, min_new_tokens=8, max_cache_length=4096)
    out_records, graded, wall = {}, {}, {}
    for name, cfg, p in (("fp32", config, params),
                         ("int8", config.replace(quantization="int8"), quantize_params(params))):
        engine = RCEngine(cfg, tokenizer, settings, sampling, slots=s.eval_batch,
                          buckets=buckets)
        t = time.perf_counter()
        out_records[name] = evaluate.rc_records(engine, p, problems,
                                                num_samples=s.eval_samples,
                                                num_steps=s.t_eval, seed=s.seed + 1000,
                                                method=f"RC, {name} weights")
        wall[name] = time.perf_counter() - t
        graded[name] = evaluate.graded_by_record(out_records[name])

    steps = list(range(1, s.t_eval + 1))
    result = {
        "benchmark": "int8_accuracy",
        "command": "python benchmarks/int8_accuracy.py" + (" --smoke" if args.smoke else "")
                   + (f" --sft_stop_step {args.sft_stop_step}"
                      if args.sft_stop_step is not None else ""),
        "settings": dataclasses.asdict(s),
        "model": {"num_params": config.num_params, "hidden": s.hidden, "layers": s.layers},
        "sft_final_loss": history[-1] if history else None,
        "problems": len(problems), "samples": s.eval_samples,
        "accuracy": {name: {t: accuracy(g, t) for t in steps} for name, g in graded.items()},
        "int8_minus_fp32": {t: evaluate.paired_difference(graded["int8"], graded["fp32"], t)
                            for t in steps},
        "identical_step_texts": same_texts(out_records["fp32"], out_records["int8"]),
        "wall_s": {"sft_or_load": sft_s, **wall},
        "cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
    }
    print(f"{len(problems)} problems x {s.eval_samples} samples, T = 1..{s.t_eval}")
    for t in steps:
        d = result["int8_minus_fp32"][t]
        print(f"T={t}: fp32 {result['accuracy']['fp32'][t]:.3f}  int8 "
              f"{result['accuracy']['int8'][t]:.3f}  int8 - fp32 {d['difference']:+.3f} "
              f"(se {d['stderr']:.3f}; int8 only {d['a_only']}, fp32 only {d['b_only']})")
    ident = result["identical_step_texts"]
    print(f"identical (rollout, step) texts: {ident['identical']} / {ident['pairs']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
