"""The int8 CPU kernel (`rc_jax.models.int8_cpu`, an XLA FFI custom call): it builds on this
machine, equals the dequantized matmul for every row count it serves and for odd widths,
the decode layout's int8 matmuls run on it (and prefill-sized ones do not), a program
without it computes the same logits, and a failing build names its compiler."""
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import left_padded_batch, randomize, tiny_config
from rc_jax.models import forward, init_params, int8_cpu, positions_from_mask, qwen3
from rc_jax.models.quant import dequantize_weight, quantize_params, quantize_weight

SUPPORTED = platform.system() == "Linux" and platform.machine() in ("x86_64", "aarch64")
pytestmark = pytest.mark.skipif(not SUPPORTED, reason="the kernel is built on Linux x86-64 "
                                "/ aarch64 only; elsewhere int8 uses XLA's ops")


def test_kernel_builds_here():
    assert int8_cpu.unavailable_reason() is None
    assert int8_cpu.library_path().exists()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 16])
@pytest.mark.parametrize("n_in,n_out", [(96, 40), (101, 13), (7, 3), (8, 1)])
def test_kernel_equals_dequantized_matmul(rows, n_in, n_out):
    """Odd widths take the scalar tails (8 columns per vector step, 4 or 2 channels per
    register block); float32 sums in another order: relative error ~1e-7 measured, 1e-5
    allowed."""
    rng = np.random.default_rng(rows * 1000 + n_in)
    w = quantize_weight(jnp.asarray(rng.standard_normal((n_out, n_in)), jnp.float32), (1,))
    x = jnp.asarray(rng.standard_normal((rows, n_in)), jnp.float32)
    got = np.asarray(jax.jit(int8_cpu.matmul_t)(x, w))
    want = np.asarray(x, np.float64) @ np.asarray(dequantize_weight(w, (1,)), np.float64).T
    assert got.shape == (rows, n_out)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # Leading dims are flattened and restored: [B, S, in] -> [B, S, out].
    if rows % 2 == 0:
        got3 = jax.jit(int8_cpu.matmul_t)(x.reshape(2, rows // 2, n_in), w)
        np.testing.assert_array_equal(np.asarray(got3).reshape(rows, n_out), got)


@pytest.fixture(scope="module")
def packed_int8():
    config = tiny_config("qwen3", vocab_size=512)  # untied: the head is int8 too
    params = randomize(init_params(config, jax.random.PRNGKey(3)), 3)
    q = quantize_params(params)
    return config.replace(quantization="int8"), q, qwen3.pack_for_decode(q, config)


def _hlo(config, params, rows: int, length: int) -> str:
    tokens = jnp.ones((rows, length), jnp.int32)
    fn = jax.jit(lambda p, t: forward(p, config, t, positions_from_mask(t >= 0))[0])
    return fn.lower(params, tokens).as_text()


def test_decode_layout_runs_on_the_kernel(packed_int8):
    """Decode-sized calls (rows <= MAX_ROWS) call the kernel for all 4 projections per
    layer and the head, with no int8 -> float conversion of a weight; prefill-sized calls
    (more rows) and the scanned layout keep XLA's dot."""
    config, q, packed = packed_int8
    decode = _hlo(config, packed, rows=2, length=1)
    assert decode.count(int8_cpu.TARGET) == 4 * config.num_layers + 1
    assert not any("convert" in line and "xi8>" in line for line in decode.splitlines())
    prefill = _hlo(config, packed, rows=2, length=int8_cpu.MAX_ROWS)
    assert int8_cpu.TARGET not in prefill
    assert int8_cpu.TARGET not in _hlo(config, q, rows=2, length=1)


def test_same_logits_with_and_without_the_kernel(packed_int8, monkeypatch):
    config, q, packed = packed_int8
    tokens, mask = left_padded_batch(seed=4, lengths=(1, 1, 1), vocab=config.vocab_size)

    def logits():  # eager: traced afresh on each call, so the patch below takes effect
        return np.asarray(forward(packed, config, tokens, positions_from_mask(mask),
                                  token_mask=mask)[0])

    with_kernel = logits()
    monkeypatch.setattr(int8_cpu, "usable", lambda *a: False)
    without = logits()
    np.testing.assert_allclose(with_kernel, without, rtol=1e-5, atol=1e-5)


def test_failed_build_names_the_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(RuntimeError, match="/bin/false failed to compile"):
        int8_cpu.build(tmp_path / "kernel.so")
    assert not list(tmp_path.iterdir())  # nothing half-written is left to be loaded
