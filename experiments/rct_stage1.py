"""RCT Stage I: the paper's recipe (Qwen3-4B-Instruct-2507, acemath_rl_4b_inst_hard).

Every value below is the authors' released run (docs/training.md gives the source of
each): per step 64 problems, one online RC chain each with T=3 steps (H_R 16384, H_S
2048, temperature 1, top-p 1), 2 distinct snapshots per chain, 8 fresh responses per
snapshot prompt (1024 sequences, 128 GRPO groups), reward = math grader on the last
\\boxed{}, GRPO advantages (population std, eps 1e-6, all-equal groups kept), PPO clip
0.2/0.28 with dual clip 3, low-variance KL 0.001 to the initial model, no entropy bonus,
2 mini-batches -> 2 AdamW steps (lr 1e-6 constant, betas 0.9/0.999, wd 0.01, clip
1.0), 16 epochs, checkpoint every 10 steps. Differences from the authors' stack
(documented): the loss is a token mean over the whole mini-batch
(`rl.loss_agg_mode=microbatch_token_mean` gives theirs), rc_jax's own prompt wording
(point rc.*_template at their files to use theirs).

    python -m rc_jax.main --config=experiments/rct_stage1.py \
        --config.model.path=/ckpt/Qwen3-4B-Instruct-2507

Meshes (per-device memory from benchmarks/rl_step.py, see benchmarks/README.md): the
model's attention materialises [heads, S, S] scores, so at 18k tokens the heads must be
split. A v5p-8 slice (4 chips, 95 GB) runs `fsdp:1,tensor:4` (~68 GiB peak per chip); a
v4-32 (16 chips, 32 GB) needs `fsdp:2,tensor:8` (~31 GiB: no headroom). FSDP alone
(`fsdp:4`, `data:4,fsdp:4`) does not fit at 18k. Multi-host pods: see launch/.
"""
from rc_jax.config import default_config


def get_config():
    c = default_config("train")
    c.name = "rct_stage1"
    c.model.path = ""  # required override: an HF directory of Qwen3-4B-Instruct-2507
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    c.data.source = "hf:HerrHruby/acemath_rl_4b_inst_hard"
    c.data.split = "train"
    c.data.problem_field = "prompt"                    # chat list: first user message
    c.data.answer_field = "reward_model.ground_truth"
    c.data.shuffle = True
    c.data.seed = 1

    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0

    c.rc.num_steps = 3
    c.rc.max_reasoning_tokens = 16384
    c.rc.max_summary_tokens = 2048
    c.rc.use_think_tags = False  # Qwen3-4B-Instruct-2507 is a non-thinking model

    r = c.rl
    r.batch_size = 64
    r.chains_per_problem = 1
    r.snapshots_per_chain = 2
    r.group_size = 8
    r.num_epochs = 16
    r.reward = "math"
    r.advantage_estimator = "grpo"
    r.policy_loss = "ppo_dual_clip"
    r.clip_ratio_low, r.clip_ratio_high, r.clip_ratio_c = 0.2, 0.28, 3.0
    r.kl_coef, r.kl_type, r.entropy_coef = 0.001, "low_var_kl", 0.0
    r.loss_agg_mode = "token_mean"
    r.old_logprobs = "recompute"
    r.num_minibatches = 2
    # Two ~18k-token rows per batch shard per micro-batch (8 sequences on the v5p-8's
    # fsdp:4 mesh). Planned 2026-12-02 by TPU ahead-of-time compilation
    # (rc_jax.tools.plan --model=qwen3-4b --target=v5p-8 --mesh=fsdp:4 --program=train
    # --seq_len=18432, libtpu 0.0.42.1, model.attention auto, with this file's float32
    # params and logprob_chunk 2048): the accumulate program peaks at 34.2 GiB per chip
    # for 8 x 18432 (51.1 GiB for 16 x 18432), AdamW update 15.0; plus the resident f32
    # Adam moments (7.5) and bf16 reference (1.9) ~44 GiB of 95. Before blockwise
    # attention (issue 20) one row per device needed 198 GiB (benchmarks/README.md).
    # (The authors' 40000 per GPU packs rows without padding.)
    r.micro_batch_tokens = 40000
    r.logprob_chunk = 2048                # never materialise [S, 151936] f32 logits
    r.learning_rate = 1e-6
    r.weight_decay = 0.01
    r.max_grad_norm = 1.0
    r.max_generation_rows = 256           # bounds the sampler's KV cache per call
    r.replay_buffer = False               # off in the released run

    c.checkpoint.save_every = 10
    c.checkpoint.keep = 3
    c.checkpoint.export_final = True
    c.mesh = "fsdp:4"                     # v5p-8 (see micro_batch_tokens); a v4-32 is not re-planned
    c.output_dir = "outputs/rct_stage1"
    return c
