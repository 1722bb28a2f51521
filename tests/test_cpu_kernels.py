"""rc_jax's CPU decode kernels (`rc_jax.models.cpu_kernels`, XLA FFI custom calls): they
build on this machine; the matmuls equal XLA's matmul (float32) and the dequantized matmul
(int8) for every row count they serve and for odd widths, the decode layout's matmuls run
on them (and prefill-sized ones do not); decode attention equals XLA's softmax parts
(padding, fully masked rows, several queries per row, odd sizes) and a decode step calls
it once per layer; a program without the kernels computes the same logits; a failing build
names its compiler."""
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import left_padded_batch, randomize, tiny_config
from rc_jax.models import attention as attn
from rc_jax.models import forward, init_params, cpu_kernels, positions_from_mask, qwen3
from rc_jax.models.quant import dequantize_weight, quantize_params, quantize_weight

SUPPORTED = platform.system() == "Linux" and platform.machine() in ("x86_64", "aarch64")
pytestmark = pytest.mark.skipif(not SUPPORTED, reason="the kernel is built on Linux x86-64 "
                                "/ aarch64 only; elsewhere int8 uses XLA's ops")


def test_kernel_builds_here():
    assert cpu_kernels.unavailable_reason() is None
    assert cpu_kernels.library_path().exists()


@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 16])
@pytest.mark.parametrize("n_in,n_out", [(96, 40), (101, 13), (29, 6), (7, 3), (8, 1)])
def test_kernel_equals_the_matmul(rows, n_in, n_out, int8):
    """Odd widths take the tails: 16 columns per vector step for 3+ rows where the CPU
    has AVX-512, then 8 (29 = 16 + 8 + 5), then one by one; 4 or 2 channels per register
    block, then one by one. float32 sums in another order: relative error ~1e-7 measured, 1e-5
    allowed. int8: against the dequantized weight."""
    rng = np.random.default_rng(rows * 1000 + n_in)
    w = jnp.asarray(rng.standard_normal((n_out, n_in)), jnp.float32)
    if int8:
        w = quantize_weight(w, (1,))
    # Decode uses the kernels up to MAX_ROWS rows; they compute any number of rows.
    usable = cpu_kernels.usable(jnp.zeros((rows, n_in), jnp.float32), w, "cpu")
    assert usable == (rows <= cpu_kernels.MAX_ROWS)
    x = jnp.asarray(rng.standard_normal((rows, n_in)), jnp.float32)
    got = np.asarray(jax.jit(cpu_kernels.matmul_t)(x, w))
    dense = dequantize_weight(w, (1,)) if int8 else w
    want = np.asarray(x, np.float64) @ np.asarray(dense, np.float64).T
    assert got.shape == (rows, n_out)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # Leading dims are flattened and restored: [B, S, in] -> [B, S, out].
    if rows % 2 == 0:
        got3 = jax.jit(cpu_kernels.matmul_t)(x.reshape(2, rows // 2, n_in), w)
        np.testing.assert_array_equal(np.asarray(got3).reshape(rows, n_out), got)


@pytest.fixture(scope="module", params=["int8", "float32"])
def packed(request):
    """(config, params in the scanned layout, the same in the decode layout)."""
    config = tiny_config("qwen3", vocab_size=512)  # untied: the head is a projection too
    params = randomize(init_params(config, jax.random.PRNGKey(3)), 3)
    if request.param == "int8":
        params, config = quantize_params(params), config.replace(quantization="int8")
    return config, params, qwen3.pack_for_decode(params, config)


def _hlo(config, params, rows: int, length: int) -> str:
    tokens = jnp.ones((rows, length), jnp.int32)
    fn = jax.jit(lambda p, t: forward(p, config, t, positions_from_mask(t >= 0))[0])
    return fn.lower(params, tokens).as_text()


def _kernel_calls(hlo: str) -> int:
    """Calls of the matmul kernels."""
    return sum(hlo.count(target) for target in ("rc_jax_f32_matmul", "rc_jax_int8_matmul"))


def test_decode_layout_runs_on_the_kernels(packed):
    """Decode-sized calls (rows <= MAX_ROWS) call a kernel for all 4 projections per
    layer and the head, with no int8 -> float conversion of a weight; prefill-sized calls
    (more rows) and the scanned layout keep XLA's dot."""
    config, params, decode_params = packed
    decode = _hlo(config, decode_params, rows=2, length=1)
    assert _kernel_calls(decode) == 4 * config.num_layers + 1
    assert not any("convert" in line and "xi8>" in line for line in decode.splitlines())
    assert _kernel_calls(_hlo(config, decode_params, rows=2, length=cpu_kernels.MAX_ROWS)) == 0
    assert _kernel_calls(_hlo(config, params, rows=2, length=1)) == 0


def test_tied_head_runs_on_the_f32_kernel():
    config = tiny_config("qwen3", tied=True, vocab_size=512)
    params = qwen3.pack_for_decode(init_params(config, jax.random.PRNGKey(0)), config)
    assert _hlo(config, params, rows=1, length=1).count("rc_jax_f32_matmul") == (
        4 * config.num_layers + 1)


def test_same_logits_with_and_without_the_kernels(packed, monkeypatch):
    config, _, decode_params = packed
    tokens, mask = left_padded_batch(seed=4, lengths=(1, 1, 1), vocab=config.vocab_size)

    def logits():  # eager: traced afresh on each call, so the patch below takes effect
        return np.asarray(forward(decode_params, config, tokens, positions_from_mask(mask),
                                  token_mask=mask)[0])

    with_kernels = logits()
    monkeypatch.setattr(cpu_kernels, "usable", lambda *a: False)
    without = logits()
    np.testing.assert_allclose(with_kernels, without, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b,k,m,d,c,s", [
    (3, 2, 3, 64, 53, 1),   # decode; 53 slots: a scalar tail after 3 blocks of 16
    (2, 1, 7, 40, 37, 1),   # 7 queries per row (3 + 3 + 1), 40 dims (32 + a tail of 8)
    (3, 2, 4, 32, 16, 2),   # 2 queries per row (a chunk), G = 2
    (1, 1, 1, 8, 5, 1)])    # smaller than every block
@pytest.mark.parametrize("write", [False, True])
def test_decode_attention_kernel_equals_xla(b, k, m, d, c, s, write, monkeypatch):
    """The kernel's softmax parts against XLA's (`attention._segment_parts`): the same
    attention output (o / l) for every query that sees something; (MASK, 0, 0) for a
    query that sees nothing (a fully padded row, a slot before any valid one). With
    `write`, the step's keys / values are written first, in place: the cache equals
    XLA's scatter exactly (a slot outside the segment dropped), and the parts see them."""
    r = np.random.default_rng(b * 100 + m)
    qg = jnp.asarray(r.normal(size=(b * k, m, d)), jnp.float32)
    keys = jnp.asarray(r.normal(size=(b * k, d, c)), jnp.float32)
    values = jnp.asarray(r.normal(size=(b * k, c, d)), jnp.float32)
    valid = np.ones((b, c), bool)
    valid[0, : c // 3] = False  # left padding
    if b > 1:
        valid[-1, c // 2:] = False
    # Each row's first query slot: -1 (sees nothing) ... past the segment (sees it all).
    firsts = np.linspace(-1, c + 3, b).astype(int) if b > 1 else [c - 2]
    slots = np.stack([np.arange(s) + x for x in firsts])
    mask = attn.Mask(jnp.asarray(valid), jnp.asarray(slots, jnp.int32))
    new = None
    if write:  # each row's query slots, and one more per row: c (outside: dropped)
        at = np.concatenate([np.clip(slots, 0, c - 1), np.full((b, 1), c)], 1)
        at = jnp.asarray(np.repeat(at, k, 0), jnp.int32)  # [B*K, S + 1]
        new = (at, jnp.asarray(r.normal(size=(*at.shape, d)), jnp.float32),
               jnp.asarray(r.normal(size=(*at.shape, d)), jnp.float32))
    got_k, got_v, got = jax.jit(cpu_kernels.decode_attention_parts)(
        qg, keys, values, mask.valid, mask.query_slots, new)
    got = [np.asarray(x) for x in got]
    monkeypatch.setattr(cpu_kernels, "attention_usable", lambda *a: False)
    want_k, want_v, want = attn._write_and_attend(qg, keys, values, mask, k, new)
    want = [np.asarray(x) for x in want]
    np.testing.assert_array_equal(np.asarray(got_k), np.asarray(want_k))
    np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
    assert write == (not np.array_equal(np.asarray(got_k), np.asarray(keys)))
    sees = np.asarray(mask.dense().any(-1))  # [B, S]
    sees = np.repeat(sees[:, None, None, :], k, 1).repeat(m // s, 2).reshape(b * k, m)
    assert sees.any()
    np.testing.assert_allclose(got[0][sees], want[0][sees], rtol=1e-5, atol=1e-5)
    out_got = got[2][sees] / got[1][sees][:, None]
    out_want = want[2][sees] / want[1][sees][:, None]
    np.testing.assert_allclose(out_got, out_want, rtol=1e-5, atol=1e-5)
    assert np.all(got[0][~sees] == attn._MASK_VALUE)
    assert np.all(got[1][~sees] == 0) and np.all(got[2][~sees] == 0)


@pytest.mark.parametrize("per_row", [True, False])
def test_decode_step_runs_attention_on_the_kernel(packed, per_row, monkeypatch):
    """A decode step on the decode form of the cache calls the attention kernel once per
    layer and gives the logits XLA's attention gives, with a write index per row
    (continuous batching) or one shared by aligned rows (XLA would write in place)."""
    config, _, decode_params = packed
    cache = qwen3.init_cache(config, 2, 24)
    lengths = jnp.array([[5], [9]]) if per_row else jnp.array([[9], [9]])
    cache = cache.replace(valid=jnp.arange(24)[None].repeat(2, 0) < lengths,
                          index=lengths[:, 0].astype(jnp.int32) if per_row else jnp.int32(9))
    cache = qwen3.unstack_cache(cache)
    tokens = jnp.array([[3], [4]], jnp.int32)

    def step(p, cache):
        positions = jnp.broadcast_to(jnp.reshape(cache.index, (-1, 1)), (2, 1))
        return forward(p, config, tokens, positions, cache)[0]
    # One call per layer, which also writes the step's key and value (no scatter).
    assert jax.jit(step).lower(decode_params, cache).as_text().count(
        "rc_jax_decode_attention_write") == config.num_layers
    with_kernel = np.asarray(step(decode_params, cache))
    monkeypatch.setattr(cpu_kernels, "attention_usable", lambda *a: False)
    np.testing.assert_allclose(with_kernel, np.asarray(step(decode_params, cache)),
                               rtol=1e-5, atol=1e-5)


def test_empty_shapes():
    w = quantize_weight(jnp.ones((0, 8), jnp.float32), (1,))
    assert jax.jit(cpu_kernels.matmul_t)(jnp.ones((2, 8), jnp.float32), w).shape == (2, 0)
    got = jax.jit(cpu_kernels.matmul_t)(jnp.ones((0, 8), jnp.float32), jnp.ones((3, 8)))
    assert got.shape == (0, 3)


def test_failed_build_names_the_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(RuntimeError, match="/bin/false failed to compile"):
        cpu_kernels.build(tmp_path / "kernel.so")
    assert not list(tmp_path.iterdir())  # nothing half-written is left to be loaded
