"""RCT on CPU in a few minutes (mostly compiling): the whole loop on a tiny random model.

Model `builtin:tiny-random` (2-layer random Qwen3, tiny tokenizer), data `builtin:demo`.
Its outputs are noise, so rewards stay ~0 under the math grader: this config checks the
plumbing (chains, snapshots, groups, update, checkpoints, export), not learning.

    python -m rc_jax.main --config=experiments/rct_tiny.py
"""
from rc_jax.config import default_config


def get_config():
    c = default_config("train")
    c.name = "rct_tiny"
    c.model.path = "builtin:tiny-random"
    c.model.dtype = "float32"
    c.model.remat_policy = "none"
    c.data.source = "builtin:demo"
    c.rc.num_steps = 2
    c.rc.max_reasoning_tokens = 16
    c.rc.max_summary_tokens = 8
    c.rl.batch_size = 4
    c.rl.snapshots_per_chain = 2
    c.rl.group_size = 4
    c.rl.num_minibatches = 2
    c.rl.micro_batch_tokens = 4096
    c.rl.length_buckets_per_octave = 1  # powers of two: few shapes, few CPU compiles
    c.rl.total_steps = 4
    c.rl.learning_rate = 1e-4
    c.rl.reward = "string_match"   # no grading subprocesses for a smoke run
    c.checkpoint.save_every = 2
    c.checkpoint.keep = 2
    c.output_dir = "outputs/rct_tiny"
    return c
