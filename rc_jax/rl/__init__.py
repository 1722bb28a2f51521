"""RC reinforcement learning (RCT): short-horizon GRPO on RC rollouts.

Modules, in the order data flows through a training step:

  config      the training sections of the config schema (`rl`, `checkpoint`) and
              their checks (`rc_jax.config.default_config("train")`, `validate`)
  data        deterministic, resumable problem batches
  replay      summary replay buffer (optional)
  rollout     online RC chains -> snapshot prompts -> GRPO groups -> rewards
  losses      pure math: advantages, KL estimators, clipped policy loss, aggregation
  logprobs    per-token log-probs / entropies of packed sequences (chunked LM head)
  batch       mini-batches, token-budget micro-batches, packed rows
  step        the jitted, sharded logprob / gradient-accumulation / AdamW programs
  checkpoint  Orbax checkpoints (params, optimizer, step, data position, buffer)
  metrics     console / JSONL / TensorBoard logging
  train       the `Trainer` and `run_training` (rc_jax.main, method='train')

This package imports nothing heavy at import time.
"""
