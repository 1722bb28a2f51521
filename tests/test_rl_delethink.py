"""RL on Delethink chunks (`rl.rollout = delethink`, the Markovian Thinker's recipe) at
tiny scale: every chunk of a trace is a trained sample whose prompt is the chunk's prompt
(head + first m0 ids of chunk 0 + last m ids of the previous chunk) and whose response is
the chunk's ids, with its whole trace's reward and group-relative advantage (one group =
one problem's G traces); a step changes the weights; a resumed run equals a straight one;
config checks."""
import json

import jax
import numpy as np
import pytest

from rc_jax.config import config_hash, validate
from rc_jax.methods.delethink import chunk_budget, chunk_prompt
from rc_jax.rl import losses
from test_rl_train import files, make_trainer, model, tiny_rct  # noqa: F401 (fixtures)

C, M0, M, CHUNKS, G = 8, 2, 3, 3, 4


def odd_length(items):
    """Test reward: 1 when the trace's text has an odd length (varies within a group)."""
    return [float(len(text) % 2) for text, _ in items]


def delethink_rct(files, out, **changes):  # noqa: F811
    opts = dict(rollout="delethink", group_size=G, delethink__template="bare",
                delethink__chunk_tokens=C, delethink__keep_first=M0, delethink__keep_last=M,
                delethink__max_chunks=CHUNKS)
    return tiny_rct(files, out, **{**opts, **changes})


def _trainer(c, model, tokenizer):  # noqa: F811
    from rc_jax.rl.train import Trainer
    return Trainer(c, reward_fn=odd_length, model=model, tokenizer=tokenizer, mesh=None)


def _spy(obj, name, sink):
    f = getattr(obj, name)

    def wrapped(*a, **k):
        out = f(*a, **k)
        sink.append(out)
        return out
    setattr(obj, name, wrapped)


def test_chunk_samples_prompts_rewards_and_one_step_changes_the_weights(
        files, model, tiny_tokenizer, tmp_path):  # noqa: F811
    tok = tiny_tokenizer
    trainer = _trainer(delethink_rct(files, tmp_path, total_steps=1), model, tok)
    # The random tiny model rarely stops on its own: make some ids stop tokens so traces
    # end in every chunk, not only by the chunk count.
    trainer.rollout.stop_ids = tuple(tok.eos_ids) + tuple(range(300, 330))
    before = jax.tree.map(np.asarray, trainer.params)
    batches, groups, samples = [], [], []
    _spy(trainer.stream, "next_batch", batches)
    _spy(trainer, "_delethink_groups", groups)
    _spy(trainer, "_samples", samples)
    m = trainer.train_step()
    trainer.close()
    (problems,), (groups,), ((samples, _),) = batches, groups, samples
    assert len(groups) == 4 and all(len(g.traces) == G for g in groups)

    stops = set(trainer.rollout.stop_ids)
    ended = set()
    want_samples = []
    for g in groups:
        # The head: the problem (template `bare`) chat-wrapped and encoded whole.
        head = tok.encode(tok.phase_prompt(problems[g.problem_index].problem,
                                           use_think_tags=False))
        assert g.label == problems[g.problem_index].answer
        assert g.rewards == odd_length([(t, "") for t in g.texts])
        adv = losses.compute_advantages("grpo", np.array(g.rewards, np.float32),
                                        np.zeros(G, int), group_size=G)
        for j, t in enumerate(g.traces):
            n = len(t.chunks)
            assert 1 <= n <= CHUNKS and len(t.prompts) == len(t.finish) == n
            for k, ids in enumerate(t.chunks):
                # Chunk k's prompt: head, then the first m0 ids of chunk 0 and the last m
                # ids of chunk k - 1 (the rule on ids).
                want = head if k == 0 else head + t.chunks[0][:M0] + t.chunks[k - 1][-M:]
                assert t.prompts[k] == want == chunk_prompt(head, t.chunks[:k], M0, M)
                assert 1 <= len(ids) <= chunk_budget(C, M, k)
                assert len(t.logprobs[k]) == len(ids)
                last = k == n - 1
                # Only the last chunk may end on a stop token; earlier ones ran to budget.
                assert (t.finish[k] == "stop") == (ids[-1] in stops)
                assert last or t.finish[k] == "length"
                want_samples.append((want, ids, float(adv[j]), g.rewards[j], g.group_id))
            ended.add("stop" if t.finish[-1] == "stop" else "chunks")
            assert t.finish[-1] == "stop" or n == CHUNKS
            # The reward reads the whole trace: every chunk decoded, joined.
            assert g.texts[j] == "".join(tok.decode(x, skip_special_tokens=True)
                                         for x in t.chunks)
    assert ended == {"stop", "chunks"}, "the test should see both ways a trace ends"
    # Every chunk is one trained sample with its trace's reward and advantage.
    got = [(s.prompt, s.response, s.advantage, s.reward, s.group_id) for s in samples]
    assert sorted(map(repr, got)) == sorted(map(repr, want_samples))
    assert m["trained_sequences"] == len(want_samples) > 4 * G
    assert any(s.advantage != 0 for s in samples)
    assert m["chunks_mean"] == pytest.approx(len(want_samples) / (4 * G))
    for key in ("reward_mean", "trace_len_mean", "truncated_frac", "loss", "kl", "grad_norm",
                "zero_adv_frac", "generated_tokens_per_s"):
        assert np.isfinite(m[key]), key
    assert m["updates_skipped_nonfinite"] == 0
    changed = [not np.array_equal(a, np.asarray(b))
               for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(trainer.params))]
    assert all(changed)


def test_resume_equals_a_straight_run(files, model, tiny_tokenizer, tmp_path):  # noqa: F811
    opts = dict(total_steps=2, checkpoint__save_every=1, checkpoint__keep=1)
    straight = _trainer(delethink_rct(files, tmp_path / "a", **opts), model, tiny_tokenizer)
    straight.train()
    straight.close()
    first = _trainer(delethink_rct(files, tmp_path / "b", **opts), model, tiny_tokenizer)
    first.train(num_steps=1)
    first.close()
    resumed = _trainer(delethink_rct(files, tmp_path / "b", **opts), model, tiny_tokenizer)
    assert resumed.step == 1
    resumed.train()
    resumed.close()
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def read(d):  # metrics without wall-clock fields
        return [{k: v for k, v in json.loads(l).items()
                 if not k.startswith("time") and "per_s" not in k}
                for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert read(tmp_path / "a") == read(tmp_path / "b")
    # Another chunk size is another configuration: it refuses this directory.
    other = delethink_rct(files, tmp_path / "b", **opts)
    other.delethink.chunk_tokens = C + 1
    with pytest.raises(ValueError, match="different configuration"):
        _trainer(other, model, tiny_tokenizer)


def test_config_checks_and_resume_hash(files, tmp_path):  # noqa: F811
    c = delethink_rct(files, tmp_path)
    validate(c, device_count=8)
    # RC-only options, mini-batches over groups (one per problem), the chunk spans.
    for changes, match in [
            (dict(rollout="beam"), "config.rl.rollout"),
            (dict(replay_buffer=True), "config.rl.replay_buffer: is an option of"),
            (dict(chains_per_problem=2), "config.rl.chains_per_problem"),
            (dict(num_minibatches=3), "do not split into 3 mini-batches"),
            (dict(delethink__keep_last=C), "config.delethink.keep_last: must be < "),
            (dict(delethink__max_chunks=0), "config.delethink.max_chunks")]:
        with pytest.raises(ValueError, match=match):
            validate(delethink_rct(files, tmp_path, **changes), device_count=8)
    # snapshots_per_chain is RC's: not checked against rc.num_steps here.
    validate(delethink_rct(files, tmp_path, snapshots_per_chain=5), device_count=8)
    # Under rl.rollout = rc the delethink section is not read: not in the hash.
    rc = tiny_rct(files, tmp_path)
    before = config_hash(rc)
    rc.delethink.chunk_tokens = 77
    assert config_hash(rc) == before
    before = config_hash(c)
    c.delethink.chunk_tokens = 77
    assert config_hash(c) != before
