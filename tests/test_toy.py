"""The toy RC experiment (package `experiments.toy`, not part of the installed library):
task, tokenizer, prompts, the Delethink row, smoke run."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repo root out
    sys.path.insert(0, str(ROOT))

from experiments.toy import evaluate, pipeline, sft, task  # noqa: E402
from experiments.toy.tokenizer import build_toy_tokenizer  # noqa: E402
from rc_jax.tokenizer import load_tokenizer  # noqa: E402


# ---------------------------------------------------------------- task
def test_problem_text_values_and_parse():
    p = task.ChainProblem(7, ("+3", "+7", "-5", "+1"))
    assert p.text == "7:a+3b+7c-5d+1"
    assert p.values == [7, 0, 7, 2, 3]
    assert p.answer == 3
    assert task.ChainProblem.parse(p.text) == p
    assert p.steps_needed(4) == 1 and p.steps_needed(3) == 2


def test_every_operation_is_a_bijection_mod_10():
    for op in task.OPS:
        assert sorted(task.apply_op(v, op) for v in range(10)) == list(range(10))


def test_traces_and_summaries():
    p = task.ChainProblem(7, ("+3", "+7", "-5", "+1", "-9"))
    assert p.summary(0) == "" and p.summary(3) == "c=2"
    # label, labelled operation, value before, value after; the final step boxes the answer
    assert p.reasoning(0, 4) == "aa+370bb+707cc-572dd+123"   # unfinished: no answer
    assert p.reasoning(0, 5) == "aa+370bb+707cc-572dd+123ee-934\\boxed{4}"
    assert p.reasoning(4, 4) == "ee-934\\boxed{4}"
    assert p.reasoning(5, 4) == "\\boxed{4}"  # nothing left: re-box the answer
    steps = p.reference_rc(4, 3)
    assert [s for _, s in steps] == ["d=3", "e=4", "e=4"]
    assert task.summary_of("", steps[0][0]) == "d=3"
    assert task.summary_of("d=3", "ee-93") == "d=3"          # incomplete op: keep the old state
    assert task.summary_of("d=3", "\\boxed{3}") == "d=3"
    assert task.parse_summary("c=2") == (3, 2) and task.parse_summary("") is None
    assert task.last_state("aa+370bb+70") == ("a", 0)


def test_sample_problems_stratified_and_seeded():
    a = task.sample_problems(np.random.default_rng(3), 20, 1, 10)
    b = task.sample_problems(np.random.default_rng(3), 20, 1, 10)
    assert a == b
    assert sorted(p.num_ops for p in a) == sorted(list(range(1, 11)) * 2)
    recs = task.problem_records(a, "x")
    assert recs[0]["problem_id"] == "x-00000" and recs[0]["answer"] == str(a[0].answer)
    with pytest.raises(ValueError):
        task.ChainProblem(3, ("*2",))  # not an operation of the family
    with pytest.raises(ValueError):
        task.sample_problems(np.random.default_rng(0), 1, 1, task.MAX_OPS + 1)


# ---------------------------------------------------------------- tokenizer + prompts
@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory):
    return load_tokenizer(build_toy_tokenizer(tmp_path_factory.mktemp("toy_tok")))


def test_tokenizer_round_trip_and_compactness(toy_tokenizer):
    tok = toy_tokenizer
    p = task.sample_problem(np.random.default_rng(0), 31)
    assert len(tok.encode(p.text)) == 2 + 31   # one token per labelled operation
    r = p.reasoning(0, 4)
    assert tok.decode(tok.encode(r)) == r
    assert len(tok.encode(r)) == 4 * 4   # a, a+3, 7, 0 per op; unfinished: no box
    last = p.reasoning(28, 4)
    assert tok.decode(tok.encode(last)) == last
    assert len(tok.encode(last)) == 3 * 4 + 3   # 3 ops left, then \\boxed{ v }
    assert tok.decode(tok.encode("Any ASCII text: 1+2=3 \\boxed{x}\n")) == \
        "Any ASCII text: 1+2=3 \\boxed{x}\n"
    assert tok.hf.convert_ids_to_tokens(tok.eos_ids[0]) == "<|im_end|>"
    assert tok.vocab_size <= 800


def test_sft_prompts_are_the_engine_prompts(toy_tokenizer):
    """SFT examples use the token plans the RC engine assembles on device, and they equal
    the chat template applied to the filled text template."""
    from rc_jax.prompts import load_template
    from experiments.toy.plans import make_plan
    tok = toy_tokenizer
    rt = load_template(str(pipeline.REASONING_TEMPLATE), "reasoning")
    st = load_template(str(pipeline.SUMMARY_TEMPLATE), "summary")
    r_plan, s_plan = make_plan(tok, rt), make_plan(tok, st)
    ex = sft.build_examples(np.random.default_rng(0), 40, tokenizer=tok, reasoning_plan=r_plan,
                            summary_plan=s_plan, ops_per_step=4, min_ops=1, max_ops=12)
    assert {e.role for e in ex} == {"reasoning", "summary"}
    for e in ex:
        text = tok.decode(e.prompt, skip_special_tokens=False)
        user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        assert tok.chat_prompt_ids(user) == e.prompt
        assert e.response[-1] == tok.eos_ids[0]
        if e.role == "reasoning":
            problem = task.ChainProblem.parse(user.split("\n")[0].split(" ", 1)[1])
            state = task.parse_summary(user.split("\n")[1].removeprefix("state "))
            done = state[0] if state else 0
            finishes = problem.num_ops - done <= 4
            assert tok.decode(e.response, skip_special_tokens=True).endswith("}") == finishes
            assert len(e.response) <= 4 * 4 + 3 + 1
            assert problem.num_ops <= 12
    # The solve template of the autoregressive baseline is the empty-summary RC prompt.
    p = "3:a+1b-3"
    assert (r_plan.host_ids({"problem": tok.encode(p), "curr_summary": []})
            == tok.chat_prompt_ids(pipeline.SOLVE_TEMPLATE.read_text().format(problem=p)))


def test_restart_variant_sft_targets_ignore_the_summary(toy_tokenizer):
    """restart_fraction: that share of the summary-conditioned reasoning examples has the
    from-scratch step as its target (the prompt still carries the summary); 0 draws the
    same examples as before the option existed (the base variant's data is unchanged)."""
    from rc_jax.prompts import load_template
    from experiments.toy.plans import make_plan
    tok = toy_tokenizer
    plans = dict(reasoning_plan=make_plan(tok, load_template(str(pipeline.REASONING_TEMPLATE),
                                                             "reasoning")),
                 summary_plan=make_plan(tok, load_template(str(pipeline.SUMMARY_TEMPLATE),
                                                           "summary")))
    args = dict(tokenizer=tok, ops_per_step=4, min_ops=1, max_ops=32, **plans)

    def build(fraction):
        return sft.build_examples(np.random.default_rng(5), 300, restart_fraction=fraction,
                                  **args)

    default = sft.build_examples(np.random.default_rng(5), 300, **args)
    assert [(e.prompt, e.response) for e in build(0.0)] == \
        [(e.prompt, e.response) for e in default]
    for fraction, lo, hi in ((1.0, 1.0, 1.0), (0.5, 0.35, 0.65)):
        restarts = conditioned = 0
        for e in build(fraction):
            if e.role != "reasoning":
                continue
            user = tok.decode(e.prompt, skip_special_tokens=False).split(
                "<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
            problem = task.ChainProblem.parse(user.split("\n")[0].split(" ", 1)[1])
            state = task.parse_summary(user.split("\n")[1].removeprefix("state "))
            target = tok.decode(e.response, skip_special_tokens=True)
            if state is None:  # empty summary: always the step from the start
                assert target == problem.reasoning(0, 4)
                continue
            conditioned += 1
            if target == problem.reasoning(0, 4) != problem.reasoning(state[0], 4):
                restarts += 1
            else:
                assert target == problem.reasoning(state[0], 4)
        assert conditioned > 50 and lo <= restarts / conditioned <= hi


def test_careless_teacher_slips_and_carries_on():
    """noisy variant: each written value is wrong with probability slip_prob and the trace
    continues from it (every operation still reads its own label and the value written
    before it); slip 0 is the exact trace."""
    rng = np.random.default_rng(0)
    p = task.sample_problem(rng, 10)
    for k in (0, 4, 8, 10):
        assert sft.noisy_reasoning(p, k, 4, rng, 0.0) == p.reasoning(k, 4)
    for k in (0, 8):
        text = sft.noisy_reasoning(p, k, 4, rng, 1.0)
        steps = task._STEP_RE.findall(text)
        assert [lab for lab, *_ in steps] == list(task.LABELS[k:min(10, k + 4)])
        value = p.values[k]
        for (label, op, before, after) in steps:
            assert int(before) == value                       # carries on from what it wrote
            assert int(after) != task.apply_op(value, op)    # every value slipped
            value = int(after)
        assert text.endswith(f"\\boxed{{{value}}}") == (k + 4 >= 10)


def test_replay_warm_start_from_the_correct_states(tmp_path):
    """rl_replay_reference + rl_replay_last_steps: per problem, the correct summaries of
    the last K steps before the first finished state and that state, at their depths."""
    s = dataclasses.replace(pipeline.SMOKE, rl_replay_last_steps=2, rl_replay_reference=True)
    problems = [task.sample_problem(np.random.default_rng(n), n) for n in (3, 9, 12)]
    path = tmp_path / "replay.json"
    assert pipeline.write_replay_warm_start(None, None, problems, s, str(path)) == 2 + 3 + 3
    out = json.loads(path.read_text())
    p3, p9, p12 = problems
    assert out[p3.text] == {"summaries": ["", p3.summary(3)], "starting_steps": [0, 1]}
    assert out[p9.text] == {"summaries": [p9.summary(4), p9.summary(8), p9.summary(9)],
                            "starting_steps": [1, 2, 3]}
    assert out[p12.text]["starting_steps"] == [1, 2, 3]
    assert out[p12.text]["summaries"][-1] == p12.summary(12)


def test_paired_interval_and_sign_test():
    """rl_vs_sft_rc of metrics.json on the base toy's committed paired numbers (T = 8:
    +2.1 points, s.e. 1.42, 32 rollouts solved only by RC-RL, 21 only by SFT)."""
    from experiments.toy import report
    iv = report.paired_interval({"difference": 0.021484375, "stderr": 0.014201102919521437,
                                 "pairs": 512, "a_only": 32, "b_only": 21}, 8)
    assert iv["t"] == 8 and iv["n_pairs"] == 512
    assert abs(iv["paired_diff"] - 2.1484375) < 1e-9
    assert abs(iv["ci95_low"] - (2.1484375 - 1.96 * 1.4201102919521437)) < 1e-9
    assert iv["ci95_low"] < 0 < iv["ci95_high"]           # not significant
    assert abs(iv["sign_test_p"] - 0.16898) < 1e-4         # 2 * P(Binom(53, 1/2) <= 21)
    assert report.paired_interval({"difference": 0.0, "stderr": 0.0, "pairs": 4,
                                   "a_only": 0, "b_only": 0}, 2)["sign_test_p"] == 1.0


def test_sft_batches_mask_only_responses(toy_tokenizer):
    e = sft.Example([1, 2, 3, 4], [5, 6, 7], "reasoning")
    b = sft.make_batches([e] * 4, 2, 0, np.random.default_rng(0), length_multiple=8)
    assert len(b) == 2
    row = b[0]
    assert row["tokens"].shape == (2, 8)
    # position t predicts token t+1: positions 3, 4, 5 predict the response 5, 6, 7
    assert row["loss_mask"][0].tolist() == [False, False, False, True, True, True, False, False]


def test_paired_difference():
    a = {("p", 0): [False, True], ("q", 0): [True, True], ("r", 0): [False, False],
         ("s", 0): [True]}                               # too short for step 2: left out
    b = {("p", 0): [False, False], ("q", 0): [True, True], ("r", 0): [False, True],
         ("s", 0): [True, True]}
    d = evaluate.paired_difference(a, b, 2)
    assert d["pairs"] == 3 and d["a_only"] == 1 and d["b_only"] == 1
    assert d["difference"] == 0.0 and abs(d["stderr"] - np.sqrt(1 / 3)) < 1e-12
    assert evaluate.paired_difference(a, b, 1)["difference"] == 0.0


# ---------------------------------------------------------------- the Delethink row
def test_delethink_row_runs_with_the_toy_budgets(toy_tokenizer):
    """The toy's Delethink row (rc_jax.methods.delethink on the toy model, the toy's solve
    prompt, t_eval chunks of H_R + H_S tokens): records in the results schema, one step
    per chunk, the chunk prompt rule on the toy's ids, budgets, and grading from the trace
    so far. A random model, so that traces run for several chunks."""
    import jax

    from rc_jax.data import Problem
    from rc_jax.methods import get_runner
    from rc_jax.methods.base import MethodContext
    from rc_jax.methods.delethink import chunk_prompt
    from rc_jax.models import init_params
    from rc_jax.sampling.keys import row_key
    from rc_jax.sampling import Buckets, SamplingParams

    s = pipeline.SMOKE
    tok = toy_tokenizer
    cfg = sft.toy_model_config(s.vocab_size, hidden=s.hidden, layers=s.layers, heads=s.heads,
                               kv_heads=s.kv_heads, mlp=s.mlp, eos_ids=tok.eos_ids)
    params = init_params(cfg, jax.random.PRNGKey(0))
    c = pipeline.delethink_config(s)
    C, m0, m = s.delethink_chunk, s.delethink_keep_first, s.delethink_keep_last
    assert (C, m0, m) == (s.max_reasoning_tokens + s.max_summary_tokens, 4, 13)
    assert c.delethink.max_chunks == s.t_eval
    problems = [Problem(f"p{i}", p.text, str(p.answer)) for i, p in
                enumerate(task.sample_problems(np.random.default_rng(0), 3, 1, 12))]
    ctx = MethodContext(c, params, cfg, tok, SamplingParams(temperature=1.0),
                        buckets=Buckets(min_prompt=16, min_new_tokens=8), record_prompts=True)
    keys = np.stack([row_key(7, p.problem_id, 0) for p in problems])
    rollouts = get_runner("delethink")([p.problem for p in problems], keys, ctx)
    head = tok.chat_prompt_ids(pipeline.SOLVE_TEMPLATE.read_text().format(
        problem=problems[0].problem))
    assert rollouts[0].prompts[0][0] == head   # chunk 0: the toy's solve prompt
    chunks_run = 0
    for r in rollouts:
        for k, ids in enumerate(r.reasoning_ids):
            if not r.prompts[k]:
                continue                          # the trace had ended
            chunks_run += 1
            assert len(ids) <= (C if k == 0 else C - m)
            assert r.prompts[k][0] == chunk_prompt(r.prompts[0][0], r.reasoning_ids[:k], m0, m)
    assert chunks_run > len(problems)  # some trace went past its first chunk

    recs = evaluate.method_records("delethink", ctx, problems, num_samples=2, seed=7,
                                   method=pipeline.METHOD_SFT_DT, batch_size=4,
                                   log=lambda *_: None)
    assert len(recs) == 2 * len(problems)
    for r in recs:
        assert r["method"] == pipeline.METHOD_SFT_DT and r["answer_from"] == "trace"
        assert len(r["reasoning_store"]) == s.t_eval
        assert sum(r["token_counts"]["reasoning"]) <= C + (s.t_eval - 1) * (C - m)
    # sample 0 of the records is the runner's row above (same row keys)
    assert recs[0]["reasoning_store"] == rollouts[0].reasoning_text
    # graded from the trace so far: a box written in chunk 0 still counts at later steps
    fake = dict(recs[0], label="3", reasoning_store=["xx\\boxed{3}"] + [""] * (s.t_eval - 1))
    assert evaluate.graded_by_record([fake])[("p0", 0)] == [True] * s.t_eval


# ---------------------------------------------------------------- the whole pipeline
@pytest.mark.slow
def test_smoke_pipeline(tmp_path, capsys):
    """data -> SFT -> RC RL (rc_jax.rl) -> RC / autoregressive evaluation -> plot, tiny;
    through the command line, as the noisy variant (careless SFT teacher, RL from the
    correct states of the last 2 steps)."""
    from experiments.toy import run
    s = dataclasses.replace(pipeline.SMOKE, **pipeline.VARIANT_OVERRIDES["noisy"])
    assert run.main(["--smoke", "--variant", "noisy", "--work_dir", str(tmp_path / "work"),
                     "--results_dir", str(tmp_path / "results")]) == 0
    capsys.readouterr()
    for name in ("toy_curve.png", "table.md", "metrics.json"):
        assert (tmp_path / "results" / name).is_file()
    m = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert m["settings"]["hash"] == s.hash() != pipeline.SMOKE.hash()
    # the SFT cache key covers the SFT fields only; the base variant keeps its hashes
    assert dataclasses.replace(s, rl_replay_last_steps=5).sft_hash() == s.sft_hash() \
        != pipeline.SMOKE.sft_hash()
    assert pipeline.FULL.hash() == "7808addac0a3"  # experiments/toy/results/metrics.json
    iv = m["rl_vs_sft_rc"]
    assert iv["t"] == s.t_eval and iv["n_pairs"] == s.eval_per_ops * s.eval_max_ops * s.eval_samples
    assert iv["ci95_low"] <= iv["paired_diff"] <= iv["ci95_high"]
    assert m["methods"] == [pipeline.METHOD_AR, pipeline.METHOD_SFT_RC, pipeline.METHOD_RL_RC,
                            pipeline.METHOD_RL_AR, pipeline.METHOD_SFT_DT]
    for method in m["methods"]:
        curve = m["curves"][method]
        assert [p["step"] for p in curve] == list(range(1, s.t_eval + 1))
        assert all(p["num_samples"] == s.eval_per_ops * s.eval_max_ops * s.eval_samples
                   for p in curve)
        tokens = [p["tokens"] for p in curve]
        assert tokens == sorted(tokens)  # cumulative
    rc = m["curves"][pipeline.METHOD_SFT_RC]
    # an RC step spends at most H_R + H_S tokens
    assert rc[-1]["tokens"] <= s.t_eval * (s.max_reasoning_tokens + s.max_summary_tokens)
    assert len(m["rl_history"]) == s.rl_steps
    assert m["oracle"][-1] == 1.0
    assert "| T |" in (tmp_path / "results" / "table.md").read_text()
    assert m["checks"].keys() >= {"rl_rc_still_rising_beyond_t_train",
                                        "c_above_a_and_b_at_largest_budget",
                                        "paired_at_largest_budget"}
    for pair in ("c_minus_b", "b_minus_e"):
        paired = m["checks"]["paired_at_largest_budget"][pair]
        assert paired["pairs"] == s.eval_per_ops * s.eval_max_ops * s.eval_samples
    dt = m["curves"][pipeline.METHOD_SFT_DT]   # Delethink: C, then C - m per later chunk
    assert dt[-1]["tokens"] <= s.delethink_chunk + (s.t_eval - 1) * (
        s.delethink_chunk - s.delethink_keep_last)
    assert "Delethink" in (tmp_path / "results" / "table.md").read_text()
    # the RL model was saved and differs from the SFT model (an update happened)
    assert (tmp_path / "work" / "rl_model" / "config.json").is_file()
