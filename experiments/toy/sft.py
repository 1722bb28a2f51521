"""Supervised format training of the toy model (teacher forcing, loss on assistant tokens).

Examples are the two RC roles on single short-horizon steps, built with the same prompt
plans the RC engine uses, so training prompts are token-for-token what RC decoding
later feeds the model:

* reasoning: I_R(problem, summary of state k) -> the next <= ops_per_step operations and
  the boxed current value (`ChainProblem.reasoning`), then `<|im_end|>`;
* summary: I_S(problem, summary of state k, reasoning from state k) -> "label=value" of
  the last operation done in that reasoning, then `<|im_end|>`. A fraction of the
  reasoning texts are cut short (as a budget cut-off would), so the summarizer learns to
  report the last *complete* operation.

No example spans more than one RC step: the model never sees a trace longer than one
step's budget.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rc_jax.models import ModelConfig, forward, init_params
from experiments.toy import task
from experiments.toy.plans import PromptPlan


def toy_model_config(vocab_size: int, *, hidden: int = 128, layers: int = 4,
                     heads: int = 4, kv_heads: int = 2, mlp: int = 384,
                     eos_ids: Sequence[int] = ()) -> ModelConfig:
    """A Qwen3-shaped config (GQA, q/k-norm, SwiGLU, RoPE), tiny."""
    return ModelConfig(model_type="qwen3", vocab_size=vocab_size, hidden_size=hidden,
                       intermediate_size=mlp, num_layers=layers, num_heads=heads,
                       num_kv_heads=kv_heads, head_dim=hidden // heads, rope_theta=10000.0,
                       tie_word_embeddings=True, max_position_embeddings=1024,
                       eos_token_ids=tuple(eos_ids), dtype="float32", param_dtype="float32",
                       remat_policy="none")


def compositional_init(params: Any, tokenizer) -> Any:
    """Initial embedding of every labelled-operation token (`c-5`) = normalised sum of
    the random embeddings of its characters (`c`, `-`, `5`).

    A plain table would make each of the 672 such tokens learn its label and operation
    from scratch (each is seen ~1/672 of the time); starting from a sum gives every `c-?`
    a shared label direction (also the one of the summary's `c`) and every `?-5` a shared
    operation direction. Only the initial values change, not the architecture.
    """
    emb = np.array(params["embedding"])
    vocab = tokenizer.hf.get_vocab()
    for label in task.LABELS:
        for op in task.OPS:
            if label + op not in vocab:
                continue
            parts = [vocab[ch] for ch in label + op]
            emb[vocab[label + op]] = emb[parts].sum(axis=0) / math.sqrt(len(parts))
    return {**params, "embedding": jnp.asarray(emb, params["embedding"].dtype)}


# Bump when build_examples draws different data (invalidates cached SFT models).
DATA_VERSION = 3


@dataclasses.dataclass
class Example:
    prompt: list[int]
    response: list[int]  # loss-bearing (ends with the eos id)
    role: str


def build_examples(rng: np.random.Generator, count: int, *, tokenizer, reasoning_plan: PromptPlan,
                   summary_plan: PromptPlan, ops_per_step: int, min_ops: int, max_ops: int,
                   summary_fraction: float = 0.3, truncate_fraction: float = 0.2,
                   aligned_fraction: float = 0.5, finished_fraction: float = 0.05,
                   restart_fraction: float = 0.0, slip_prob: float = 0.0) -> list[Example]:
    """`count` SFT examples from fresh random problems.

    The state k (operations already done) is drawn first and the problem length N
    after it (N uniform in [max(k + 1, min_ops), max_ops]), so every label is the next
    operation equally often: drawing N first and k in [0, N] makes the late labels
    (A..F exist only in problems of 27+ operations) rare, and a model trained that way
    fails on them systematically. k is a multiple of ops_per_step (the states an RC
    rollout visits) with probability `aligned_fraction`; with probability
    `finished_fraction` the problem is already done (k = N: re-box the answer).

    With probability `restart_fraction`, a reasoning example whose prompt carries a
    summary (k > 0) has as its target the step from the start instead (`reasoning(0)`):
    the teacher ignores the summary and starts over, as a model trained only on
    from-scratch reasoning does (measured and not kept as a variant: docs/toy.md). The summary
    examples are unchanged. At 0 (the default) no extra random numbers are drawn, so
    the data is the same as before the option existed.

    With `slip_prob` > 0 the reasoning targets come from a careless teacher: each value it
    writes after an operation is wrong (another digit, uniformly) with that probability,
    and it carries on from its wrong value (`noisy_reasoning`; the `noisy` variant).
    Again nothing extra is drawn at 0.
    """
    eos = tokenizer.hf.convert_tokens_to_ids("<|im_end|>")
    enc = tokenizer.encode
    out = []
    for _ in range(count):
        k = int(rng.integers(0, max_ops))
        if rng.random() < aligned_fraction:
            k -= k % ops_per_step
        n = int(rng.integers(max(k + 1, min_ops), max_ops + 1))
        p = task.sample_problem(rng, n)
        if rng.random() < finished_fraction:
            k = n
        problem_ids, summary_ids = enc(p.text), enc(p.summary(k))
        reasoning = p.reasoning(k, ops_per_step)
        if rng.random() < summary_fraction:
            r_ids = enc(reasoning)
            if rng.random() < truncate_fraction:
                r_ids = r_ids[:int(rng.integers(0, len(r_ids) + 1))]
            target = task.summary_of(p.summary(k), tokenizer.decode(r_ids))
            prompt = summary_plan.host_ids({"problem": problem_ids,
                                            "existing_summary": summary_ids,
                                            "reasoning": r_ids})
            out.append(Example(prompt, enc(target) + [eos], "summary"))
        else:
            start = k
            if restart_fraction > 0 and k > 0 and rng.random() < restart_fraction:
                start = 0  # ignore the summary: start over
            if slip_prob > 0:
                reasoning = noisy_reasoning(p, start, ops_per_step, rng, slip_prob)
            elif start != k:
                reasoning = p.reasoning(start, ops_per_step)
            prompt = reasoning_plan.host_ids({"problem": problem_ids,
                                              "curr_summary": summary_ids})
            out.append(Example(prompt, enc(reasoning) + [eos], "reasoning"))
    return out


def noisy_reasoning(p: task.ChainProblem, k: int, ops_per_step: int, rng: np.random.Generator,
                    slip_prob: float) -> str:
    """`p.reasoning(k, ops_per_step)` written by a careless teacher: each value after an
    operation is replaced by another digit with probability `slip_prob`, and the next
    operation starts from the written (possibly wrong) value; a finished step boxes it."""
    written = [p.values[k]]
    for i in range(k, min(p.num_ops, k + ops_per_step)):
        after = task.apply_op(written[-1], p.ops[i])
        if rng.random() < slip_prob:
            after = (after + int(rng.integers(1, task.MOD))) % task.MOD
        written.append(after)
    return p.write_step(k, written)


def make_batches(examples: Sequence[Example], batch_size: int, pad_id: int,
                 rng: np.random.Generator, length_multiple: int = 32
                 ) -> list[dict[str, np.ndarray]]:
    """Length-bucketed, right-padded batches (few distinct shapes), in random order.

    tokens [B, L] int32, mask [B, L] (real tokens), loss_mask [B, L] (position t is
    trained to predict tokens[t + 1], i.e. True where tokens[t + 1] is a response token).
    """
    lengths = np.array([len(e.prompt) + len(e.response) for e in examples])
    buckets = -(-lengths // length_multiple) * length_multiple
    batches = []
    for width in np.unique(buckets):
        idx = rng.permutation(np.flatnonzero(buckets == width))
        for s in range(0, len(idx) - batch_size + 1, batch_size):
            chunk = idx[s:s + batch_size]
            tokens = np.full((batch_size, width), pad_id, np.int32)
            mask = np.zeros((batch_size, width), bool)
            loss = np.zeros((batch_size, width), bool)
            for row, i in enumerate(chunk):
                e = examples[i]
                seq = e.prompt + e.response
                tokens[row, :len(seq)] = seq
                mask[row, :len(seq)] = True
                loss[row, len(e.prompt) - 1:len(seq) - 1] = True
            batches.append({"tokens": tokens, "mask": mask, "loss_mask": loss})
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def loss_fn(params, config: ModelConfig, batch) -> tuple[jax.Array, jax.Array]:
    tokens, mask, loss_mask = batch["tokens"], batch["mask"], batch["loss_mask"]
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, _ = forward(params, config, tokens, positions, token_mask=mask)
    logz = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logz, tokens[:, 1:, None], axis=-1)[..., 0]
    w = loss_mask[:, :-1].astype(jnp.float32)
    correct = (jnp.argmax(logits[:, :-1], axis=-1) == tokens[:, 1:]).astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    return jnp.sum(nll * w) / denom, jnp.sum(correct * w) / denom


def make_optimizer(lr: float, steps: int, warmup: int, weight_decay: float = 0.01):
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, warmup), max(steps, warmup + 1),
                                                  end_value=lr * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=weight_decay))


def train_sft(config: ModelConfig, batches: Sequence[dict[str, np.ndarray]], *, seed: int,
              lr: float, warmup: int, params: Any = None, tokenizer=None, log_every: int = 50,
              time_limit_s: float | None = None, stop_step: int = 0,
              log: Callable[[str], None] = print) -> tuple[Any, list[dict[str, float]]]:
    """Adam over `batches` in order; returns (params, history). Stops early (and says
    so in the history) if `time_limit_s` runs out. `stop_step` > 0 keeps the learning-rate
    schedule of all `batches` but stops after that many: an early checkpoint of the same
    run (measured and not kept as a variant: docs/toy.md)."""
    if params is None:
        params = init_params(config, jax.random.PRNGKey(seed))
        if tokenizer is not None:
            params = compositional_init(params, tokenizer)
    opt = make_optimizer(lr, len(batches), warmup)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, config, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    history, start = [], time.perf_counter()
    window: list[tuple[jax.Array, jax.Array]] = []
    if stop_step:
        batches = batches[:stop_step]
    for i, batch in enumerate(batches):
        params, opt_state, loss, acc = step(params, opt_state, batch)
        window.append((loss, acc))
        if (i + 1) % log_every == 0 or i + 1 == len(batches):
            # means over the batches since the last log (one batch is a noisy estimate)
            loss = float(np.mean([float(x) for x, _ in window]))
            acc = float(np.mean([float(a) for _, a in window]))
            window = []
            elapsed = time.perf_counter() - start
            history.append({"step": i + 1, "loss": loss, "token_acc": acc, "time_s": elapsed})
            log(f"  sft step {i + 1}/{len(batches)} loss {loss:.4f} token acc {acc:.4f} "
                f"({elapsed:.0f}s)")
            if time_limit_s is not None and elapsed > time_limit_s and i + 1 < len(batches):
                history.append({"stopped_early_at": i + 1})
                log(f"  sft time limit {time_limit_s:.0f}s reached at step {i + 1}")
                break
    jax.block_until_ready(params)
    return params, history
