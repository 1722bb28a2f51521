"""The benchmark scripts still run (quick mode) and write the figures they document."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path) -> str:
    # A fresh process with one CPU device (the test session forces 8 fake devices).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_rc_horizon_quick(tmp_path):
    _run([str(ROOT / "benchmarks" / "rc_horizon.py"), "--quick", "--out_dir", str(tmp_path)],
         tmp_path)
    res = json.loads((tmp_path / "rc_horizon_quick.json").read_text())
    rows = res["rows"]
    assert [r["steps"] for r in rows] == [1, 2]
    # every phase spends its whole budget, so T steps generate T x one step's tokens
    assert rows[1]["rc_generated_tokens"] == 2 * rows[0]["rc_generated_tokens"]
    assert all(r["rc_seconds"] > 0 and r["ar_seconds"] > 0 for r in rows)
    assert (tmp_path / "rc_horizon_quick.png").stat().st_size > 0


@pytest.mark.slow
def test_decode_length_quick(tmp_path):
    out = tmp_path / "decode_length_quick.json"
    _run([str(ROOT / "benchmarks" / "decode_length.py"), "--quick", "--rounds", "1",
          "--steps", "5", "--out", str(out)], tmp_path)
    res = json.loads(out.read_text())
    segments = {(r["impl"], r["bucket"], r["fill"]): r["segments"] for r in res["rows"]}
    assert segments == {("segmented", 2048, 480): [512, 512, 1024],
                        ("segmented", 2048, 2000): [512, 512, 1024],
                        ("segmented", 512, 480): [512],
                        ("one", 2048, 480): [2048], ("one", 2048, 2000): [2048]}
    # (tiny shapes on a loaded machine: t(n) - t(1) is noise, so no sign is asserted)
    assert all(len(r["ms_per_step_rounds"]) == 1 for r in res["rows"])
    assert set(res["goals"]) == {"short_over_long_le_0.35", "short_within_10pct_of_small_bucket"}


@pytest.mark.slow
def test_decode_profile_quick(tmp_path):
    out = tmp_path / "decode_profile_quick.json"
    _run([str(ROOT / "benchmarks" / "decode_profile.py"), "--quick", "--trace",
          "--out", str(out)], tmp_path)
    res = json.loads(out.read_text())
    assert set(res["ms_per_step_median"]) == {"step", "no_attention", "bucket_256",
                                              "bucket_512", "bucket_1024", "dot_floor",
                                              "xla_dot_floor", "one_dot"}
    # (tiny shapes on a loaded machine: t(n) - t(1) is noise, so no sign is asserted)
    assert all(len(ms) == 2 for ms in res["ms_per_step_rounds"].values())
    # The trace names XLA:CPU's ops: the step's weight matmuls and attention are rc_jax's
    # CPU kernels, four matmuls and one attention call per layer and one matmul for the
    # tied head, and no XLA dot is left.
    ops = {r["op"]: r for r in res["ops"]}
    assert ops["ffi_call"]["per_step"] == 5 * res["config"]["num_layers"] + 1
    assert not [name for name in ops if name.startswith("dot ")]


@pytest.mark.slow
def test_sampler_quick(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "sampler.json"
    _run([str(ROOT / "benchmarks" / "sampler.py"), "--quick", "--batches", "2",
          "--out", str(out)], tmp_path)
    res = json.loads(out.read_text())
    (row,) = res["results"]
    assert row["batch"] == 2
    assert row["greedy_match"]["rows_identical"] == 2   # same weights, same greedy tokens
    assert row["rc_jax"]["decode_tokens_per_s"] > 0
    assert row["transformers"]["decode_tokens_per_s"] > 0


@pytest.mark.slow
def test_rc_throughput_quick(tmp_path):
    _run([str(ROOT / "benchmarks" / "rc_throughput.py"), "--quick", "--skip_smollm2",
          "--out_dir", str(tmp_path)], tmp_path)
    (row,) = json.loads((tmp_path / "rc_throughput_quick.json").read_text())["rows"]
    assert row["identical_rollouts"]  # the schedule changes time, never tokens
    for sched in ("lockstep", "continuous"):
        assert 0 < row[sched]["utilization"] <= 1
        assert row[sched]["useful_tokens"] == row["lockstep"]["useful_tokens"]
    assert (tmp_path / "rc_throughput_quick.png").stat().st_size > 0


def _peers_quick(tmp_path: Path, block: tuple[str, ...]) -> dict:
    """benchmarks/peers.py --quick in a process where the `block`ed packages do not import."""
    out = tmp_path / "peers.json"
    code = ("import runpy, sys\n"
            f"for m in {block!r}:\n    sys.modules[m] = None  # import fails, find_spec is None\n"
            f"sys.argv = [{str(ROOT / 'benchmarks' / 'peers.py')!r}, '--quick', "
            f"'--out', {str(out)!r}]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    stdout = _run(["-c", code], tmp_path)
    assert (tmp_path / "peers.png").stat().st_size > 0
    return {"stdout": stdout, **json.loads(out.read_text())}


@pytest.mark.slow
def test_peers_quick_without_torch_or_llama_cpp(tmp_path):
    res = _peers_quick(tmp_path, ("torch", "llama_cpp"))
    peers = res["peers"]
    assert "not installed" in peers["transformers"]["skipped"]
    for name in ("llama_cpp_f32", "llama_cpp_q8_0", "llama_cpp_q4_1"):
        assert "llama-cpp-python not installed" in peers[name]["skipped"]
        assert f"{name:15s}: skipped: llama-cpp-python not installed" in res["stdout"]
    assert peers["llama_cpp_f32"]["gguf"]["bytes"] > 0   # the F32 GGUF is written anyway
    assert peers["rc_jax_int8"]["int8_kernel"] == "used"
    assert [r["batch"] for r in res["results"]] == [1, 2]
    for row in res["results"]:
        for name in ("rc_jax", "rc_jax_int8"):
            assert row[name]["decode_tokens_per_s"] > 0 and row[name]["roofline"]["fraction"] > 0
        assert (row["rc_jax_int8"]["roofline"]["weight_bytes"]
                < row["rc_jax"]["roofline"]["weight_bytes"])
        assert set(row["not_run"]) == {"transformers", "llama_cpp_f32", "llama_cpp_q8_0",
                                       "llama_cpp_q4_1"}


@pytest.mark.slow
def test_peers_quick_with_llama_cpp(tmp_path):
    """Where llama-cpp-python is installed: its peers run in the worker child (without
    this process's OMP_WAIT_POLICY=PASSIVE), at batch 1 only, from GGUF files written by
    rc_jax.tools.export_gguf. The F32 file holds rc_jax's own weights, so greedy tokens
    are identical (16 tokens of the seeded quick model; llama.cpp's f16 KV cache has not
    flipped one here)."""
    pytest.importorskip("llama_cpp")
    res = _peers_quick(tmp_path, ("torch",))
    for name in ("llama_cpp_f32", "llama_cpp_q8_0"):
        assert res["peers"][name]["omp_wait_policy"] is None
        assert res["peers"][name]["system_info"]  # reported by the worker
    assert res["peers"]["llama_cpp_q8_0"]["weight_bytes"] < res["peers"]["llama_cpp_f32"]["weight_bytes"]
    one, two = res["results"]
    assert one["llama_cpp_f32"]["decode_tokens_per_s"] > 0
    m = one["greedy_match_vs_rc_jax"]["llama_cpp_f32"]
    assert m["rows_identical"] == m["rows"] == 1
    assert "llama_cpp_f32" not in two and "one sequence" in two["not_run"]["llama_cpp_f32"]


@pytest.mark.slow
def test_peers_quick_with_transformers(tmp_path):
    pytest.importorskip("torch")
    res = _peers_quick(tmp_path, ("llama_cpp",))
    for row in res["results"]:
        assert row["transformers"]["decode_tokens_per_s"] > 0
        m = row["greedy_match_vs_rc_jax"]["transformers"]   # same weights, same greedy tokens
        assert m["rows_identical"] == m["rows"] == row["batch"]
        assert row["rc_jax_over"]["transformers"]["median_of_rounds"] > 0


@pytest.mark.slow
def test_int8_accuracy_smoke(tmp_path):
    """The int8-vs-fp32 accuracy benchmark runs end to end at the toy's smoke sizes: SFT,
    RC decoding with both weight formats on the same problems and keys, paired grading."""
    out = tmp_path / "int8_accuracy.json"
    _run([str(ROOT / "benchmarks" / "int8_accuracy.py"), "--smoke", "--work_dir",
          str(tmp_path / "work"), "--out", str(out)], tmp_path)
    res = json.loads(out.read_text())
    rollouts = res["problems"] * res["samples"]
    t_eval = res["settings"]["t_eval"]
    assert set(res["accuracy"]) == {"fp32", "int8"}
    assert all(list(acc) == [str(t) for t in range(1, t_eval + 1)]
               for acc in res["accuracy"].values())
    assert all(d["pairs"] == rollouts for d in res["int8_minus_fp32"].values())
    assert res["identical_step_texts"]["pairs"] == rollouts * t_eval
    assert (tmp_path / "work" / "sft" / "model.safetensors").is_file()
