"""Shared pytest fixtures. Eight fake CPU devices so sharding tests run on one machine."""
import os

# Must happen before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Directory of the tiny offline Qwen-style tokenizer (vocab 512, ChatML + think tags)."""
    from rc_jax.tools.tiny_tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"), vocab_size=512)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: str):
    """rc_jax.tokenizer.Tokenizer loaded from tiny_tokenizer_dir."""
    from rc_jax.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)
