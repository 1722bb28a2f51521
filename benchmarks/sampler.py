"""Sampler throughput: rc_jax `generate` vs transformers `generate`, same weights, CPU, fp32.

One run builds a random Qwen3-shaped model with `rc_jax.models.init_params`, writes it with
`save_hf_checkpoint` and loads that directory into `transformers.Qwen3ForCausalLM`, so
both sides decode with identical weights. For each batch size it times greedy decoding
of the same random prompts (no stop tokens: every row generates exactly `--new-tokens`)
and reports:

  * decode tokens/s, without prefill: each side is timed at max_new_tokens = N and = 1
    (for rc_jax both share one compiled program, the budget is a traced argument), and
    decode tokens/s = batch * (N - 1) / (t_N - t_1);
  * end-to-end tokens/s = batch * N / t_N, and the prefill time t_1;
  * rc_jax compile time, separately from the steady state: JAX's compile events during
    the first call (trace + lowering + XLA compile), and first call minus a steady call;
  * whether the greedy tokens agree token for token (first mismatch per row);
  * at batch 1, the fraction of the memory-bandwidth roofline: bytes that must be read
    per decode step (all weights + the KV cache of the current context) divided by the
    bandwidth of a numpy copy of a 1 GiB array (bytes read + written per second).

Results are printed and written to benchmarks/results/sampler.json (+ sampler.png).

    python benchmarks/sampler.py            # full run, about 10 minutes on 2 cores
    python benchmarks/sampler.py --quick    # small model and sizes, under a minute
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rc_jax.models import ModelConfig, init_params, save_hf_checkpoint  # noqa: E402
from rc_jax.sampling import Buckets, SamplingParams, generate  # noqa: E402
from rc_jax.sampling import core  # noqa: E402

# ~100M parameters, Qwen3 layout (GQA 3:1, per-head q/k RMSNorm, SwiGLU, tied embeddings
# as in Qwen3-0.6B); vocabulary 32k so the embedding is a quarter of the weights.
FULL = dict(model_type="qwen3", vocab_size=32768, hidden_size=768, intermediate_size=2048,
            num_layers=12, num_heads=12, num_kv_heads=4, head_dim=64,
            tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
QUICK = dict(FULL, vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=2,
             num_heads=4, num_kv_heads=2, head_dim=64)


# ----------------------------------------------------------------------------- machine
def machine_facts() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import flax
    torch, transformers = _optional("torch"), _optional("transformers")
    return {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or __import__("jaxlib").__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
        "transformers": getattr(transformers, "__version__", None),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "jax_backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg_start": _loadavg(),
        "niceness": os.nice(0),
    }


def _optional(module: str):
    """The module, or None where it is not installed (peers.py runs without PyTorch)."""
    try:
        return __import__(module)
    except ImportError:
        return None


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> dict:
    """numpy copy of an nbytes array: bytes moved (read + write) per second, best of N."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    read = []
    for _ in range(repeats):
        t = time.perf_counter()
        src.sum()
        read.append(time.perf_counter() - t)
    del src, dst
    return {"array_bytes": nbytes, "copy_s_best": min(times),
            "copy_GBps": 2 * nbytes / min(times) / 1e9,
            "read_sum_GBps": nbytes / min(read) / 1e9}


# ----------------------------------------------------------------------------- timing
def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _summary(batch: int, new: int, first: float, full: list[float],
             one: list[float]) -> dict:
    """Decode rate from the best (least disturbed) timings of N and 1 new tokens."""
    t_full, t_one = min(full), min(one)
    decode_s = max(t_full - t_one, 1e-9)
    res = {
        "t_full_s": full, "t_one_s": one,
        "t_full_best_s": t_full, "t_full_median_s": statistics.median(full),
        "prefill_s": t_one,
        "decode_s": decode_s,
        "decode_ms_per_step": decode_s / (new - 1) * 1e3,
        "decode_tokens_per_s": batch * (new - 1) / decode_s,
        "end_to_end_tokens_per_s": batch * new / t_full,
    }
    res["first_call_s"] = first
    res["compile_s"] = max(first - t_full, 0.0)  # compile + first-run effects
    return res


def rc_caller(params, config, prompts, new: int):
    greedy = SamplingParams(temperature=0.0)
    # One output bucket for both budgets, so N and 1 run the same compiled program.
    buckets = Buckets(min_new_tokens=new, min_prompt=len(prompts[0]))
    key = jax.random.PRNGKey(0)

    def call(n):
        return generate(params, config, prompts, greedy, key, n, [], buckets=buckets).tokens

    return call


def hf_caller(model, prompts):
    import torch
    ids = torch.tensor(prompts, dtype=torch.long)
    attention = torch.ones_like(ids)

    def call(n):
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=attention, do_sample=False,
                                 max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                                 eos_token_id=None)
        return out[:, ids.shape[1]:].tolist()

    return call


class CompileTimer:
    """Sums JAX's own compile-phase durations (trace, lowering, XLA backend compile)."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        def listener(event: str, duration: float, **_) -> None:
            if event.startswith("/jax/core/compile/"):
                self.seconds += duration
        self._listener = listener
        jax.monitoring.register_event_duration_secs_listener(listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def run_side(name: str, call, batch: int, new: int, repeats: int) -> tuple[dict, list]:
    """The first call (rc_jax: compile + run), then `repeats` rounds of N and 1 new tokens.

    The sides run one after the other, not interleaved: XLA's and PyTorch's worker threads
    spin for a while after each call, and alternating calls makes them fight over the two
    cores (transformers at batch 1 then runs ~8x slower).
    """
    with CompileTimer() as compiled:
        t = time.perf_counter()
        tokens = call(new)
        first = time.perf_counter() - t
    assert all(len(row) == new for row in tokens), f"{name} stopped early"
    full, one = [], []
    for _ in range(repeats):
        full += _time(lambda: call(new), 1)
        one += _time(lambda: call(1), 1)
    res = _summary(batch, new, first, full, one)
    if name == "transformers":  # nothing to compile: the first call is a warm-up
        res.pop("compile_s")
    else:
        res["jax_compile_events_s"] = compiled.seconds
    time.sleep(1.0)  # let worker threads go idle before the other side starts
    return res, tokens


def compare_tokens(a: list[list[int]], b: list[list[int]]) -> dict:
    first = []
    for x, y in zip(a, b):
        diff = [i for i, (p, q) in enumerate(zip(x, y)) if p != q]
        first.append(diff[0] if diff else None)
    return {"rows": len(a), "rows_identical": sum(f is None for f in first),
            "first_mismatch_per_row": first}


def logits_check(params, config, hf_model, prompt: list[int]) -> float:
    """max |logit difference| of one forward pass over a prompt (same weights sanity)."""
    import torch
    from rc_jax.models import forward
    ours, _ = jax.jit(forward, static_argnums=1)(params, config, jnp.asarray([prompt]),
                                                 jnp.arange(len(prompt))[None])
    with torch.inference_mode():
        ref = hf_model(torch.tensor([prompt])).logits.numpy()
    return float(np.max(np.abs(np.asarray(ours) - ref)))


# ----------------------------------------------------------------------------- roofline
def decode_bytes_per_step(config: ModelConfig, batch: int, prompt: int, new: int) -> dict:
    """Bytes an ideal decoder must read per step: every weight once (the embedding as the
    tied output projection) plus each row's KV cache up to the current position, averaged
    over the N decode steps."""
    itemsize = np.dtype(config.param_dtype).itemsize
    weights = config.num_params * itemsize
    kv_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize
    mean_context = prompt + (new - 1) / 2
    kv = batch * kv_per_token * mean_context
    return {"weight_bytes": weights, "kv_bytes_mean": kv, "total_bytes": weights + kv,
            "kv_bytes_per_token": kv_per_token}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes (smoke run)")
    ap.add_argument("--batches", default=None, help="comma-separated, default 1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--repeats", default=None,
                    help="steady-state repeats per batch, comma-separated (default 3,2,1)")
    ap.add_argument("--skip-hf", action="store_true", help="rc_jax only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampler.json"))
    ap.add_argument("--int8", action="store_true",
                    help="int8 weight-only vs fp32 decode instead (benchmarks/int8_decode.py; "
                         "other arguments go to it)")
    args, rest = ap.parse_known_args()
    if args.int8:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from int8_decode import run as run_int8
        run_int8(rest + (["--quick"] if args.quick else []))
        return
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")

    import torch
    torch.set_num_threads(2)

    spec = QUICK if args.quick else FULL
    batches = [int(b) for b in (args.batches or ("1,4" if args.quick else "1,8,32")).split(",")]
    repeats = [int(r) for r in (args.repeats or ("2,1" if args.quick else "3,2,1")).split(",")]
    repeats += [repeats[-1]] * (len(batches) - len(repeats))
    prompt_len = args.prompt_tokens or (32 if args.quick else 128)
    new = args.new_tokens or (32 if args.quick else 256)
    wall0 = time.perf_counter()

    facts = machine_facts()
    print(f"machine: {facts['cpu_model']}, {facts['cpu_cores']} cores, "
          f"jax {facts['jax']}, torch {facts['torch']}, transformers {facts['transformers']}, "
          f"load {facts['loadavg_start']}", flush=True)
    bw = copy_bandwidth(1 << 28 if args.quick else 1 << 30)
    print(f"numpy copy bandwidth: {bw['copy_GBps']:.1f} GB/s (read+write), "
          f"read-only sum {bw['read_sum_GBps']:.1f} GB/s", flush=True)

    config = ModelConfig(**spec)
    params = init_params(config, jax.random.PRNGKey(0))
    print(f"model: {config.num_params / 1e6:.1f}M params, {config.num_layers} layers, hidden "
          f"{config.hidden_size}, heads {config.num_heads}/{config.num_kv_heads} kv, head_dim "
          f"{config.head_dim}, mlp {config.intermediate_size}, vocab {config.vocab_size}, "
          f"tied embeddings, fp32; prompt {prompt_len}, new tokens {new}", flush=True)

    hf_model = None
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_hf:
            from transformers import Qwen3ForCausalLM
            save_hf_checkpoint(tmp, config, params)
            hf_model = Qwen3ForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()

    rng = np.random.RandomState(0)
    all_prompts = rng.randint(0, config.vocab_size, (max(batches), prompt_len)).tolist()
    check = None
    if hf_model is not None:
        check = logits_check(params, config, hf_model, all_prompts[0])
        print(f"same weights: max |logits(rc_jax) - logits(transformers)| = {check:.2e}")

    results = []
    for batch, reps in zip(batches, repeats):
        prompts = all_prompts[:batch]
        row = {"batch": batch, "repeats": reps, "loadavg_before": _loadavg()}
        callers = {"rc_jax": rc_caller(params, config, prompts, new)}
        if hf_model is not None:
            callers["transformers"] = hf_caller(hf_model, prompts)
        timings, tokens = {}, {}
        for name, call in callers.items():
            timings[name], tokens[name] = run_side(name, call, batch, new, reps)
        rc = row["rc_jax"] = timings["rc_jax"]
        print(f"[b={batch:3d}] rc_jax       decode {rc['decode_tokens_per_s']:8.1f} tok/s "
              f"({rc['decode_ms_per_step']:.1f} ms/step), end-to-end "
              f"{rc['end_to_end_tokens_per_s']:8.1f} tok/s, prefill {rc['prefill_s']:.2f}s, "
              f"first call {rc['first_call_s']:.1f}s (compile {rc['jax_compile_events_s']:.1f}s)",
              flush=True)
        if hf_model is not None:
            hf = row["transformers"] = timings["transformers"]
            row["decode_speedup"] = rc["decode_tokens_per_s"] / hf["decode_tokens_per_s"]
            row["end_to_end_speedup"] = (rc["end_to_end_tokens_per_s"]
                                         / hf["end_to_end_tokens_per_s"])
            m = row["greedy_match"] = compare_tokens(tokens["rc_jax"], tokens["transformers"])
            print(f"[b={batch:3d}] transformers decode {hf['decode_tokens_per_s']:8.1f} tok/s "
                  f"({hf['decode_ms_per_step']:.1f} ms/step), end-to-end "
                  f"{hf['end_to_end_tokens_per_s']:8.1f} tok/s, prefill {hf['prefill_s']:.2f}s",
                  flush=True)
            print(f"[b={batch:3d}] speedup decode x{row['decode_speedup']:.2f}, end-to-end "
                  f"x{row['end_to_end_speedup']:.2f}; greedy tokens identical in "
                  f"{m['rows_identical']}/{m['rows']} rows"
                  + ("" if m["rows_identical"] == m["rows"] else
                     f" (first mismatches {m['first_mismatch_per_row'][:8]})"), flush=True)
        row["loadavg_after"] = _loadavg()
        need = decode_bytes_per_step(config, batch, prompt_len, new)
        step_s = rc["decode_ms_per_step"] / 1e3
        row["roofline"] = {
            **need,
            "bandwidth_GBps": bw["copy_GBps"],
            "roofline_ms_per_step": need["total_bytes"] / (bw["copy_GBps"] * 1e9) * 1e3,
            "rc_jax_effective_GBps": need["total_bytes"] / step_s / 1e9,
            "rc_jax_fraction": need["total_bytes"] / step_s / (bw["copy_GBps"] * 1e9),
        }
        if hf_model is not None:
            hf_step = row["transformers"]["decode_ms_per_step"] / 1e3
            row["roofline"]["transformers_fraction"] = (
                need["total_bytes"] / hf_step / (bw["copy_GBps"] * 1e9))
        print(f"[b={batch:3d}] memory roofline {row['roofline']['roofline_ms_per_step']:.1f} "
              f"ms/step ({need['total_bytes'] / 1e6:.0f} MB per step at "
              f"{bw['copy_GBps']:.1f} GB/s): rc_jax at "
              f"{100 * row['roofline']['rc_jax_fraction']:.0f}%", flush=True)
        results.append(row)

    report = {
        "benchmark": "sampler",
        "command": "python benchmarks/sampler.py" + (" --quick" if args.quick else ""),
        "machine": {**facts, "loadavg_end": _loadavg()},
        "bandwidth": bw,
        "model": {**spec, "num_params": config.num_params, "dtype": "float32"},
        "prompt_tokens": prompt_len,
        "new_tokens": new,
        "decoding": "greedy, no stop tokens, prompts of equal length (no padding)",
        "rc_jax_unroll_layers": core.default_unroll_layers(),
        "same_weights_max_logit_diff": check,
        "results": results,
        "total_wall_s": time.perf_counter() - wall0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} (total {report['total_wall_s']:.0f}s)")
    try:
        plot(report, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
    except Exception as e:  # matplotlib is optional
        print(f"no plot: {e}")


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report["results"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    rc = [r["rc_jax"]["decode_tokens_per_s"] for r in rows]
    ax.bar(x - 0.2, rc, 0.4, label="rc_jax (JAX/XLA)")
    if all("transformers" in r for r in rows):
        hf = [r["transformers"]["decode_tokens_per_s"] for r in rows]
        ax.bar(x + 0.2, hf, 0.4, label="transformers (PyTorch)")
        for i, r in enumerate(rows):
            ax.text(i - 0.2, rc[i], f"x{r['decode_speedup']:.1f}", ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(x, [f"batch {r['batch']}" for r in rows])
    ax.set_ylabel("decode tokens / s")
    m = report["model"]
    ax.set_title(f"Greedy decode, {m['num_params'] / 1e6:.0f}M fp32, "
                 f"{report['machine']['cpu_cores']} CPU cores", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
