"""RC on HMMT (Nov 2025) with a different model writing the summaries: both models'
params are held at once; one reasons, the other summarizes (same tokenizer required).

python -m rc_jax.main --config=experiments/rc_two_models_hmmt.py \
    --config.model.path=/ckpt/RCT-4B \
    --config.summarizer.model.path=/ckpt/Qwen3-4B-Instruct-2507
The summarizer path below is a placeholder that fails validation until you set it.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config()
    c.method = "rc"
    c.name = "hmmt_nov_2025_rc_two_models"
    c.data.source = "hf:MathArena/hmmt_nov_2025:train"
    c.summarizer.model.path = "/path/to/summarizer-checkpoint"
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.rc.num_steps = 12
    c.rc.max_reasoning_tokens = 16384
    c.rc.max_summary_tokens = 2048
    c.num_samples = 16
    c.model.dtype = "bfloat16"
    c.batch_size = 64
    c.output_dir = "outputs/hmmt_rc_two_models"
    return c
