"""Snapshot selection, group bookkeeping, mini/micro-batching and batch-layout checks
(host-side logic of an RCT step; no model needed)."""
import collections

import numpy as np
import pytest

from rc_jax.rc.rollout import PhasePrompts
from rc_jax import config as run_config
from rc_jax.rl import config as rl_config
from rc_jax.rl.batch import (Sample, length_bucket, pack_rows, plan_micro_batches,
                             split_minibatches)
from rc_jax.rl.losses import aggregation_weights
from rc_jax.rl.rollout import Chain, Group, build_groups, check_groups, select_snapshots
from rc_jax.sampling.keys import row_keys


def test_snapshots_are_distinct_uniform_and_respect_omit_initial():
    rng = np.random.default_rng(0)
    counts = collections.Counter()
    for _ in range(3000):
        pick = select_snapshots(3, 2, rng)
        assert len(set(pick)) == 2 and all(0 <= i < 3 for i in pick)
        counts.update(pick)
    # Each index is in 2 of the 3 possible pairs: frequency 2/3.
    for i in range(3):
        assert counts[i] / 3000 == pytest.approx(2 / 3, abs=0.03)
    assert all(0 not in select_snapshots(3, 2, rng, omit_initial=True) for _ in range(50))
    with pytest.raises(ValueError, match="cannot draw 3 distinct snapshots from 2"):
        select_snapshots(3, 3, rng, omit_initial=True)


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    return PhasePrompts(tiny_tokenizer, "math", "math", use_think_tags=False)


def _chains():
    # Two problems, one chain each, T = 3: recognisable cleaned summaries s_1..s_3.
    return [Chain(p, 0, [], 0, reasoning_text=[f"r0-{p}?", f"r1-{p}.", f"r2-{p}"],
                  summary_text=[f"s1-{p}?", f"s2-{p}.", f"s3-{p}"]) for p in range(2)]


def test_groups_index_zero_is_the_empty_summary_and_prompts_are_exact(prompts, tiny_tokenizer):
    problems = ["What is 1 + 1?", "Is 7 prime?"]
    rng = np.random.default_rng(1)
    prompt = lambda p, ctx, cond: prompts.reasoning_ids(p, ctx, cond)  # noqa: E731
    groups = build_groups(_chains(), 3, rng, prompt, problems, num_steps=3,
                          labels=["2", "yes"])
    assert [g.group_id for g in groups] == list(range(6))
    for g in groups:
        chain = _chains()[g.chain]
        want = "" if g.snapshot == 0 else chain.summary_text[g.snapshot - 1]
        assert g.context == want
        # The whole prompt string, encoded in one call (no pieces spliced together).
        text = prompts.reasoning_text(problems[g.problem_index], want, g.snapshot > 0)
        assert g.prompt == tiny_tokenizer.encode(text)
        assert g.label == ["2", "yes"][g.problem_index]
    empty = [g for g in groups if g.snapshot == 0]
    assert len(empty) == 2 and all(g.context == "" for g in empty)
    # The last summary s_T is never a training context.
    assert not any(g.context == f"s3-{g.problem_index}" for g in groups)
    # Summary-free: snapshot i is the previous step's reasoning r_{i-1}.
    free = build_groups(_chains(), 3, rng, prompt, problems, num_steps=3, summary_free=True)
    for g in free:
        assert g.context == ("" if g.snapshot == 0
                             else _chains()[g.chain].reasoning_text[g.snapshot - 1])


def test_check_groups_fails_loudly_on_bad_bookkeeping():
    g = [Group(0, "reasoning", 0, 0, 0, [1], "", responses=[[1]] * 4),
         Group(1, "reasoning", 0, 0, 1, [1], "", responses=[[1]] * 3)]
    with pytest.raises(ValueError, match="group 1 has 3 responses, expected 4"):
        check_groups(g, 4)
    g[1].group_id = 0
    with pytest.raises(ValueError, match="duplicate group ids"):
        check_groups(g, 4)


def test_minibatches_keep_groups_whole():
    ids = np.repeat([5, 2, 9, 4, 7], 4)
    parts = split_minibatches(ids, 2)
    assert sorted(np.concatenate(parts).tolist()) == list(range(20))
    for part in parts:
        for g in set(ids[part].tolist()):
            assert (ids[part] == g).sum() == 4  # a group is never split
    assert [len(p) for p in parts] == [12, 8]
    with pytest.raises(ValueError, match="2 groups cannot fill 3 mini-batches"):
        split_minibatches([0, 0, 1, 1], 3)


@pytest.mark.parametrize("shards,budget", [(1, 64), (4, 100), (8, 1000), (2, 10)])
def test_micro_batches_cover_every_sample_once_within_budget(shards, budget):
    rng = np.random.RandomState(shards)
    lengths = rng.randint(5, 90, 37)
    plans = plan_micro_batches(lengths, budget, shards, per_octave=4)
    taken = np.concatenate([p.indices for p in plans])
    assert sorted(taken.tolist()) == list(range(37))
    for p in plans:
        assert p.rows % shards == 0 and len(p.indices) <= p.rows
        assert lengths[p.indices].max() <= p.length
        per_shard = p.rows // shards
        assert per_shard == 1 or per_shard * p.length <= budget
    # Rows are a function of the length bucket only (few distinct shapes).
    shape_rows = collections.defaultdict(set)
    for p in plans:
        shape_rows[p.length].add(p.rows)
    assert all(len(r) == 1 for r in shape_rows.values())


def test_length_buckets():
    assert [length_bucket(n) for n in (1, 17, 300, 18000)] == [16, 32, 304, 18432]
    assert [length_bucket(n, per_octave=1) for n in (17, 300)] == [32, 512]


def test_pack_rows_marks_only_response_tokens():
    samples = [Sample([1, 2, 3], [4, 5], 0.5, 0, sampler_logprobs=np.array([-1., -2.])),
               Sample([6], [7, 8, 9], -1.0, 1)]
    plans = plan_micro_batches([s.length for s in samples], 100, 4, per_octave=1)
    assert len(plans) == 1 and plans[0].rows == 4
    w = aggregation_weights("token_mean", np.array([2, 3]))
    rows = pack_rows(samples, plans[0], w, pad_id=0)
    order = list(plans[0].indices)
    a, b = order.index(0), order.index(1)
    assert rows["tokens"][a, :5].tolist() == [1, 2, 3, 4, 5]
    assert rows["response_mask"][a].tolist()[:6] == [False] * 3 + [True] * 2 + [False]
    assert rows["response_mask"][b].tolist()[:5] == [False, True, True, True, False]
    assert rows["sampler_logp"][a, 3:5].tolist() == [-1.0, -2.0]
    assert rows["seq_weights"][2:].tolist() == [0.0, 0.0]  # padding rows carry no loss
    assert rows["advantages"][[a, b]].tolist() == [0.5, -1.0]


def test_row_keys_do_not_depend_on_the_batch():
    both = row_keys(0, ["a", "b"], 3)
    assert both.shape == (6, 2)
    np.testing.assert_array_equal(row_keys(0, ["b"], 3), both[3:])
    assert not np.array_equal(row_keys(1, ["b"], 3), both[3:])


def _config(**rl):
    c = run_config.default_config("train")
    c.model.path = "builtin:tiny-random"
    c.data.source = "builtin:demo"
    for k, v in rl.items():
        setattr(c.rl, k, v)
    return c


def test_paper_batch_layout_is_valid_on_pod_meshes():
    c = _config()
    assert rl_config.sequences_per_step(c) == 1024
    for mesh, devices in (("fsdp:4", 4), ("data:4,fsdp:4", 16), ("fsdp:-1", 32)):
        c.mesh = mesh
        run_config.validate(c, device_count=devices)


@pytest.mark.parametrize("changes,mesh,match", [
    ({"group_size": 1}, "", "config.rl.group_size: group size 1"),
    ({"num_minibatches": 3}, "", "do not split into 3 mini-batches"),
    ({"batch_size": 3, "group_size": 2, "snapshots_per_chain": 1, "num_minibatches": 2},
     "", "would split a group of 2"),
    ({"batch_size": 2, "group_size": 2, "snapshots_per_chain": 1, "num_minibatches": 1},
     "data:8", "does not divide over the 8 batch shards"),
    ({"snapshots_per_chain": 4}, "", "rl.snapshots_per_chain"),
    ({"old_logprobs": "sampler", "tis_cap": 2.0}, "", "config.rl.tis_cap"),
    ({"loss_agg_mode": "sum"}, "", "config.rl.loss_agg_mode"),
    ({"kl_type": "k4"}, "", "config.rl.kl_type"),
])
def test_bad_batch_layout_and_options_fail_with_the_field_named(changes, mesh, match):
    c = _config(**changes)
    c.mesh = mesh
    with pytest.raises(ValueError, match=match):
        run_config.validate(c, device_count=8)
