"""Summary replay buffer: add / sample / purge / capacity / age, save -> load."""
import json

import numpy as np
import pytest

from rc_jax.rl.replay import SummaryReplayBuffer


def test_add_keeps_depths_and_sample_is_without_replacement():
    buf = SummaryReplayBuffer()
    buf.add("P", ["s1", "s2", "s3"], start_depth=0, step=1, ids=[[1], [2], [3]])
    buf.add("P", ["t1"], start_depth=3, step=2)
    assert [e.depth for e in buf.summaries("P")] == [1, 2, 3, 4]
    assert buf.summaries("P")[0].ids == [1] and buf.summaries("P")[3].ids is None
    rng = np.random.default_rng(0)
    for _ in range(20):
        got = buf.sample("P", 3, rng)
        assert len(got) == 3 and len({e.text for e in got}) == 3
    assert len(buf.sample("P", 10, rng)) == 4  # min(k, stored)
    assert buf.sample("unseen problem", 2, rng) == []  # its chain starts from ""
    counts = {t: 0 for t in ("s1", "s2", "s3", "t1")}
    for _ in range(4000):
        counts[buf.sample("P", 1, rng)[0].text] += 1
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in counts.values())  # uniform


def test_purge_on_add_replaces_a_problems_summaries_per_step():
    buf = SummaryReplayBuffer(purge_on_add=True)
    buf.add_chains([("P", ["a1", "a2"], 0, None), ("Q", ["q1"], 0, None)], step=1)
    # Two chains of P in one step: both kept (purge happens once, before adding).
    buf.add_chains([("P", ["b1", "b2"], 2, None), ("P", ["c1", "c2"], 0, None)], step=2)
    assert [e.text for e in buf.summaries("P")] == ["b1", "b2", "c1", "c2"]
    assert [e.depth for e in buf.summaries("P")] == [3, 4, 1, 2]
    assert [e.text for e in buf.summaries("Q")] == ["q1"]  # other problems untouched
    keep = SummaryReplayBuffer(purge_on_add=False)
    keep.add_chains([("P", ["a1"], 0, None)], step=1)
    keep.add_chains([("P", ["b1"], 1, None)], step=2)
    assert len(keep.summaries("P")) == 2


def test_capacity_evicts_oldest_first_and_age_expires():
    buf = SummaryReplayBuffer(capacity=3)
    buf.add("P", ["p1", "p2"], start_depth=0, step=1)
    buf.add("Q", ["q1", "q2"], start_depth=0, step=2)
    assert len(buf) == 3 and [e.text for e in buf.summaries("P")] == ["p2"]
    buf.add("R", ["r1", "r2", "r3"], start_depth=0, step=3)
    assert "P" not in buf and "Q" not in buf and len(buf) == 3
    aged = SummaryReplayBuffer(max_age=2)
    aged.add("P", ["old"], start_depth=0, step=1)
    aged.add("P", ["new"], start_depth=1, step=3)
    rng = np.random.default_rng(0)
    assert len(aged.sample("P", 5, rng, step=3)) == 2  # age 2 is still allowed
    assert [e.text for e in aged.sample("P", 5, rng, step=4)] == ["new"]
    assert aged.sample("P", 5, rng, step=6) == [] and "P" not in aged
    with pytest.raises(ValueError, match="must be >= 0"):
        SummaryReplayBuffer(capacity=-1)


def test_save_load_round_trip(tmp_path):
    buf = SummaryReplayBuffer(capacity=10)
    buf.add("P", ["s1", "s2"], start_depth=0, step=4, ids=[[5, 6], [7]])
    buf.add("Q\nwith newline", ["ü"], start_depth=2, step=5)
    path = buf.save(tmp_path / "buffer.json")
    back = SummaryReplayBuffer(capacity=10).load(path)
    assert back.state_dict() == buf.state_dict()
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert [e.text for e in back.sample("P", 1, rng1)] == [e.text for e in buf.sample("P", 1, rng2)]
    # Continuing after a reload keeps insertion order (eviction) consistent.
    back.add("R", ["r"], start_depth=0, step=6)
    assert back.summaries("R")[0].seq == 4


def test_load_the_authors_saved_buffer_file(tmp_path):
    # The layout the authors' trainer writes (one object per problem, indented JSON).
    authors = [
        {"problem": "A problem", "problem_id": "17", "prompt_id": "17", "sample_id": "0",
         "label": "3", "starting_steps": [1, 2, 1], "summaries": ["x", "y", "z"]},
        {"problem": "Another\nproblem", "problem_id": "4", "prompt_id": "4",
         "sample_id": "0", "label": "\\frac{1}{2}", "starting_steps": [3],
         "summaries": ["w"]},
        {"problem": "Purged", "problem_id": "9", "prompt_id": "9", "sample_id": "0",
         "label": "1", "starting_steps": [], "summaries": []},
    ]
    (tmp_path / "replay_buffer_global_step_10").write_text(json.dumps(authors, indent=4))
    warm = SummaryReplayBuffer().load(tmp_path / "replay_buffer_global_step_10", step=10)
    assert [(e.text, e.depth, e.step, e.ids) for e in warm.summaries("A problem")] == \
        [("x", 1, 10, None), ("y", 2, 10, None), ("z", 1, 10, None)]
    assert [(e.text, e.depth) for e in warm.summaries("Another\nproblem")] == [("w", 3)]
    assert "Purged" not in warm and len(warm) == 4
    rng = np.random.default_rng(0)
    assert {e.text for e in warm.sample("A problem", 3, rng)} == {"x", "y", "z"}
    # The summary-free variant saves reasoning traces under their own key.
    free = [{"problem": "P", "problem_id": "1", "prompt_id": "1", "sample_id": "0",
             "label": "2", "starting_steps": [1], "reasoning_traces": ["r1"]}]
    (tmp_path / "free.json").write_text(json.dumps(free))
    assert [e.text for e in SummaryReplayBuffer().load(tmp_path / "free.json")
            .summaries("P")] == ["r1"]
    # rc_jax's compact layout (the toy pipeline's warm start) still loads.
    (tmp_path / "compact.json").write_text(json.dumps(
        {"A problem": {"summaries": ["", "x"], "starting_steps": [0, 1]}}))
    assert [(e.text, e.depth) for e in SummaryReplayBuffer().load(
        tmp_path / "compact.json").summaries("A problem")] == [("", 0), ("x", 1)]
    # Capacity applies to a warm start too (oldest = first in the file).
    assert [e.text for es in SummaryReplayBuffer(capacity=2).load(
        tmp_path / "replay_buffer_global_step_10").entries.values() for e in es] == ["z", "w"]


def test_load_rejects_malformed_buffer_files(tmp_path):
    bad = {
        "scalar.json": "x",
        "no_list.json": [{"problem": "p", "starting_steps": [1], "texts": ["x"]}],
        "mismatch.json": [{"problem": "p", "starting_steps": [1, 2], "summaries": ["x"]}],
        "no_problem.json": [{"starting_steps": [1], "summaries": ["x"]}],
    }
    for name, data in bad.items():
        (tmp_path / name).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="expected a buffer saved by rc_jax"):
        SummaryReplayBuffer().load(tmp_path / "scalar.json")
    with pytest.raises(ValueError, match="has no 'summaries'"):
        SummaryReplayBuffer().load(tmp_path / "no_list.json")
    with pytest.raises(ValueError, match="1 summaries but starting_steps"):
        SummaryReplayBuffer().load(tmp_path / "mismatch.json")
    with pytest.raises(ValueError, match="'problem' string"):
        SummaryReplayBuffer().load(tmp_path / "no_problem.json")
