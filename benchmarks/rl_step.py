"""RCT training step: where the time goes (tiny CPU run) and per-device memory at the
paper's scale (Qwen3-4B, 1024 sequences of ~18k tokens per step) on TPU slices.

1. Timing. The real `Trainer` on a tiny random Qwen3 (CPU, one device): per step, wall
   time of generation (online chains + group rollouts), reward, old/reference log-prob
   recompute, and the update (gradient accumulation + AdamW). The first step (compiles)
   is reported apart from the steady-state median.

2. Memory. The jitted training programs (`rc_jax.rl.step`) for Qwen3-4B are lowered from
   abstract (`jax.ShapeDtypeStruct`) params on fake CPU devices laid out as a v5p-8
   (4 chips, 95 GiB HBM each) or v4-32 (16 chips, 32 GiB) mesh and compiled;
   `compiled.memory_analysis()` gives each device's argument and temporary bytes. State
   that lives across programs (optimizer moments, the frozen reference) is added from
   the exact shard shapes. Nothing is allocated. Caveat: this is XLA:CPU's buffer
   assignment of the same sharded program; TPU fusion differs (usually lower).

    python benchmarks/rl_step.py [--quick] [--skip-memory] [--skip-timing]

Writes benchmarks/results/rl_step.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=16")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("USE_TORCH", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rc_jax.models import ModelConfig, param_shapes  # noqa: E402
from rc_jax.parallel import make_mesh, param_shardings  # noqa: E402
from rc_jax.rl.step import (MICRO_FIELDS, LossSettings, OptimizerSettings,  # noqa: E402
                            sharding_scope, train_programs)

GIB = 2 ** 30

# Qwen3-4B(-Instruct-2507): config.json of the HF checkpoint.
QWEN3_4B = ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=2560,
                       intermediate_size=9728, num_layers=36, num_heads=32, num_kv_heads=8,
                       head_dim=128, rope_theta=5_000_000.0, tie_word_embeddings=True,
                       dtype="bfloat16", param_dtype="float32", remat_policy="full")

# (slice, devices, HBM per device in GiB, mesh)
MESHES = (("v5p-8", 4, 95, "fsdp:4"), ("v5p-8", 4, 95, "fsdp:1,tensor:4"),
          ("v4-32", 16, 32, "data:4,fsdp:4"), ("v4-32", 16, 32, "fsdp:4,tensor:4"),
          ("v4-32", 16, 32, "fsdp:2,tensor:8"))


# ----------------------------------------------------------------------------- timing
def timing(quick: bool) -> dict:
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from rc_jax.config import default_config
    from rc_jax.rl.train import Trainer
    c = default_config("train")
    c.model.path = "builtin:tiny-random"
    c.model.dtype = "float32"
    c.model.remat_policy = "none"
    c.data.source = "builtin:demo"
    c.rc.num_steps = 2
    c.rc.max_reasoning_tokens = 64
    c.rc.max_summary_tokens = 32
    c.rl.batch_size = 8
    c.rl.snapshots_per_chain = 2
    c.rl.group_size = 4
    c.rl.num_minibatches = 2
    c.rl.micro_batch_tokens = 8192
    c.rl.length_buckets_per_octave = 4
    c.rl.reward = "string_match"
    c.rl.learning_rate = 1e-4
    steps = 4 if quick else 8
    c.rl.total_steps = steps
    c.checkpoint.save_every = 0
    c.checkpoint.export_final = False
    c.progress = c.tensorboard = False
    c.output_dir = tempfile.mkdtemp()
    from rc_jax.compile_counter import count_compiles
    trainer = Trainer(c, mesh=None)
    load_before = os.getloadavg()
    history, compiles = [], []
    for _ in range(steps):
        with count_compiles() as n:
            history.append(trainer.train_step())
        compiles.append(n.count)
    trainer.close()
    keys = ("time_generation_s", "time_reward_s", "time_logprob_s", "time_update_s",
            "time_step_s")
    # Steady state: steps that compiled nothing (a new length bucket compiles once).
    steady = [h for h, n in zip(history, compiles) if n == 0] or history[1:]
    out = {
        "config": {"model": "builtin:tiny-random (2 layers, hidden 64, vocab 512)",
                   "T": 2, "H_R": 64, "H_S": 32, "B": 8, "k": 2, "G": 4, "M": 2,
                   "sequences_per_step": 64, "device": "CPU, 1 device", "steps": steps,
                   "compiles_per_step": compiles, "steady_steps": len(steady)},
        "first_step_s (compiles)": {k: round(history[0][k], 3) for k in keys},
        "steady_median_s": {k: round(statistics.median(h[k] for h in steady), 3)
                            for k in keys},
        "generated_tokens_per_s": round(statistics.median(
            h["generated_tokens_per_s"] for h in steady), 1),
        "train_tokens_per_s": round(statistics.median(h["train_tokens_per_s"] for h in steady), 1),
        "load_average_1m_before_after": [round(load_before[0], 2),
                                         round(os.getloadavg()[0], 2)],
    }
    print("timing:", json.dumps(out, indent=1))
    return out


# ----------------------------------------------------------------------------- memory
def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape)
        total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
    return total


def abstract(tree, shardings, dtype=None):
    return jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype,
                                                          sharding=h), tree, shardings)


def analyse(ma) -> dict:
    return {k: round(getattr(ma, f"{k}_size_in_bytes") / GIB, 3)
            for k in ("argument", "output", "temp", "alias")}


def memory_case(mesh_spec: str, devices: int, length: int, per_shard: int, chunk: int,
                hbm: float) -> dict:
    mesh = make_mesh(mesh_spec, devices=jax.devices()[:devices])
    cfg = QWEN3_4B
    sh = param_shardings(cfg, mesh)
    programs = train_programs(cfg, LossSettings(logprob_chunk=chunk), OptimizerSettings(),
                              mesh, sh)
    shapes = param_shapes(cfg)
    params = abstract(shapes, sh)
    grads = abstract(shapes, sh, jnp.float32)
    ref = abstract(shapes, sh, jnp.bfloat16)
    opt = jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h),
                       jax.eval_shape(programs.optimizer.init, shapes), programs.opt_shardings)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = shards * per_shard
    row_sh = NamedSharding(mesh, P(("data", "fsdp")))
    dtypes = {"tokens": jnp.int32, "positions": jnp.int32, "mask": jnp.bool_,
              "response_mask": jnp.bool_}
    micro = {f: jax.ShapeDtypeStruct((rows,) if f in ("advantages", "seq_weights")
                                     else (rows, length), dtypes.get(f, jnp.float32),
                                     sharding=row_sh) for f in MICRO_FIELDS}
    t0 = time.time()
    with sharding_scope(mesh):
        acc = programs._accumulate.lower(params, grads, micro).compile().memory_analysis()
        lp = programs._logprobs.lower(params, micro).compile().memory_analysis()
        upd = programs._update.lower(params, opt, grads).compile().memory_analysis()
    resident = {"params_f32": shard_bytes(params), "grad_accumulator_f32": shard_bytes(grads),
                "adam_moments_f32": shard_bytes(opt), "reference_bf16": shard_bytes(ref)}
    resident_total = sum(resident.values())
    micro_bytes = shard_bytes(micro)
    # Peak of the step: everything resident + the accumulate program's temporaries.
    peak = resident_total + micro_bytes + acc.temp_size_in_bytes
    out = {"mesh": mesh_spec, "devices": devices, "hbm_gib": hbm, "sequence_length": length,
           "rows_per_micro_batch": rows, "rows_per_device": per_shard if mesh.shape["data"] *
           mesh.shape["fsdp"] > 1 else rows, "logprob_chunk": chunk,
           "resident_gib": {k: round(v / GIB, 3) for k, v in resident.items()},
           "accumulate_fwd_bwd_gib": analyse(acc), "logprob_fwd_gib": analyse(lp),
           "update_adamw_gib": analyse(upd),
           "peak_per_device_gib": round(peak / GIB, 2), "fits": bool(peak / GIB <= hbm),
           "compile_s": round(time.time() - t0, 1)}
    print(f"{mesh_spec:18s} L={length:6d} rows={rows:3d} chunk={chunk:5d} "
          f"resident {resident_total / GIB:6.2f} GiB  accumulate temp "
          f"{acc.temp_size_in_bytes / GIB:7.2f} GiB  peak {peak / GIB:7.2f} / {hbm} GiB",
          flush=True)
    return out


def attention_scores_gib(length: int, heads_per_device: int) -> float:
    """One layer's f32 attention scores of one row: what `qwen3.Attention` materialises."""
    return heads_per_device * length * length * 4 / GIB


def kv_cache_gib_per_row(context: int, cfg: ModelConfig = QWEN3_4B) -> float:
    per_token = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * 2  # k+v, bf16
    return per_token * context / GIB


def memory(quick: bool) -> dict:
    length = 18432  # length bucket of ~18k tokens (prompt + summary <= ~2k, response 16k)
    cases = []
    for name, devices, hbm, mesh in (MESHES[:2] if quick else MESHES):
        cases.append(dict(slice=name, **memory_case(mesh, devices, length, 1, 2048, hbm)))
    # experiments/rct_stage1.py's mesh: fsdp:4 with 2 rows per shard (8 sequences).
    cases.append(dict(slice="v5p-8", **memory_case("fsdp:4", 4, length, 2, 2048, 95)))
    # Without the chunked LM head: full [S, V] float32 logits.
    cases.append(dict(slice="v5p-8", **memory_case("fsdp:1,tensor:4", 4, length, 1, 0, 95)))
    sweep = [] if quick else [
        dict(slice="v4-32", **memory_case("data:4,fsdp:4", 16, n, 1, 2048, 32))
        for n in (4096, 8192)]
    return {
        "method": "compiled.memory_analysis() of the jitted accumulate / logprob / update "
                  "programs lowered from ShapeDtypeStruct params on fake CPU devices "
                  "(XLA:CPU buffer assignment), plus resident state from exact shard "
                  "shapes",
        "model": "Qwen3-4B (36 layers, hidden 2560, 32/8 heads, vocab 151936), params "
                 "and AdamW in float32, compute bfloat16, remat 'full' per layer",
        "step": "1024 sequences = 2 mini-batches of 512; a micro-batch holds 1 row per "
                "batch shard at 18k tokens (micro_batch_tokens 40000 per shard)",
        "cases": cases, "length_sweep": sweep,
        "analytical": {
            "attention_scores_gib_per_row_layer_all_heads_18k": round(
                attention_scores_gib(length, 32), 2),
            "attention_scores_gib_per_row_layer_8_heads_18k": round(
                attention_scores_gib(length, 8), 2),
            "kv_cache_gib_per_generation_row_20k_context": round(kv_cache_gib_per_row(20480), 2),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/rl_step.json"))
    args = ap.parse_args()
    result = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                       "jax": jax.__version__, "devices": jax.device_count()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.skip_timing:
        result["timing_tiny_cpu"] = timing(args.quick)
    if not args.skip_memory:
        result["memory_qwen3_4b"] = memory(args.quick)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update(result)
    out.write_text(json.dumps(previous, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
