"""What RC training (RCT, method 'train') adds to the one config schema of
`rc_jax.config`: the `rl` section (the algorithm), `checkpoint`, the training run fields,
the training defaults of the shared sections, and their validation.

`rc_jax.config.default_config("train")` builds the training config and
`rc_jax.config.validate` checks it (calling `validate_training` here). Defaults are the
authors' released Stage-I run (see docs/training.md): 64 problems x 2 snapshots x 8
responses = 1024 sequences per step, 2 mini-batches, lr 1e-6, clip 0.2 / 0.28, dual
clip 3, low-variance KL 0.001, no entropy bonus. `experiments/rct_stage1.py` spells
them out.
"""
from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from rc_jax import config as run_config
from rc_jax.models.config import REMAT_POLICIES
from rc_jax.parallel.mesh import batch_shards_of
from rc_jax.rl import losses

METHOD = run_config.TRAIN
REWARDS = ("math", "string_match")
OLD_LOGPROBS = ("recompute", "sampler")
SUMMARY_FREE_TEMPLATES = ("self_refine", "self_verify")
ROLLOUTS = ("rc", "delethink")


def default_config() -> ml_collections.ConfigDict:
    """The training config: `rc_jax.config.default_config("train")`."""
    return run_config.default_config(METHOD)


def add_training_fields(c: ml_collections.ConfigDict) -> None:
    """Adds the training sections to the shared ones (`rc_jax.config._shared_fields`) and
    sets the training defaults of shared fields."""
    c.name = "rct"
    c.model.dtype = "bfloat16"        # activations / matmuls
    c.model.param_dtype = "float32"   # trained parameters and optimizer state
    c.model.remat_policy = "full"     # jax.checkpoint per layer: none|full|dots|dots_no_batch
    c.data.shuffle = True
    c.data.seed = 1                   # the authors' RandomSampler seed
    c.rc.num_steps = 3                # T_train: online chain length

    r = c.rl = ml_collections.ConfigDict()
    # rc: RC chains -> snapshot groups (the paper's RCT). delethink: G Delethink traces per
    # problem, every chunk a trained sample with its trace's reward (the Markovian Thinker).
    r.rollout = "rc"
    r.batch_size = 64                 # B: problems per training step
    r.chains_per_problem = 1          # online chains per problem
    r.snapshots_per_chain = 2         # k: distinct chain indices trained per chain
    r.omit_initial_snapshot = False   # exclude index 0 (the "" summary)
    r.group_size = 8                  # G: responses per snapshot prompt (one GRPO group)
    r.total_steps = 0                 # 0: num_epochs over the data
    r.num_epochs = 16
    r.reward = "math"                 # math (math-verify grader) | string_match
    r.advantage_estimator = "grpo"
    r.advantage_eps = 1e-6
    r.drop_zero_advantage_groups = False
    r.policy_loss = "ppo_dual_clip"
    r.clip_ratio_low = 0.2
    r.clip_ratio_high = 0.28
    r.clip_ratio_c = 3.0
    r.kl_coef = 0.001
    # KL coefficient of summary tokens (rl.train_summarizer); < 0: the same as kl_coef.
    # The KL term is a plain token mean in every loss_agg_mode (as the authors' is).
    r.kl_coef_summary = -1.0
    r.kl_type = "low_var_kl"
    r.entropy_coef = 0.0
    # token_mean: over the whole mini-batch (ours). The authors' verl runs take a token mean
    # per micro-batch, their micro-batches being token-balanced mixed-length partitions of
    # ~micro_batch_tokens per GPU: microbatch_token_mean reproduces that weighting
    # (losses.token_balanced_partition); see losses.aggregation_weights.
    r.loss_agg_mode = "token_mean"
    # microbatch_token_mean only: data-parallel parts the partition is made in (the
    # authors' GPUs; their run: 8); 0: the mesh's batch shards.
    r.microbatch_agg_shards = 0
    r.old_logprobs = "recompute"      # recompute (authors) | sampler
    r.tis_cap = 0.0                   # >0: truncated IS weight min(pi_old/pi_sampler, cap)
    r.num_minibatches = 2             # M optimizer steps per training step
    r.micro_batch_tokens = 40000      # token budget per batch shard per micro-batch
    r.length_buckets_per_octave = 16  # padded lengths per power of two (1: powers of two)
    r.logprob_chunk = 0               # >0: vocab projection this many positions at a time
    r.learning_rate = 1e-6
    r.lr_warmup_steps = 0             # optimizer steps of linear warmup (authors: 0)
    r.adam_b1 = 0.9
    r.adam_b2 = 0.999
    r.adam_eps = 1e-8
    r.weight_decay = 0.01
    r.max_grad_norm = 1.0
    r.reference_path = ""             # frozen KL reference; empty: model.path
    r.max_generation_rows = 0         # sequences per sampler/engine call (0: all at once)
    # Summary replay buffer (off in the authors' released run).
    r.replay_buffer = False
    r.replay_samples_per_problem = 1
    r.replay_purge_on_add = False
    r.replay_capacity = 0             # 0: unbounded (authors)
    r.replay_max_age = 0              # in training steps; 0: unbounded (authors)
    r.replay_initial_path = ""        # warm-start JSON (ours or the authors' format)
    # Method-space options kept from the authors' code.
    r.train_summarizer = False        # also train summary generation
    r.summary_snapshots_per_chain = 1
    r.summary_group_size = 8
    r.summary_reward_samples = 4      # reasoning continuations that grade one summary
    r.summary_free = False            # ablation: context = previous reasoning, no summaries
    r.summary_free_template = "self_refine"  # self_refine | self_verify | a file

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.directory = ""       # empty: <output_dir>/checkpoints
    c.checkpoint.save_every = 10
    c.checkpoint.keep = 3
    c.checkpoint.resume = True
    c.checkpoint.export_every = 0     # >0: HF safetensors export every N steps
    c.checkpoint.export_final = True

    c.output_dir = "outputs/rct"
    c.log_every = 1
    c.tensorboard = True              # when tensorboardX / TensorFlow is installed
    c.progress = True                 # console progress bar


_fail = run_config._fail
_positive_int = run_config._positive


def sequences_per_step(c: ml_collections.ConfigDict) -> int:
    """Trained reasoning sequences per step when every problem has its nominal chains."""
    r = c.rl
    return r.batch_size * r.chains_per_problem * r.snapshots_per_chain * r.group_size


def validate_training(c: ml_collections.ConfigDict, *, device_count: int | None = None,
                      batch_shards: int | None = None) -> None:
    """The training checks, after `rc_jax.config.validate` has checked the shared
    sections; raises ValueError naming the first bad field.

    The batch must divide over the mesh's batch shards: `batch_shards` when given (a mesh
    built by the caller), else computed from `config.mesh` and `device_count` (default:
    `jax.device_count()`).
    """
    if not c.sampling.temperature > 0:
        _fail("sampling.temperature", f"must be > 0 for RL (log-probs divide by it), got "
              f"{c.sampling.temperature}")
    if c.model.param_dtype not in run_config.DTYPES:
        _fail("model.param_dtype", f"must be one of {run_config.DTYPES}, got "
              f"{c.model.param_dtype!r}")
    if c.model.remat_policy not in REMAT_POLICIES:
        _fail("model.remat_policy", f"must be one of {REMAT_POLICIES}, got "
              f"{c.model.remat_policy!r}")
    if c.rl.reference_path and not Path(c.rl.reference_path).is_dir():
        _fail("rl.reference_path", f"directory {c.rl.reference_path!r} does not exist")
    _validate_rl(c)
    ck = c.checkpoint
    if ck.save_every < 0 or ck.keep < 1 or ck.export_every < 0:
        _fail("checkpoint", f"save_every/export_every must be >= 0 and keep >= 1, got "
              f"{ck.save_every}/{ck.export_every}/{ck.keep}")
    if c.log_every < 1:
        _fail("log_every", f"must be >= 1, got {c.log_every}")
    _validate_batch_layout(c, device_count, batch_shards)


def _validate_delethink_rollout(c: ml_collections.ConfigDict) -> None:
    """rl.rollout = delethink (the `delethink` section is checked with the shared ones):
    the RC-only options it cannot take."""
    r = c.rl
    for name, value in (("chains_per_problem", r.chains_per_problem != 1),
                        ("replay_buffer", r.replay_buffer),
                        ("train_summarizer", r.train_summarizer),
                        ("summary_free", r.summary_free)):
        if value:
            _fail(f"rl.{name}", "is an option of rl.rollout='rc'; a Delethink step has one "
                  "group of group_size traces per problem and no summaries")


def _validate_rl(c: ml_collections.ConfigDict) -> None:
    r = c.rl
    if r.rollout not in ROLLOUTS:
        _fail("rl.rollout", f"must be one of {ROLLOUTS}, got {r.rollout!r}")
    if r.rollout == "delethink":
        _validate_delethink_rollout(c)
    for name in ("batch_size", "chains_per_problem", "snapshots_per_chain", "group_size",
                 "num_minibatches", "micro_batch_tokens", "num_epochs",
                 "length_buckets_per_octave"):
        _positive_int(c, f"rl.{name}")
    if r.total_steps < 0:
        _fail("rl.total_steps", f"must be >= 0 (0: num_epochs), got {r.total_steps}")
    eligible = c.rc.num_steps - int(r.omit_initial_snapshot)
    if r.rollout == "rc" and r.snapshots_per_chain > eligible:
        _fail("rl.snapshots_per_chain", f"{r.snapshots_per_chain} distinct snapshots need at "
              f"least that many eligible chain indices; rc.num_steps={c.rc.num_steps} gives "
              f"{eligible}")
    if r.reward not in REWARDS:
        _fail("rl.reward", f"must be one of {REWARDS}, got {r.reward!r}")
    if r.advantage_estimator not in losses.ADVANTAGE_ESTIMATORS:
        _fail("rl.advantage_estimator", f"unknown {r.advantage_estimator!r}; choose from "
              f"{', '.join(losses.ADVANTAGE_ESTIMATORS)}")
    sizes = {"rl.group_size": r.group_size}
    if r.train_summarizer:
        sizes["rl.summary_group_size"] = r.summary_group_size
    for field, g in sizes.items():
        if g < 2:
            _fail(field, f"group size {g}: a group-relative advantage "
                  f"({r.advantage_estimator}) of a single response is always 0, so nothing "
                  "would be learned; use at least 2")
    if r.advantage_eps <= 0:
        _fail("rl.advantage_eps", f"must be > 0, got {r.advantage_eps}")
    if r.policy_loss not in losses.POLICY_LOSSES:
        _fail("rl.policy_loss", f"unknown {r.policy_loss!r}; choose from "
              f"{', '.join(losses.POLICY_LOSSES)}")
    if not (0 < r.clip_ratio_low < 1 and r.clip_ratio_high > 0):
        _fail("rl.clip_ratio_low", f"need 0 < clip_ratio_low < 1 and clip_ratio_high > 0, got "
              f"{r.clip_ratio_low} / {r.clip_ratio_high}")
    if r.policy_loss == "ppo_dual_clip" and not r.clip_ratio_c > 1:
        _fail("rl.clip_ratio_c", f"dual clip needs c > 1, got {r.clip_ratio_c}")
    if r.kl_type not in losses.KL_PENALTIES:
        _fail("rl.kl_type", f"unknown {r.kl_type!r}; choose from {', '.join(losses.KL_PENALTIES)}")
    if r.kl_coef < 0 or r.entropy_coef < 0:
        _fail("rl.kl_coef", f"kl_coef and entropy_coef must be >= 0, got {r.kl_coef} / "
              f"{r.entropy_coef}")
    if r.kl_coef_summary >= 0 and not r.train_summarizer:
        _fail("rl.kl_coef_summary", "applies to summary tokens, which are trained only with "
              "rl.train_summarizer=True (leave it < 0 otherwise)")
    if int(r.microbatch_agg_shards) != r.microbatch_agg_shards or r.microbatch_agg_shards < 0:
        _fail("rl.microbatch_agg_shards", f"must be an integer >= 0 (0: the mesh's batch "
              f"shards), got {r.microbatch_agg_shards!r}")
    if r.loss_agg_mode not in losses.LOSS_AGG_MODES:
        _fail("rl.loss_agg_mode", f"unknown {r.loss_agg_mode!r}; choose from "
              f"{', '.join(losses.LOSS_AGG_MODES)}")
    if r.old_logprobs not in OLD_LOGPROBS:
        _fail("rl.old_logprobs", f"must be one of {OLD_LOGPROBS}, got {r.old_logprobs!r}")
    if r.tis_cap < 0:
        _fail("rl.tis_cap", f"must be >= 0 (0: off), got {r.tis_cap}")
    s = c.sampling
    truncated = s.top_p < 1 or s.top_k > 0 or s.min_p > 0
    if (r.old_logprobs == "sampler" or r.tis_cap > 0) and truncated:
        _fail("rl.old_logprobs", "the sampler's log-probs are of the truncated (top-p/top-k/"
              "min-p) distribution and cannot stand in for the policy's; use "
              "old_logprobs='recompute' and tis_cap=0, or no truncation")
    if r.old_logprobs == "sampler" and r.tis_cap > 0:
        _fail("rl.tis_cap", "with old_logprobs='sampler' the old log-probs *are* the "
              "sampler's, so the weight pi_old/pi_sampler is 1; set tis_cap=0 or recompute")
    if r.max_generation_rows < 0:
        _fail("rl.max_generation_rows", f"must be >= 0 (0: all rows at once), got "
              f"{r.max_generation_rows}")
    if r.max_generation_rows and r.max_generation_rows < r.group_size:
        _fail("rl.max_generation_rows", f"{r.max_generation_rows} rows cannot hold one group "
              f"of {r.group_size}")
    if r.logprob_chunk < 0:
        _fail("rl.logprob_chunk", f"must be >= 0, got {r.logprob_chunk}")
    if not r.learning_rate > 0 or r.lr_warmup_steps < 0:
        _fail("rl.learning_rate", f"learning_rate must be > 0 and lr_warmup_steps >= 0, got "
              f"{r.learning_rate} / {r.lr_warmup_steps}")
    if not (0 <= r.adam_b1 < 1 and 0 <= r.adam_b2 < 1 and r.adam_eps > 0):
        _fail("rl.adam_b1", "need 0 <= b1, b2 < 1 and eps > 0")
    if r.weight_decay < 0 or not r.max_grad_norm > 0:
        _fail("rl.max_grad_norm", f"weight_decay must be >= 0 and max_grad_norm > 0, got "
              f"{r.weight_decay} / {r.max_grad_norm}")
    if r.replay_buffer:
        _positive_int(c, "rl.replay_samples_per_problem")
    if r.replay_capacity < 0 or r.replay_max_age < 0:
        _fail("rl.replay_capacity", "replay_capacity and replay_max_age must be >= 0")
    if r.replay_initial_path and not r.replay_buffer:
        _fail("rl.replay_initial_path", "given but rl.replay_buffer is False")
    if r.replay_initial_path and not Path(r.replay_initial_path).is_file():
        _fail("rl.replay_initial_path", f"file {r.replay_initial_path!r} does not exist")
    if r.train_summarizer:
        for name in ("summary_snapshots_per_chain", "summary_reward_samples"):
            _positive_int(c, f"rl.{name}")
        if r.summary_snapshots_per_chain > c.rc.num_steps:
            _fail("rl.summary_snapshots_per_chain", f"at most rc.num_steps="
                  f"{c.rc.num_steps} distinct chain steps")
        if r.replay_buffer:
            _fail("rl.train_summarizer", "cannot be combined with rl.replay_buffer (as in the "
                  "authors' code: stored summaries would come from a policy whose summaries "
                  "are being trained)")
        if r.summary_free:
            _fail("rl.train_summarizer", "the summary-free variant has no summarizer")
    if r.summary_free and r.summary_free_template not in SUMMARY_FREE_TEMPLATES:
        if not Path(r.summary_free_template).is_file():
            _fail("rl.summary_free_template", f"{r.summary_free_template!r} is neither one of "
                  f"{SUMMARY_FREE_TEMPLATES} nor an existing file")
        from rc_jax.rl.rollout import summary_free_template  # why: the engine, seconds to import
        try:
            summary_free_template(r.summary_free_template)
        except ValueError as e:
            _fail("rl.summary_free_template", str(e))


def _validate_batch_layout(c: ml_collections.ConfigDict, device_count: int | None,
                           shards: int | None = None) -> None:
    """Group, mini-batch and mesh divisibility: never a silent wrong grouping."""
    r = c.rl
    if r.rollout == "delethink":
        # One group per problem; its samples (one per chunk) vary in number, and the
        # micro-batch planner pads rows to the batch shards.
        if r.batch_size % r.num_minibatches:
            _fail("rl.num_minibatches", f"the {r.batch_size} groups of a Delethink step "
                  f"(one per problem) do not split into {r.num_minibatches} mini-batches")
        if shards is None:
            if device_count is None:
                device_count = jax.device_count()
            try:
                batch_shards_of(c.mesh, device_count)
            except ValueError as e:
                _fail("mesh", str(e))
        return
    n = sequences_per_step(c)
    if n % r.num_minibatches:
        _fail("rl.num_minibatches", f"{n} sequences per step (batch_size {r.batch_size} x "
              f"chains {r.chains_per_problem} x snapshots {r.snapshots_per_chain} x "
              f"group_size {r.group_size}) do not split into {r.num_minibatches} mini-batches")
    per_mini = n // r.num_minibatches
    if per_mini % r.group_size:
        _fail("rl.num_minibatches", f"a mini-batch of {per_mini} sequences would split a group "
              f"of {r.group_size}; choose num_minibatches dividing the number of groups "
              f"({n // r.group_size})")
    if shards is None:
        if device_count is None:
            device_count = jax.device_count()
        try:
            shards = batch_shards_of(c.mesh, device_count)
        except ValueError as e:
            _fail("mesh", str(e))
    if r.microbatch_agg_shards and per_mini % r.microbatch_agg_shards:
        _fail("rl.microbatch_agg_shards", f"a mini-batch of {per_mini} sequences does not "
              f"split into {r.microbatch_agg_shards} equal parts")
    if per_mini % shards:
        _fail("rl.batch_size", f"a mini-batch of {per_mini} sequences does not divide over "
              f"the {shards} batch shards (data x fsdp) of mesh {c.mesh or 'data:-1'!r}; "
              "change rl.batch_size, rl.num_minibatches or the mesh")
