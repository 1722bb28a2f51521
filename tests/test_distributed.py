"""Two processes on localhost (jax.distributed with a local coordinator, 4 fake CPU
devices each) running the sharded sampler and RC engine on one mesh spanning both give
the single-process results, on every process; each host reads only its share of the
checkpoint."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import randomize, tiny_config
from rc_jax.models import init_params, load_hf_checkpoint, save_hf_checkpoint
from rc_jax.rc.engine import Job, RCEngine, RCSettings
from rc_jax.sampling.keys import row_key
from rc_jax.sampling import SamplingParams, generate

WORKER = Path(__file__).with_name("multiprocess_worker.py")
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34, 35]]
PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1.", "Is 91 prime?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(checkpoint: Path, tokenizer_dir: str, out_dir: Path) -> list[dict]:
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                               os.environ.get("PYTHONPATH", "")]))
        log = open(out_dir / f"log{pid}.txt", "w")
        procs.append((subprocess.Popen(
            [sys.executable, str(WORKER), str(checkpoint), tokenizer_dir,
             str(out_dir / f"out{pid}.json")], env=env, stdout=log, stderr=subprocess.STDOUT),
            log))
    try:
        for p, _ in procs:
            p.wait(timeout=300)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    for pid, (p, _) in enumerate(procs):
        assert p.returncode == 0, (out_dir / f"log{pid}.txt").read_text()[-3000:]
    return [json.loads((out_dir / f"out{pid}.json").read_text()) for pid in range(2)]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    config = tiny_config("qwen3", vocab_size=512)
    save_hf_checkpoint(tmp_path / "ckpt", config,
                       randomize(init_params(config, jax.random.PRNGKey(0)), 0))
    results = _launch(tmp_path / "ckpt", tiny_tokenizer_dir, tmp_path)

    # Single process, unsharded reference.
    config, params = load_hf_checkpoint(tmp_path / "ckpt")
    ref = generate(params, config, PROMPTS, SamplingParams(temperature=1.0, top_k=50),
                   jax.random.PRNGKey(5), 12, [3], num_samples=2)
    engine = RCEngine(config, tiny_tokenizer,
                      RCSettings(num_steps=2, max_reasoning_tokens=12, max_summary_tokens=8),
                      SamplingParams(temperature=1.0), slots=4)
    rollouts, _ = engine.run(params, [Job(p, row_key(0, str(i), 0), 2)
                                      for i, p in enumerate(PROBLEMS)])
    total = sum(x.nbytes for x in jax.tree.leaves(params))

    assert [r["main"] for r in results] == [True, False]
    for r in results:
        assert (r["processes"], r["devices"], r["local_devices"]) == (2, 8, 4)
        assert r["tokens"] == ref.tokens
        for a, b in zip(r["logprobs"], ref.model_logprobs):
            np.testing.assert_allclose(a, b, atol=1e-4)
        # The engine's host callback ran on process 0 only; the rollouts reached
        # process 1 too, equal to a single-process run's.
        assert r["records"] == [x.record.to_json() for x in rollouts]
        # Each host read only slices its own devices hold (a slice shared by several
        # local devices is read once): about half the model, as 'fsdp' spans the hosts
        # (norms are replicated), never all of it.
        assert 0 < r["bytes_read"] <= r["bytes_held"]
        assert 0.45 * total < r["bytes_read"] < 0.6 * total
