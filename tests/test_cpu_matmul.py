"""rc_jax's CPU decode matmul kernels (`rc_jax.models.cpu_matmul`, XLA FFI custom calls):
they build on this machine, equal XLA's matmul (float32) and the dequantized matmul (int8)
for every row count they serve and for odd widths, the decode layout's matmuls run on them
(and prefill-sized ones do not), a program without them computes the same logits, and a
failing build names its compiler."""
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import left_padded_batch, randomize, tiny_config
from rc_jax.models import forward, init_params, cpu_matmul, positions_from_mask, qwen3
from rc_jax.models.quant import dequantize_weight, quantize_params, quantize_weight

SUPPORTED = platform.system() == "Linux" and platform.machine() in ("x86_64", "aarch64")
pytestmark = pytest.mark.skipif(not SUPPORTED, reason="the kernel is built on Linux x86-64 "
                                "/ aarch64 only; elsewhere int8 uses XLA's ops")


def test_kernel_builds_here():
    assert cpu_matmul.unavailable_reason() is None
    assert cpu_matmul.library_path().exists()


@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 16])
@pytest.mark.parametrize("n_in,n_out", [(96, 40), (101, 13), (7, 3), (8, 1)])
def test_kernel_equals_the_matmul(rows, n_in, n_out, int8):
    """Odd widths take the scalar tails (8 columns per vector step, 4 or 2 channels per
    register block); float32 sums in another order: relative error ~1e-7 measured, 1e-5
    allowed. int8: against the dequantized weight."""
    rng = np.random.default_rng(rows * 1000 + n_in)
    w = jnp.asarray(rng.standard_normal((n_out, n_in)), jnp.float32)
    if int8:
        w = quantize_weight(w, (1,))
    # Decode uses the kernels up to MAX_ROWS rows; they compute any number of rows.
    usable = cpu_matmul.usable(jnp.zeros((rows, n_in), jnp.float32), w, "cpu")
    assert usable == (rows <= cpu_matmul.MAX_ROWS)
    x = jnp.asarray(rng.standard_normal((rows, n_in)), jnp.float32)
    got = np.asarray(jax.jit(cpu_matmul.matmul_t)(x, w))
    dense = dequantize_weight(w, (1,)) if int8 else w
    want = np.asarray(x, np.float64) @ np.asarray(dense, np.float64).T
    assert got.shape == (rows, n_out)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # Leading dims are flattened and restored: [B, S, in] -> [B, S, out].
    if rows % 2 == 0:
        got3 = jax.jit(cpu_matmul.matmul_t)(x.reshape(2, rows // 2, n_in), w)
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
    return sum(hlo.count(target) for target in cpu_matmul.TARGETS)


def test_decode_layout_runs_on_the_kernels(packed):
    """Decode-sized calls (rows <= MAX_ROWS) call a kernel for all 4 projections per
    layer and the head, with no int8 -> float conversion of a weight; prefill-sized calls
    (more rows) and the scanned layout keep XLA's dot."""
    config, params, decode_params = packed
    decode = _hlo(config, decode_params, rows=2, length=1)
    assert _kernel_calls(decode) == 4 * config.num_layers + 1
    assert not any("convert" in line and "xi8>" in line for line in decode.splitlines())
    assert _kernel_calls(_hlo(config, decode_params, rows=2, length=cpu_matmul.MAX_ROWS)) == 0
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
    monkeypatch.setattr(cpu_matmul, "usable", lambda *a: False)
    without = logits()
    np.testing.assert_allclose(with_kernels, without, rtol=1e-5, atol=1e-5)


def test_empty_shapes():
    w = quantize_weight(jnp.ones((0, 8), jnp.float32), (1,))
    assert jax.jit(cpu_matmul.matmul_t)(jnp.ones((2, 8), jnp.float32), w).shape == (2, 0)
    got = jax.jit(cpu_matmul.matmul_t)(jnp.ones((0, 8), jnp.float32), jnp.ones((3, 8)))
    assert got.shape == (0, 3)


def test_failed_build_names_the_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(RuntimeError, match="/bin/false failed to compile"):
        cpu_matmul.build(tmp_path / "kernel.so")
    assert not list(tmp_path.iterdir())  # nothing half-written is left to be loaded
