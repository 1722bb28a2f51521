"""RL math against hand-computed numbers: advantages, KL estimators, the clipped loss
(incl. dual clip), aggregation weights, and gradients against finite differences."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from rc_jax.models import param_shapes
from rc_jax.rl import losses
from rc_jax.rl.logprobs import token_logprobs
from rc_jax.rl.step import LossSettings, OptimizerSettings, micro_loss, train_programs


def test_grpo_advantages_by_hand_and_all_equal_groups():
    rewards = np.array([1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    groups = np.repeat([7, 3, 5], 4)  # ids need not be sorted or contiguous numbers
    adv = losses.compute_advantages("grpo", rewards, groups, group_size=4)
    std = math.sqrt(0.25 * 0.75)  # population std of [1, 0, 0, 0]
    np.testing.assert_allclose(adv[:4], [0.75 / (std + 1e-6)] + [-0.25 / (std + 1e-6)] * 3,
                               rtol=1e-6)
    assert np.all(adv[4:] == 0)  # all-correct and all-wrong groups: exactly 0, kept
    np.testing.assert_array_equal(losses.zero_variance_groups(rewards, groups),
                                  [False] * 4 + [True] * 8)
    np.testing.assert_allclose(losses.compute_advantages("grpo_no_std", rewards, groups)[:4],
                               [0.75, -0.25, -0.25, -0.25])
    np.testing.assert_allclose(losses.compute_advantages("rloo", rewards, groups)[:4],
                               [1.0, -1 / 3, -1 / 3, -1 / 3], rtol=1e-6)


def test_advantages_refuse_a_wrong_grouping():
    with pytest.raises(ValueError, match="group 3 has 3 responses, expected group_size=4"):
        losses.compute_advantages("grpo", np.zeros(7), np.array([1] * 4 + [3] * 3),
                                  group_size=4)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        losses.compute_advantages("ppo_gae", np.zeros(2), np.zeros(2))


def test_k3_kl_by_hand_and_clamped():
    logp = jnp.array([-1.0, -2.0, 0.0, -30.0, -0.5])
    ref = jnp.array([-2.0, -1.0, -30.0, 0.0, -0.5])
    got = np.asarray(losses.kl_penalty("low_var_kl", logp, ref))
    want = [math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1, 10.0, 10.0, 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.all(got >= 0)
    np.testing.assert_allclose(losses.kl_penalty("kl", logp, ref), logp - ref)
    np.testing.assert_allclose(losses.kl_penalty("mse", logp, ref), 0.5 * (logp - ref) ** 2)


def test_ppo_asymmetric_and_dual_clip_by_hand():
    ratio = np.array([1.5, 0.5, 0.5, 5.0, 2.0, 1.1, 1.0])
    adv = np.array([1.0, 1.0, -1.0, -1.0, -2.0, 0.5, 0.0])
    old = np.zeros(7, np.float32)
    out = losses.ppo_clip_loss(jnp.log(ratio), old, adv, clip_low=0.2, clip_high=0.28,
                               clip_c=3.0)
    # A>0: max(-A r, -A clip(r)); A<0: additionally capped at -3A.
    want = [-1.28, -0.5, 0.8, 3.0, 4.0, -0.55, 0.0]
    np.testing.assert_allclose(out.loss, want, rtol=1e-5)
    assert list(np.asarray(out.clipped_high)) == [True, False, False, False, False, False, False]
    assert list(np.asarray(out.clipped_low)) == [False, False, True, False, False, False, False]
    assert list(np.asarray(out.dual_clipped)) == [False, False, False, True, False, False, False]
    plain = losses.POLICY_LOSSES["ppo"](jnp.log(ratio), old, adv, clip_low=0.2,
                                        clip_high=0.28, clip_c=3.0)
    assert float(plain.loss[3]) == pytest.approx(5.0)  # no dual clip


def test_truncated_importance_weight():
    w = losses.truncated_importance_weight(jnp.log(jnp.array([0.5, 0.9, 0.9])),
                                           jnp.log(jnp.array([0.5, 0.3, 0.89])), 2.0)
    np.testing.assert_allclose(w, [1.0, 2.0, 0.9 / 0.89], rtol=1e-6)


def test_aggregation_weights_by_hand():
    lengths = np.array([2, 3, 5])
    micro = np.array([0, 0, 1])
    agg = lambda m: losses.aggregation_weights(m, lengths, micro)  # noqa: E731
    np.testing.assert_allclose(agg("token_mean"), [0.1, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(agg("seq_mean_token_mean"), [1 / 6, 1 / 9, 1 / 15], rtol=1e-6)
    np.testing.assert_allclose(agg("seq_mean_token_sum"), [1 / 3] * 3, rtol=1e-6)
    # The authors' per-micro-batch token mean, rescaled by the micro-batch's share.
    np.testing.assert_allclose(agg("microbatch_token_mean"),
                               [(2 / 3) / 5, (2 / 3) / 5, (1 / 3) / 5], rtol=1e-6)
    for mode in ("token_mean", "seq_mean_token_mean", "microbatch_token_mean"):
        assert float(np.sum(agg(mode) * lengths)) == pytest.approx(1.0)  # a mean of tokens
    per_token = jnp.ones((3, 5))
    mask = jnp.arange(5)[None] < jnp.asarray(lengths)[:, None]
    assert float(losses.aggregate(per_token, mask, jnp.asarray(agg("token_mean")))) == \
        pytest.approx(1.0)


KL_COEF = 0.05


def _loss_of_logp(logp, old, adv, ref, weights, mask):
    pl = losses.ppo_clip_loss(logp, old, adv[:, None], clip_low=0.2, clip_high=0.28,
                              clip_c=3.0)
    per_token = pl.loss + KL_COEF * losses.kl_penalty("low_var_kl", logp, ref)
    return losses.aggregate(per_token, mask, weights)


def test_loss_gradient_matches_finite_differences():
    rng = np.random.RandomState(0)
    old = rng.uniform(-3, -0.5, (2, 4)).astype(np.float32)
    # Ratios inside, above and below the clip range (away from the kinks).
    logp = old + np.array([[0.05, 0.5, -0.6, 0.0], [0.1, -0.4, 1.8, -0.02]], np.float32)
    ref = old + rng.normal(0, 0.3, (2, 4)).astype(np.float32)
    adv = np.array([1.3, -0.7], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
    w = losses.aggregation_weights("token_mean", mask.sum(1))
    f = jax.jit(lambda x: _loss_of_logp(x, old, adv, ref, w, mask))
    grad = np.asarray(jax.grad(f)(jnp.asarray(logp)))
    eps = 1e-3
    for idx in np.ndindex(logp.shape):
        d = np.zeros_like(logp)
        d[idx] = eps
        fd = (float(f(logp + d)) - float(f(logp - d))) / (2 * eps)
        assert grad[idx] == pytest.approx(fd, rel=2e-2, abs=1e-4), idx
    assert grad[0, 3] == 0  # masked token
    # Clipped tokens keep only the KL gradient, w * beta * d k3 / d logp = 1 - e^(ref-logp):
    # (0, 1): A > 0 with ratio e^0.5 > 1.28; (1, 2): A < 0 with ratio e^1.8 > c = 3.
    for i, j in ((0, 1), (1, 2)):
        kl_grad = w[i] * KL_COEF * (1 - np.exp(ref[i, j] - logp[i, j]))
        assert grad[i, j] == pytest.approx(kl_grad, rel=1e-4)


def random_params(config, seed=0, scale=0.2):
    """Random params without compiling an initializer (norm scales around 1)."""
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(rng.normal(0, scale, s.shape).astype(np.float32)
                                    + ("norm" in jax.tree_util.keystr(path))),
        param_shapes(config))


@pytest.fixture(scope="module")
def tiny_model():
    # remat 'full': the gradient checks below also cover per-layer rematerialisation.
    config = tiny_config("qwen3", vocab_size=64, num_layers=1, remat_policy="full")
    return config, random_params(config)


def _micro(config, seed=0):
    rng = np.random.RandomState(seed)
    b, s = 3, 12
    tokens = rng.randint(0, config.vocab_size, (b, s)).astype(np.int32)
    mask = np.ones((b, s), bool)
    mask[2, 9:] = False
    resp = np.zeros((b, s), bool)
    resp[:, 5:] = True
    resp &= mask
    return {"tokens": tokens, "positions": np.tile(np.arange(s, dtype=np.int32), (b, 1)),
            "mask": mask, "response_mask": resp,
            "advantages": np.array([1.0, -0.5, 0.3], np.float32),
            "seq_weights": losses.aggregation_weights("token_mean", resp.sum(1)),
            "sampler_logp": np.zeros((b, s), np.float32)}


def test_model_loss_directional_derivative_matches_finite_differences(tiny_model):
    config, params = tiny_model
    micro = _micro(config)
    logp, _ = jax.jit(token_logprobs, static_argnums=1)(
        params, config, micro["tokens"], micro["positions"], micro["mask"])
    micro["old_logp"] = np.asarray(logp) - 0.05  # ratios ~1.05: inside the clip range
    micro["ref_logp"] = np.asarray(logp) + 0.1
    ls = LossSettings(kl_coef=0.01)
    rng = np.random.RandomState(1)
    direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)

    @jax.jit
    def check(p, d, eps):
        f = lambda q: micro_loss(q, micro, config, ls)[0]  # noqa: E731
        g = jax.grad(f)(p)
        analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(d)))
        shift = lambda s: jax.tree.map(lambda x, y: x + s * y, p, d)  # noqa: E731
        return analytic, (f(shift(eps)) - f(shift(-eps))) / (2 * eps)

    analytic, numeric = check(params, direction, 1e-3)
    assert float(analytic) == pytest.approx(float(numeric), rel=2e-2)


def test_chunked_logprobs_equal_full_logits(tiny_model):
    config, params = tiny_model
    micro = _micro(config, seed=3)
    args = (micro["tokens"], micro["positions"], micro["mask"])

    @functools.partial(jax.jit, static_argnums=0)
    def run(chunk, p):
        f = lambda q: token_logprobs(q, config, *args, temperature=0.7, chunk=chunk)  # noqa
        (lp, ent), vjp = jax.vjp(f, p)
        return lp, ent, vjp((jnp.ones_like(lp), jnp.zeros_like(ent)))[0]

    full_lp, full_ent, g_full = run(0, params)
    lp, ent, g_chunk = run(5, params)
    np.testing.assert_allclose(lp, full_lp, atol=1e-5)
    np.testing.assert_allclose(ent, full_ent, atol=1e-5)
    assert np.all(np.asarray(full_lp)[:, 0] == 0) and np.all(np.asarray(full_lp)[:, 1:] < 0)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_non_finite_gradient_skips_the_update(tiny_model):
    config, params = tiny_model
    programs = train_programs(config, LossSettings(), OptimizerSettings(learning_rate=0.1))
    params = jax.tree.map(jnp.array, params)
    opt = programs.init_opt_state(params)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, jnp.float32), params)
    grads["embedding"] = grads["embedding"].at[0, 0].set(jnp.nan)
    before = jax.device_get(params)
    new, opt2, stats = programs.update(params, opt, grads)
    assert bool(stats["skipped"]) and not np.isfinite(float(stats["grad_norm"]))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(new))):
        np.testing.assert_array_equal(a, b)
    assert int(jax.tree.leaves(opt2)[0]) == 0  # Adam's step count did not advance
    good = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, jnp.float32), new)
    newer, _, stats = programs.update(new, opt2, good)
    assert not bool(stats["skipped"])
    # Clipped to norm 1, Adam's first step is lr * sign(g) (plus weight decay).
    step = np.asarray(jax.device_get(newer)["final_norm"]["scale"]) - \
        before["final_norm"]["scale"] * (1 - 0.1 * 0.01)
    np.testing.assert_allclose(step, -0.1, rtol=1e-3)


# ----------------------------------------------------------------------------- the authors'
# micro-batch weighting, the KL token mean and the summary KL coefficient


def _authors_token_weights(lengths, response_lengths, budget, workers):
    """Per-sequence weight of each response token, computed the way the authors' verl
    actor weights it: the mini-batch split in order over `workers`; each worker cuts its
    share into ceil(tokens / budget) micro-batches (token-balanced, greedy LPT here);
    each micro-batch's loss is the token mean of its responses times n_m / N_worker;
    gradients are averaged over the workers."""
    n = len(lengths)
    w = np.zeros(n)
    for part in np.split(np.arange(n), workers):
        k = -(-int(lengths[part].sum()) // budget)
        bins = [[] for _ in range(k)]
        for i in sorted(part, key=lambda i: -lengths[i]):  # longest first
            min(bins, key=lambda b: sum(lengths[j] for j in b)).append(i)
        for b in bins:
            tokens = sum(response_lengths[j] for j in b)
            for j in b:
                w[j] = (1 / workers) * (len(b) / len(part)) / tokens
    return w


def test_microbatch_token_mean_weights_are_the_authors_token_balanced_partition():
    from rc_jax import config as run_config
    from rc_jax.rl.batch import Sample
    from rc_jax.rl.train import pack_minibatch
    rng = np.random.RandomState(0)
    n, shards, budget = 64, 2, 400
    prompt_len = 8
    # 30% long responses, the rest short, in random order.
    resp = np.where(rng.rand(n) < 0.3, rng.randint(150, 200, n), rng.randint(5, 40, n))
    lengths = resp + prompt_len
    ids = losses.token_balanced_partition(lengths, budget, shards)
    # Each part has ceil(tokens / budget) micro-batches that mix long and short sequences
    # and hold similar token counts.
    for part in np.split(np.arange(n), shards):
        mids = np.unique(ids[part])
        assert len(mids) == -(-lengths[part].sum() // budget)
        loads = [lengths[part][ids[part] == m].sum() for m in mids]
        assert max(loads) - min(loads) <= lengths.max()
        assert all(set(np.flatnonzero(ids == m)) <= set(part) for m in mids)
        mixed = [m for m in mids
                 if (resp[ids == m] >= 150).any() and (resp[ids == m] < 40).any()]
        assert len(mixed) >= len(mids) - 1
    want = _authors_token_weights(lengths, resp, budget, shards)
    np.testing.assert_allclose(losses.aggregation_weights("microbatch_token_mean", resp, ids),
                               want, rtol=1e-6)
    # What reaches the loss: the packed rows' weights on each response token, whatever
    # physical (length-sorted) micro-batch a sequence lands in.
    c = run_config.default_config("train")
    c.rl.loss_agg_mode = "microbatch_token_mean"
    c.rl.micro_batch_tokens = budget
    c.rl.length_buckets_per_octave = 1
    # Rows are matched back to their samples by a marker token in the prompt.
    marked = [Sample([i] * prompt_len, list(range(r)), 1.0, i // 8)
              for i, r in enumerate(resp)]
    per_sample = {}
    for host in pack_minibatch(marked, c.rl, shards=shards, pad_id=0):
        for row in np.flatnonzero(host["response_mask"].any(1)):
            i = int(host["tokens"][row, 0])
            per_sample.setdefault(i, []).append((host["seq_weights"][row],
                                                 host["kl_weights"][row]))
    assert sorted(per_sample) == list(range(n)) and all(len(v) == 1 for v in per_sample.values())
    np.testing.assert_allclose([per_sample[i][0][0] for i in range(n)], want, rtol=1e-6)
    # The KL term in this mode is the authors' per-micro-batch token mean too.
    np.testing.assert_allclose([per_sample[i][0][1] for i in range(n)], want, rtol=1e-6)
    # Sum of weights x tokens = 1 (a mean); a length-sorted partition would differ.
    assert float(np.sum(want * resp)) == pytest.approx(1.0)
    sorted_ids = np.zeros(n, np.int64)
    sorted_ids[np.argsort(-lengths, kind="stable")] = np.arange(n) // 4
    assert not np.allclose(losses.aggregation_weights("microbatch_token_mean", resp,
                                                      sorted_ids), want)


def test_kl_term_is_a_plain_token_mean_in_every_mode():
    lengths = np.array([2, 3, 5, 10])
    micro = np.array([0, 0, 1, 1])
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        np.testing.assert_allclose(losses.kl_aggregation_weights(mode, lengths, micro),
                                   [1 / 20] * 4, rtol=1e-6)
    np.testing.assert_allclose(losses.kl_aggregation_weights("microbatch_token_mean", lengths,
                                                             micro),
                               [0.5 / 5, 0.5 / 5, 0.5 / 15, 0.5 / 15], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss_agg_mode"):
        losses.kl_aggregation_weights("sum", lengths)


def test_kl_coef_summary_applies_to_summary_tokens_only(tiny_model):
    config, params = tiny_model
    micro = _micro(config)
    logp, _ = jax.jit(token_logprobs, static_argnums=1)(
        params, config, micro["tokens"], micro["positions"], micro["mask"])
    logp = np.asarray(logp)
    micro["old_logp"] = logp - 0.05
    micro["ref_logp"] = logp + 0.3
    resp = micro["response_mask"]
    # The policy loss per sequence; the KL a token mean over all rows.
    micro["seq_weights"] = losses.aggregation_weights("seq_mean_token_sum", resp.sum(1))
    micro["kl_weights"] = losses.kl_aggregation_weights("seq_mean_token_sum", resp.sum(1))
    micro["summary_rows"] = np.array([False, True, False])
    loss = jax.jit(lambda ls: micro_loss(params, micro, config, ls), static_argnums=0)
    base, sums0 = loss(LossSettings(kl_coef=0.0, kl_coef_summary=0.0))
    k3 = np.asarray(losses.kl_penalty("low_var_kl", jnp.asarray(logp), micro["ref_logp"]))
    kl_sum = (k3 * resp).sum(1) / resp.sum()  # token mean over every row's tokens
    for a, b in ((0.1, 0.0), (0.0, 0.7), (0.1, 0.7), (0.2, None)):
        got, sums = loss(LossSettings(kl_coef=a, kl_coef_summary=b))
        coef = np.array([a, a if b is None else b, a])
        assert float(got) == pytest.approx(float(base) + float((coef * kl_sum).sum()),
                                           rel=1e-5, abs=1e-7), (a, b)
    assert float(sums["summary_tokens"]) == resp[1].sum()
    assert float(sums["kl_summary"]) == pytest.approx(float((k3 * resp)[1].sum()), rel=1e-5)
    # Without the optional fields: kl weights = seq weights, no summary rows (old behaviour).
    plain = {k: v for k, v in micro.items() if k not in ("kl_weights", "summary_rows")}
    got, _ = jax.jit(lambda: micro_loss(params, plain, config,
                                        LossSettings(kl_coef=0.1, kl_coef_summary=5.0)))()
    want = float(base) + 0.1 * float(((k3 * resp).sum(1) * micro["seq_weights"]).sum())
    assert float(got) == pytest.approx(want, rel=1e-5)
