"""Where a CPU decode step of a deep, narrow model spends its time (issue 21, item 2).

SmolLM2-135M's shapes (30 layers, hidden 576, 9/3 heads, MLP 1536, vocabulary 49152, tied
embeddings; random weights, float32: 538 MB), batch 1 (`--batch`), the CPU decode form that `generate`
runs (packed weights, per-layer cache), 128 of a 384-slot cache filled (`peers.py`'s
prompt 128 + 256 new tokens). Measured in one
process, each compiled once and timed in interleaved rounds as ms/step = (t(n) - t(1)) /
(n - 1) of one jitted n-step loop:

  step          the decode step as rc_jax runs it.
  no_attention  the same step with `attention.decode_attention` replaced by a pass-through
                (no cache read or write): what attention over the cache costs.
  bucket_B      the step with a B-slot cache (256, 512, 1024): attention against cache size.
  dot_floor     the step's weight matmuls alone, as the step computes them
                (`qwen3.project_t`: rc_jax's CPU kernel, `cpu_kernels`): per layer the
                four products of the packed weights (q|k|v, o, gate|up, down) with the
                cheapest glue that keeps their order, then the tied head.
  xla_dot_floor the same with XLA:CPU's own dot (`dense_t`), as decode ran before the
                kernel.
  one_dot       one matrix-vector product over a matrix of the model's total weight
                bytes: the read bandwidth one large XLA:CPU dot reaches.

Bandwidths: the repository's roofline (bytes read per step over numpy-copy bandwidth,
read + write counted, as `sampler.py` and `peers.py` use) and `one_dot`'s.

`--trace` adds a per-op profile of `step` from XLA:CPU's own trace events (a subprocess
with `--xla_cpu_enable_xprof_traceme=true`, read back with `jax.profiler.ProfileData`):
microseconds per step by op, dots by output shape.

  python benchmarks/decode_profile.py [--trace]   # ~4 minutes on 2 cores
  python benchmarks/decode_profile.py --quick      # tiny shapes (smoke test)
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from decode_length import make_runner, time_rounds, timer  # noqa: E402
from sampler import copy_bandwidth, machine_facts  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "decode_profile.json"
# SmolLM2-135M-Instruct's config.json, as rc_jax reads it (the demo model).
SMOLLM2 = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
               num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True, qk_norm=False)
QUICK = dict(SMOLLM2, vocab_size=4096, hidden_size=128, intermediate_size=384, num_layers=4,
             num_heads=4, num_kv_heads=2, head_dim=32)
# peers.py's workload: prompt 128 + 256 new tokens = a 384-slot cache; its first steps.
BUCKET, FILL = 384, 128
OTHER_BUCKETS = (256, 512, 1024)


def _pass_through(q, keys, values, mask, kv_heads, new=None):
    b, s, h, d = q.shape
    return q.reshape(b, s, h * d), keys, values


def dot_floor_runner(packed, config, matmul, batch: int):
    """run(n) for n steps of the packed weights' matmuls alone (`batch` rows), each computed
    by `matmul(x, w_t)`."""
    e, i, h, d = config.hidden_size, config.intermediate_size, config.num_heads, config.head_dim
    layers = [packed["layers"][str(j)] for j in range(config.num_layers)]

    @jax.jit
    def steps(layers, embedding, x, n):
        def body(_, x):
            for p in layers:
                qkv = matmul(x, p["attn"]["qkv_t"])
                x = x + matmul(qkv[..., :h * d] * qkv[..., -1:], p["attn"]["o_t"])
                gu = matmul(x, p["mlp"]["gate_up_t"])
                x = x + matmul(gu[..., :i] * gu[..., i:], p["mlp"]["down_t"])
            logits = matmul(x, embedding)
            return x + 1e-6 * jnp.max(logits)  # the head feeds the next step
        return jax.lax.fori_loop(0, n, body, x)

    x = jnp.ones((batch, e), jnp.float32)
    return timer(lambda n: steps(layers, packed["embedding"], x, n))


def one_dot_runner(nbytes: int, cols: int):
    w = jax.random.normal(jax.random.PRNGKey(3), (nbytes // (4 * cols), cols), jnp.float32)

    @jax.jit
    def steps(w, x, n):
        return jax.lax.fori_loop(0, n, lambda _, x: x + 1e-6 * jnp.max(w @ x), x)

    x = jnp.ones((cols,), jnp.float32)
    return timer(lambda n: steps(w, x, n)), w.nbytes


def measure(config, rounds: int, steps: int, batch: int) -> dict:
    from rc_jax.models import init_params, qwen3
    params = init_params(config, jax.random.PRNGKey(0))
    packed = qwen3.pack_for_decode(params, config)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(packed))
    # The filled slots' keys and values, read once per step (float32).
    kv_bytes = 2 * config.num_layers * config.num_kv_heads * config.head_dim * FILL * 4 * batch
    # make_runner packs what it is given: packed weights are used as they are (one copy).
    runners = {"step": make_runner(packed, config, batch, BUCKET, FILL)[0]}
    for bucket in OTHER_BUCKETS:
        runners[f"bucket_{bucket}"] = make_runner(packed, config, batch, bucket, FILL)[0]
    saved = qwen3.decode_attention
    qwen3.decode_attention = _pass_through
    try:
        # make_runner traces a fresh function, so this one sees the pass-through. No
        # jax.clear_caches() here: it would drop the other runners' programs, and their
        # next call would be traced again (after the restore) and compiled inside a timing.
        runners["no_attention"] = make_runner(packed, config, batch, BUCKET, FILL)[0]
    finally:
        qwen3.decode_attention = saved
    runners["dot_floor"] = dot_floor_runner(
        packed, config, lambda x, w: qwen3.project_t(x, w, jnp.float32), batch)
    runners["xla_dot_floor"] = dot_floor_runner(packed, config, qwen3.dense_t, batch)
    runners["one_dot"], one_dot_bytes = one_dot_runner(weight_bytes, config.hidden_size)

    times = time_rounds(runners, rounds, steps)
    med = {name: statistics.median(ms) for name, ms in times.items()}
    return {"weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "one_dot_bytes": one_dot_bytes,
            "ms_per_step_median": med, "ms_per_step_rounds": times}


def trace_profile(quick: bool, batch: int, steps: int = 20) -> dict:
    """Per-op microseconds per step of `step`, from XLA:CPU's trace events (subprocess)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                                          + " --xla_cpu_enable_xprof_traceme=true").strip())
        cmd = [sys.executable, __file__, "--_trace_child", tmp, "--steps", str(steps),
               "--batch", str(batch)]
        if quick:
            cmd.append("--quick")
        subprocess.run(cmd, check=True, env=env)
        return json.loads((Path(tmp) / "ops.json").read_text())


def _trace_child(out_dir: str, quick: bool, steps: int, batch: int) -> None:
    from jax.profiler import ProfileData

    from rc_jax.models import forward, init_params, qwen3
    from rc_jax.models.config import ModelConfig
    config = ModelConfig(**(QUICK if quick else SMOLLM2))
    params = init_params(config, jax.random.PRNGKey(0))
    packed = qwen3.pack_for_decode(params, config)
    cache = qwen3.init_cache(config, batch, BUCKET)
    cache = cache.replace(valid=jnp.broadcast_to(jnp.arange(BUCKET) < FILL, (batch, BUCKET)),
                          index=jnp.int32(FILL))
    cache = qwen3.unstack_cache(cache)

    @functools.partial(jax.jit, donate_argnums=1)
    def step(packed, cache, tok):
        logits, cache = forward(packed, config, tok, jnp.broadcast_to(cache.index, (batch, 1)),
                                cache)
        return cache, jnp.argmax(logits[:, -1], -1).astype(jnp.int32)[:, None]

    tok = jnp.ones((batch, 1), jnp.int32)
    hlo = step.lower(packed, cache, tok).compile().as_text()
    for _ in range(3):
        cache, tok = step(packed, cache, tok)
    tok.block_until_ready()
    jax.profiler.start_trace(out_dir)
    for _ in range(steps):
        cache, tok = step(packed, cache, tok)
    tok.block_until_ready()
    jax.profiler.stop_trace()
    dot_shape = {m.group(1): m.group(2) for m in re.finditer(r"%([\w.-]+) = (\S+) dot\(", hlo)}
    ops: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    (path,) = Path(out_dir).rglob("*.xplane.pb")
    for plane in ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA:CPU's executor threads
                continue
            for ev in line.events:
                if ev.name.startswith(("ThunkExecutor", "ThreadpoolListener", "end: ")):
                    continue
                name = (f"dot -> {dot_shape[ev.name]}" if ev.name in dot_shape
                        else re.sub(r"\.\d+$", "", ev.name))
                ops[name][0] += 1
                ops[name][1] += ev.duration_ns / 1e3
    rows = sorted(({"op": k, "per_step": n / steps, "us_per_step": us / steps,
                    "us_each": us / n} for k, (n, us) in ops.items()),
                  key=lambda r: -r["us_per_step"])
    (Path(out_dir) / "ops.json").write_text(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trace", action="store_true", help="add the per-op profile")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=33, help="n of the timed loop")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: results/decode_profile.json "
                    "(batch 1) or decode_profile_b<batch>.json")
    ap.add_argument("--_trace_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._trace_child:
        return _trace_child(args._trace_child, args.quick, args.steps, args.batch)
    from rc_jax.models.config import ModelConfig

    config = ModelConfig(**(QUICK if args.quick else SMOLLM2))
    facts = machine_facts()
    bandwidth = copy_bandwidth(1 << 28 if args.quick else 1 << 30)
    print(f"{config.num_params / 1e6:.1f}M params, batch {args.batch}, bucket {BUCKET}, fill {FILL}; "
          f"{facts['cpu_model']}, {facts['cpu_affinity']} cores")
    res = measure(config, args.rounds if not args.quick else 2,
                  args.steps if not args.quick else 5, args.batch)
    med = res["ms_per_step_median"]
    copy_gbs = bandwidth["copy_GBps"]
    wb = res["weight_bytes"]
    one_dot_gbs = res["one_dot_bytes"] / med["one_dot"] / 1e6
    derived = {
        "attention_ms": med["step"] - med["no_attention"],
        "attention_ms_by_bucket": {b: med[f"bucket_{b}"] - med["no_attention"]
                                   for b in OTHER_BUCKETS} | {
            BUCKET: med["step"] - med["no_attention"]},
        "rest_ms": med["no_attention"] - med["dot_floor"],
        "dot_floor_over_one_dot": med["dot_floor"] / (med["one_dot"] * wb / res["one_dot_bytes"]),
        "one_dot_gb_per_s": one_dot_gbs,
        "step_gb_per_s": wb / med["step"] / 1e6,
        "dot_floor_gb_per_s": wb / med["dot_floor"] / 1e6,
        "xla_dot_floor_gb_per_s": wb / med["xla_dot_floor"] / 1e6,
    }
    roofline_ms = (wb + res["kv_bytes"]) / copy_gbs / 1e6
    derived |= {"roofline_ms_copy_bandwidth": roofline_ms,
                "step_roofline_fraction": roofline_ms / med["step"],
                "dot_floor_roofline_fraction": roofline_ms / med["dot_floor"]}
    for name, ms in med.items():
        print(f"{name:13s} {ms:8.2f} ms/step  (rounds "
              f"{', '.join(f'{x:.1f}' for x in res['ms_per_step_rounds'][name])})")
    for key, value in derived.items():
        print(f"{key}: {value}")
    report = {"benchmark": "decode_profile", "quick": args.quick, "config": dict(
        QUICK if args.quick else SMOLLM2), "batch": args.batch, "bucket": BUCKET, "fill": FILL,
        "machine": facts, "bandwidth": bandwidth, **res, "derived": derived,
        "loadavg_end": os.getloadavg()}
    if args.trace:
        ops = trace_profile(args.quick, args.batch)
        report["ops"] = ops
        print("per-op (XLA:CPU trace events, us per step):")
        for row in ops[:16]:
            print(f"  {row['us_per_step']:9.1f}  x{row['per_step']:5.1f}  "
                  f"{row['us_each']:8.1f} each  {row['op']}")
    out = Path(args.out) if args.out else (
        OUT if args.batch == 1 else OUT.with_name(f"decode_profile_b{args.batch}.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
