"""The README's main command: RC end to end, offline, on an embedded default.

Model: `builtin:tiny-random` (a tiny random Qwen3 the project builds) until a real
embedded model is prepared; problems: the project's own easy demo set.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "demo"
    c.model.path = "builtin:tiny-random"
    c.data.source = "builtin:demo"
    c.data.limit = 4
    c.sampling.temperature = 1.0
    c.rc.num_steps = 3
    c.rc.max_reasoning_tokens = 64
    c.rc.max_summary_tokens = 32
    c.num_samples = 2
    c.batch_size = 8
    c.output_dir = "outputs/demo"
    c.grading_timeout = 5.0
    return c
