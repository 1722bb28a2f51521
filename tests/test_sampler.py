"""Sampler: exact greedy vs transformers, sampling distribution, stops, logprobs, buckets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from helpers import randomize, tiny_config
from rc_jax.compile_counter import count_compiles
from rc_jax.models import forward, init_params
from rc_jax.parallel import make_mesh, param_shardings
from rc_jax.sampling import Buckets, SamplingParams, generate
from rc_jax.sampling.core import choose_tokens

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34, 35]]


@pytest.fixture(scope="module")
def model():
    config = tiny_config("qwen3")
    return config, randomize(init_params(config, jax.random.PRNGKey(0)), 0)


def _greedy(model, prompts=PROMPTS, n=24, stop=(), **kw):
    config, params = model
    return generate(params, config, prompts, SamplingParams(temperature=0.0),
                    jax.random.PRNGKey(0), n, list(stop), **kw)


def _full_logits(model, seq, width=32):
    """Logits [len(seq), V] of a plain causal forward (right-padded: one compile)."""
    config, params = model
    padded = jnp.asarray([list(seq) + [0] * (width - len(seq))])
    logits, _ = _jit_forward(params, config, padded, jnp.arange(width)[None])
    return logits[0, :len(seq)]


_jit_forward = jax.jit(forward, static_argnums=1)


def test_greedy_equals_argmax_of_full_forward(model):
    out = _greedy(model, n=12)
    for prompt, gen in zip(PROMPTS, out.tokens):
        seq = list(prompt)
        for _ in range(12):
            seq.append(int(jnp.argmax(_full_logits(model, seq)[-1])))
        assert gen == seq[len(prompt):]


def test_greedy_matches_transformers_generate(tmp_path, model):
    torch = pytest.importorskip("torch")
    from helpers import hf_model_from_dir
    from rc_jax.models import save_hf_checkpoint
    config, params = model
    save_hf_checkpoint(tmp_path, config, params)
    hf = hf_model_from_dir(tmp_path)
    eos = 2
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=64,
                          eos_token_id=eos, pad_token_id=0)[:, width:].tolist()
    ours = _greedy(model, n=64, stop=[eos])
    for row, (r, o) in enumerate(zip(ref, ours.tokens)):
        if eos in r:
            r = r[:r.index(eos) + 1]
        assert o == r, f"row {row} differs"


def test_stop_tokens_end_rows_and_finished_rows_do_not_change(model):
    free = _greedy(model, n=16)
    stop = free.tokens[1][5]  # row 1 will emit this at step 5 (or earlier)
    first = free.tokens[1].index(stop)
    out = _greedy(model, n=16, stop=[stop])
    assert out.tokens[1] == free.tokens[1][:first + 1]
    assert out.finish_reasons[1] == "stop"
    for row in (0, 2):  # other rows: identical prefix, stop where they hit the token
        toks = free.tokens[row]
        cut = toks.index(stop) + 1 if stop in toks else len(toks)
        assert out.tokens[row] == toks[:cut]
        assert out.finish_reasons[row] == ("stop" if stop in toks else "length")


def test_logprobs_match_full_forward_recomputation(model):
    config, params = model
    out = generate(params, config, PROMPTS, SamplingParams(temperature=0.7, top_k=20),
                   jax.random.PRNGKey(3), 10, [], num_samples=2)
    for row, gen in enumerate(out.tokens):
        prompt = PROMPTS[out.prompt_index[row]]
        logits = _full_logits(model, prompt + gen)[None]
        lp = jax.nn.log_softmax(logits[0, len(prompt) - 1:-1], -1)
        expect = np.asarray(lp[jnp.arange(len(gen)), jnp.asarray(gen)])
        np.testing.assert_allclose(out.model_logprobs[row], expect, atol=2e-4)
        # sampling distribution: temperature 0.7 and top-20 renormalised
        scaled = logits[0, len(prompt) - 1:-1] / 0.7
        kth = jnp.sort(scaled, -1)[:, -20][:, None]
        trunc = jax.nn.log_softmax(jnp.where(scaled >= kth, scaled, -jnp.inf), -1)
        np.testing.assert_allclose(out.logprobs[row],
                                   np.asarray(trunc[jnp.arange(len(gen)), jnp.asarray(gen)]),
                                   atol=2e-4)


@pytest.mark.parametrize("sampling", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.5),
    SamplingParams(temperature=1.0, top_p=0.8),
    SamplingParams(temperature=1.3, top_k=4),
    SamplingParams(temperature=1.0, min_p=0.2),
])
def test_sampling_frequencies_match_truncated_distribution(sampling):
    logits = jnp.asarray(np.random.RandomState(0).randn(12).astype(np.float32) * 1.5)
    rows = 40000
    keys = jax.random.split(jax.random.PRNGKey(7), rows)
    choice = choose_tokens(jnp.broadcast_to(logits, (rows, 12)), keys,
                           sampling.values(), greedy=False, truncates=sampling.truncates)
    counts = np.bincount(np.asarray(choice.token), minlength=12)
    # Expected: softmax(logits / T), truncated as documented, renormalised.
    z = np.asarray(logits, np.float64) / sampling.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.zeros(12, bool)
    mass = 0.0
    for rank, tok in enumerate(order):
        ok = mass < sampling.top_p and (sampling.top_k == 0 or rank < sampling.top_k)
        ok &= p[tok] >= sampling.min_p * p[order[0]]
        keep[tok] = ok or rank == 0
        mass += p[tok]
    expected = np.where(keep, p, 0) / p[keep].sum()
    assert counts[~keep].sum() == 0
    chi2, pval = stats.chisquare(counts[keep], expected[keep] / expected[keep].sum() * rows)
    assert pval > 1e-3, (chi2, pval)


def test_n_samples_share_prefill_and_differ(model):
    config, params = model
    out = generate(params, config, PROMPTS[:2], SamplingParams(temperature=1.0),
                   jax.random.PRNGKey(1), 16, [], num_samples=3)
    assert len(out.tokens) == 6 and out.prompt_index == [0, 0, 0, 1, 1, 1]
    assert len({tuple(t) for t in out.tokens[:3]}) == 3  # independent samples


def test_prompts_within_one_bucket_compile_once(model):
    _greedy(model, prompts=[[4, 5, 6], [7, 8]], n=10)  # warm up this bucket
    with count_compiles() as n:
        _greedy(model, prompts=[[4, 5, 6, 7, 8, 9, 10], [7]], n=13)  # same buckets
        _greedy(model, prompts=[[9] * 16, [7, 8, 9]], n=16)
    assert n.count == 0


@pytest.mark.parametrize("mesh_shape,shard_params", [
    ("data:8", False), ("data:2,tensor:4", True), ("data:2,fsdp:2,tensor:2", True)])
def test_sharded_equals_unsharded(model, mesh_shape, shard_params):
    config, params = model
    sampling = SamplingParams(temperature=1.0, top_p=0.9)
    ref = generate(params, config, PROMPTS, sampling, jax.random.PRNGKey(5), 12, [3],
                   num_samples=2)
    mesh = make_mesh(mesh_shape)
    shardings = param_shardings(config, mesh) if shard_params else None
    placed = jax.device_put(params, shardings) if shard_params else params
    out = generate(placed, config, PROMPTS, sampling, jax.random.PRNGKey(5), 12, [3],
                   num_samples=2, mesh=mesh, data_axes=("data",),
                   param_shardings=shardings)
    assert out.tokens == ref.tokens
    for a, b in zip(out.model_logprobs, ref.model_logprobs):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompts=[[1, 2], []]), r"prompts\[1\] is empty"),
    (dict(prompts=[]), "prompts"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(stop_ids=[10_000]), "stop_ids"),
    (dict(prompts=[[1] * 100]), "max_cache_length"),
])
def test_bad_requests_name_the_parameter(model, kwargs, match):
    config, params = model
    args = dict(prompts=[[1, 2, 3]], max_new_tokens=8, stop_ids=[2])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(params, config, args["prompts"], SamplingParams(), jax.random.PRNGKey(0),
                 args["max_new_tokens"], args["stop_ids"], buckets=Buckets(max_cache_length=64))


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-1), "temperature"),
    (dict(top_k=-2), "top_k")])
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_chunked_prefill_equals_one_shot(model):
    from rc_jax.sampling.core import prefill
    config, params = model
    tokens = np.zeros((2, 32), np.int32)
    mask = np.zeros((2, 32), bool)
    tokens[0, 3:], mask[0, 3:] = np.arange(29) % 150 + 3, True
    tokens[1, 20:], mask[1, 20:] = np.arange(12) + 40, True  # first chunks all padding
    one, cache1 = prefill(params, config, jnp.asarray(tokens), jnp.asarray(mask), 40, chunk=32)
    many, cache8 = prefill(params, config, jnp.asarray(tokens), jnp.asarray(mask), 40, chunk=8)
    np.testing.assert_allclose(np.asarray(many), np.asarray(one), rtol=1e-5, atol=1e-5)
    assert (np.asarray(cache1.valid) == np.asarray(cache8.valid)).all()
    assert int(cache8.index) == 32
    # The caches agree wherever they are read: the next token sees the same context.
    # (Padding slots hold different garbage; they are never attended to.)
    nxt = jnp.asarray([[7], [9]])
    pos = jnp.asarray(mask.sum(1, keepdims=True))
    step1, _ = forward(params, config, nxt, pos, cache1)
    step8, _ = forward(params, config, nxt, pos, cache8)
    np.testing.assert_allclose(np.asarray(step8), np.asarray(step1), rtol=1e-5, atol=1e-5)


def test_long_prompts_use_linear_buckets():
    b = Buckets()
    assert b.prompt(300) == 512 and b.prompt(2048) == 2048
    assert b.prompt(19_000) == 19_456 and b.prompt(19_000) % 512 == 0


def test_first_argmax_is_argmax():
    """Greedy's argmax: the first maximum on ties, the first NaN when there is one, as
    jnp.argmax (the same token ids, not just the same value)."""
    from rc_jax.sampling.core import first_argmax
    x = np.random.default_rng(0).standard_normal((5, 301)).astype(np.float32)
    x[1, [7, 250]] = 9.0          # a tie: the first wins
    x[2, [3, 100]] = np.nan       # NaNs: the first NaN
    x[3, :] = -np.inf             # all -inf: index 0
    x[4, [0, 300]] = [0.0, 5.0]   # the last column
    got = np.asarray(jax.jit(first_argmax)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(x), -1)))
    assert got.tolist()[1:] == [7, 3, 0, 300] and got.dtype == np.int32
