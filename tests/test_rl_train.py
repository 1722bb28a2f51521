"""RCT end to end on a tiny model: it learns, it resumes bit-exactly, a sharded update
equals the single-device one, and bad configs fail before any generation."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from rc_jax.models import param_shapes
from rc_jax.parallel import make_mesh, param_shardings
from rc_jax import config as run_config
from rc_jax.rl.batch import Sample
from rc_jax.rl.train import Trainer, optimizer_settings, loss_settings, train_on_samples
from rc_jax.rl.step import train_programs

ROOT = Path(__file__).parents[1]


def random_params(config, seed=0, scale=0.1):
    """Random params without compiling an initializer (norm scales around 1)."""
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(rng.normal(0, scale, s.shape).astype(np.float32)
                                    + ("norm" in jax.tree_util.keystr(path))),
        param_shapes(config))


@pytest.fixture(scope="module")
def model():
    config = tiny_config("qwen3", tied=True, vocab_size=512, num_layers=1)
    return config, random_params(config)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Short templates (short sequences keep CPU steps fast) and a problem file."""
    d = tmp_path_factory.mktemp("rct")
    (d / "reason.txt").write_text("{problem}\n{curr_summary}\n")
    (d / "summary.txt").write_text("{problem}\n{existing_summary}\n{reasoning}\n")
    with (d / "problems.jsonl").open("w") as f:
        for i in range(8):
            f.write(json.dumps({"id": f"p{i}", "question": f"Say {i % 2 + 7}.",
                                "answer": "7"}) + "\n")
    return d


def tiny_rct(files, out, **rl):
    c = run_config.default_config("train")
    c.model.path = "builtin:tiny-random"
    c.model.dtype = "float32"
    c.model.remat_policy = "none"
    c.data.source = str(files / "problems.jsonl")
    c.rc.reasoning_template = str(files / "reason.txt")
    c.rc.summary_template = str(files / "summary.txt")
    c.rc.num_steps = 2
    c.rc.max_reasoning_tokens = 12
    c.rc.max_summary_tokens = 6
    c.rl.batch_size = 4
    c.rl.snapshots_per_chain = 1
    c.rl.group_size = 8
    c.rl.num_minibatches = 2
    c.rl.micro_batch_tokens = 4096
    c.rl.length_buckets_per_octave = 1
    c.rl.learning_rate = 1e-2
    c.rl.total_steps = 20
    c.checkpoint.save_every = 0
    c.checkpoint.export_final = False
    c.output_dir = str(out)
    c.mesh = ""
    c.progress = False
    c.tensorboard = False
    for k, v in rl.items():
        section, _, name = k.rpartition("__")
        setattr(c[section] if section else c.rl, name, v)
    return c


def says_the_answer(items):
    """Test reward: 1 when the response states the answer (a digit) anywhere."""
    return [float(gold in text) for text, gold in items]


def make_trainer(c, model, tokenizer, mesh=None):
    return Trainer(c, reward_fn=says_the_answer, model=model, tokenizer=tokenizer, mesh=mesh)


def test_it_learns(files, model, tiny_tokenizer, tmp_path):
    # max_generation_rows=16: the 32 group rows are sampled in two calls.
    trainer = make_trainer(tiny_rct(files, tmp_path, total_steps=12, max_generation_rows=16),
                           model, tiny_tokenizer)
    history = trainer.train()
    trainer.close()
    rewards = [h["reward_mean"] for h in history]
    first, last = np.mean(rewards[:2]), np.mean(rewards[-4:])
    assert first < 0.2, rewards  # the random model rarely says it
    assert last > first + 0.5, rewards
    h = history[-1]
    assert h["trained_sequences"] == 32 and h["updates_skipped_nonfinite"] == 0
    for key in ("kl", "entropy", "clip_frac_high", "clip_frac_low", "grad_norm",
                "zero_adv_frac", "chain_acc_step_0", "chain_acc_step_1", "time_generation_s",
                "time_logprob_s", "time_update_s", "generated_tokens_per_s"):
        assert np.isfinite(h[key]), key
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == list(range(1, 13))


def test_resume_is_bit_exact(files, model, tiny_tokenizer, tmp_path):
    opts = dict(total_steps=4, replay_buffer=True, replay_samples_per_problem=1,
                checkpoint__save_every=2, checkpoint__keep=1, checkpoint__export_final=True)
    straight = make_trainer(tiny_rct(files, tmp_path / "a", **opts), model, tiny_tokenizer)
    straight.train()
    straight.close()

    first = make_trainer(tiny_rct(files, tmp_path / "b", **opts), model, tiny_tokenizer)
    first.train(num_steps=2)
    first.close()  # "killed" after the step-2 checkpoint
    resumed = make_trainer(tiny_rct(files, tmp_path / "b", **opts), model, tiny_tokenizer)
    assert resumed.step == 2 and len(resumed.buffer) > 0
    resumed.train()
    resumed.close()

    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(straight.opt_state), jax.tree.leaves(resumed.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert straight.buffer.state_dict() == resumed.buffer.state_dict()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["4"]  # keep=1: older checkpoints deleted
    # The final policy is exported as an HF directory that loads back identically.
    from rc_jax.models import load_hf_checkpoint
    _, exported = load_hf_checkpoint(tmp_path / "a" / "export" / "step_4")
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(exported)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (tmp_path / "a" / "export" / "step_4" / "tokenizer.json").exists()
    def read(d):  # metrics without wall-clock fields
        return [{k: v for k, v in json.loads(l).items()
                 if not k.startswith("time") and "per_s" not in k}
                for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert read(tmp_path / "a") == read(tmp_path / "b")
    # A different configuration refuses to resume from this directory.
    other = tiny_rct(files, tmp_path / "b", **dict(opts, learning_rate=1e-3))
    with pytest.raises(ValueError, match="different configuration"):
        make_trainer(other, model, tiny_tokenizer)


def _samples(config, n_groups=4, group_size=4, seed=0):
    rng = np.random.RandomState(seed)
    out = []
    for g in range(n_groups):
        prompt = rng.randint(0, config.vocab_size, rng.randint(3, 7)).tolist()
        rewards = rng.randint(0, 2, group_size).astype(np.float32)
        adv = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        for j in range(group_size):
            resp = rng.randint(0, config.vocab_size, rng.randint(2, 10)).tolist()
            out.append(Sample(prompt, resp, float(adv[j]), g, float(rewards[j]),
                              rng.uniform(-7, -5, len(resp)).astype(np.float32)))
    return out


def _one_update(c, config, params, mesh):
    shardings = None if mesh is None else param_shardings(config, mesh)
    programs = train_programs(config, loss_settings(c), optimizer_settings(c), mesh, shardings)
    params = jax.tree.map(jnp.array, params)  # fresh buffers: the update donates them
    if shardings is not None:
        params = jax.device_put(params, shardings)
    ref = jax.tree.map(lambda x: x * 1.01, params)
    opt = programs.init_opt_state(params)
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    params, opt, metrics = train_on_samples(programs, params, opt, ref, _samples(config), c.rl,
                                            shards=shards, pad_id=0)
    return jax.device_get(params), metrics


def test_sharded_update_equals_single_device(files, model, tmp_path):
    config, params = model
    c = tiny_rct(files, tmp_path, learning_rate=1e-3, micro_batch_tokens=64,
                 logprob_chunk=8)
    want, m1 = _one_update(c, config, params, None)
    assert m1["micro_batches"] > 2  # gradient accumulation over several micro-batches
    for shape in ("data:8", "data:2,fsdp:4"):
        got, m8 = _one_update(c, config, params, make_mesh(shape))
        for key in ("loss", "kl", "entropy", "grad_norm", "clip_frac_high"):
            assert m8[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), (shape, key)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            # Adam's first step moves each weight by ~lr * sign(g): a weight whose gradient
            # is ~0 may move differently under another reduction order, so the tolerance
            # is 5% of lr (the step itself is 100%).
            np.testing.assert_allclose(a, b, atol=0.05 * c.rl.learning_rate)
            assert np.mean(np.abs(a - b) > 1e-6) < 1e-3  # and only a handful of them


def test_bad_configs_fail_before_any_model_or_generation(files, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded for a bad config")
    monkeypatch.setattr(Trainer, "_load_model", boom)
    cases = [
        (dict(group_size=1), "config.rl.group_size"),
        (dict(batch_size=2, snapshots_per_chain=1, group_size=2, num_minibatches=1,
              mesh="data:8"), "does not divide over the 8 batch shards"),
        (dict(data__answer_field="reward_model.ground_truth"),
         "missing answer field 'reward_model.ground_truth'"),
        (dict(kl_coef_summary=0.01), "config.rl.kl_coef_summary: applies to summary tokens"),
        (dict(microbatch_agg_shards=3), "does not split into 3 equal parts"),
        # Every rollout prompt plus its budget must fit the model's context (read from
        # its config.json, before the weights load).
        (dict(rc__max_reasoning_tokens=40000, model__max_cache_length=1 << 17),
         r"problem p0: the rc summary phase needs up to \d+ tokens .* over the \d+-token "
         r"context of model builtin:tiny-random"),
    ]
    for changes, match in cases:
        mesh = changes.pop("mesh", "")
        c = tiny_rct(files, tmp_path, **changes)
        c.mesh = mesh
        with pytest.raises(ValueError, match=match):
            Trainer(c, reward_fn=says_the_answer, device_count=8)


def test_cli_rejects_a_bad_training_config(tmp_path):
    res = subprocess.run([sys.executable, "-m", "rc_jax.main", "--config=experiments/rct_tiny.py",
                          f"--config.output_dir={tmp_path}", "--config.rl.group_size=1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0 and "config.rl.group_size" in res.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def _spy(obj, name, sink):
    """Wraps obj.name so its results are also appended to `sink`."""
    f = getattr(obj, name)
    setattr(obj, name, lambda *a: sink.extend(f(*a)) or sink)


def test_summary_free_option(files, model, tiny_tokenizer, tmp_path):
    # The ablation: contexts are the previous step's full reasoning; no summarizer.
    c = tiny_rct(files, tmp_path, total_steps=1, summary_free=True, snapshots_per_chain=2,
                 replay_buffer=True)
    trainer = make_trainer(c, model, tiny_tokenizer)
    chains = []
    _spy(trainer.rollout, "run_chains", chains)
    m = trainer.train_step()
    trainer.close()
    assert all(ch.summary_ids == [] and len(ch.reasoning_ids) == 2 for ch in chains)
    # Its replay buffer stores reasoning traces (there are no summaries).
    stored = trainer.buffer.summaries(trainer.stream.problems[0].problem) or \
        next(iter(trainer.buffer.entries.values()))
    assert {e.text for e in stored} <= {t for ch in chains for t in ch.reasoning_text}
    assert [e.depth for e in stored][:2] == [1, 2]
    assert m["trained_sequences"] == 4 * 2 * 8 and "summary_len_mean" not in m
    assert np.isfinite(m["loss"])


def test_summarizer_training_option(files, model, tiny_tokenizer, tmp_path):
    # Extra groups whose responses are summaries; each summary's reward is the mean grade
    # of `summary_reward_samples` reasoning continuations conditioned on it.
    c = tiny_rct(files, tmp_path, total_steps=1, train_summarizer=True,
                 summary_snapshots_per_chain=1, summary_group_size=4, summary_reward_samples=2,
                 kl_coef=0.0, kl_coef_summary=0.01)
    trainer = make_trainer(c, model, tiny_tokenizer)
    # Only the summary tokens have a KL coefficient: the reference is still loaded.
    assert trainer.ref_params is not None and trainer.loss.summary_kl_coef == 0.01
    groups = []
    _spy(trainer, "_summary_groups", groups)
    m = trainer.train_step()
    trainer.close()
    assert len(groups) == 4 and all(g.kind == "summary" and len(g.responses) == 4
                                    for g in groups)
    assert all(r in (0.0, 0.5, 1.0) for g in groups for r in g.rewards)
    assert m["trained_sequences"] == 4 * 1 * 8 + 4 * 1 * 4
    assert "summary_reward_mean" in m and "summary_zero_adv_frac" in m
    assert np.isfinite(m["kl_summary"]) and np.isfinite(m["kl_reasoning"])


def test_authors_dataset_format_loads(tmp_path):
    from rc_jax.rl.train import load_training_problems
    row = {"data_source": "acemath", "prompt": [{"role": "user", "content": "Find 2+2."}],
           "reward_model": {"ground_truth": "4", "style": "rule"},
           "extra_info": {"index": 17}}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    c = run_config.default_config("train")
    c.data.source = str(tmp_path / "train.jsonl")
    (p,) = load_training_problems(c)
    assert (p.problem, p.answer, p.problem_id) == ("Find 2+2.", "4", "17")


def test_each_buffered_summary_seeds_chains_per_problem_chains():
    from types import SimpleNamespace
    from rc_jax.rl.replay import SummaryReplayBuffer
    from rc_jax.rl.train import seed_chains
    buf = SummaryReplayBuffer()
    buf.add("A", ["s1", "s2", "s3"], start_depth=0, step=1, ids=[[1], [2, 2], [3, 3, 3]])
    buf.add("C", ["long summary"], start_depth=4, step=1)  # warm start: no ids
    problems = [SimpleNamespace(problem=p) for p in ("A", "B", "C")]
    chains = seed_chains(problems, buf, np.random.default_rng(0), 2, chains_per_problem=3,
                         samples_per_problem=2, encode=lambda t: list(range(len(t))),
                         max_seed_tokens=5)
    a = [ch for ch in chains if ch.problem_index == 0]
    assert [ch.chain_index for ch in a] == list(range(6))  # 2 summaries x 3 chains each
    seeds = [tuple(ch.seed_ids) for ch in a]
    assert len(set(seeds)) == 2 and all(seeds[3 * s:3 * s + 3] == [seeds[3 * s]] * 3
                                        for s in range(2))
    assert [ch.start_depth for ch in a] == [len(x) for x in seeds]  # s_j has depth j here
    b = [ch for ch in chains if ch.problem_index == 1]  # not stored: 3 chains from ""
    assert [(ch.chain_index, ch.seed_ids, ch.start_depth) for ch in b] == \
        [(0, [], 0), (1, [], 0), (2, [], 0)]
    c = [ch for ch in chains if ch.problem_index == 2]  # re-encoded, cut to H_S
    assert [(ch.seed_ids, ch.start_depth) for ch in c] == [([0, 1, 2, 3, 4], 5)] * 3
    # Without a buffer every problem gets its chains from "".
    assert len(seed_chains(problems, None, np.random.default_rng(0), 2, chains_per_problem=2,
                           samples_per_problem=2, encode=None, max_seed_tokens=5)) == 6


def test_new_rl_fields_at_their_defaults_keep_the_resume_hash(files, tmp_path):
    c = tiny_rct(files, tmp_path)
    assert "kl_coef_summary" not in run_config.semantic_dict(c)["rl"]
    before = run_config.config_hash(c)
    c.rl.microbatch_agg_shards = 8
    assert run_config.config_hash(c) != before
