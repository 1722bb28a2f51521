"""rc_jax: Reasoning Cache (RC) decoding and RC reinforcement learning in JAX."""
from pathlib import Path

from setuptools import find_packages, setup


def _requirements(name: str) -> list[str]:
    lines = Path(__file__).with_name(name).read_text().splitlines()
    reqs = (line.split("#", 1)[0].strip() for line in lines)  # drop comments
    return [r for r in reqs if r]


setup(
    name="rc_jax",
    version="0.1.0",
    description="Reasoning Cache: iterative summary-conditioned decoding and short-horizon RL in JAX",
    packages=find_packages(include=["rc_jax", "rc_jax.*"]),
    # cpu_*.cc: the CPU decode kernels, compiled on first use (cpu_kernels.py)
    package_data={"rc_jax.data": ["demo_problems.jsonl"], "rc_jax.models": ["cpu_matmul.cc", "cpu_attention.cc"]},
    python_requires=">=3.10",
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": _requirements("requirements-test.txt"),
                    "tfds": ["tensorflow-datasets", "tensorflow"],
                    # benchmarks/peers.py; llama-cpp-python compiles llama.cpp (portable
                    # build flags: benchmarks/README.md)
                    "peers": ["llama-cpp-python>=0.3", "gguf>=0.10", "torch==2.13.0"]},
)
