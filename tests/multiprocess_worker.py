"""One process of the 2-process localhost run in tests/test_distributed.py (not a test).

python tests/multiprocess_worker.py CHECKPOINT_DIR TOKENIZER_DIR OUT_JSON
Environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (read by
rc_jax.parallel.maybe_initialize) and XLA_FLAGS with the local fake device count.
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from rc_jax.parallel import distributed  # noqa: E402

assert distributed.maybe_initialize(), "JAX_COORDINATOR_ADDRESS should be set"

import jax  # noqa: E402

from rc_jax.models import load_hf_checkpoint  # noqa: E402
from rc_jax.parallel import make_mesh, param_shardings  # noqa: E402
from rc_jax.models.config import ModelConfig  # noqa: E402
from rc_jax.rc.engine import Job, RCEngine, RCSettings  # noqa: E402
from rc_jax.sampling.keys import row_key  # noqa: E402
from rc_jax.sampling import SamplingParams, generate  # noqa: E402
from rc_jax.tokenizer import load_tokenizer  # noqa: E402

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34, 35]]
PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1.", "Is 91 prime?"]


def main(checkpoint: str, tokenizer_dir: str, out_path: str) -> None:
    # 'fsdp' is the outer mesh axis here, so it spans the two processes: each host reads
    # and holds only its half of every fsdp-sharded parameter.
    mesh = make_mesh("fsdp:4,tensor:2")
    config = ModelConfig.from_pretrained(checkpoint)
    shardings = param_shardings(config, mesh)
    read = []
    real = jax.make_array_from_callback

    def counting(shape, sharding, callback):
        def wrapped(index):
            out = callback(index)
            read.append(out.nbytes)
            return out
        return real(shape, sharding, wrapped)

    jax.make_array_from_callback = counting
    config, params = load_hf_checkpoint(checkpoint, shardings=shardings)
    jax.make_array_from_callback = real
    local = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)

    out = generate(params, config, PROMPTS, SamplingParams(temperature=1.0, top_k=50),
                   jax.random.PRNGKey(5), 12, [3], num_samples=2, mesh=mesh,
                   param_shardings=shardings)
    engine = RCEngine(config, load_tokenizer(tokenizer_dir),
                      RCSettings(num_steps=2, max_reasoning_tokens=12, max_summary_tokens=8),
                      SamplingParams(temperature=1.0), slots=4, mesh=mesh,
                      param_shardings=shardings)
    jobs = [Job(p, row_key(0, str(i), 0), 2) for i, p in enumerate(PROBLEMS)]
    rollouts, _ = engine.run(params, jobs)
    result = {
        "process": jax.process_index(), "processes": jax.process_count(),
        "devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "main": distributed.is_main_process(),
        "bytes_read": sum(read), "bytes_held": local,
        "tokens": out.tokens, "logprobs": [x.tolist() for x in out.model_logprobs],
        "records": [r.record.to_json() for r in rollouts],
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
