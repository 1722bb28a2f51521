"""Length-aware CPU decode: time per decode step against how much of the cache is filled.

The sampler benchmark's ~100M model (hidden 768, 12 layers, 12 heads / 4 kv heads),
random weights, batch 8, decoding on the CPU decode form (packed weights, per-layer
cache; what `generate` and the RC engine run on CPU) with a per-row write index (the RC
engine's layout). Two implementations of that form, measured in the same process:

  segmented  the cache split into doubling segments (0-512, 512-1024, 1024-2048, ...;
             `attention.decode_segments`); a step skips the segments no row has reached.
  one        one segment per layer (`DECODE_FIRST_SEGMENT` set past the bucket): dense
             over the whole bucket, the form every CPU decode step used before.

Cases: a 16384-slot bucket with 480 and 15000 slots filled in every row, and a 512-slot
bucket with 480 filled (the cost of a short context in a bucket that fits it; 480 so that
the timed steps stay inside the first 512 slots). Each case is compiled once, then timed
in interleaved rounds: ms/step = (t(n) - t(1)) / (n - 1) for one jitted loop of n decode
steps, so compile, dispatch and the first step drop out.

Goals (issue 20): segmented 16k@480 <= 0.35 x segmented 16k@15000, and segmented 16k@480
within 10% of the 512-slot bucket at 480.

  python benchmarks/decode_length.py            # ~5 minutes on 2 cores, 8 GB of memory
  python benchmarks/decode_length.py --quick    # tiny model, 2048-slot bucket (smoke test)
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sampler import FULL, QUICK, machine_facts  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "decode_length.json"


def make_runner(params, config, batch: int, bucket: int, fill: int):
    """(run(n) -> seconds for n decode steps, segments) on a cache with `fill` slots
    filled in every row; the decode form is built with the current
    `attention.DECODE_FIRST_SEGMENT`. params: stacked or already packed (used as they are,
    so runners given the same packed weights share them)."""
    from rc_jax.models import forward, qwen3
    packed = qwen3.pack_for_decode(params, config)
    cache = qwen3.init_cache(config, batch, bucket)
    # Random keys/values in every slot: a real cache's buffer has been written all over
    # (an all-zero one may sit on the kernel's shared zero page and read far too fast).
    kk, kv = jax.random.split(jax.random.PRNGKey(1))
    cache = cache.replace(k=jax.random.normal(kk, cache.k.shape, cache.k.dtype),
                          v=jax.random.normal(kv, cache.v.shape, cache.v.dtype),
                          valid=jnp.broadcast_to(jnp.arange(bucket) < fill, (batch, bucket)),
                          index=jnp.full((batch,), fill, jnp.int32))
    # A fresh function: jax.jit(qwen3.unstack_cache) would reuse the program traced for
    # the same shapes under the other DECODE_FIRST_SEGMENT.
    cache = jax.jit(lambda c: qwen3.unstack_cache(c))(cache)
    segments = [x.shape[-1] for x in cache.k[0]]

    start = jnp.full((batch,), fill, jnp.int32)

    # The cache is donated and handed back, so no call copies it (a non-donated input
    # that the loop updates is copied whole first: GBs here), and every call starts
    # again at `fill` (it rewrites the same slots).
    @functools.partial(jax.jit, donate_argnums=1)
    def steps(packed, cache, n):
        def body(_, carry):
            cache, tok = carry
            logits, cache = forward(packed, config, tok, cache.index[:, None], cache)
            return cache, jnp.argmax(logits[:, -1], -1).astype(jnp.int32)[:, None]
        tok = jnp.ones((batch, 1), jnp.int32)
        cache, tok = jax.lax.fori_loop(0, n, body, (cache.replace(index=start), tok))
        return cache, tok

    state = {"cache": cache}

    def call(n: int) -> jax.Array:
        state["cache"], tok = steps(packed, state["cache"], n)
        return tok

    return timer(call), segments


def timer(call):
    """run(n) -> seconds of call(n) (an n-step jitted loop returning an array), after
    one call that compiles it (n is traced: one program)."""
    def run(n: int) -> float:
        t = time.perf_counter()
        call(n).block_until_ready()
        return time.perf_counter() - t
    run(1)
    return run


def time_rounds(runners: dict, rounds: int, steps: int) -> dict:
    """ms/step of every runner (run(n) -> seconds): one untimed round (a runner's first
    calls can still be slow), then `rounds` rounds, the order reversed every other round,
    each giving (t(steps) - t(1)) / (steps - 1), so compile, dispatch and the first step
    drop out."""
    for run in runners.values():
        run(1), run(steps)
    times: dict = {name: [] for name in runners}
    for r in range(rounds):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            t1, tn = runners[name](1), runners[name](steps)
            times[name].append(1e3 * (tn - t1) / (steps - 1))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=17, help="n of the timed loop")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from rc_jax.models import attention, init_params, qwen3
    from rc_jax.models.config import ModelConfig

    config = ModelConfig(**(QUICK if args.quick else FULL))
    batch = 2 if args.quick else 8
    big, small = (2048, 512) if args.quick else (16384, 512)
    # 480 + the timed steps stays inside the first 512 slots.
    short, long_ = (480, 2000) if args.quick else (480, 15000)
    # Packed once: make_runner uses packed weights as they are, so the runners share them.
    params = qwen3.pack_for_decode(init_params(config, jax.random.PRNGKey(0)), config)
    cases = [("segmented", big, short), ("segmented", big, long_), ("segmented", small, short),
             ("one", big, short), ("one", big, long_)]
    facts = machine_facts()
    print(f"model {config.num_params / 1e6:.0f}M params, batch {batch}; {facts['cpu_model']}, "
          f"{facts['cpu_affinity']} cores")
    default_first = attention.DECODE_FIRST_SEGMENT
    runners, segments = {}, {}
    for impl, bucket, fill in cases:
        attention.DECODE_FIRST_SEGMENT = default_first if impl == "segmented" else 1 << 30
        runners[impl, bucket, fill], segments[impl, bucket, fill] = make_runner(
            params, config, batch, bucket, fill)
    attention.DECODE_FIRST_SEGMENT = default_first

    times = time_rounds(runners, args.rounds, args.steps)
    rows = []
    for (impl, bucket, fill), ms in times.items():
        rows.append({"impl": impl, "bucket": bucket, "fill": fill,
                     "segments": segments[impl, bucket, fill],
                     "ms_per_step_median": statistics.median(ms), "ms_per_step_rounds": ms})
        print(f"{impl:9s} bucket {bucket:6d} fill {fill:6d}: "
              f"{statistics.median(ms):8.2f} ms/step  (rounds {', '.join(f'{x:.1f}' for x in ms)})")

    def med(*case):
        return statistics.median(times[case])
    ratios = {
        "segmented_short_over_long": med("segmented", big, short) / med("segmented", big, long_),
        "segmented_short_over_small_bucket": med("segmented", big, short)
        / med("segmented", small, short),
        "one_short_over_long": med("one", big, short) / med("one", big, long_),
        "segmented_long_over_one_long": med("segmented", big, long_) / med("one", big, long_),
    }
    goals = {"short_over_long_le_0.35": ratios["segmented_short_over_long"] <= 0.35,
             "short_within_10pct_of_small_bucket":
                 ratios["segmented_short_over_small_bucket"] <= 1.10}
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    print("goals:", goals)
    report = {"model": {k: getattr(config, k) for k in ("num_layers", "hidden_size",
                                                        "num_heads", "num_kv_heads",
                                                        "head_dim")},
              "batch": batch, "steps": args.steps, "rounds": args.rounds, "quick": args.quick,
              "rows": rows, "ratios": ratios, "goals": goals, "machine": facts,
              "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]
              if Path("/proc/loadavg").exists() else None}
    out = Path(args.out) if args.out else OUT.with_name(
        "decode_length_quick.json" if args.quick else OUT.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
