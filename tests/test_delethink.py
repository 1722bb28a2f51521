"""Delethink (rc_jax.methods.delethink): the chunk prompt rule on ids and on text (first
m0, last m, spans longer than the trace, zero spans, budgets, stop), records and per-step
answers read from the trace so far, the context pre-check, resume through `rc_jax.main`
(subprocess, torn results file), and the compute accounting of every method on
hand-computed examples (rc_jax.eval.metrics.compute_accounting, metrics.json, plots)."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import pytest

from helpers import randomize, tiny_config
from rc_jax.config import default_config, steps_per_record, validate
from rc_jax.eval.grading import StringMatchGrader
from rc_jax.eval.metrics import SampleOutcome, StepCompute, StepOutcome, compute_accounting
from rc_jax.eval.report import evaluate_files
from rc_jax.methods import get_runner
from rc_jax.methods.base import MethodContext
from rc_jax.methods.delethink import (chunk_budget, chunk_prompt, first_span, last_span,
                                      trace_answer_texts)
from rc_jax.prompts import load_template
from rc_jax.models import init_params
from rc_jax.sampling.keys import row_key
from rc_jax.sampling import Buckets, SamplingParams
from rc_jax.sampling.generate import GenerationResult
from rc_jax.records import RolloutRecord

ROOT = Path(__file__).parents[1]
PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1."]


def _config(**delethink):
    c = default_config()
    c.unlock()
    c.method = "delethink"
    for k, v in delethink.items():
        setattr(c.delethink, k, v)
    return c


def _keys(n):
    return np.stack([row_key(0, str(i), 0) for i in range(n)])


# ---------------------------------------------------------------- the rule on ids
def test_spans_and_prompt_rule_on_ids():
    head, c0, c1 = [900, 901], list(range(10)), list(range(100, 106))
    assert first_span(c0, 3) == [0, 1, 2]
    assert first_span(c0, 50) == c0            # m0 larger than the trace: all of it
    assert first_span(c0, 0) == []
    assert last_span(c0, 4) == [6, 7, 8, 9]
    assert last_span(c1, 50) == c1             # m larger than the chunk: the whole chunk
    assert last_span(c1, 6) == c1 and last_span(c1, 5) == c1[1:]
    assert last_span(c0, 0) == []              # not Python's [-0:] (which is everything)
    assert chunk_prompt(head, [], 3, 4) == head
    assert chunk_prompt(head, [c0], 3, 4) == head + [0, 1, 2] + [6, 7, 8, 9]
    # Later chunks: the first m0 always come from chunk 0, the last m from the latest chunk.
    assert chunk_prompt(head, [c0, c1], 3, 4) == head + [0, 1, 2] + [102, 103, 104, 105]
    assert chunk_prompt(head, [c0, c1], 0, 0) == head
    assert chunk_prompt(head, [c0[:2], c1], 5, 50) == head + [0, 1] + c1
    assert [chunk_budget(8192, 4096, k) for k in range(3)] == [8192, 4096, 4096]
    assert trace_answer_texts(["a", "b", "", "c"]) == ["a", "ab", "ab", "abc"]


# ---------------------------------------------------------------- scripted runs
@dataclasses.dataclass
class Scripted(MethodContext):
    """Sampler returning script(call, row) as ids (+ EOS when `stop`), cut at the budget."""
    script: Callable[[int, int], tuple[str, bool]] | None = None
    calls: list[Any] = dataclasses.field(default_factory=list)

    def generate(self, prompts, max_new_tokens, keys, *, model="reasoner", stop_ids=None):
        call = len(self.calls)
        self.calls.append((int(max_new_tokens), [list(p) for p in prompts], np.asarray(keys)))
        tokens, finish = [], []
        for row in range(len(prompts)):
            text, stop = self.script(call, row)
            ids = self.tokenizer.encode(text) + ([self.eos_ids[0]] if stop else [])
            finish.append("stop" if stop and len(ids) <= max_new_tokens else "length")
            tokens.append(ids[:max_new_tokens])
        zeros = [np.zeros(len(t), np.float32) for t in tokens]
        return GenerationResult(tokens, finish, zeros, zeros, list(range(len(prompts))))


def _scripted(tok, script, **delethink):
    return Scripted(_config(**delethink), None, tiny_config("qwen3", vocab_size=512), tok,
                    SamplingParams(), record_prompts=True, script=script)


# Chunk texts long enough to be cut by their budgets (28, 35 and 11 tiny-tokenizer tokens).
LONG = ["Let x be the sum of two and three; compute it slowly step by step now.",
        "Continuing from the carried tokens we check the value twice more here.",
        "So the total is \\boxed{5}."]


def test_chunks_prompts_budgets_and_stop_on_ids_and_text(tiny_tokenizer):
    tok = tiny_tokenizer
    C, m0, m = 24, 5, 8
    # Row 0: two cut chunks, then it stops inside chunk 2. Row 1: stops in chunk 0.
    script = lambda call, row: (LONG[call], call == 2) if row == 0 else ("\\boxed{57}", True)
    ctx = _scripted(tok, script, chunk_tokens=C, keep_first=m0, keep_last=m, max_chunks=4)
    outs = get_runner("delethink")(PROBLEMS, _keys(2), ctx)
    # One sampler call per chunk over the live rows; budgets C, then C - m.
    assert [b for b, _, _ in ctx.calls] == [C, C - m, C - m]
    assert [len(p) for _, p, _ in ctx.calls] == [2, 1, 1]
    solve = load_template("math", "solve")
    head_text = tok.phase_prompt(solve.format(problem=PROBLEMS[0]), use_think_tags=False)
    head = tok.encode(head_text)
    r = outs[0]
    c0 = tok.encode(LONG[0])[:C]
    c1 = tok.encode(LONG[1])[:C - m]
    c2 = tok.encode(LONG[2]) + [tok.eos_ids[0]]
    assert r.reasoning_ids == [c0, c1, c2, []]
    # On ids: head + first m0 of chunk 0 + last m of the previous chunk.
    assert r.prompts == [[head], [head + c0[:m0] + c0[-m:]], [head + c0[:m0] + c1[-m:]], []]
    # On text: the chat-wrapped problem, then (in the assistant turn, not re-wrapped) the
    # decoded first m0 tokens and the decoded last m tokens.
    assert tok.decode(r.prompts[2][0], skip_special_tokens=False) == \
        head_text + tok.decode(c0[:m0]) + tok.decode(c1[-m:])
    assert tok.decode(r.prompts[1][0], skip_special_tokens=False) == \
        head_text + "Let x be the sum" + "it slowly step by"  # (checked by hand)
    assert tok.decode(r.prompts[2][0], skip_special_tokens=False) == \
        head_text + "Let x be the sum" + " the carried toke"
    # Records: a step = a chunk; raw chunks; padding after the stop.
    assert r.reasoning_text == [tok.decode(c0), tok.decode(c1), LONG[2], ""]
    assert r.reasoning_clean == [tok.decode(c0[-m:]), tok.decode(c1[-m:]), "", ""]
    assert r.prompt_tokens == [len(head), len(head) + m0 + m, len(head) + m0 + m, 0]
    assert r.reasoning_tokens == [C, C - m, len(c2), 0]
    assert r.reasoning_finish == ["length", "length", "stop", "stop"]
    assert r.answer_from == "trace"
    assert r.method_fields == {"delethink_first": "Let x be the sum"}
    # Row 1 stopped in chunk 0: no later chunk, padded steps.
    r1 = outs[1]
    assert r1.reasoning_text == ["\\boxed{57}", "", "", ""]
    assert r1.reasoning_tokens[1:] == [0, 0, 0] and r1.prompts[1:] == [[], [], []]
    # Each chunk samples with fold_in(row key, chunk): row 0's key at chunk 1 equals a
    # single-row run's (batching does not matter).
    ctx1 = _scripted(tok, lambda call, row: (LONG[call], call == 2), chunk_tokens=C,
                     keep_first=m0, keep_last=m, max_chunks=4)
    alone = get_runner("delethink")(PROBLEMS[:1], _keys(1), ctx1)[0]
    assert alone.reasoning_ids == r.reasoning_ids
    np.testing.assert_array_equal(ctx1.calls[1][2][0], ctx.calls[1][2][0])


def test_spans_longer_than_the_trace_and_the_chunk_count(tiny_tokenizer):
    tok = tiny_tokenizer
    C = 12
    ctx = _scripted(tok, lambda call, row: (LONG[0], False), chunk_tokens=C, keep_first=50,
                    keep_last=C - 1, max_chunks=3)
    r = get_runner("delethink")(PROBLEMS[:1], _keys(1), ctx)[0]
    head = r.prompts[0][0]
    c0, c1 = tok.encode(LONG[0])[:C], tok.encode(LONG[0])[:1]
    assert [b for b, _, _ in ctx.calls] == [C, 1, 1]
    # m0 = 50 > the 12 tokens of chunk 0: all of chunk 0; m = 11 > the 1-token chunk 1.
    assert r.prompts[1] == [head + c0 + c0[-(C - 1):]]
    assert r.prompts[2] == [head + c0 + c1]
    assert r.reasoning_finish == ["length"] * 3  # stopped by the chunk count
    assert r.reasoning_clean[-1] == ""            # nothing is handed on after the last chunk


def test_think_tags_wrap_the_head_like_every_method(tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _scripted(tok, lambda call, row: ("<think>hm</think> \\boxed{5}", True),
                    chunk_tokens=40, keep_first=4, keep_last=8, max_chunks=2)
    ctx.config.rc.use_think_tags = True
    r = get_runner("delethink")(PROBLEMS[:1], _keys(1), ctx)[0]
    solve = load_template("math", "solve").format(problem=PROBLEMS[0])
    assert r.prompts[0] == [tok.encode(tok.phase_prompt(solve, use_think_tags=True))]


def test_with_the_tiny_model_rows_do_not_depend_on_batching(tiny_tokenizer):
    config = tiny_config("qwen3", vocab_size=512)
    params = randomize(init_params(config, jax.random.PRNGKey(0)), 0)
    c = _config(chunk_tokens=10, keep_first=3, keep_last=4, max_chunks=3)
    ctx = MethodContext(c, params, config, tiny_tokenizer, SamplingParams(temperature=1.0),
                        buckets=Buckets(min_prompt=512), record_prompts=True,
                        stop_ids=tuple(tiny_tokenizer.eos_ids) + (300, 301, 302))
    both = get_runner("delethink")(PROBLEMS, _keys(2), ctx)
    second = get_runner("delethink")(PROBLEMS[1:], _keys(2)[1:], ctx)[0]
    assert both[1].reasoning_ids == second.reasoning_ids
    for r in both:
        for k, ids in enumerate(r.reasoning_ids):
            if r.prompts[k]:
                assert len(ids) <= (10 if k == 0 else 6)
                if k:
                    chunks = [x for x in r.reasoning_ids[:k]]
                    assert r.prompts[k][0] == chunk_prompt(r.prompts[0][0], chunks, 3, 4)


# ---------------------------------------------------------------- config, limits
def test_config_validation_steps_and_context_check(tiny_tokenizer):
    from rc_jax.data import Problem
    from rc_jax.limits import check_context, method_phases
    c = _config()
    c.model.path, c.data.source = "builtin:tiny-random", "builtin:demo"
    validate(c)
    assert steps_per_record(c) == 5
    c.delethink.keep_last = c.delethink.chunk_tokens
    with pytest.raises(ValueError, match="config.delethink.keep_last"):
        validate(c)
    c = _config(chunk_tokens=64, keep_first=10, keep_last=32, max_chunks=3)
    (phase,) = method_phases(c, tiny_tokenizer)
    assert phase.generated == {"first tokens kept": 10, "last tokens kept": 32}
    assert phase.budget == 32  # the longest prompt + C - m = head + m0 + C
    problems = [Problem("p1", "What is 1+1?", "2")]
    head = len(tiny_tokenizer.encode(tiny_tokenizer.phase_prompt(
        load_template("math", "solve").format(problem="What is 1+1?"),
        use_think_tags=False)))
    check_context(c, tiny_tokenizer, problems, context=head + 10 + 64 + 1)
    with pytest.raises(ValueError, match=r"the delethink later chunk phase needs up to"):
        check_context(c, tiny_tokenizer, problems, context=head + 10 + 64 - 1)


# ---------------------------------------------------------------- per-step answers
def _record(reasoning, label="5", answer_from=None, **extra):
    rec = {"problem_id": "p", "sample_id": 0, "label": label, "reasoning_store": reasoning,
           "summarization_store": [""] * len(reasoning)}
    if answer_from:
        rec["answer_from"] = answer_from
    rec.update(extra)
    return rec


def test_step_answer_is_the_last_box_of_the_trace_so_far(tmp_path):
    chunks = ["try \\boxed{4} hmm", " no wait, it is \\bo", "xed{5}.", ""]
    r = RolloutRecord.from_json(_record(chunks, answer_from="trace"), "x", 0)
    assert r.answer_texts()[1] == chunks[0] + chunks[1]
    path = tmp_path / "r.jsonl"
    lines = [_record(chunks, answer_from="trace"), _record(chunks) | {"problem_id": "q"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    m = evaluate_files([path], None, grader=StringMatchGrader(), progress=False)
    rows = m["inputs"][0]["steps"]
    # Delethink (p): 4, 4 (chunk 1's box is unfinished), 5 (box across chunks), 5 (padding).
    # Another method (q): each step alone: 4, none, none, none.
    assert [s["accuracy"] for s in rows] == [0.0, 0.0, 0.5, 0.5]
    assert [s["no_answer"] for s in rows] == [0, 1, 1, 1]
    with pytest.raises(Exception, match="answer_from"):
        RolloutRecord.from_json(_record(chunks, answer_from="chunks"), "x", 0)


# ---------------------------------------------------------------- compute accounting
def _steps(*counts):
    """counts: (prompt, reasoning, summary_prompt, summary) per step."""
    return SampleOutcome("p", "0", tuple(StepOutcome(None, False, False, p, r, s, sp)
                                         for p, r, sp, s in counts))


def test_compute_accounting_hand_computed():
    # RC, 2 steps: reasoning prompt 100 -> 50 generated; summary prompt 160 -> 20.
    # Step 2: prompt 120 (problem + summary) -> 40; summary prompt 150 -> 10.
    rc = compute_accounting(_steps((100, 50, 160, 20), (120, 40, 150, 10)))
    assert rc == [StepCompute(prefill=260, decode=70, context=180, cumulative_total=330,
                              peak_context=180),
                  StepCompute(prefill=270, decode=50, context=160, cumulative_total=650,
                              peak_context=180)]
    # Autoregressive read at checkpoints: one prefill of 30, then the sequence grows.
    ar = compute_accounting(_steps((30, 16, 0, 0), (0, 16, 0, 0), (0, 5, 0, 0), (0, 0, 0, 0)))
    assert [(s.prefill, s.decode, s.context, s.cumulative_total, s.peak_context) for s in ar] == \
        [(30, 16, 46, 46, 46), (0, 16, 62, 62, 62), (0, 5, 67, 67, 67), (0, 0, 0, 67, 67)]
    # Delethink: C = 8, m0 = 2, m = 4, head 10: chunk 0 prefills 10 and makes 8; chunk 1
    # prefills 10 + 2 + 4 = 16 and makes 4 (C - m); chunk 2 the same and stops after 3;
    # a padded step does nothing.
    dt = compute_accounting(_steps((10, 8, 0, 0), (16, 4, 0, 0), (16, 3, 0, 0), (0, 0, 0, 0)))
    assert [(s.prefill, s.decode, s.context) for s in dt] == \
        [(10, 8, 18), (16, 4, 20), (16, 3, 19), (0, 0, 0)]
    assert [s.cumulative_total for s in dt] == [18, 38, 57, 57]
    assert [s.peak_context for s in dt] == [18, 20, 20, 20]
    # A missing summary prompt with no summary is 0; with a summary it is unknown.
    assert compute_accounting(_steps((5, 5, None, 0)))[0].prefill == 5
    assert compute_accounting(_steps((5, 5, None, 3), (5, 5, 0, 0))) == [None, None]


def test_compute_in_metrics_report_and_plot(tmp_path):
    tc = lambda p, r, sp, s: {"prompt": p, "reasoning": r, "summary_prompt": sp, "summary": s}
    lines = [
        _record(["\\boxed{5}", "\\boxed{5}"], method="rc", problem_id="a",
                token_counts=tc([100, 120], [50, 40], [160, 150], [20, 10])),
        _record(["\\boxed{4}", "\\boxed{5}"], method="rc", problem_id="b",
                token_counts=tc([200, 220], [10, 30], [300, 310], [30, 20])),
    ]
    path = tmp_path / "rc.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "report"
    m = evaluate_files([path], out, grader=StringMatchGrader(), progress=False)
    s1, s2 = m["inputs"][0]["steps"]
    # a: step 1 prefill 260, decode 70, context 180; step 2 prefill 270, decode 50, ctx 160.
    # b: step 1 prefill 500, decode 40, context 330; step 2 prefill 530, decode 50, ctx 330.
    assert s1["compute"] == {"prefill": 380.0, "decode": 55.0, "context": 255.0,
                             "cumulative_total": 435.0, "peak_context": 255.0,
                             "max_peak_context": 330}
    assert s2["compute"] == {"prefill": 400.0, "decode": 50.0, "context": 245.0,
                             "cumulative_total": 885.0, "peak_context": 255.0,
                             "max_peak_context": 330}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["inputs"][0]["steps"][1]["compute"]["cumulative_total"] == 885.0
    assert (out / "accuracy_vs_compute.png").stat().st_size > 0
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "cumulative compute" in report and "| 885 |" in report
    assert "accuracy_vs_compute.png" in report


# ---------------------------------------------------------------- resume via rc_jax.main
def _main_cmd(out, *overrides):
    return [sys.executable, "-m", "rc_jax.main", "--config=experiments/demo.py",
            "--config.method=delethink", "--config.model.path=builtin:tiny-random",
            f"--config.output_dir={out}", "--config.data.limit=3", "--config.num_samples=2",
            "--config.batch_size=2", "--config.evaluate=False", "--config.show_rollouts=0",
            "--config.delethink.chunk_tokens=12", "--config.delethink.keep_first=3",
            "--config.delethink.keep_last=5", "--config.delethink.max_chunks=3", *overrides]


def _run_main(tmp_path, out, *overrides, timeout=600):
    env = dict(os.environ, RC_JAX_CACHE=str(tmp_path.parent / "cache"))
    return subprocess.run(_main_cmd(out, *overrides), capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _records(path):
    strip = lambda l: {k: v for k, v in json.loads(l).items() if k != "wall_time_s"}  # noqa: E731
    return sorted(json.dumps(strip(l), sort_keys=True) for l in path.read_text().splitlines())


def test_resume_after_a_torn_results_file_equals_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    res = _run_main(tmp_path, full)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = (full / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and "steps=3" in res.stdout
    for rec in map(json.loads, lines):
        assert rec["method"] == "delethink" and rec["answer_from"] == "trace"
        assert len(rec["reasoning_store"]) == len(rec["token_counts"]["prompt"]) == 3
        assert rec["token_counts"]["reasoning"][0] <= 12
        assert all(n <= 7 for n in rec["token_counts"]["reasoning"][1:])
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    # Killed while writing: two whole records and a torn third.
    (crashed / "results.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])
    (crashed / "config.json").write_text((full / "config.json").read_text())
    res = _run_main(tmp_path, crashed)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "4 rollouts to run" in res.stdout
    assert _records(crashed / "results.jsonl") == _records(full / "results.jsonl")
