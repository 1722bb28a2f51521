"""RC RL of the toy model with the project's trainer (`rc_jax.rl.train.Trainer`).

Nothing toy-specific happens in training: the config below is the schema of
`rc_jax.rl.config` (the 4B recipe's fields) with tiny sizes, the model and tokenizer are
loaded from the SFT export directory like any HF checkpoint, the data is a JSONL problem
file, and the reward is the project's `string_match` reward (exact match of the last
`\\boxed{}` with the gold answer), which is exactly the toy's grading rule.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import ml_collections

from rc_jax.rl.config import default_config
from rc_jax.rl.train import Trainer


def rl_config(*, model_dir: str, data_path: str, output_dir: str, reasoning_template: str,
              summary_template: str, num_steps: int, max_reasoning_tokens: int,
              max_summary_tokens: int, train_steps: int, batch_size: int, group_size: int,
              learning_rate: float, seed: int, num_minibatches: int = 2,
              kl_coef: float = 0.001, micro_batch_tokens: int = 8192,
              replay_path: str = ""
              ) -> ml_collections.ConfigDict:
    """The RCT config of the toy: authors' algorithm (GRPO groups per (problem, summary)
    snapshot, PPO dual clip 0.2/0.28/3, low-var KL to the SFT model, token-mean loss),
    tiny batch and a learning rate for a ~0.4M-parameter model."""
    c = default_config()
    c.name = "toy_rct"
    c.model.path = model_dir
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "none"
    c.model.max_cache_length = 4096
    c.data.source = data_path
    c.data.seed = seed
    c.sampling.seed = seed
    c.rc.num_steps = num_steps                       # T_train
    c.rc.max_reasoning_tokens = max_reasoning_tokens
    c.rc.max_summary_tokens = max_summary_tokens
    c.rc.reasoning_template = reasoning_template
    c.rc.summary_template = summary_template
    c.rl.batch_size = batch_size
    c.rl.snapshots_per_chain = min(2, num_steps)
    c.rl.group_size = group_size
    c.rl.total_steps = train_steps
    c.rl.num_minibatches = num_minibatches
    c.rl.micro_batch_tokens = micro_batch_tokens
    c.rl.learning_rate = learning_rate
    c.rl.kl_coef = kl_coef
    c.rl.reward = "string_match"
    if replay_path:  # chains start from stored summaries (one chain per drawn problem)
        c.rl.replay_buffer = True
        c.rl.replay_initial_path = replay_path
        c.rl.replay_samples_per_problem = 1
    c.checkpoint.save_every = 0
    c.checkpoint.export_final = False
    c.checkpoint.resume = False
    c.output_dir = output_dir
    c.tensorboard = False
    c.progress = False
    return c


def run_rl(config: ml_collections.ConfigDict, *, time_limit_s: float | None = None,
           log: Callable[[str], None] = print) -> tuple[Any, list[dict[str, Any]]]:
    """Trains for `rl.total_steps` steps (or until `time_limit_s`); returns the final
    params and the per-step metrics."""
    trainer = Trainer(config, mesh=None)
    start = time.perf_counter()
    try:
        while trainer.step < trainer.total_steps:
            m = trainer.train_step()
            elapsed = time.perf_counter() - start
            chain = " ".join(f"{m[k]:.2f}" for k in sorted(m) if k.startswith("chain_acc_step_"))
            log(f"  rl step {trainer.step}/{trainer.total_steps} reward {m['reward_mean']:.3f} "
                f"chain acc/step [{chain}] kl {m.get('kl', 0.0):.4f} "
                f"zero-adv {m.get('zero_adv_frac', 0.0):.2f} ({elapsed:.0f}s)")
            if time_limit_s is not None and elapsed > time_limit_s \
                    and trainer.step < trainer.total_steps:
                log(f"  rl time limit {time_limit_s:.0f}s reached at step {trainer.step}")
                trainer.history.append({"stopped_early_at": trainer.step})
                break
        trainer.checkpointer.wait()
    finally:
        trainer.close()
    return trainer.params, trainer.history
