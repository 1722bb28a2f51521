"""Attention implementations (rc_jax.models.attention): blockwise == dense in float32 for
outputs and gradients (kernel and whole model: left padding, GQA, odd lengths, chunked
prefill, per-row cache index, decode form), greedy parity with transformers on blockwise,
the Pallas kernel in interpret mode, and the fused kernels on accelerators."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import randomize, tiny_config
from rc_jax.models import attention as attn
from rc_jax.models import forward, init_params, qwen3
from rc_jax.models.config import ModelConfig

RTOL = 1e-5  # max |a - b| / max |a|


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks far smaller than the sequences, so every test crosses block boundaries
    (and a last, padded block: 37 % 8, 53 % 16 != 0)."""
    monkeypatch.setattr(attn, "DEFAULT_BLOCK_Q", 8)
    monkeypatch.setattr(attn, "DEFAULT_BLOCK_K", 16)
    # Decode-form caches of more than 16 slots split into segments 0-8, 8-16, 16-32, ...
    monkeypatch.setattr(attn, "DECODE_FIRST_SEGMENT", 8)


@pytest.fixture(autouse=True, scope="module")
def fresh_programs_after():
    """Programs compiled here use the small blocks and segments above: drop them so later
    test modules compile their own."""
    yield
    jax.clear_caches()


def _rel(a, b, where=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if where is not None:
        a, b = a[where], b[where]
    return np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)


def _kernel_inputs(b=2, s=37, c=53, k=2, g=3, d=16, seed=0):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(b, s, k, g, d)), jnp.float32)
    kk = jnp.asarray(r.normal(size=(b, c, k, d)), jnp.float32)
    vv = jnp.asarray(r.normal(size=(b, c, k, d)), jnp.float32)
    valid = np.ones((b, c), bool)
    valid[-1, :10] = False  # left padding of the last row
    index = c - s - 5 * np.arange(b)  # per-row write index (row i leaves 5i slots unused)
    query_slots = index[:, None] + np.arange(s)[None]
    return q, kk, vv, attn.Mask(jnp.asarray(valid), jnp.asarray(query_slots, jnp.int32))


def _sees_all(valid, s=1):
    """A Mask where each of the s queries of row b sees every slot valid[b] marks."""
    b, c = valid.shape
    return attn.Mask(jnp.asarray(valid), jnp.full((b, s), c - 1, jnp.int32))


def _weighted_sum(fn, w):
    """(q, k, v) -> sum(fn(q, k, v) * w): a scalar loss whose gradients test a kernel."""
    return lambda q, k, v: (fn(q, k, v) * w).sum()


def _pallas_interpret():
    """`jax.experimental.pallas.tpu`, or skip where this JAX has no TPU interpret mode."""
    try:
        from jax.experimental.pallas import tpu as pltpu
        pltpu.force_tpu_interpret_mode  # noqa: B018
    except (ImportError, AttributeError) as e:
        pytest.skip(f"this JAX has no Pallas TPU interpret mode ({e})")
    return pltpu


def test_blockwise_kernel_equals_dense_values_and_gradients():
    q, k, v, mask = _kernel_inputs()
    real = np.asarray(mask.dense().any(-1))  # fully masked query rows differ (0 vs mean)
    dense = attn.dense_attention(q, k, v, mask)
    block = attn.blockwise_attention(q, k, v, mask, block_q=8, block_k=16)
    assert _rel(dense, block, real) <= RTOL
    w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
    w = w * real[:, :, None, None, None]
    gd = jax.grad(_weighted_sum(lambda q, k, v: attn.dense_attention(q, k, v, mask), w),
                  (0, 1, 2))(q, k, v)
    gb = jax.grad(_weighted_sum(lambda q, k, v: attn.blockwise_attention(
        q, k, v, mask, block_q=8, block_k=16), w), (0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", gd, gb):
        assert _rel(a, b) <= RTOL, name


def test_blockwise_skips_nothing_it_needs_when_whole_blocks_are_masked():
    # Row 0 sees only its first 3 keys: every later key block is skipped by lax.cond.
    q, k, v, _ = _kernel_inputs(b=1, s=20, c=40)
    mask = _sees_all(np.arange(40)[None] < 3, s=20)
    out = attn.blockwise_attention(q, k, v, mask, block_q=8, block_k=8)
    assert _rel(attn.dense_attention(q, k, v, mask), out) <= RTOL


def _cfg(impl, **kw):
    return tiny_config("qwen3", attention=impl, **kw)


@pytest.fixture(scope="module")
def params():
    return randomize(init_params(tiny_config("qwen3"), jax.random.PRNGKey(0)), 0)


def _padded(lengths=(37, 30, 1), width=37, seed=0):
    r = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for i, n in enumerate(lengths):
        tokens[i, width - n:] = r.integers(3, 150, n)
        mask[i, width - n:] = True
    return jnp.asarray(tokens), jnp.asarray(mask)


def test_model_logits_and_parameter_gradients_match_dense(params):
    tokens, mask = _padded()
    positions = qwen3.positions_from_mask(mask)

    def loss(p, cfg):
        logits, _ = forward(p, cfg, tokens, positions, token_mask=mask)
        logp = jax.nn.log_softmax(logits[:, :-1], -1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
        # Only real positions predict (a padding query attends to nothing: dense returns
        # a uniform average there, blockwise zeros; no real token ever reads either).
        return (nll * (mask[:, :-1] & mask[:, 1:])).sum(), logits

    results = {}
    for impl in ("dense", "blockwise"):
        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True),
                                     static_argnums=1)(params, _cfg(impl))
        results[impl] = logits, grads
    (ld, gd), (lb, gb) = results["dense"], results["blockwise"]
    assert _rel(ld, lb, np.asarray(mask)) <= RTOL
    for path, a in jax.tree_util.tree_leaves_with_path(gd):
        b = _get(gb, path)
        assert _rel(a, b) <= RTOL, jax.tree_util.keystr(path)


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_remat_training_config_matches_dense(params):
    """The training setting (remat_policy=full) differentiates through the custom VJP."""
    tokens, mask = _padded((21, 13))
    positions = qwen3.positions_from_mask(mask)

    def loss(p, cfg):
        logits, _ = forward(p, cfg, tokens, positions, token_mask=mask)
        return (logits * mask[..., None]).sum()

    gd = jax.grad(loss)(params, _cfg("dense", remat_policy="full"))
    gb = jax.grad(loss)(params, _cfg("blockwise", remat_policy="full"))
    for path, a in jax.tree_util.tree_leaves_with_path(gd):
        assert _rel(a, _get(gb, path)) <= RTOL, jax.tree_util.keystr(path)


def test_chunked_prefill_cache_and_decode_forms_match_dense(params):
    from rc_jax.sampling.core import prefill
    tokens, mask = _padded((32, 29, 12), width=32, seed=2)
    out = {}
    for impl in ("dense", "blockwise"):
        cfg = _cfg(impl)
        last, cache = prefill(params, cfg, tokens, mask, 45, chunk=8)
        pos = mask.sum(1, keepdims=True).astype(jnp.int32)
        nxt = jnp.asarray([[7], [9], [11]])
        # A decode step on the stacked cache (the accelerator form: attention impl used)...
        step, cache2 = forward(params, cfg, nxt, pos, cache)
        # ...and a 3-token chunk after it (queries in one block, keys across several).
        chunk, _ = forward(params, cfg, jnp.asarray([[4, 5, 6]] * 3), pos + 1 + jnp.arange(3),
                           cache2)
        # The CPU decode form (packed params, unstacked cache: 45 slots in 5 segments).
        packed = qwen3.pack_for_decode(params, cfg)
        dec, _ = forward(packed, cfg, nxt, pos, qwen3.unstack_cache(cache))
        out[impl] = last, step, chunk, dec, cache
    for a, b in zip(out["dense"][:4], out["blockwise"][:4]):
        assert _rel(a, b) <= RTOL
    cd, cb = out["dense"][4], out["blockwise"][4]
    valid = np.asarray(cd.valid)
    assert _rel(np.asarray(cd.k)[:, valid], np.asarray(cb.k)[:, valid]) <= RTOL
    assert _rel(np.asarray(cd.v)[:, valid], np.asarray(cb.v)[:, valid]) <= RTOL


def test_per_row_cache_index_matches_dense(params):
    """The RC engine's layout: each row writes at its own slot (cache.index [B])."""
    tokens, mask = _padded((11, 11), width=11, seed=3)
    out = {}
    for impl in ("dense", "blockwise"):
        cfg = _cfg(impl)
        cache = qwen3.init_cache(cfg, 2, 40)
        cache = cache.replace(index=jnp.asarray([0, 17], jnp.int32))
        pos = jnp.broadcast_to(jnp.arange(11), (2, 11))
        l1, cache = forward(params, cfg, tokens, pos, cache, token_mask=mask)
        l2, _ = forward(params, cfg, tokens[:, :5], 11 + pos[:, :5], cache)
        out[impl] = l1, l2
    for a, b in zip(out["dense"], out["blockwise"]):
        assert _rel(a, b) <= RTOL


@pytest.mark.parametrize("unroll", [True, False], ids=["packed", "scanned"])
def test_greedy_matches_transformers_with_blockwise(tmp_path, params, unroll):
    """Both decode layouts: the packed one CPU runs and the scanned one accelerators run
    (stacked cache, `cached_attention` over its live key blocks), executed here on CPU."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from helpers import hf_model_from_dir
    from rc_jax.models import save_hf_checkpoint
    from rc_jax.sampling import SamplingParams, generate
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13] * 3, [20, 21, 22], [30, 31, 32, 33, 34, 35]]
    cfg = _cfg("blockwise")
    save_hf_checkpoint(tmp_path, cfg, params)
    hf = hf_model_from_dir(tmp_path)
    eos, width = 2, max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    am = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=am, do_sample=False,
                          max_new_tokens=40, eos_token_id=eos, pad_token_id=0)[:, width:].tolist()
    ours = generate(params, cfg, prompts, SamplingParams(temperature=0.0),
                    jax.random.PRNGKey(0), 40, [eos], unroll_layers=unroll)
    for row, (r, o) in enumerate(zip(ref, ours.tokens)):
        if eos in r:
            r = r[:r.index(eos) + 1]
        assert o == r, f"row {row} differs"


def test_resolve_and_config_validation():
    shape = (1, 16, 2, 2, 16)
    assert attn.resolve("auto", shape, 16, jnp.float32, backend="cpu") == "dense"
    assert attn.resolve("auto", (1, 16384, 8, 4, 128), 16384, jnp.float32,
                        backend="cpu") == "blockwise"
    assert attn.resolve("auto", shape, 16, jnp.bfloat16, backend="gpu") == "cudnn"
    assert attn.resolve("auto", shape, 16, jnp.float32, backend="gpu") == "blockwise"
    assert attn.resolve("auto", shape, 16, jnp.bfloat16, backend="tpu") == "blockwise"
    assert attn.resolve("dense", shape, 16, jnp.float32) == "dense"
    # Memory plans: one layer of 8 rows x 32 heads x 18k x 18k.
    dense = attn.live_score_bytes("dense", 8, 32, 18432, 18432)
    assert dense == 8 * 32 * 18432 ** 2 * 4
    assert attn.live_score_bytes("auto", 8, 32, 18432, 18432, backend="tpu") < dense / 1000
    with pytest.raises(ValueError, match="attention 'flash' unknown"):
        tiny_config("qwen3", attention="flash")
    assert ModelConfig.from_hf_dict.__func__  # from_pretrained defaults stay: attention auto
    assert tiny_config("qwen3").attention == "auto"


def test_run_configs_carry_model_attention():
    from rc_jax import config as run_config
    for method in ("rc", "train"):
        c = run_config.default_config(method)
        assert c.model.attention == "auto"
        before = run_config.config_hash(c)
        c.model.path = "builtin:any"  # checked before model.attention
        c.model.attention = "bogus"
        with pytest.raises(ValueError, match="model.attention"):
            run_config.validate(c)
        c.model.path, c.model.attention = "", "auto"
        assert run_config.config_hash(c) == before


def test_fused_kernels_off_their_backend_fail_clearly():
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU error messages")
    q, k, v, mask = _kernel_inputs(s=4, c=8)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        attn.attend(q, k, v, mask, impl="cudnn")
    with pytest.raises(ValueError, match="needs a TPU"):
        attn.attend(q, k, v, mask, impl="pallas")


def test_choices_follow_the_mesh_platform_not_the_host():
    """An ahead-of-time TPU plan traces on a CPU host under a mesh of TPU devices: `auto`,
    the fused-kernel checks and the decode layout must follow the mesh's platform."""
    # why private: jax exposes no public constructor for a device-less TPU abstract mesh
    from jax._src.mesh import AbstractDevice

    from rc_jax.sampling import core
    tpu = jax.sharding.AbstractMesh((1,), ("data",), abstract_device=AbstractDevice(
        device_kind="TPU v5p", num_cores=None, platform="tpu"))
    small = ((1, 4, 1, 2, 8), 8, jnp.float32)  # CPU's auto picks dense at this size
    host = jax.default_backend()
    assert attn.target_platform() == host
    with jax.sharding.use_abstract_mesh(tpu):
        assert attn.target_platform() == "tpu"
        assert attn.resolve("auto", *small) == "blockwise"
        assert core.default_unroll_layers() is False
        with pytest.raises(ValueError, match="needs a CUDA GPU; the program is compiled for 'tpu'"):
            attn.cudnn_attention(*_kernel_inputs(s=4, c=8))
    if host == "cpu":
        assert attn.resolve("auto", *small) == "dense"
        assert core.default_unroll_layers() is True


def test_pallas_kernel_in_interpret_mode_equals_dense():
    _pallas_interpret()
    q, k, v, mask = _kernel_inputs(b=1, s=37, c=53, k=1, g=2, d=128)
    real = np.asarray(mask.dense().any(-1))
    out = attn.pallas_attention(q, k, v, mask, interpret=True)
    assert _rel(attn.dense_attention(q, k, v, mask), out, real) <= RTOL


def test_pallas_segment_ids_self_causal_equals_dense_values_and_gradients():
    """A forward without a cache (training): the Pallas kernel takes segment ids and its
    causal flag instead of a [B, H, S, C] bias; real rows equal dense, and so do the
    gradients through the kernel's own backward (interpret mode on CPU)."""
    pltpu = _pallas_interpret()
    r = np.random.default_rng(7)
    b, s, kh, g, d = 2, 150, 1, 2, 128  # 150: padded to 256 inside
    q, k, v = (jnp.asarray(r.normal(size=shape), jnp.float32)
               for shape in ((b, s, kh, g, d), (b, s, kh, d), (b, s, kh, d)))
    valid = np.ones((b, s), bool)
    valid[1, :37] = False  # left padding
    mask = attn.Mask(jnp.asarray(valid), jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32),
                                                          (b, s)))
    real = valid  # a padding query's output is never read
    w = jnp.asarray(r.normal(size=q.shape), jnp.float32) * real[:, :, None, None, None]

    def pallas(q, k, v):
        return attn.pallas_attention(q, k, v, mask, self_causal=True, interpret=True)

    assert _rel(attn.dense_attention(q, k, v, mask), pallas(q, k, v), real) <= RTOL
    gd = jax.grad(_weighted_sum(lambda q, k, v: attn.dense_attention(q, k, v, mask), w),
                  (0, 1, 2))(q, k, v)
    with pltpu.force_tpu_interpret_mode():  # the kernel's backward is traced here, later
        gp = jax.grad(_weighted_sum(pallas, w), (0, 1, 2))(q, k, v)
    for name, a, bb in zip("qkv", gd, gp):
        assert _rel(a, bb) <= RTOL, name
    with pytest.raises(ValueError, match="as many queries as keys"):
        attn.pallas_attention(q[:, :10], k, v, mask, self_causal=True, interpret=True)


def _ragged_small_blocks(monkeypatch):
    """The ragged kernel's module with 16-slot key blocks and 8-query-row blocks, so the
    tests cross block boundaries (and a partial last block: 53 % 16 != 0)."""
    _pallas_interpret()
    from rc_jax.models import ragged_attention as ragged
    monkeypatch.setattr(ragged, "BLOCK_K", 16)
    monkeypatch.setattr(ragged, "BLOCK_ROWS", 8)
    return ragged


@pytest.mark.parametrize("s", [1, 5, 20])  # decode, a short chunk, a chunk of 3 query blocks
def test_ragged_kernel_equals_dense_and_skips_dead_blocks(monkeypatch, s):
    """The Pallas kernel over a cache (`pallas` in decode and prefill chunks, interpret
    mode): real rows equal dense; a row's output is bit-identical to the row run alone
    (what the RC engine's continuous == lockstep identity needs); and key blocks outside
    a row's live range are never read: NaN written there changes nothing."""
    ragged = _ragged_small_blocks(monkeypatch)
    q, k, v, mask = _kernel_inputs(b=3, s=s, c=53, k=2, g=3, d=16)
    valid = np.ones((3, 53), bool)
    valid[1, :21] = False  # left padding over a whole block (16-31 is live from 21)
    valid[2] = False  # a row that sees nothing (an idle slot)
    index = np.array([6, 53 - s, 30])  # row 0 ends in block 0 (decode) / 1 (chunk of 20)
    mask = attn.Mask(jnp.asarray(valid), jnp.asarray(index[:, None] + np.arange(s), jnp.int32))
    first, end = ragged.live_blocks(mask, ragged.query_block(s, 3), 16)
    last_slot = index + s - 1
    want_end = [-(-(last_slot[0] + 1) // 16), 4, 0]
    assert first.reshape(3, -1)[:, -1].tolist() == [0, 1, 0]
    assert end.reshape(3, -1)[:, -1].tolist() == want_end
    dead = np.zeros((3, 53), bool)  # slots in blocks the kernel must skip
    dead[0, want_end[0] * 16:] = True
    dead[1, :16] = True
    dead[2] = True
    poisoned = [jnp.where(jnp.asarray(dead)[:, :, None, None], jnp.nan, x) for x in (k, v)]
    real = np.asarray(mask.dense().any(-1))
    out = ragged.ragged_attention(q, *poisoned, mask, interpret=True)
    assert _rel(attn.dense_attention(q, k, v, mask), out, real) <= RTOL
    assert np.all(np.asarray(out)[2] == 0)  # nothing to see: zeros, as blockwise gives
    alone = ragged.ragged_attention(q[:1], k[:1], v[:1], attn.Mask(mask.valid[:1],
                                    mask.query_slots[:1]), interpret=True)
    assert np.array_equal(np.asarray(alone), np.asarray(out)[:1])


def test_pallas_on_a_mesh_runs_per_device_and_equals_dense():
    """Mosaic kernels are not partitioned automatically: on a mesh of several devices the
    kernel runs under shard_map on each device's rows and kv heads (interpret mode on 4
    CPU devices, rows on data:2, kv heads on tensor:2)."""
    _pallas_interpret()
    from rc_jax.parallel import make_mesh, sharding_context
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count)")
    q, k, v, mask = _kernel_inputs(b=2, s=40, c=40, k=2, g=2, d=128)
    real = np.asarray(mask.dense().any(-1))
    mesh = make_mesh("data:2,tensor:2", jax.devices()[:4])

    def pallas(q, k, v, mask):
        return attn.pallas_attention(q, k, v, mask, interpret=True)
    with sharding_context(mesh):
        jaxpr = str(jax.make_jaxpr(pallas)(q, k, v, mask))
        out = jax.jit(pallas)(q, k, v, mask)
    assert "shard_map" in jaxpr
    assert _rel(attn.dense_attention(q, k, v, mask), out, real) <= RTOL
    assert "shard_map" not in str(jax.make_jaxpr(pallas)(q, k, v, mask))  # no mesh: direct


@pytest.mark.accelerator
@pytest.mark.parametrize("impl", ["cudnn", "pallas"])
def test_fused_kernel_matches_dense_on_accelerator(impl):
    backend = jax.default_backend()
    if (impl == "cudnn") != (backend in ("gpu", "cuda")) or (impl == "pallas") != (backend == "tpu"):
        pytest.skip(f"{impl} does not run on {backend}")
    q, k, v, mask = _kernel_inputs(s=256, c=384, d=128)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    real = np.asarray(mask.dense().any(-1))
    ref = attn.dense_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                               v.astype(jnp.float32), mask)
    assert _rel(ref, attn.attend(q, k, v, mask, impl=impl).astype(jnp.float32), real) <= 2e-2


def test_model_gradient_memory_is_blockwise():
    """Compiled temporary memory of a model gradient (layers under flax's nn.scan) does not
    grow like S x C scores: guards against autodiff bypassing the custom VJP there."""
    heads = 32

    def temp(impl, s):
        cfg = _cfg(impl, num_heads=heads, num_kv_heads=8)
        shapes = qwen3.param_shapes(cfg)
        toks = jax.ShapeDtypeStruct((1, s), jnp.int32)

        def loss(p, tokens, positions):
            return forward(p, cfg, tokens, positions)[0].sum()

        compiled = jax.jit(jax.grad(loss)).lower(shapes, toks, toks).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    growth_of_scores = heads * 4 * (1024 ** 2 - 512 ** 2)  # one float32 [H, S, S], 512 -> 1024
    assert temp("dense", 1024) - temp("dense", 512) > growth_of_scores
    # Blockwise grows by ~1/3 of that with these 8x16 blocks (per-block softmax
    # statistics, ~H*S*C/block_k floats); a saved float32 probability tensor would be 1x.
    assert temp("blockwise", 1024) - temp("blockwise", 512) < growth_of_scores / 2


def test_benchmark_script_quick(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "attention.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "attention.py"), "--lengths",
                    "256", "--repeats", "1", "--out", str(out)], check=True, cwd=root,
                   capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert {r["impl"] for r in result["rows"]} == {"dense", "blockwise"}
    assert all(r["time_s"] > 0 for r in result["rows"])


# ------------------------------------------------------------------ length-aware (cached)
def test_cached_attention_equals_dense():
    q, k, v, mask = _kernel_inputs(b=3, s=5, c=64)
    # Row 0: only slots 20..29 (left padding before, nothing after); row 2: one key.
    valid, slots = np.array(mask.valid), np.array(mask.query_slots)
    valid[0] = False
    valid[0, 20:30] = True  # row 0 sees 20..29 from every query
    valid[2] = False
    valid[2, 40] = True
    slots[[0, 2]] = 63
    mask = attn.Mask(jnp.asarray(valid), jnp.asarray(slots))
    out = attn.cached_attention(q, k, v, mask, block=16)
    assert _rel(attn.dense_attention(q, k, v, mask), out) <= RTOL


def test_cached_attention_row_does_not_depend_on_the_batch():
    """The RC engine's promise: a row's output is bit-identical whatever the other rows'
    lengths (they change which key blocks the loop visits)."""
    q, k, v, _ = _kernel_inputs(b=2, s=1, c=128)
    base = np.zeros((2, 128), bool)
    base[0, 16:40] = True  # row 0: blocks 1-2 of 16
    rows = []
    for other in ((0, 8), (100, 128), (50, 51)):  # row 1 before, after, between
        m = base.copy()
        m[1, other[0]:other[1]] = True
        rows.append(np.asarray(attn.cached_attention(q, k, v, _sees_all(m), block=16)[0]))
    assert all(np.array_equal(rows[0], r) for r in rows[1:])


def test_cached_model_paths_match_dense(params, monkeypatch):
    """Prefill chunks and a decode step over a stacked cache of several key blocks:
    auto/blockwise read only live blocks and equal dense, as does the CPU decode form."""
    from rc_jax.sampling.core import prefill
    monkeypatch.setattr(attn, "DEFAULT_BLOCK_KV", 16)
    tokens, mask = _padded((32, 29, 12), width=32, seed=4)
    out = {}
    for impl in ("dense", "auto", "blockwise"):
        cfg = _cfg(impl)
        last, cache = prefill(params, cfg, tokens, mask, 64, chunk=8)
        pos = mask.sum(1, keepdims=True).astype(jnp.int32)
        nxt = jnp.asarray([[7], [9], [11]])
        step, _ = forward(params, cfg, nxt, pos, cache)
        dec, _ = forward(qwen3.pack_for_decode(params, cfg), cfg, nxt, pos,
                         qwen3.unstack_cache(cache))
        out[impl] = last, step, dec
    for impl in ("auto", "blockwise"):
        for a, b in zip(out["dense"], out[impl]):
            assert _rel(a, b) <= RTOL, impl


def _decode_form(k, v):
    """Kernel inputs k, v [B, C, K, D] in the decode form (`qwen3.unstack_cache` of a
    one-layer cache): segments of keys [B*K, D, Cj] and values [B*K, Cj, D]."""
    b, c = k.shape[:2]
    cache = qwen3.KVCache(k=k[None], v=v[None], valid=jnp.zeros((b, c), bool),
                          index=jnp.zeros((), jnp.int32))
    un = qwen3.unstack_cache(cache)
    return un.k[0], un.v[0]


def test_decode_segments():
    assert attn.decode_segments(16) == (0, 16)  # <= 2 x first segment: one segment
    assert attn.decode_segments(17) == (0, 8, 16, 17)
    assert attn.decode_segments(100) == (0, 8, 16, 32, 64, 100)
    assert attn.decode_segments(128) == (0, 8, 16, 32, 64, 128)


def test_decode_attention_segments_equal_dense_and_rows_are_independent():
    """The CPU decode form: segmented attention equals dense; a row's output is
    bit-identical whatever the other rows' lengths (which decide the segments run)."""
    q, k, v, _ = _kernel_inputs(b=3, s=1, c=100)
    keys, values = _decode_form(k, v)
    assert len(keys) == 5
    q4 = q.reshape(3, 1, -1, q.shape[-1])  # [B, S, H, D]
    base = np.zeros((3, 100), bool)
    base[0, 3:20] = True  # row 0: left padding, then into the third segment
    base[1, :60] = True
    rows = []
    for other in (5, 33, 100):  # row 2's length: first segment only ... all five
        m = base.copy()
        m[2, :other] = True
        m = _sees_all(m)
        out = jax.jit(attn.decode_attention, static_argnums=4)(q4, keys, values, m, 2)[0]
        dense = attn.dense_attention(q, k, v, m).reshape(out.shape)
        assert _rel(dense, out) <= RTOL, other
        rows.append(np.asarray(out[:2]))
    assert all(np.array_equal(rows[0], r) for r in rows[1:])


def test_decode_form_cache_round_trip_and_per_row_decode(params):
    """unstack/stack are exact inverses; decode steps on the segmented decode form with a
    per-row write index (rows crossing segment boundaries) equal the stacked dense path."""
    r = np.random.default_rng(5)
    cfg = _cfg("dense")
    cache = qwen3.init_cache(cfg, 2, 40)
    cache = cache.replace(k=jnp.asarray(r.normal(size=cache.k.shape), jnp.float32),
                          v=jnp.asarray(r.normal(size=cache.v.shape), jnp.float32))
    un = qwen3.unstack_cache(cache)
    assert [x.shape[-1] for x in un.k[0]] == [8, 8, 16, 8]
    back = qwen3.stack_cache(un)
    assert np.array_equal(back.k, cache.k) and np.array_equal(back.v, cache.v)

    tokens, mask = _padded((14, 7), width=14, seed=6)
    cache = qwen3.init_cache(cfg, 2, 40).replace(index=jnp.asarray([0, 20], jnp.int32))
    pos = jnp.broadcast_to(jnp.arange(14), (2, 14))
    _, cache = forward(params, cfg, tokens, pos, cache, token_mask=mask)
    packed = qwen3.pack_for_decode(params, cfg)
    stacked, unstacked = cache, qwen3.unstack_cache(cache)
    nxt = jnp.asarray([[7], [9]])
    for t in range(5):  # row 0: slots 14-18 (second segment), row 1: 34-38 (fourth)
        ls, stacked = forward(params, cfg, nxt, 14 + t + jnp.zeros((2, 1), jnp.int32), stacked)
        lu, unstacked = forward(packed, cfg, nxt, 14 + t + jnp.zeros((2, 1), jnp.int32),
                                unstacked)
        assert _rel(ls, lu) <= RTOL, t
        nxt = jnp.argmax(ls[:, -1], -1)[:, None].astype(jnp.int32)
    final = qwen3.stack_cache(unstacked)
    valid = np.asarray(stacked.valid)
    assert np.array_equal(valid, np.asarray(final.valid))
    assert _rel(np.asarray(stacked.k)[:, valid], np.asarray(final.k)[:, valid]) <= RTOL
