"""RCT training: short-horizon RL on RC rollouts (`python -m rc_jax.main --config=...`
with `method='train'`; config schema: `rc_jax.config.default_config("train")`).

One step (`Trainer.train_step`), following the authors' recipe (see docs/training.md):
  1. draw B problems (deterministic, resumable order);
  2. online RC chains with the current weights (replay-buffer seeds if enabled);
  3. k snapshots per chain -> G fresh responses per snapshot prompt (one group each);
  4. rewards from the grader; group-normalised advantages;
  5. old log-probs (current weights, before any update) and reference log-probs;
  6. M mini-batches -> M AdamW steps, each accumulating token-budget micro-batches;
  7. metrics; checkpoint / HF export on schedule.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rc_jax.config import config_hash, data_split, validate
from rc_jax.data import DataError, demo_problems_path, load_problems
from rc_jax.limits import check_context, check_run_fits
from rc_jax.models import Model, ModelConfig, load_hf_checkpoint, save_hf_checkpoint
from rc_jax.outputs import prepare_output_dir, set_aside_previous_run
from rc_jax.parallel import broadcast_from_main, make_mesh, param_shardings, to_host
from rc_jax.rc.engine import RCSettings
from rc_jax.rl.data import ProblemStream
from rc_jax.rl.metrics import MetricsLogger
from rc_jax.rl import losses
from rc_jax.rl.batch import Sample, pack_rows, plan_micro_batches, split_minibatches
from rc_jax.rl.replay import SummaryReplayBuffer
from rc_jax.rl.rollout import (REASONING, SUMMARY, Chain, Group, RCTRollout, RewardFn,
                               TraceGroup, build_groups, check_groups, delethink_metrics,
                               make_reward_fn, score)
from rc_jax.rl.step import LossSettings, OptimizerSettings, train_programs
from rc_jax.sampling import Buckets, SamplingParams
from rc_jax.sampling.keys import row_keys
from rc_jax.tokenizer import load_tokenizer
from rc_jax.tools.builtin_models import resolve_model_path

BATCH_AXES = ("data", "fsdp")


def loss_settings(c: ml_collections.ConfigDict) -> LossSettings:
    r = c.rl
    return LossSettings(policy_loss=r.policy_loss, clip_low=float(r.clip_ratio_low),
                        clip_high=float(r.clip_ratio_high), clip_c=float(r.clip_ratio_c),
                        kl_coef=float(r.kl_coef),
                        kl_coef_summary=(float(r.kl_coef_summary) if r.kl_coef_summary >= 0
                                         else None), kl_type=r.kl_type,
                        entropy_coef=float(r.entropy_coef), tis_cap=float(r.tis_cap),
                        temperature=float(c.sampling.temperature),
                        logprob_chunk=int(r.logprob_chunk))


def optimizer_settings(c: ml_collections.ConfigDict) -> OptimizerSettings:
    r = c.rl
    return OptimizerSettings(learning_rate=float(r.learning_rate),
                             warmup_steps=int(r.lr_warmup_steps), b1=float(r.adam_b1),
                             b2=float(r.adam_b2), eps=float(r.adam_eps),
                             weight_decay=float(r.weight_decay),
                             max_grad_norm=float(r.max_grad_norm))


def load_training_problems(c: ml_collections.ConfigDict) -> list:
    """The training set; a missing/ill-named field fails here, before any model loads."""
    d = c.data
    source = str(demo_problems_path()) if d.source == "builtin:demo" else d.source
    try:
        return load_problems(source, problem_field=d.problem_field or None,
                             answer_field=d.answer_field or None, id_field=d.id_field or None,
                             split=data_split(c) or None, limit=d.limit or None)
    except DataError as e:
        raise ValueError(f"config.data ({d.source}): {e}") from None


@dataclasses.dataclass
class StepTimer:
    """Wall time per phase of one step."""
    times: dict[str, float] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(float))

    def add(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.times[name] += now - start
        return now


class Trainer:
    """Holds the model, reference, optimizer, rollout worker, buffer, data position and
    checkpoints of one RCT run. `train()` runs to `total_steps`."""

    def __init__(self, config: ml_collections.ConfigDict, *, reward_fn: RewardFn | None = None,
                 model: tuple[Any, Any] | None = None, tokenizer: Any = None,
                 mesh: Any = "config", device_count: int | None = None):
        """model: optional preloaded (ModelConfig, params) instead of `model.path`
        (tests); mesh: a `jax.sharding.Mesh`, None for no mesh, or "config" to build it
        from `config.mesh`; reward_fn: overrides `rl.reward` (items -> rewards)."""
        explicit = None if isinstance(mesh, str) else batch_shards(mesh)
        validate(config, device_count=device_count, batch_shards=explicit)
        _start_over_or_resume(config)
        self.c = config
        self.hash = config_hash(config)
        problems = load_training_problems(config)
        self.stream = ProblemStream(problems, config.rl.batch_size, seed=config.data.seed,
                                    shuffle=config.data.shuffle)
        r = config.rl
        self.total_steps = r.total_steps or r.num_epochs * self.stream.steps_per_epoch
        self.mesh = self._make_mesh(mesh)
        self.tokenizer, self.model_dir = self._load_tokenizer(tokenizer, model)
        # Every rollout prompt plus its budget fits the model, checked before loading it.
        if model is None:
            check_run_fits(config, self.tokenizer, problems, self.model_dir)
        else:
            check_context(config, self.tokenizer, problems, model[0].max_position_embeddings)
        self.model_config, self.params, self.shardings = self._load_model(model)
        self.ref_params = self._load_reference(model)
        self.loss = loss_settings(config)
        self.programs = train_programs(self.model_config, self.loss, optimizer_settings(config),
                                       self.mesh, self.shardings, BATCH_AXES)
        self.opt_state = self.programs.init_opt_state(self.params)
        self.reward_fn = reward_fn or make_reward_fn(r.reward, config.grading_timeout)
        self._owns_grader = reward_fn is None
        self.settings = RCSettings(
            num_steps=config.rc.num_steps, max_reasoning_tokens=config.rc.max_reasoning_tokens,
            max_summary_tokens=config.rc.max_summary_tokens,
            reasoning_template=config.rc.reasoning_template,
            summary_template=config.rc.summary_template, use_think_tags=config.rc.use_think_tags)
        s = config.sampling
        self.sampling = SamplingParams(s.temperature, s.top_p, s.top_k, s.min_p)
        self.rollout = RCTRollout(
            self.model_config.replace(remat_policy="none"), self.tokenizer,
            self.settings, self.sampling,
            buckets=Buckets(max_cache_length=config.model.max_cache_length), mesh=self.mesh,
            data_axes=BATCH_AXES if self.mesh is not None else None,
            param_shardings=self.shardings, seed=s.seed, summary_free=r.summary_free,
            summary_free_template_spec=r.summary_free_template,
            max_rows=r.max_generation_rows)
        self.buffer = None
        if r.replay_buffer:
            self.buffer = SummaryReplayBuffer(r.replay_capacity, r.replay_max_age,
                                              r.replay_purge_on_add)
            if r.replay_initial_path:
                self.buffer.load(r.replay_initial_path)
        self.step = 0
        self.output_dir = Path(config.output_dir)
        from rc_jax.rl.checkpoint import TrainCheckpointer  # why: orbax takes ~3 s to import
        self.checkpointer = TrainCheckpointer(
            config.checkpoint.directory or self.output_dir / "checkpoints",
            save_every=config.checkpoint.save_every, keep=config.checkpoint.keep)
        latest = self.checkpointer.latest_step()
        if config.checkpoint.resume and latest is not None:
            self.restore(latest)
        self.logger = MetricsLogger(self.output_dir, total_steps=self.total_steps,
                                    start_step=self.step, tensorboard=config.tensorboard,
                                    progress=config.progress, enabled=_is_main())
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def _make_mesh(self, mesh):
        if mesh != "config":
            return mesh
        if not self.c.mesh and jax.device_count() == 1:
            return None
        return make_mesh(self.c.mesh or None)

    def _load_tokenizer(self, tokenizer, model):
        model_dir = None if model is not None else resolve_model_path(self.c.model.path)
        if tokenizer is None:
            path = self.c.tokenizer.path or model_dir
            if path is None:
                raise ValueError("config.tokenizer.path: required when the model is passed in")
            tokenizer = load_tokenizer(path)
        return tokenizer, model_dir

    def _overrides(self) -> dict[str, Any]:
        m = self.c.model
        return {"dtype": m.dtype, "param_dtype": m.param_dtype, "remat_policy": m.remat_policy,
                "attention": m.get("attention", "auto")}

    def _load_model(self, model):
        if model is not None:
            cfg, params = model
            cfg = cfg.replace(**self._overrides())
            shardings = None if self.mesh is None else _param_shardings(cfg, self.mesh)
            # A copy: the optimizer update donates (frees) the policy's buffers.
            params = jax.tree.map(lambda x: jnp.array(x, cfg.jnp_param_dtype, copy=True), params)
            params = jax.device_put(params, shardings or _first_device())
            return Model(cfg, params, shardings)
        cfg = ModelConfig.from_pretrained(self.model_dir, **self._overrides())
        shardings = None if self.mesh is None else _param_shardings(cfg, self.mesh)
        cfg, params = load_hf_checkpoint(self.model_dir, shardings=shardings, **self._overrides())
        if shardings is None:
            params = jax.device_put(params, _first_device())
        return Model(cfg, params, shardings)

    def _load_reference(self, model):
        """The frozen initial policy for the KL term (None when no KL coefficient is on)."""
        if not loss_settings(self.c).uses_kl:
            return None
        if self.c.rl.reference_path:
            overrides = dict(self._overrides(), param_dtype=self.c.model.dtype)
            _, ref = load_hf_checkpoint(self.c.rl.reference_path, shardings=self.shardings,
                                        **overrides)
            return ref
        # A copy (the policy's buffers are donated to the optimizer update), stored in the
        # compute dtype: the forward casts weights to it anyway, so log-probs are the same
        # and a bf16 run keeps the frozen model at half the memory.
        dt = self.model_config.jnp_dtype
        return jax.tree.map(lambda x: jnp.array(x, dt, copy=True), self.params)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, Any]:
        """Runs one training step; returns its metrics."""
        r = self.c.rl
        step = self.step + 1
        timer = StepTimer()
        problems = self.stream.next_batch()
        chains: list[Chain]
        summary_groups: list[Group]
        groups: Any  # RC's Groups or Delethink's TraceGroups (what _samples reads is shared)
        if r.rollout == "delethink":
            chains, summary_groups = [], []
            groups = self._delethink_groups(problems, step, timer)
            metrics = delethink_metrics(groups)
        else:
            chains, groups, summary_groups = self._rc_groups(problems, step, timer)
            metrics = self._rollout_metrics(chains, groups, summary_groups)
        samples, adv_metrics = self._samples(groups, summary_groups)
        metrics.update(adv_metrics)
        metrics.update(self._update(samples, timer))
        self.step = step
        self._after_step(step)
        metrics.update(self._timing(timer, groups, summary_groups, chains, samples))
        metrics["lr"] = float(self.programs.opt_settings.schedule()(
            max(0, step * r.num_minibatches - 1)))
        if self.buffer is not None:
            metrics["replay_size"] = len(self.buffer)
            metrics["replay_problems"] = len(self.buffer.entries)
        self.logger.log(step, metrics)
        self.history.append(metrics)
        return metrics

    def _rc_groups(self, problems, step: int, timer: StepTimer
                   ) -> tuple[list[Chain], list[Group], list[Group]]:
        """RC rollouts (rl.rollout = rc): online chains, snapshot groups with G fresh
        responses each, summary groups (rl.train_summarizer), all graded."""
        c, r = self.c, self.c.rl
        t = time.perf_counter()
        rng = np.random.default_rng([c.sampling.seed, step])
        labels = [p.answer for p in problems]

        # A. online chains
        chains = self._make_chains(problems, rng, step)
        keys = row_keys(c.sampling.seed, [
            f"{step}/{problems[ch.problem_index].problem_id}/chain{ch.chain_index}"
            for ch in chains])
        self.rollout.run_chains(self.params, [p.problem for p in problems], chains, keys,
                                c.rc.num_steps)
        t = timer.add("generation", t)
        if self.buffer is not None:
            # Summary-free chains store their reasoning traces instead (as the authors do).
            self.buffer.add_chains([
                (problems[ch.problem_index].problem,
                 ch.reasoning_text if r.summary_free else ch.summary_text, ch.start_depth,
                 ch.reasoning_ids if r.summary_free else ch.summary_ids) for ch in chains], step)

        # B + C. snapshot groups, G fresh responses each
        texts = [p.problem for p in problems]
        groups = build_groups(chains, r.snapshots_per_chain, rng, self.rollout.reasoning_prompt,
                              texts, num_steps=c.rc.num_steps,
                              omit_initial=r.omit_initial_snapshot, summary_free=r.summary_free,
                              labels=labels)
        group_keys = row_keys(c.sampling.seed, [self._group_label(step, problems, chains, g)
                                                   for g in groups], r.group_size)
        self.rollout.sample_groups(self.params, groups, r.group_size, c.rc.max_reasoning_tokens,
                                   group_keys)
        check_groups(groups, r.group_size)
        summary_groups: list[Group] = []
        if r.train_summarizer:
            summary_groups = self._summary_groups(problems, chains, groups, rng,
                                                  step, timer)
        t = timer.add("generation", t)

        # D. rewards
        rewards = score([(text, g.label) for g in groups for text in g.texts], self.reward_fn)
        for i, g in enumerate(groups):
            g.rewards = rewards[i * r.group_size:(i + 1) * r.group_size].tolist()
        chain_correct = score([(text, labels[ch.problem_index]) for ch in chains
                               for text in ch.reasoning_text], self.reward_fn)
        for i, ch in enumerate(chains):
            ch.correct = chain_correct[i * c.rc.num_steps:(i + 1) * c.rc.num_steps].tolist()
        timer.add("reward", t)
        return chains, groups, summary_groups

    def _delethink_groups(self, problems, step: int, timer: StepTimer) -> list[TraceGroup]:
        """Delethink rollouts (rl.rollout = delethink): G traces per problem with the
        current weights, each graded on its whole text (chunks joined)."""
        c, r = self.c, self.c.rl
        t = time.perf_counter()
        keys = row_keys(c.sampling.seed, [f"{step}/{p.problem_id}/delethink"
                                             for p in problems], r.group_size)
        groups = self.rollout.delethink_groups(self.params, [p.problem for p in problems],
                                               [p.answer for p in problems], keys,
                                               r.group_size, c.delethink)
        t = timer.add("generation", t)
        rewards = score([(text, g.label) for g in groups for text in g.texts], self.reward_fn)
        for i, g in enumerate(groups):
            g.rewards = rewards[i * r.group_size:(i + 1) * r.group_size].tolist()
        timer.add("reward", t)
        return groups

    def _group_label(self, step, problems, chains, g: Group) -> str:
        ch = chains[g.chain]
        return (f"{step}/{problems[g.problem_index].problem_id}/chain{ch.chain_index}/"
                f"snap{g.snapshot}/{g.kind}")

    def _make_chains(self, problems, rng, step) -> list[Chain]:
        """Chains of this step: buffer-seeded for stored problems, else from ""."""
        r = self.c.rl
        return seed_chains(
            problems, self.buffer, rng, step, chains_per_problem=r.chains_per_problem,
            samples_per_problem=r.replay_samples_per_problem, encode=self.tokenizer.encode,
            max_seed_tokens=None if r.summary_free else self.rollout.buckets.new_tokens(
                self.rollout.settings.max_summary_tokens))

    def _summary_groups(self, problems, chains, groups, rng, step, timer):
        """Summarizer training: sample summaries of (s_i, r_i); reward each by the mean
        grade of fresh reasoning continuations from it."""
        r, c = self.c.rl, self.c
        sgroups = self.rollout.build_summary_groups(
            chains, r.summary_snapshots_per_chain, rng, [p.problem for p in problems],
            len(groups),
            c.rc.num_steps, [p.answer for p in problems])
        self.rollout.sample_groups(
            self.params, sgroups, r.summary_group_size, c.rc.max_summary_tokens,
            row_keys(c.sampling.seed, [self._group_label(step, problems, chains, g)
                                          for g in sgroups], r.summary_group_size))
        check_groups(sgroups, r.summary_group_size)
        prompts, golds, labels = [], [], []
        for g in sgroups:
            for j, p in enumerate(self.rollout.continuation_prompts(
                    g, problems[g.problem_index].problem)):
                prompts.append(p)
                golds.append(g.label)
                labels.append(f"{self._group_label(step, problems, chains, g)}/cont{j}")
        m = r.summary_reward_samples
        tokens = self.rollout.generate_chunked(self.params, prompts, c.rc.max_reasoning_tokens,
                                               row_keys(c.sampling.seed, labels, m), m)
        t = time.perf_counter()
        texts = [self.tokenizer.decode(x, skip_special_tokens=True) for x in tokens]
        grades = score([(text, golds[i // m]) for i, text in enumerate(texts)],
                       self.reward_fn).reshape(-1, m).mean(axis=1)
        timer.add("reward", t)
        timer.times["generation"] -= time.perf_counter() - t  # counted once, as reward
        for i, g in enumerate(sgroups):
            g.rewards = grades[i * r.summary_group_size:(i + 1) * r.summary_group_size].tolist()
        return sgroups

    def _samples(self, groups: Sequence[Group], summary_groups: Sequence[Group]
                 ) -> tuple[list[Sample], dict[str, float]]:
        """Advantages per group kind -> trained samples (optionally without all-equal
        groups), plus advantage metrics."""
        r = self.c.rl
        samples: list[Sample] = []
        metrics: dict[str, float] = {}
        for kind, gs, size in ((REASONING, groups, r.group_size),
                               (SUMMARY, summary_groups, r.summary_group_size)):
            if not gs:
                continue
            rewards = np.concatenate([np.asarray(g.rewards, np.float32) for g in gs])
            ids = np.repeat([g.group_id for g in gs], size)
            adv = losses.compute_advantages(r.advantage_estimator, rewards, ids,
                                            group_size=size, eps=r.advantage_eps)
            flat = losses.zero_variance_groups(rewards, ids).reshape(len(gs), size)[:, 0]
            prefix = "" if kind == REASONING else "summary_"
            means = rewards.reshape(len(gs), size).mean(axis=1)
            metrics[f"{prefix}zero_adv_frac"] = float(flat.mean())
            metrics[f"{prefix}zero_adv_all_correct_frac"] = float((flat & (means > 0)).mean())
            metrics[f"{prefix}zero_adv_all_wrong_frac"] = float((flat & (means <= 0)).mean())
            metrics[f"{prefix}advantage_abs_mean"] = float(np.abs(adv).mean())
            for gi, g in enumerate(gs):
                if r.drop_zero_advantage_groups and flat[gi]:
                    continue
                for j in range(size):  # a response, or every chunk of a Delethink trace
                    for prompt, response, logprobs in g.sequences(j):
                        samples.append(Sample(prompt, response, float(adv[gi * size + j]),
                                              g.group_id, g.rewards[j], logprobs,
                                              is_summary=kind == SUMMARY))
        metrics["trained_sequences"] = len(samples)
        return samples, metrics

    # ------------------------------------------------------------------ the update
    def _update(self, samples: Sequence[Sample], timer: StepTimer) -> dict[str, float]:
        self.params, self.opt_state, metrics = train_on_samples(
            self.programs, self.params, self.opt_state, self.ref_params, samples, self.c.rl,
            shards=batch_shards(self.mesh), pad_id=self.tokenizer.pad_id, timer=timer)
        return metrics

    # ------------------------------------------------------------------ metrics
    def _rollout_metrics(self, chains: Sequence[Chain], groups: Sequence[Group],
                         summary_groups: Sequence[Group]) -> dict[str, float]:
        out: dict[str, float] = {}
        rewards = np.array([x for g in groups for x in g.rewards])
        out["reward_mean"] = float(rewards.mean())
        for i in sorted({g.snapshot for g in groups}):
            out[f"reward_snapshot_{i}"] = float(np.mean([x for g in groups if g.snapshot == i
                                                         for x in g.rewards]))
        acc = np.array([ch.correct for ch in chains])  # [chains, T]
        for t in range(acc.shape[1]):
            out[f"chain_acc_step_{t}"] = float(acc[:, t].mean())
        lengths = np.array([len(x) for g in groups for x in g.responses])
        out["response_len_mean"] = float(lengths.mean())
        out["response_len_max"] = float(lengths.max())
        out["truncated_frac"] = float(np.mean([f == "length" for g in groups for f in g.finish]))
        if chains and chains[0].summary_ids:
            out["summary_len_mean"] = float(np.mean([len(s) for ch in chains
                                                     for s in ch.summary_ids]))
        if summary_groups:
            out["summary_reward_mean"] = float(np.mean([x for g in summary_groups
                                                        for x in g.rewards]))
        return out

    def _timing(self, timer, groups, summary_groups, chains, samples) -> dict[str, float]:
        tm = timer.times
        gen_tokens = sum(len(x) for g in list(groups) + list(summary_groups)
                         for j in range(len(g.rewards)) for _, x, _ in g.sequences(j))
        trained = sum(s.length for s in samples)
        total = sum(tm.values())
        return {"time_generation_s": tm["generation"], "time_reward_s": tm["reward"],
                "time_logprob_s": tm["logprob"], "time_update_s": tm["update"],
                "time_step_s": total,
                "generated_tokens_per_s": gen_tokens / max(tm["generation"], 1e-9),
                "train_tokens_per_s": trained / max(tm["logprob"] + tm["update"], 1e-9)}

    # ------------------------------------------------------------------ persistence
    def _after_step(self, step: int) -> None:
        ck = self.c.checkpoint
        if self.checkpointer.should_save(step) or step == self.total_steps:
            self.save(step)
        if (ck.export_every and step % ck.export_every == 0) or (
                ck.export_final and step == self.total_steps):
            self.export(self.output_dir / "export" / f"step_{step}")

    def save(self, step: int) -> None:
        meta = {"step": step, "data": self.stream.state_dict(), "seed": self.c.sampling.seed,
                "config_hash": self.hash}
        self.checkpointer.save(step, {"params": self.params, "opt_state": self.opt_state},
                               meta, self.buffer.state_dict() if self.buffer else None)

    def restore(self, step: int) -> None:
        state, meta, replay = self.checkpointer.restore(
            step, {"params": self.params, "opt_state": self.opt_state})
        if meta.get("config_hash") != self.hash:
            raise ValueError(f"checkpoint {self.checkpointer.directory}/{step} was written by "
                             f"a different configuration (hash {meta.get('config_hash')} != "
                             f"{self.hash}); use a new output_dir or checkpoint.resume=False")
        self.params, self.opt_state = state["params"], state["opt_state"]
        self.stream.load_state_dict(meta["data"])
        if self.buffer is not None and replay:
            self.buffer.load_state_dict(replay)
        self.step = int(meta["step"])

    def export(self, path: str | Path) -> Path:
        """The current policy as an HF safetensors directory (+ tokenizer files)."""
        dtype = self.c.model.dtype
        params = to_host(self.params)  # every process takes part in the gather
        if not _is_main():
            return Path(path)
        return save_hf_checkpoint(path, self.model_config.replace(param_dtype=dtype, dtype=dtype),
                                  params, tokenizer_dir=self.tokenizer.path)

    # ------------------------------------------------------------------ loop
    def train(self, num_steps: int | None = None) -> list[dict[str, Any]]:
        """Runs until `total_steps` (or `num_steps` more steps); returns their metrics."""
        end = self.total_steps if num_steps is None else min(self.total_steps,
                                                             self.step + num_steps)
        out = []
        while self.step < end:
            out.append(self.train_step())
        self.checkpointer.wait()
        return out

    def close(self) -> None:
        self.checkpointer.close()
        self.logger.close()
        grader = getattr(self.reward_fn, "grader", None)
        if self._owns_grader and grader is not None and hasattr(grader, "close"):
            grader.close()


def seed_chains(problems, buffer: SummaryReplayBuffer | None, rng: np.random.Generator,
                step: int, *, chains_per_problem: int, samples_per_problem: int, encode,
                max_seed_tokens: int | None) -> list[Chain]:
    """The step's online chains. A problem with stored summaries draws up to
    `samples_per_problem` of them (without replacement) and each seeds
    `chains_per_problem` chains, as the empty summary does for a problem not in the
    buffer. Chain indices are unique per problem (seed s, copy c -> s * chains + c), so
    every chain gets its own sampling key. A seed longer than `max_seed_tokens` (a
    warm-start summary longer than H_S) is cut to it.
    """
    chains: list[Chain] = []
    for pi, p in enumerate(problems):
        seeds = (buffer.sample(p.problem, samples_per_problem, rng, step=step)
                 if buffer is not None else [])
        if not seeds:
            chains.extend(Chain(pi, j, [], 0) for j in range(chains_per_problem))
            continue
        for s, e in enumerate(seeds):
            ids = list(e.ids if e.ids is not None else encode(e.text))
            if max_seed_tokens is not None:
                ids = ids[:max_seed_tokens]
            chains.extend(Chain(pi, s * chains_per_problem + j, list(ids), e.depth)
                          for j in range(chains_per_problem))
    return chains


def _param_shardings(config, mesh):
    return param_shardings(config, mesh)


def train_on_samples(programs, params, opt_state, ref_params, samples: Sequence[Sample],
                     rl: ml_collections.ConfigDict, *, shards: int, pad_id: int,
                     timer: StepTimer | None = None) -> tuple[Any, Any, dict[str, float]]:
    """The update half of a step: old/ref log-probs for every micro-batch (all with the
    weights as they are before the step's first update), then `rl.num_minibatches`
    optimizer steps, each over its token-budget micro-batches.

    Returns (params, opt_state, metrics). `params` and `opt_state` are donated.
    """
    timer = timer or StepTimer()
    if len({s.group_id for s in samples}) < rl.num_minibatches:
        return params, opt_state, {"updates_skipped_no_data": 1.0}
    t = time.perf_counter()
    minibatches = []
    for idx in split_minibatches([s.group_id for s in samples], rl.num_minibatches):
        micros = []
        for host in pack_minibatch([samples[i] for i in idx], rl, shards=shards,
                                   pad_id=pad_id):
            host["old_logp"] = np.zeros_like(host["sampler_logp"])
            host["ref_logp"] = np.zeros_like(host["sampler_logp"])
            micro = programs.put_micro(host)
            if rl.old_logprobs == "recompute":
                micro["old_logp"] = programs.logprobs(params, micro)
            else:
                micro["old_logp"] = micro["sampler_logp"]
            if ref_params is not None:
                micro["ref_logp"] = programs.logprobs(ref_params, micro)
            micros.append(micro)
        minibatches.append(micros)
    jax.block_until_ready(minibatches)
    t = timer.add("logprob", t)

    sums: dict[str, float] = collections.defaultdict(float)
    norms, skipped = [], 0
    for micros in minibatches:
        grads = programs.zeros_like_params(params)
        for micro in micros:
            grads, s = programs.accumulate(params, grads, micro)
            for k, v in to_host(s).items():
                sums[k] += float(v)
        params, opt_state, stats = programs.update(params, opt_state, grads)
        stats = to_host(stats)
        norms.append(float(stats["grad_norm"]))
        skipped += int(stats["skipped"])
    jax.block_until_ready(params)
    timer.add("update", t)
    n = max(sums["tokens"], 1.0)
    return params, opt_state, {
        "loss": sums["loss"] / rl.num_minibatches,
        "pg_loss": sums["pg_loss"] / rl.num_minibatches,
        "kl": sums["kl"] / n if ref_params is not None else 0.0,
        **({"kl_summary": sums["kl_summary"] / sums["summary_tokens"],
            "kl_reasoning": (sums["kl"] - sums["kl_summary"])
            / max(sums["tokens"] - sums["summary_tokens"], 1.0)}
           if ref_params is not None and sums["summary_tokens"] > 0 else {}),
        "entropy": sums["entropy"] / n, "clip_frac_high": sums["clip_high"] / n,
        "clip_frac_low": sums["clip_low"] / n, "dual_clip_frac": sums["dual_clip"] / n,
        "ratio_mean": sums["ratio"] / n, "ppo_kl_abs": sums["log_ratio_abs"] / n,
        "grad_norm": float(np.mean(norms)), "grad_norm_max": float(np.max(norms)),
        "updates_skipped_nonfinite": float(skipped), "trained_tokens": sums["tokens"],
        "micro_batches": float(sum(len(m) for m in minibatches)),
    }


def pack_minibatch(mb: Sequence[Sample], rl: ml_collections.ConfigDict, *, shards: int,
                   pad_id: int) -> list[dict[str, np.ndarray]]:
    """Host arrays of one mini-batch's micro-batches (`batch.pack_rows`), with the loss
    weights of `rl.loss_agg_mode` and the KL term's token-mean weights.

    The physical micro-batches are length-sorted token-budget batches
    (`plan_micro_batches`); the weights are per sequence, so they can come from other,
    logical micro-batches: for 'microbatch_token_mean' the authors' token-balanced
    partition (`losses.token_balanced_partition`, `rl.micro_batch_tokens` per part,
    `rl.microbatch_agg_shards` parts, default the batch shards).
    """
    plans = plan_micro_batches([s.length for s in mb], rl.micro_batch_tokens, shards,
                               per_octave=rl.length_buckets_per_octave)
    micro_ids = None  # logical micro-batches: only microbatch_token_mean has them
    if rl.loss_agg_mode == "microbatch_token_mean":
        micro_ids = losses.token_balanced_partition(
            np.array([s.length for s in mb]), rl.micro_batch_tokens,
            rl.microbatch_agg_shards or shards)
    response_lengths = np.array([len(s.response) for s in mb])
    weights = losses.aggregation_weights(rl.loss_agg_mode, response_lengths, micro_ids)
    kl_weights = losses.kl_aggregation_weights(rl.loss_agg_mode, response_lengths, micro_ids)
    return [pack_rows(mb, plan, weights, pad_id, kl_weights) for plan in plans]


def batch_shards(mesh) -> int:
    """How many ways micro-batch rows are split (data x fsdp); 1 without a mesh."""
    if mesh is None:
        return 1
    return int(np.prod([mesh.shape.get(a, 1) for a in BATCH_AXES]))


def _first_device():
    """Without a mesh, arrays are *committed* to one device, so arrays restored from a
    checkpoint (always committed) hit the same compiled programs."""
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _is_main() -> bool:
    return jax.process_index() == 0


def _start_over_or_resume(config: ml_collections.ConfigDict) -> None:
    """Before anything is read or written: with checkpoint.resume=False, a previous run in
    output_dir (metrics, checkpoints, exports) is moved aside whole, never truncated or
    mixed with the new one (rc_jax.outputs.set_aside_previous_run)."""
    if _is_main():
        if not config.checkpoint.resume:
            inputs = {"model.path": config.model.path, "tokenizer.path": config.tokenizer.path,
                      "data.source": config.data.source,
                      "rl.reference_path": config.rl.reference_path,
                      "rl.replay_initial_path": config.rl.replay_initial_path}
            extra = [config.checkpoint.directory] if config.checkpoint.directory else []
            for old, new in set_aside_previous_run(config.output_dir, extra_dirs=extra,
                                                   inputs=inputs):
                print(f"rc_jax train: checkpoint.resume=False: moved the previous run "
                      f"{old} to {new}")
        prepare_output_dir(config.output_dir)
    broadcast_from_main(None)  # the other processes wait until the directory is ready


def run_training(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Entry point for `rc_jax.main` (method 'train'): validate, train, export."""
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    trainer = Trainer(config)
    d = config.delethink
    shape = (f"k={config.rl.snapshots_per_chain} G={config.rl.group_size} "
             f"T={config.rc.num_steps}" if config.rl.rollout == "rc" else
             f"G={config.rl.group_size} delethink C={d.chunk_tokens} m0={d.keep_first} "
             f"m={d.keep_last} chunks={d.max_chunks}")
    print(f"rc_jax train: model={config.model.path} data={config.data.source} "
          f"steps {trainer.step}->{trainer.total_steps} "
          f"B={config.rl.batch_size} {shape} -> {config.output_dir}")
    try:
        history = trainer.train()
    finally:
        trainer.close()
    return {"steps": trainer.step, "last": history[-1] if history else {}}
