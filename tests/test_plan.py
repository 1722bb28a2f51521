"""Memory planner: positive numbers that grow with batch and context, params bytes equal
to a hand calculation, the CLI end to end, and the train step when rc_jax.rl has one."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_hf_config
from rc_jax.tools import plan as planner
from rc_jax.tools.plan import PRESETS, plan


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny_model")
    (path / "config.json").write_text(json.dumps(tiny_hf_config("qwen3", vocab_size=512)))
    return str(path)


def _hand_param_count(hf: dict) -> int:
    e, i, l = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    h, k, d, v = (hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"],
                  hf["vocab_size"])
    layer = e * h * d + 2 * e * k * d + h * d * e + 3 * e * i + 2 * e + 2 * d
    return v * e * (1 if hf["tie_word_embeddings"] else 2) + l * layer + e


def test_presets_have_the_published_sizes():
    assert abs(_hand_param_count(PRESETS["qwen3-4b"]) / 4.022e9 - 1) < 0.01
    assert abs(_hand_param_count(PRESETS["qwen3-32b"]) / 32.76e9 - 1) < 0.01
    assert abs(_hand_param_count(PRESETS["qwen3-0.6b"]) / 0.596e9 - 1) < 0.01


def test_params_bytes_match_hand_calculation():
    p = plan("sampler", "qwen3-0.6b", "data:2,fsdp:4", 8, prompt_tokens=64, new_tokens=64)
    # bfloat16, sharded 4 ways over fsdp (replicated over data).
    hand = _hand_param_count(PRESETS["qwen3-0.6b"]) * 2 / 4
    assert p.num_params == _hand_param_count(PRESETS["qwen3-0.6b"])
    assert abs(p.analytic["params"] / hand - 1) < 0.01
    assert abs(p.compiled["argument"] / hand - 1) < 0.01  # params dominate the arguments
    assert all(v > 0 for k, v in p.compiled.items() if k in ("argument", "temp", "peak"))


def test_numbers_grow_with_batch_and_context(tiny_tokenizer_dir):
    kw = dict(compile=False, tokenizer=tiny_tokenizer_dir, max_summary_tokens=1024)
    base = plan("rc", "qwen3-4b", "data:2,fsdp:4", 16, max_reasoning_tokens=4096, **kw)
    wide = plan("rc", "qwen3-4b", "data:2,fsdp:4", 32, max_reasoning_tokens=4096, **kw)
    deep = plan("rc", "qwen3-4b", "data:2,fsdp:4", 16, max_reasoning_tokens=8192, **kw)
    assert all(v > 0 for v in base.analytic.values())
    assert wide.analytic["params"] == base.analytic["params"] == deep.analytic["params"]
    assert wide.analytic["kv_cache"] == 2 * base.analytic["kv_cache"]
    # On a batch-sharded mesh a refill prefills every slot where it lives (RCEngine._refill):
    # its scores and caches grow with the slots per device.
    assert wide.analytic["prefill_scores"] == 2 * base.analytic["prefill_scores"]
    assert wide.analytic["refill_kv"] == 2 * base.analytic["refill_kv"]
    # On one device: refill_rows (4) prompts at a time, however many slots there are.
    one = [plan("rc", "qwen3-4b", "fsdp:1", n, max_reasoning_tokens=4096, **kw) for n in (16, 32)]
    assert one[0].analytic["prefill_scores"] == one[1].analytic["prefill_scores"]
    assert one[0].analytic["refill_kv"] == one[1].analytic["refill_kv"]
    assert deep.analytic["kv_cache"] > base.analytic["kv_cache"]
    assert deep.shapes["cache"] > base.shapes["cache"]
    # KV cache by hand: 2 (k, v) x L x rows/device x K x D x slots x 2 bytes (+ mask).
    cfg = PRESETS["qwen3-4b"]
    slots = base.shapes["cache"]
    hand = 2 * cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * 128 * slots * 2
    assert abs(base.analytic["kv_cache"] / hand - 1) < 0.01


def test_compiled_memory_grows_with_batch_and_context(tiny_model_dir):
    kw = dict(prompt_tokens=32)
    small = plan("sampler", tiny_model_dir, "data:2,fsdp:2,tensor:2", 8, new_tokens=32, **kw)
    wide = plan("sampler", tiny_model_dir, "data:2,fsdp:2,tensor:2", 32, new_tokens=32, **kw)
    deep = plan("sampler", tiny_model_dir, "data:2,fsdp:2,tensor:2", 8, new_tokens=256, **kw)
    assert 0 < small.compiled["temp"] < wide.compiled["temp"]
    assert small.compiled["temp"] < deep.compiled["temp"]
    assert small.compiled["argument"] == deep.compiled["argument"]


def test_cli_plans_in_a_fresh_process(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the tool sets it
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rc_jax.tools.plan", f"--model={tiny_model_dir}",
         "--mesh=data:2,fsdp:2,tensor:2", "--program=rc", "--batch=3",
         "--max_reasoning_tokens=32", "--max_summary_tokens=16", "--problem_tokens=16",
         f"--tokenizer={tiny_tokenizer_dir}", "--hbm_gib=1", f"--json={out}"],
        capture_output=True, text=True, env=env, timeout=600,
        cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FITS" in proc.stdout and "8 devices" in proc.stdout
    plans = json.loads(out.read_text())
    assert [p["batch"] for p in plans] == [4]  # rows pad to the data x fsdp shards
    assert all(p["fits"] and p["peak"] > 0 and p["compiled"]["temp"] > 0 for p in plans)


def test_cli_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "rc_jax.tools.plan", "--model=qwen3-4b",
                           "--mesh=data:-1", "--no_compile"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no -1" in proc.stderr
    with pytest.raises(ValueError, match="unknown"):
        planner.tpu_topology("v9z-3")
    assert planner.tpu_topology("v5e-16") == "v5e:4x4" and planner.default_hbm_gib("v5p-64") == 95


def test_train_step_plan(tiny_model_dir):
    pytest.importorskip("rc_jax.rl.step")
    p = plan("train", tiny_model_dir, "data:2,fsdp:4", 8, seq_len=32)
    params = p.analytic["params"]
    assert p.analytic["grads_f32"] >= params and p.analytic["optimizer_state"] >= params
    assert p.compiled["peak"] >= params + p.analytic["grads_f32"]


def test_train_plan_param_dtype_and_logprob_chunk():
    """float32 stored weights (RL's model.param_dtype) double the params term; a chunked
    LM head (rl.logprob_chunk) holds chunk positions of logits instead of the sequence."""
    kw = dict(compile=False, seq_len=4096)
    bf16 = plan("train", "qwen3-0.6b", "fsdp:4", 4, **kw)
    f32 = plan("train", "qwen3-0.6b", "fsdp:4", 4, param_dtype="float32", **kw)
    chunked = plan("train", "qwen3-0.6b", "fsdp:4", 4, param_dtype="float32",
                   logprob_chunk=1024, **kw)
    assert f32.analytic["params"] == 2 * bf16.analytic["params"]
    assert chunked.analytic["logits"] * 4 == f32.analytic["logits"]
    assert "logprob_chunk 1024" in " ".join(chunked.notes)


def test_train_plan_attention_terms():
    """--attention reaches the model: dense keeps [rows, heads, S, S] float32 scores,
    blockwise a few blocks; the Pallas kernel without a cache (segment ids, no bias)
    counts 128-wide blocks, over a cache (the ragged kernel) 128 x 512 blocks."""
    from rc_jax.models.attention import live_score_bytes
    kw = dict(compile=False, seq_len=4096)
    scores = {impl: plan("train", "qwen3-0.6b", "fsdp:4", 4, attention=impl, **kw)
              .analytic["attention_scores"] for impl in ("dense", "blockwise")}
    heads = PRESETS["qwen3-0.6b"]["num_attention_heads"]
    assert scores["dense"] == 1 * heads * 4096 * 4096 * 4  # one row per device
    assert scores["blockwise"] == 3 * heads * 512 * 512 * 4
    assert live_score_bytes("pallas", 1, heads, 4096, 4096, self_causal=True) == \
        3 * heads * 128 * 128 * 4
    assert live_score_bytes("pallas", 1, heads, 4096, 4096) == 2 * heads * 128 * 512 * 4
    assert planner.main(["--model=qwen3-0.6b", "--mesh=fsdp:4", "--program=train",
                         "--batch=4", "--seq_len=256", "--attention=blockwise",
                         "--no_compile"]) == 0
