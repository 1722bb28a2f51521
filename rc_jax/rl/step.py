"""The jitted training programs, sharded on the mesh.

Three programs, each `jax.jit` with explicit `in_shardings` / `out_shardings`:

* `logprobs(params, micro) -> logp [R, L]`: old (current policy, before any update of
  the step) and reference log-probs, one micro-batch at a time.
* `accumulate(params, grads, micro) -> (grads + d loss / d params, metric sums)`: one
  micro-batch's gradient added into a float32 accumulator (donated, updated in place).
* `update(params, opt_state, grads) -> (params, opt_state, stats)`: one AdamW step with
  global-norm clipping; a non-finite gradient norm leaves params and optimizer state
  untouched and reports `skipped`.

Params, gradients and optimizer state share the params' shardings (FSDP on `fsdp`,
optionally heads/MLP on `tensor`); micro-batch rows are split over the batch axes
(`data` x `fsdp`). Micro-batches of different (rows, length) buckets reuse `accumulate`
with one compile per bucket; a training step is M x (micro-batches) accumulations and
M updates, which is what the authors' FSDP actor does with gradient accumulation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rc_jax.models import param_shapes
from rc_jax.models.config import ModelConfig
from rc_jax.parallel import put_global
from rc_jax.parallel.context import sharding_context
from rc_jax.parallel.mesh import IdentityKey
from rc_jax.rl import losses
from rc_jax.rl.logprobs import token_logprobs

MICRO_FIELDS = ("tokens", "positions", "mask", "response_mask", "advantages", "seq_weights",
                "sampler_logp", "old_logp", "ref_logp")
# Per-row fields a micro-batch may also carry (`batch.pack_rows` always does): the KL
# term's own weights (default: seq_weights) and which rows are summary responses
# (default: none). Programs take any set of fields; all are split over the batch axes.
OPTIONAL_MICRO_FIELDS = ("kl_weights", "summary_rows")
METRIC_SUMS = ("tokens", "clip_high", "clip_low", "dual_clip", "kl", "entropy", "ratio",
               "log_ratio_abs", "pg_loss", "loss", "summary_tokens", "kl_summary")


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Static loss hyper-parameters (hashable: they key the compiled programs)."""
    policy_loss: str = "ppo_dual_clip"
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_c: float = 3.0
    kl_coef: float = 0.001
    kl_coef_summary: float | None = None  # KL coefficient of summary tokens; None: kl_coef
    kl_type: str = "low_var_kl"
    entropy_coef: float = 0.0
    tis_cap: float = 0.0
    temperature: float = 1.0
    logprob_chunk: int = 0

    @property
    def summary_kl_coef(self) -> float:
        return self.kl_coef if self.kl_coef_summary is None else self.kl_coef_summary

    @property
    def uses_kl(self) -> bool:
        return self.kl_coef > 0 or self.summary_kl_coef > 0


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """AdamW with global-norm clipping (torch AdamW semantics, as in the authors' run)."""
    learning_rate: float = 1e-6
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0

    def schedule(self):
        if self.warmup_steps <= 0:
            return optax.constant_schedule(self.learning_rate)
        return optax.linear_schedule(0.0, self.learning_rate, self.warmup_steps)

    def build(self) -> optax.GradientTransformation:
        return optax.chain(
            optax.clip_by_global_norm(self.max_grad_norm),
            optax.adamw(self.schedule(), b1=self.b1, b2=self.b2, eps=self.eps,
                        weight_decay=self.weight_decay))


def sharding_scope(mesh: Mesh | None):
    """The model's logical activation constraints take effect inside this scope (see
    `rc_jax.parallel.sharding_context`); a no-op without a mesh."""
    if mesh is None:
        return contextlib.nullcontext()
    return sharding_context(mesh)


# ----------------------------------------------------------------------------- the loss


def micro_loss(params: Any, micro: dict[str, jax.Array], config: ModelConfig,
               ls: LossSettings) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted loss of one micro-batch and its metric sums (over response tokens).

    micro: tokens/positions [R, L] int32, mask/response_mask [R, L] bool,
    advantages/seq_weights [R] f32, old_logp/ref_logp/sampler_logp [R, L] f32; optional
    kl_weights [R] f32 (default seq_weights) and summary_rows [R] bool (default none).

    loss = sum_i seq_weights_i * sum_t (pg_it - entropy_coef * H_it)
         + sum_i kl_weights_i * coef_i * sum_t kl_it,
    coef_i = kl_coef_summary for summary rows, kl_coef for reasoning rows.
    """
    logp, entropy = token_logprobs(params, config, micro["tokens"], micro["positions"],
                                   micro["mask"], temperature=ls.temperature,
                                   chunk=ls.logprob_chunk)
    if ls.entropy_coef == 0:
        entropy = jax.lax.stop_gradient(entropy)  # logged only
    mask = micro["response_mask"].astype(jnp.float32)
    weights = micro["seq_weights"]
    adv = micro["advantages"][:, None]
    pl = losses.POLICY_LOSSES[ls.policy_loss](
        logp, micro["old_logp"], adv, clip_low=ls.clip_low, clip_high=ls.clip_high,
        clip_c=ls.clip_c)
    pg = pl.loss
    if ls.tis_cap > 0:
        pg = pg * losses.truncated_importance_weight(micro["old_logp"], micro["sampler_logp"],
                                                     ls.tis_cap)
    kl = losses.kl_penalty(ls.kl_type, logp, micro["ref_logp"])
    summary = micro.get("summary_rows")
    summary = (jnp.zeros(weights.shape, bool) if summary is None else summary.astype(bool))
    per_token = pg
    if ls.entropy_coef > 0:
        per_token = per_token - ls.entropy_coef * entropy
    loss = losses.aggregate(per_token, mask, weights)
    if ls.uses_kl:
        kl_weights = micro.get("kl_weights", weights)
        coef = jnp.where(summary, ls.summary_kl_coef, ls.kl_coef)
        loss = loss + losses.aggregate(kl, mask, kl_weights * coef)

    def msum(x):
        return jnp.sum(jax.lax.stop_gradient(x).astype(jnp.float32) * mask)

    sums = {"tokens": jnp.sum(mask), "clip_high": msum(pl.clipped_high),
            "clip_low": msum(pl.clipped_low), "dual_clip": msum(pl.dual_clipped),
            "kl": msum(kl), "entropy": msum(entropy), "ratio": msum(pl.ratio),
            "log_ratio_abs": msum(jnp.abs(logp - micro["old_logp"])),
            "pg_loss": jax.lax.stop_gradient(losses.aggregate(pg, mask, weights)),
            "loss": jax.lax.stop_gradient(loss),
            "summary_tokens": jnp.sum(mask * summary[:, None]),
            "kl_summary": msum(kl * summary[:, None])}
    return loss, sums


# ----------------------------------------------------------------------------- shardings


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_params: Any,
                        param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for the optimizer state: a leaf whose tree path ends with a parameter's
    path and has its shape (Adam's mu / nu) gets that parameter's sharding; everything
    else (step counts) is replicated."""
    state = jax.eval_shape(optimizer.init, abstract_params)
    by_path = {tuple(path): (leaf.shape, sh) for (path, leaf), sh in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0],
        jax.tree.leaves(param_shardings))}
    repl = NamedSharding(mesh, P())

    def pick(path, leaf):
        path = tuple(path)
        for k in range(len(path)):
            hit = by_path.get(path[k:])
            if hit is not None and hit[0] == leaf.shape:
                return hit[1]
        return repl

    return jax.tree_util.tree_map_with_path(pick, state)



# ----------------------------------------------------------------------------- programs


class TrainPrograms:
    """The jitted logprob / accumulate / update programs for one model and mesh.

    Build with `train_programs(...)` (cached, so several trainers in one process share
    compiled programs).
    """

    def __init__(self, config: ModelConfig, loss: LossSettings, opt: OptimizerSettings,
                 mesh: Mesh | None, param_shardings: Any, batch_axes: tuple[str, ...]):
        self.config, self.loss, self.opt_settings, self.mesh = config, loss, opt, mesh
        self.optimizer = opt.build()
        self.param_shardings = param_shardings
        self.batch_axes = batch_axes
        abstract = _abstract_params(config)
        if mesh is None:
            self.opt_shardings = self.grad_shardings = None
            self._logprobs = jax.jit(self._logprobs_fn)
            self._accumulate = jax.jit(self._accumulate_fn, donate_argnums=(1,))
            self._update = jax.jit(self._update_fn, donate_argnums=(0, 1))
            self._init_opt = jax.jit(self.optimizer.init)
            self._zeros = jax.jit(_zeros_f32)
            return
        rows = NamedSharding(mesh, P(batch_axes))
        repl = NamedSharding(mesh, P())
        self.rows, self.repl = rows, repl
        self.grad_shardings = param_shardings
        self.opt_shardings = opt_state_shardings(self.optimizer, abstract, param_shardings,
                                                 mesh)
        micro_sh = rows  # a prefix: every field of the micro-batch dict, whatever its keys
        self._logprobs = jax.jit(self._logprobs_fn, in_shardings=(param_shardings, micro_sh),
                                 out_shardings=rows)
        self._accumulate = jax.jit(
            self._accumulate_fn, in_shardings=(param_shardings, param_shardings, micro_sh),
            out_shardings=(param_shardings, repl), donate_argnums=(1,))
        self._update = jax.jit(
            self._update_fn,
            in_shardings=(param_shardings, self.opt_shardings, param_shardings),
            out_shardings=(param_shardings, self.opt_shardings, repl),
            donate_argnums=(0, 1))
        self._init_opt = jax.jit(self.optimizer.init, in_shardings=(param_shardings,),
                                 out_shardings=self.opt_shardings)
        self._zeros = jax.jit(_zeros_f32, in_shardings=(param_shardings,),
                              out_shardings=param_shardings)

    # -- traced bodies
    def _logprobs_fn(self, params, micro):
        logp, _ = token_logprobs(params, self.config, micro["tokens"], micro["positions"],
                                 micro["mask"], temperature=self.loss.temperature,
                                 chunk=self.loss.logprob_chunk)
        return logp

    def _accumulate_fn(self, params, grads, micro):
        (_, sums), g = jax.value_and_grad(micro_loss, has_aux=True)(
            params, micro, self.config, self.loss)
        grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
        return grads, sums

    def _update_fn(self, params, opt_state, grads):
        norm = optax.tree.norm(grads)
        finite = jnp.isfinite(norm)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, new_state = self.optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree.map(keep, new_params, params)
        opt_state = jax.tree.map(keep, new_state, opt_state)
        return params, opt_state, {"grad_norm": norm, "skipped": ~finite}

    # -- host API (calls run under the mesh's sharding scope)
    def init_opt_state(self, params):
        with sharding_scope(self.mesh):
            return self._commit(self._init_opt(params))

    def zeros_like_params(self, params):
        with sharding_scope(self.mesh):
            return self._commit(self._zeros(params))

    def _commit(self, tree):
        """Without a mesh, place fresh constants on the first device *committed*, like the
        arrays later steps produce: otherwise the first and second call of a program see
        different input placements and compile twice."""
        if self.mesh is not None:
            return tree
        return jax.device_put(tree, jax.sharding.SingleDeviceSharding(jax.devices()[0]))

    def logprobs(self, params, micro):
        with sharding_scope(self.mesh):
            return self._logprobs(params, micro)

    def accumulate(self, params, grads, micro):
        with sharding_scope(self.mesh):
            return self._accumulate(params, grads, micro)

    def update(self, params, opt_state, grads):
        with sharding_scope(self.mesh):
            return self._update(params, opt_state, grads)

    def put_micro(self, micro: dict[str, Any]) -> dict[str, jax.Array]:
        """Host arrays of one micro-batch onto the batch shards (on a multi-process
        mesh every process passes the same arrays and places its own rows)."""
        if self.mesh is None:
            return jax.device_put(micro, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        return put_global(micro, {k: self.rows for k in micro})


def _zeros_f32(params):
    return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)


def _abstract_params(config: ModelConfig):
    return param_shapes(config)


@functools.lru_cache(maxsize=16)
def _cached_programs(config, loss, opt, mesh, shardings_key, batch_axes) -> TrainPrograms:
    return TrainPrograms(config, loss, opt, mesh,
                         None if shardings_key is None else shardings_key.value, batch_axes)


def train_programs(config: ModelConfig, loss: LossSettings, opt: OptimizerSettings,
                   mesh: Mesh | None = None, param_shardings: Any = None,
                   batch_axes: tuple[str, ...] = ("data", "fsdp")) -> TrainPrograms:
    """Cached `TrainPrograms` (same arguments, same compiled programs)."""
    return _cached_programs(config, loss, opt, mesh,
                            None if param_shardings is None else IdentityKey(param_shardings),
                            tuple(batch_axes))
