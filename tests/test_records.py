"""The one rollout record: its results line, reading it back, the batching loop."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from rc_jax.batches import run_batches
from rc_jax.data import Problem
from rc_jax.data.jsonio import DataError
from rc_jax.records import RolloutRecord
from rc_jax.sampling.keys import row_key

PROBLEM = SimpleNamespace(problem="What is 2 + 3?", answer="5", problem_id="p7")


def _record(**kw) -> RolloutRecord:
    r = RolloutRecord(**kw)
    r.add_step("<think>a</think> \\boxed{4}", "a", [1, 2], 10, 7, "length", summary="s1 ",
               summary_clean="s1", summary_prompt_tokens=12, summary_tokens=3,
               summary_finish="stop")
    r.add_step("\\boxed{5}", "\\boxed{5}", [3], 11, 2, "stop")
    return r


def test_results_line_layout_is_the_authors_fields_then_ours_in_order():
    line = _record(method_fields={"forcings": 2}).with_identity(PROBLEM, 3, "rc", 1.23456,
                                                                "h").to_json()
    assert list(line) == ["problem", "label", "problem_id", "sample_id", "method",
                          "reasoning_store", "summarization_store", "token_counts",
                          "finish_reasons", "wall_time_s", "config_hash", "reasoning_clean",
                          "summary_clean", "forcings"]
    assert line == {
        "problem": "What is 2 + 3?", "label": "5", "problem_id": "p7", "sample_id": 3,
        "method": "rc", "reasoning_store": ["<think>a</think> \\boxed{4}", "\\boxed{5}"],
        "summarization_store": ["s1 ", ""],
        "token_counts": {"prompt": [10, 11], "reasoning": [7, 2], "summary_prompt": [12, 0],
                         "summary": [3, 0]},
        "finish_reasons": {"reasoning": ["length", "stop"], "summary": ["stop", "none"]},
        "wall_time_s": 1.235, "config_hash": "h", "reasoning_clean": ["a", "\\boxed{5}"],
        "summary_clean": ["s1", ""], "forcings": 2}
    assert list(line["token_counts"]) == ["prompt", "reasoning", "summary_prompt", "summary"]


def test_answer_from_is_written_only_for_traces_before_the_method_fields():
    plain = _record().with_identity(PROBLEM, 0, "rc", 0.0, "").to_json()
    assert "answer_from" not in plain
    trace = _record(answer_from="trace", method_fields={"delethink_first": "x"})
    line = trace.with_identity(PROBLEM, 0, "delethink", 0.0, "").to_json()
    assert list(line)[-3:] == ["summary_clean", "answer_from", "delethink_first"]
    assert line["answer_from"] == "trace"


@pytest.mark.parametrize("kw", [{}, {"answer_from": "trace",
                                     "method_fields": {"delethink_first": "x", "notes": [1]}}])
def test_a_written_line_reads_back_to_the_same_record_and_line(kw):
    rec = _record(**kw).with_identity(PROBLEM, 1, "m", 2.5, "h")
    line = json.loads(json.dumps(rec.to_json()))
    back = RolloutRecord.from_json(line, "f: line 1")
    assert back.to_json() == rec.to_json()
    assert back.where == "f: line 1" and back.unreadable is None
    # Only what the line does not hold differs: generated ids.
    assert back == RolloutRecord(**{**rec.__dict__, "reasoning_ids": []})
    assert back.answer_texts() == (
        ("<think>a</think> \\boxed{4}", "<think>a</think> \\boxed{4}\\boxed{5}")
        if kw else ("<think>a</think> \\boxed{4}", "\\boxed{5}"))


def test_an_authors_line_reads_with_missing_counts_as_unknown():
    r = RolloutRecord.from_json({"problem_id": 3, "answer": 12, "reasoning_store": ["x", None],
                                 "summarization_store": ["s", "t"]}, "a.json: record 1", 4)
    assert (r.problem_id, r.sample_id, r.label, r.method) == (3, 4, "12", None)
    assert r.reasoning_text == ["x", ""] and r.summary_text == ["s", "t"]
    assert r.token_counts == {"prompt": [], "reasoning": [], "summary_prompt": [], "summary": []}
    assert r.key == ("3", "4") and r.num_steps == 2


@pytest.mark.parametrize("line,message", [
    ({"reasoning_store": []}, "f: line 2: missing field 'problem_id'"),
    ({"problem_id": "p", "reasoning_store": []}, "f: line 2: missing field 'label'"),
    ({"problem_id": "p", "label": "1", "reasoning_store": "x"},
     "f: line 2: field 'reasoning_store' must be a list of strings"),
    ({"problem_id": "p", "label": "1", "reasoning_store": [3]},
     r"f: line 2: reasoning_store\[0\] must be a string, got int"),
    ({"problem_id": 1.5, "label": "1", "reasoning_store": []},
     "f: line 2: field 'problem_id' must be a string or integer"),
    ({"problem_id": "p", "label": "1", "reasoning_store": [], "token_counts": {"prompt": [-1]}},
     r"f: line 2: token_counts\['prompt'\] must be a list of non-negative integers"),
    ({"problem_id": "p", "label": "1", "reasoning_store": [], "answer_from": "chunk"},
     "f: line 2: field 'answer_from' must be one of"),
])
def test_bad_lines_name_the_field_and_the_place(line, message):
    with pytest.raises(DataError, match=message):
        RolloutRecord.from_json(line, "f: line 2")


def test_progress_steps_rebuild_the_record():
    rec = _record()
    steps = [json.loads(json.dumps(rec.step_json(t))) for t in range(rec.num_steps)]
    assert list(steps[0]) == ["reasoning_raw", "summary_raw", "reasoning_clean", "summary_clean",
                              "prompt_tokens", "reasoning_tokens", "reasoning_finish",
                              "summary_prompt_tokens", "summary_tokens", "summary_finish"]
    back = RolloutRecord.from_steps(steps)
    assert back.to_json() == rec.to_json()


def test_run_batches_keys_rows_by_problem_and_sample_whatever_the_batch_size():
    problems = [Problem(f"p{i}", f"problem {i}", str(i)) for i in range(3)]
    todo = [(p, j) for p in problems for j in range(2)]
    def runner(texts, keys):
        out = []
        for text, key in zip(texts, keys):
            r = RolloutRecord()
            r.add_step(f"{text} {np.asarray(key).tolist()}", "", [], 1, 1, "stop")
            out.append(r)
        return out

    lines = {}
    for batch_size in (1, 4, 6):
        got = [r.to_json() for rs in run_batches(runner, todo, batch_size, 5, "m", "h")
               for r in rs]
        lines[batch_size] = [(x["problem_id"], x["sample_id"], x["reasoning_store"]) for x in got]
        assert all(x["method"] == "m" and x["config_hash"] == "h" for x in got)
    assert lines[1] == lines[4] == lines[6]
    assert lines[1][3] == ("p1", 1, [f"problem 1 {row_key(5, 'p1', 1).tolist()}"])
    assert [len(rs) for rs in run_batches(runner, todo, 4, 5, "m")] == [4, 2]
