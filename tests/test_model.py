"""Forward pass: JAX == numpy reference, cache == full forward, padding invariance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import left_padded_batch, randomize, tiny_config
from rc_jax.models import forward, init_cache, init_params, positions_from_mask
from rc_jax.models.config import ModelConfig
from rc_jax.models.reference import reference_forward

VARIANTS = [("qwen3", False), ("qwen3", True), ("qwen2", False), ("qwen2", True),
            ("llama", False), ("llama", True)]


def _model(model_type, tied, seed=0):
    config = tiny_config(model_type, tied)
    return config, randomize(init_params(config, jax.random.PRNGKey(seed)), seed)


@pytest.mark.parametrize("model_type,tied", VARIANTS)
def test_forward_matches_numpy_reference(model_type, tied):
    config, params = _model(model_type, tied)
    assert config.num_kv_heads < config.num_heads  # GQA is exercised
    tokens, mask = left_padded_batch()
    logits, cache = forward(params, config, jnp.asarray(tokens),
                            positions_from_mask(jnp.asarray(mask)), token_mask=jnp.asarray(mask))
    assert cache is None and logits.dtype == jnp.float32
    ref = reference_forward(params, config, tokens, mask)
    # fp32 (JAX) vs fp64 (numpy): accumulated rounding only.
    np.testing.assert_allclose(np.asarray(logits)[mask], ref[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", ["qwen3", "qwen2"])
def test_incremental_decoding_matches_full_forward(model_type):
    config, params = _model(model_type, False, seed=1)
    tokens, mask = left_padded_batch(seed=1, lengths=(10, 6, 3))
    pos = positions_from_mask(jnp.asarray(mask))
    full, _ = forward(params, config, jnp.asarray(tokens), pos, token_mask=jnp.asarray(mask))
    cache = init_cache(config, tokens.shape[0], 16)
    step = jax.jit(forward, static_argnums=1)
    chunks = [(0, 4)] + [(i, i + 1) for i in range(4, tokens.shape[1])]
    outs = []
    for a, b in chunks:
        out, cache = step(params, config, jnp.asarray(tokens[:, a:b]), pos[:, a:b], cache,
                          token_mask=jnp.asarray(mask[:, a:b]))
        outs.append(np.asarray(out))
    assert int(cache.index) == tokens.shape[1]
    np.testing.assert_allclose(np.concatenate(outs, 1)[mask], np.asarray(full)[mask],
                               rtol=2e-5, atol=2e-5)


def test_left_padding_does_not_change_logits():
    config, params = _model("qwen3", False, seed=2)
    tokens, mask = left_padded_batch(seed=2, lengths=(8, 5))
    padded, _ = forward(params, config, jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)),
                        token_mask=jnp.asarray(mask))
    row = tokens[1:, 3:]
    alone, _ = forward(params, config, jnp.asarray(row), jnp.arange(5)[None])
    np.testing.assert_allclose(np.asarray(padded)[1, 3:], np.asarray(alone)[0], rtol=1e-5, atol=1e-5)


def test_bfloat16_forward_is_close_to_float32():
    config, params = _model("qwen3", False, seed=3)
    tokens, mask = left_padded_batch(seed=3, lengths=(6, 6))
    f32, _ = forward(params, config, jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)))
    bconf = config.replace(dtype="bfloat16", param_dtype="bfloat16")
    bparams = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    b16, _ = forward(bparams, bconf, jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)))
    assert b16.dtype == jnp.float32  # logits always float32
    assert np.corrcoef(np.ravel(f32), np.ravel(b16))[0, 1] > 0.99


def test_remat_policy_gives_same_gradients():
    config, params = _model("qwen3", False, seed=4)
    tokens, _ = left_padded_batch(seed=4, lengths=(6, 6))
    pos = jnp.broadcast_to(jnp.arange(6), tokens.shape)

    def loss(p, cfg):
        return jnp.mean(forward(p, cfg, jnp.asarray(tokens), pos)[0] ** 2)

    g0 = jax.grad(loss)(params, config)
    g1 = jax.grad(loss)(params, config.replace(remat_policy="full"))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("field,value,match", [
    ("model_type", "qwen3_moe", "model_type 'qwen3_moe' is not supported"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "rope_scaling type 'yarn'"),
    ("use_sliding_window", True, "use_sliding_window"),
    ("hidden_act", "gelu", "hidden_act 'gelu'"),
])
def test_unsupported_config_is_rejected(field, value, match):
    from helpers import tiny_hf_config
    hf = tiny_hf_config("qwen3")
    hf[field] = value
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf_dict(hf)


def test_missing_config_field_is_named():
    from helpers import tiny_hf_config
    hf = tiny_hf_config("qwen3")
    del hf["hidden_size"]
    with pytest.raises(ValueError, match="missing required field 'hidden_size'"):
        ModelConfig.from_hf_dict(hf)


def test_num_params_matches_pytree():
    for model_type, tied in VARIANTS:
        config, params = _model(model_type, tied)
        assert config.num_params == sum(x.size for x in jax.tree.leaves(params))
