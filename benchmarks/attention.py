"""Attention implementations: forward+backward of one decoder layer, dense vs blockwise.

    python benchmarks/attention.py [--lengths 2048 8192 16384] [--repeats 2]

One Qwen3 decoder layer shaped like the sampler benchmark's ~100M model (hidden 768,
12 query / 4 kv heads, head_dim 64, MLP 2048; a 512-token vocabulary so the logits stay
negligible), batch 1, float32, a causal mask over S tokens (no cache: C = S). For each
S and implementation the jitted value-and-gradient (w.r.t. all parameters) of a scalar
loss is compiled once; its peak temporary memory is XLA's `memory_analysis()`
(temp_size_in_bytes: everything the program allocates besides arguments and outputs).
It is timed (best of `--repeats` runs after a warm-up) only where that memory fits in
`--max-run-gib`. Results: results/attention.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from rc_jax.models import ModelConfig, forward, init_params
from rc_jax.models import attention as attn

LAYER = dict(model_type="qwen3", vocab_size=512, hidden_size=768, intermediate_size=2048,
             num_layers=1, num_heads=12, num_kv_heads=4, head_dim=64, tie_word_embeddings=True)


def step_fn(config: ModelConfig):
    def loss(params, tokens, positions):
        logits, _ = forward(params, config, tokens, positions)
        return jnp.mean(jnp.square(logits))

    return jax.jit(jax.value_and_grad(loss))


def measure(impl: str, s: int, repeats: int, max_run_bytes: int) -> dict:
    config = ModelConfig(**LAYER, attention=impl)
    params = init_params(config, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, s), 0, config.vocab_size)
    positions = jnp.arange(s)[None]
    fn = step_fn(config)
    t0 = time.perf_counter()
    compiled = fn.lower(params, tokens, positions).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    row = {"impl": impl, "S": s, "temp_bytes": int(mem.temp_size_in_bytes),
           "temp_gib": mem.temp_size_in_bytes / 2**30, "compile_s": round(compile_s, 2)}
    if mem.temp_size_in_bytes > max_run_bytes:
        row["time_s"] = None
        row["note"] = f"not run: needs more than --max-run-gib {max_run_bytes / 2**30:g}"
        return row
    jax.block_until_ready(compiled(params, tokens, positions))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, tokens, positions))
        times.append(time.perf_counter() - t0)
    row["time_s"] = round(min(times), 3)
    row["times_s"] = [round(t, 3) for t in times]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384])
    ap.add_argument("--impls", nargs="+", default=["dense", "blockwise"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-run-gib", type=float, default=12.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention.json"))
    args = ap.parse_args()
    rows = []
    for s in args.lengths:
        for impl in args.impls:
            row = measure(impl, s, args.repeats, int(args.max_run_gib * 2**30))
            rows.append(row)
            t = "-" if row["time_s"] is None else f"{row['time_s']:.2f} s"
            print(f"S={s:6d} {impl:10s} temp {row['temp_gib']:8.3f} GiB  time {t}", flush=True)
    summary = {}
    for s in args.lengths:
        by = {r["impl"]: r for r in rows if r["S"] == s}
        if "dense" in by and "blockwise" in by:
            d, b = by["dense"], by["blockwise"]
            summary[s] = {"memory_ratio": b["temp_bytes"] / d["temp_bytes"],
                          "time_ratio": (b["time_s"] / d["time_s"]
                                         if d["time_s"] and b["time_s"] else None)}
            print(f"S={s}: blockwise/dense temp memory {summary[s]['memory_ratio']:.4f}, "
                  f"time {summary[s]['time_ratio']}")
    result = {"layer": LAYER, "batch": 1, "dtype": "float32",
              "blocks": {"q": attn.DEFAULT_BLOCK_Q, "k": attn.DEFAULT_BLOCK_K},
              "jax": jax.__version__, "backend": jax.default_backend(),
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} CPUs",
              "load_average_at_end": os.getloadavg(), "rows": rows, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
