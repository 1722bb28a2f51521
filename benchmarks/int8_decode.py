"""Weight-only int8 vs float32 decode on CPU (issue 21 item 3), and why.

Three parts, all written to benchmarks/results/int8_decode.json:

  * decode: rc_jax `generate` at batch 1 (greedy, no stop tokens), fp32 weights vs the same
    weights quantized at load (`model.quantization = int8`), on SmolLM2-135M-Instruct (the
    demo model) and on the sampler benchmark's own ~100M model. Both sides are compiled
    first, then timed in interleaved rounds (fp32, int8, int8, fp32, ...) of N and 1 new
    tokens; decode ms/step = (t_N - t_1) / (N - 1) per round. The ratio fp32 / int8 is
    taken per round and reported as the median (and the best-vs-best ratio), with the raw
    times and the load average of each round: other jobs share this 2-core machine.
    SmolLM2 also decodes the demo problems greedily with both weight sets, and the token
    agreement is reported (position by position, and before each row's first mismatch).
  * layouts: a micro-benchmark of one quantized matmul layout per subprocess: SmolLM2's 30
    layers of projections (qkv 960x576, o 576x576, gate|up 3072x576, down 576x1536) as a
    16-step `fori_loop` at batch 1, fp32 against int8 written as convert + dot (weights
    [out, in] and [in, out]), a mixed s8 x f32 dot, a W8A8 s8 x s8 -> s32 dot with per-token
    activation scales, multiply + reduce, and rc_jax's int8 CPU kernel (`cpu_kernels`, an XLA
    custom call: what decode runs since the kernel landed). Each variant also runs with an
    `optimization_barrier` that ties the weights to the loop-carried activations, which keeps
    XLA from hoisting the int8 -> float conversion out of the loop; the compiled HLO says
    whether the loop body reads int8 (s8) weights at all.
  * rows: rc_jax's CPU kernels (int8 and float32) against XLA's float32 dot by activation
    rows (1 to 64), which is where `cpu_kernels.MAX_ROWS` comes from.

    python benchmarks/int8_decode.py               # all parts, ~6 minutes on 2 cores
    python benchmarks/int8_decode.py --quick       # tiny sizes (smoke run)
    python benchmarks/sampler.py --int8            # the same
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "int8_decode.json"


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


# ------------------------------------------------------------------------- decode part
def _caller(params, config, prompts, new: int):
    from rc_jax.sampling import Buckets, SamplingParams, generate
    greedy = SamplingParams(temperature=0.0)
    buckets = Buckets(min_new_tokens=new, min_prompt=max(len(p) for p in prompts))
    key = jax.random.PRNGKey(0)

    def call(n: int):
        return generate(params, config, prompts, greedy, key, n, [], buckets=buckets).tokens

    return call


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(fp: list[list[int]], q8: list[list[int]]) -> dict:
    """Token agreement of two greedy runs: by position, and before each row's first
    mismatch (after it, the contexts differ and so do the continuations)."""
    same = total = prefix = 0
    first = []
    for a, b in zip(fp, q8):
        eq = [x == y for x, y in zip(a, b)]
        same += sum(eq)
        total += len(eq)
        k = eq.index(False) if False in eq else len(eq)
        prefix += k
        first.append(None if k == len(eq) else k)
    return {"rows": len(fp), "tokens": total, "position_agreement": same / max(total, 1),
            "prefix_agreement": prefix / max(total, 1),
            "rows_identical": sum(f is None for f in first), "first_mismatch_per_row": first}


def decode_pair(name: str, config, params, prompts, new: int, rounds: int) -> dict:
    """fp32 vs int8 decode ms/step at batch len(prompts), interleaved rounds."""
    from rc_jax.models.quant import quantize_params, weight_bytes
    q8 = jax.block_until_ready(jax.jit(quantize_params)(params))
    cq = config.replace(quantization="int8")
    sides = {"fp32": _caller(params, config, prompts, new), "int8": _caller(q8, cq, prompts, new)}
    first = {}
    tokens = {}
    for side, call in sides.items():  # compile (and check the budget is used)
        t = time.perf_counter()
        tokens[side] = call(new)
        first[side] = time.perf_counter() - t
        assert all(len(r) == new for r in tokens[side]), f"{side} stopped early"
    per_round = []
    for r in range(rounds):
        order = ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")
        row = {"round": r, "order": order, "loadavg": _loadavg()}
        for side in order:
            t_full = _timed(lambda: sides[side](new))
            t_one = _timed(lambda: sides[side](1))
            row[side] = {"t_full_s": t_full, "t_one_s": t_one,
                         "ms_per_step": max(t_full - t_one, 1e-9) / (new - 1) * 1e3}
        row["ratio_fp32_over_int8"] = row["fp32"]["ms_per_step"] / row["int8"]["ms_per_step"]
        per_round.append(row)
        print(f"  [{name}] round {r}: fp32 {row['fp32']['ms_per_step']:.2f} ms/step, int8 "
              f"{row['int8']['ms_per_step']:.2f} ms/step, ratio x{row['ratio_fp32_over_int8']:.2f}"
              f" (load {row['loadavg']})", flush=True)
    best = {s: min(r[s]["ms_per_step"] for r in per_round) for s in sides}
    res = {
        "model": name, "batch": len(prompts), "prompt_tokens": max(len(p) for p in prompts),
        "new_tokens": new, "rounds": per_round,
        "fp32_ms_per_step_best": best["fp32"], "int8_ms_per_step_best": best["int8"],
        "fp32_tokens_per_s_best": len(prompts) * 1e3 / best["fp32"],
        "int8_tokens_per_s_best": len(prompts) * 1e3 / best["int8"],
        "ratio_median": statistics.median(r["ratio_fp32_over_int8"] for r in per_round),
        "ratio_best_vs_best": best["fp32"] / best["int8"],
        "first_call_s": first,
        "weight_bytes": {"fp32": weight_bytes(params), "int8": weight_bytes(q8)},
        "greedy_random_prompts": compare(tokens["fp32"], tokens["int8"]),
    }
    print(f"  [{name}] median ratio x{res['ratio_median']:.2f}, best vs best "
          f"x{res['ratio_best_vs_best']:.2f}; weights {res['weight_bytes']['fp32'] / 1e6:.0f}"
          f" -> {res['weight_bytes']['int8'] / 1e6:.0f} MB", flush=True)
    return res


def demo_agreement(model_dir: Path, config, params, new: int) -> dict:
    """Greedy decode of every demo problem (chat prompt), fp32 vs int8 weights."""
    from rc_jax.data import demo_problems_path, load_problems
    from rc_jax.models.quant import quantize_params
    from rc_jax.sampling import SamplingParams, generate
    from rc_jax.tokenizer import load_tokenizer
    tok = load_tokenizer(model_dir)
    problems = load_problems(str(demo_problems_path()))
    prompts = [tok.chat_prompt_ids(p.problem) for p in problems]
    greedy = SamplingParams(temperature=0.0)
    stops = list(tok.eos_token_ids) if hasattr(tok, "eos_token_ids") else []
    out = {}
    for side, (p, c) in {"fp32": (params, config),
                         "int8": (quantize_params(params),
                                  config.replace(quantization="int8"))}.items():
        out[side] = generate(p, c, prompts, greedy, jax.random.PRNGKey(0), new, stops).tokens
    res = compare(out["fp32"], out["int8"])
    res["teacher_forced"] = teacher_forced(config, params, prompts, out["fp32"])
    res["problems"] = len(problems)
    res["new_tokens"] = new
    res["texts"] = {s: [tok.decode(t)[:200] for t in toks] for s, toks in out.items()}
    print(f"  [demo] greedy tokens equal by position {100 * res['position_agreement']:.1f}%, "
          f"before the first mismatch {100 * res['prefix_agreement']:.1f}%, rows identical "
          f"{res['rows_identical']}/{res['rows']}; teacher-forced on fp32's tokens: int8 "
          f"picks the same token at {100 * res['teacher_forced']['int8']:.1f}% of positions "
          f"(fp32 itself {100 * res['teacher_forced']['fp32']:.1f}%)", flush=True)
    return res


def teacher_forced(config, params, prompts, continuations) -> dict:
    """Fraction of fp32's greedy tokens that each model's argmax reproduces when both read
    fp32's own text (prompt + its continuation): agreement token by token, without the
    divergence that one flipped token causes in free-running decoding."""
    from rc_jax.models import forward
    from rc_jax.models.quant import quantize_params
    q8, cq = quantize_params(params), config.replace(quantization="int8")
    out = {}
    for side, (p, c) in {"fp32": (params, config), "int8": (q8, cq)}.items():
        same = total = 0
        for prompt, cont in zip(prompts, continuations):
            seq = jnp.asarray([prompt + cont])
            logits, _ = forward(p, c, seq, jnp.arange(seq.shape[1])[None])
            pred = np.asarray(jnp.argmax(logits[0, len(prompt) - 1:-1], axis=-1))
            same += int(np.sum(pred == np.asarray(cont)))
            total += len(cont)
        out[side] = same / max(total, 1)
    return out


# ------------------------------------------------------------------------ layouts part
SMOLLM2_LAYER = dict(E=576, I=1536, QKV=960, L=30)
QUICK_LAYER = dict(E=128, I=256, QKV=256, L=4)
VARIANTS = ("fp32", "convert_dot", "convert_dot_in_out", "mixed_dot", "w8a8_s32",
            "mul_reduce", "kernel")


def _layout_worker(variant: str, barrier: bool, dims: dict, reps: int) -> dict:
    """One variant in this process: ms per step (16 steps per call), and HLO facts."""
    e, i, qkv, n_layers = dims["E"], dims["I"], dims["QKV"], dims["L"]
    rng = np.random.default_rng(0)
    shapes = [(qkv, e), (e, e), (2 * i, e), (e, i)]  # [out, in]

    def weight(o, k):
        w = rng.standard_normal((o, k)).astype(np.float32) * 0.05
        s = np.abs(w).max(1) / 127
        return w, np.round(w / s[:, None]).astype(np.int8), s.astype(np.float32)

    def matmul(x, w):  # x [B, in]; w: the variant's weight tuple -> [B, out]
        if variant == "fp32":
            y = jnp.einsum("oi,ni->on", w[0], x)  # rc_jax's dense_t
            return jax.lax.optimization_barrier(y).T
        q, s = w
        if barrier:  # the weights now depend on loop-carried data: nothing is hoisted
            x, q = jax.lax.optimization_barrier((x, q))
        if variant == "convert_dot":  # rc_jax's int8 path in the decode layout
            y = jnp.einsum("oi,ni->on", q.astype(x.dtype), x)
            return jax.lax.optimization_barrier(y).T * s
        if variant == "convert_dot_in_out":
            return jnp.einsum("ni,oi->no", x, q.astype(x.dtype)) * s
        if variant == "mixed_dot":
            return jax.lax.dot_general(x, q, (((1,), (1,)), ((), ())),
                                       preferred_element_type=jnp.float32) * s
        if variant == "w8a8_s32":  # per-token activation scale, s8 x s8 -> s32
            sx = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127
            xq = jnp.round(x / jnp.where(sx == 0, 1, sx)).astype(jnp.int8)
            y = jax.lax.dot_general(xq, q, (((1,), (1,)), ((), ())),
                                    preferred_element_type=jnp.int32)
            return y.astype(jnp.float32) * sx * s
        if variant == "mul_reduce":
            return jnp.sum(q.astype(jnp.float32)[None] * x[:, None, :], axis=-1) * s
        if variant == "kernel":  # rc_jax's int8 CPU kernel (custom call), what decode runs
            from rc_jax.models.cpu_kernels import matmul_t
            from rc_jax.models.quant import QuantizedWeight
            return matmul_t(x, QuantizedWeight(values=q, scale=s))
        raise ValueError(variant)

    ws = [[weight(*sh) for sh in shapes] for _ in range(n_layers)]
    params = [[(jnp.asarray(w),) if variant == "fp32" else (jnp.asarray(q), jnp.asarray(s))
               for w, q, s in layer] for layer in ws]

    def model(params, x):
        for layer in params:
            h = matmul(x, layer[0])[:, :e]
            x = x + matmul(h, layer[1])
            gu = matmul(x, layer[2])
            x = x + matmul(jax.nn.silu(gu[:, :i]) * gu[:, i:], layer[3])
            x = x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)
        return x

    steps = jax.jit(lambda p, x: jax.lax.fori_loop(0, 16, lambda _, x: model(p, x), x))
    x = jnp.ones((1, e), jnp.float32)
    hlo = steps.lower(params, x).compile().as_text()
    steps(params, x).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        steps(params, x).block_until_ready()
        times.append((time.perf_counter() - t) / 16 * 1e3)
    return {"variant": variant, "barrier": barrier, "ms_per_step": sorted(times),
            **hlo_facts(hlo, dims)}


def hlo_facts(hlo: str, dims: dict) -> dict:
    """Where the int8 weights are read: the while body's parameter tuple holds either the
    s8 weights (converted inside the loop) or float copies made before it (hoisted)."""
    body = _while_body(hlo)
    big = dims["QKV"] * dims["E"]
    shapes = re.findall(r"\b(s8|f32|s32)\[(\d+),(\d+)\]", body.split("\n", 1)[0].split("->")[0])
    sizes = [(t, int(a) * int(b)) for t, a, b in shapes]
    return {"loop_carries_s8_weights": sum(1 for t, n in sizes if t == "s8" and n >= big),
            "loop_carries_f32_or_s32_weights": sum(1 for t, n in sizes if t != "s8" and n >= big),
            # Weight-sized float arrays computed inside the loop: int8 converted per step.
            "f32_weight_sized_values_in_loop_body": sum(
                1 for t, a, b, op in re.findall(r"= (f32|s32)\[(\d+),(\d+)\]\S* ([\w-]+)\(",
                                                body)
                if int(a) * int(b) >= big and op not in ("get-tuple-element", "parameter",
                                                         "bitcast", "copy")),
            "dots_in_loop_body": len(re.findall(r"\bdot\(", body)),
            "fusions_with_dot_in_loop_body": len(re.findall(r"fusion\(.*kind=kOutput", body))}


def _while_body(hlo: str) -> str:
    """The text of the (largest) while-loop body computation of an HLO module."""
    names = re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo)
    best = ""
    for name in names:
        m = re.search(rf"^%?{re.escape(name)} .*?(?=^\S|\Z)", hlo, re.M | re.S)
        if m and len(m.group(0)) > len(best):
            best = m.group(0)
    return best


def layouts(dims: dict, reps: int, rounds: int) -> list[dict]:
    """Each (variant, barrier) in its own subprocess, `rounds` interleaved passes."""
    runs: list[dict] = []
    combos = [("fp32", False)] + [(v, b) for v in VARIANTS[1:] for b in (False, True)]
    for r in range(rounds):
        for variant, barrier in (combos if r % 2 == 0 else combos[::-1]):
            cmd = [sys.executable, __file__, "--layout-worker", variant, "--dims",
                   json.dumps(dims), "--reps", str(reps)] + (["--barrier"] if barrier else [])
            load = _loadavg()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                runs.append({"variant": variant, "barrier": barrier, "round": r,
                             "error": proc.stderr[-500:]})
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res.update(round=r, loadavg=load)
            runs.append(res)
            print(f"  [layout] {variant:<20} barrier={barrier!s:<5} "
                  f"{min(res['ms_per_step']):7.2f} ms/step (best of {reps}); loop carries "
                  f"{res['loop_carries_s8_weights']} s8 / "
                  f"{res['loop_carries_f32_or_s32_weights']} f32|s32 weights, "
                  f"{res['f32_weight_sized_values_in_loop_body']} weight-sized f32|s32 values "
                  f"made in the body (load {load})",
                  flush=True)
    return runs


def summarize_layouts(runs: list[dict]) -> dict:
    best: dict[str, float] = {}
    for r in runs:
        if "error" in r:
            continue
        key = r["variant"] + ("+barrier" if r["barrier"] else "")
        best[key] = min(best.get(key, float("inf")), min(r["ms_per_step"]))
    fp = best.get("fp32")
    return {k: {"best_ms_per_step": v, "speedup_vs_fp32": fp / v if fp else None}
            for k, v in sorted(best.items(), key=lambda kv: kv[1])}


# --------------------------------------------------------------------------- rows part
def rows_part(dims: dict, row_counts: list[int], reps: int = 3) -> list[dict]:
    """rc_jax's CPU kernels (int8 and float32) vs XLA's float32 dot (`dense_t`) by
    activation rows: 60 distinct weights of SmolLM2's gate|up shape (so they stream from
    memory, as in decode), 5 loop steps per call; microseconds per matmul, best of
    `reps`. Says up to how many rows the kernels pay (`cpu_kernels.MAX_ROWS`)."""
    from rc_jax.models.cpu_kernels import matmul_t
    from rc_jax.models.qwen3 import dense_t
    from rc_jax.models.quant import quantize_weight
    n_out, n_in, count = 2 * dims["I"], dims["E"], 2 * dims["L"]
    rng = np.random.default_rng(0)
    ws = [jnp.asarray(rng.standard_normal((n_out, n_in)) * 0.02, jnp.float32)
          for _ in range(count)]
    qs = [quantize_weight(w, (1,)) for w in ws]

    def per_matmul_us(fn, weights, rows: int) -> float:
        def body(_, x):
            for w in weights:
                x = x + fn(x, w)[:, :n_in] * 1e-3
            return x
        steps = jax.jit(lambda x, p: jax.lax.fori_loop(0, 5, body, x))
        x = jnp.ones((rows, n_in), jnp.float32)
        steps(x, weights).block_until_ready()
        return min(_timed(lambda: steps(x, weights).block_until_ready())
                   for _ in range(reps)) / (5 * count) * 1e6

    out = []
    for rows in row_counts:
        i8, f32 = per_matmul_us(matmul_t, qs, rows), per_matmul_us(matmul_t, ws, rows)
        xla = per_matmul_us(dense_t, ws, rows)
        out.append({"rows": rows, "int8_kernel_us": i8, "f32_kernel_us": f32, "xla_f32_us": xla,
                    "xla_over_int8_kernel": xla / i8, "xla_over_f32_kernel": xla / f32})
        print(f"  [rows] {rows:3d} rows: int8 kernel {i8:7.1f} us, f32 kernel {f32:7.1f} us, "
              f"XLA f32 dot {xla:7.1f} us (x{xla / i8:.2f}, x{xla / f32:.2f})", flush=True)
    return out


# ---------------------------------------------------------------------------- main
def run(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved decode rounds")
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--skip-layouts", action="store_true")
    ap.add_argument("--layout-rounds", type=int, default=1, help="interleaved layout passes")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-rows", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--keep-layouts", action="store_true",
                    help="with --skip-layouts: keep the layouts part of the existing --out file")
    args = ap.parse_args(argv)
    from sampler import FULL, QUICK, copy_bandwidth, machine_facts

    from rc_jax.models import ModelConfig, init_params, load_hf_checkpoint
    wall = time.perf_counter()
    rounds = args.rounds or (2 if args.quick else 4)
    new = args.new_tokens or (16 if args.quick else 128)
    facts = machine_facts()
    print(f"machine: {facts['cpu_model']}, {facts['cpu_cores']} cores, jax {facts['jax']}, "
          f"load {facts['loadavg_start']}", flush=True)
    report: dict = {"benchmark": "int8_decode", "machine": facts,
                    "command": "python benchmarks/int8_decode.py" + (" --quick" * args.quick),
                    "bandwidth": copy_bandwidth(1 << 28), "decode": [], "layouts": None}
    if not args.skip_decode:
        rng = np.random.RandomState(0)
        models = []
        bench = ModelConfig(**(QUICK if args.quick else FULL))
        models.append(("sampler-benchmark-model", bench,
                       init_params(bench, jax.random.PRNGKey(0))))
        demo_dir = None
        if not args.quick:
            from rc_jax.tools.prepare_demo_model import ensure_demo_model
            demo_dir = ensure_demo_model()
            cfg, params = load_hf_checkpoint(demo_dir)
            models.insert(0, ("SmolLM2-135M-Instruct", cfg, params))
        for name, cfg, params in models:
            prompt = rng.randint(3, cfg.vocab_size, (1, 32 if args.quick else 128))
            print(f"decode, {name}: {cfg.num_params / 1e6:.0f}M params, batch 1, prompt "
                  f"{prompt.shape[1]}, {new} new tokens, {rounds} interleaved rounds",
                  flush=True)
            res = decode_pair(name, cfg, params, prompt.tolist(), new, rounds)
            if demo_dir is not None and name.startswith("SmolLM2"):
                res["demo_greedy"] = demo_agreement(demo_dir, cfg, params, 256)
            report["decode"].append(res)
    if not args.skip_layouts:
        dims = QUICK_LAYER if args.quick else SMOLLM2_LAYER
        print(f"layouts: {dims}, batch 1, 16 steps per call", flush=True)
        runs = layouts(dims, reps=3, rounds=1 if args.quick else args.layout_rounds)
        report["layouts"] = {"dims": dims, "runs": runs, "summary": summarize_layouts(runs)}
    elif args.keep_layouts and Path(args.out).exists():
        report["layouts"] = json.loads(Path(args.out).read_text()).get("layouts")
    if not args.skip_rows:
        dims = QUICK_LAYER if args.quick else SMOLLM2_LAYER
        print(f"rows: rc_jax's CPU kernels vs XLA's fp32 dot by activation rows, gate|up "
              f"{2 * dims['I']}x{dims['E']}", flush=True)
        report["rows"] = rows_part(dims, [1, 4] if args.quick else [1, 4, 8, 16, 32, 64])
    report["machine"]["loadavg_end"] = _loadavg()
    report["total_wall_s"] = time.perf_counter() - wall
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} ({report['total_wall_s']:.0f}s)")
    return report


def main() -> None:
    if "--layout-worker" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--layout-worker")
        ap.add_argument("--dims")
        ap.add_argument("--reps", type=int, default=5)
        ap.add_argument("--barrier", action="store_true")
        a = ap.parse_args()
        print(json.dumps(_layout_worker(a.layout_worker, a.barrier, json.loads(a.dims),
                                        a.reps)))
        return
    run()


if __name__ == "__main__":
    main()
