"""The toy experiment end to end: data -> SFT -> RC RL -> evaluation -> plot and table.

`experiments/toy/run.py` is the command-line entry; `run(settings)` is the whole thing.
All randomness comes from `settings.seed`; step counts (not wall-clock limits) fix how
long each phase trains, so a rerun with the same settings repeats the same numbers on
the same software and hardware (up to floating-point non-associativity across
machines).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from experiments.toy import evaluate, report, rl, sft, task
from experiments.toy.plans import make_plan
from experiments.toy.tokenizer import build_toy_tokenizer
from rc_jax.config import default_config
from rc_jax.data import Problem
from rc_jax.methods.base import MethodContext
from rc_jax.models import load_hf_checkpoint, save_hf_checkpoint
from rc_jax.rc.engine import RCEngine, RCSettings
from rc_jax.prompts import load_template
from rc_jax.sampling import Buckets, SamplingParams
from rc_jax.tokenizer import load_tokenizer

EXPERIMENT_DIR = Path(__file__).resolve().parent  # templates and results live here
REASONING_TEMPLATE = EXPERIMENT_DIR / "reasoning.txt"
SUMMARY_TEMPLATE = EXPERIMENT_DIR / "summary.txt"
SOLVE_TEMPLATE = EXPERIMENT_DIR / "solve.txt"

METHOD_AR = "(a) SFT, autoregressive"
METHOD_SFT_RC = "(b) SFT, RC decoding"
METHOD_RL_RC = "(c) RC-RL, RC decoding"
METHOD_RL_AR = "(d) RC-RL, autoregressive"
METHOD_SFT_DT = "(e) SFT, Delethink"


_LATER_FIELDS = {"sft_restart_fraction": 0.0, "sft_stop_step": 0, "sft_slip_prob": 0.0,
                 "rl_replay_last_steps": 0,
                 "rl_replay_reference": False}


@dataclasses.dataclass(frozen=True)
class Settings:
    seed: int = 0
    # Task and RC budgets. One reasoning step fits `ops_per_step` operations:
    # 4 tokens each ("c" "c-5" "7" "2") + "\boxed{v}" (3) + <|im_end|> (1) = 20 = H_R.
    ops_per_step: int = 4
    max_reasoning_tokens: int = 20
    max_summary_tokens: int = 6          # "x=v" + <|im_end|> = 4 tokens
    t_train: int = 2                     # RC steps per online chain in RL (T_train)
    t_eval: int = 8                      # RC steps at test time (>= 4 x T_train)
    temperature: float = 1.0             # all sampling (RL and evaluation), as in the paper
    # Model (Qwen3-shaped: GQA, q/k-norm, SwiGLU, RoPE, tied embeddings).
    vocab_size: int = 704
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 512
    # SFT: single-step traces from problems of sft_min_ops..sft_max_ops operations.
    sft_steps: int = 2400
    sft_batch: int = 32
    sft_lr: float = 1e-3
    sft_warmup: int = 100
    sft_summary_fraction: float = 0.2    # share of summarization examples
    sft_min_ops: int = 1
    sft_max_ops: int = 32
    # Share of the summary-conditioned reasoning examples whose target ignores the summary
    # and starts over from the first operation (0 in the base variant; see VARIANTS).
    sft_restart_fraction: float = 0.0
    # Stop SFT after this many steps of the sft_steps schedule (0: train them all): an
    # early checkpoint of the same run, which knows the format but still errs at random.
    sft_stop_step: int = 0
    # Careless teacher: each value a reasoning target writes is wrong with this probability
    # (and the trace carries on from it), so the SFT model slips at random (0: exact).
    sft_slip_prob: float = 0.0
    # RC RL (rc_jax.rl): chains of T_train steps on problems of the whole difficulty
    # range. With `rl_replay`, chains start from summaries in a replay buffer warm-started
    # with the SFT model's own RC rollouts on the RL problems (the paper's Stage II), so
    # short chains also visit deep states; without it every chain starts from "" and only
    # sees the first T_train * ops_per_step operations.
    rl_steps: int = 40
    rl_batch: int = 16                   # problems per step (x 2 snapshots x group)
    rl_group: int = 8
    rl_lr: float = 1e-4
    rl_kl_coef: float = 0.001
    rl_min_ops: int = 1
    rl_max_ops: int = 32
    rl_problems: int = 256
    rl_replay: bool = True
    # With rl_replay: warm-start only the states within this many RC steps of a problem's
    # end (depths >= n - K, n = the steps it needs; 0: every state from the start), so
    # that most 2-step chains can reach the answer and their GRPO groups carry signal.
    rl_replay_last_steps: int = 0
    # With rl_replay: warm-start with the correct states (a perfect RC model's summaries)
    # instead of the SFT model's own rollouts, whose states are often already wrong (then
    # every response of a group fails alike and GRPO has nothing to learn from).
    rl_replay_reference: bool = False
    # Evaluation: problems stratified over eval_min_ops..eval_max_ops operations.
    eval_per_ops: int = 8
    eval_min_ops: int = 1
    eval_max_ops: int = 32
    eval_samples: int = 2
    eval_batch: int = 256
    # Delethink row (rc_jax.methods.delethink, arXiv 2510.06557) of the SFT model: chunk k
    # is prompted with the solve prompt + the first keep_first tokens of chunk 0 + the last
    # keep_last tokens of chunk k-1; t_eval chunks at most, a step = a chunk. Chunk 0 gets
    # delethink_chunk_tokens (0: H_R + H_S, the generation budget of one RC step and the
    # autoregressive read-out interval), later chunks that minus keep_last.
    delethink_chunk_tokens: int = 0
    delethink_keep_first: int = 4        # one written operation (4 tokens)
    delethink_keep_last: int = 13        # C / 2, the paper's ratio

    @property
    def delethink_chunk(self) -> int:
        return self.delethink_chunk_tokens or self.max_reasoning_tokens + self.max_summary_tokens

    def __post_init__(self):
        need = 4 * self.ops_per_step + 4
        if self.max_reasoning_tokens < need:
            raise ValueError(f"max_reasoning_tokens={self.max_reasoning_tokens} cannot hold "
                             f"{self.ops_per_step} operations ({need} tokens)")
        if self.t_eval < self.t_train:
            raise ValueError("t_eval must be >= t_train")
        if self.eval_max_ops > task.MAX_OPS or self.sft_max_ops > task.MAX_OPS:
            raise ValueError(f"at most {task.MAX_OPS} operations per problem")
        if not 0 <= self.delethink_keep_last < self.delethink_chunk:
            raise ValueError("delethink_keep_last must be in [0, delethink chunk tokens)")

    def _fields(self) -> dict[str, Any]:
        # Fields added after the base results were committed are left out at their
        # defaults, so the base variant keeps the settings hashes of those results.
        return {k: v for k, v in dataclasses.asdict(self).items()
                if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self._fields(), sort_keys=True)
                              .encode()).hexdigest()[:12]

    def sft_hash(self) -> str:
        """Hash of the fields that determine the SFT model."""
        keys = ("seed", "ops_per_step", "vocab_size", "hidden", "layers", "heads", "kv_heads",
                "mlp", "sft_steps", "sft_batch", "sft_lr", "sft_warmup", "sft_min_ops",
                "sft_max_ops", "sft_summary_fraction", "max_reasoning_tokens")
        d = {k: getattr(self, k) for k in keys} | {"sft_data_version": sft.DATA_VERSION}
        d |= {k: v for k, v in self._fields().items()
              if k in _LATER_FIELDS and k.startswith("sft_")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


FULL = Settings()

# The toy's variants (`python -m experiments.toy.run --variant=NAME`), see docs/toy.md.
# * base: the SFT teacher is exact, so the SFT model is already near-perfect at the
#   summary-conditioned single steps RC decoding asks for; RL has little left to teach.
# * noisy: a careless SFT teacher (each written value wrong with probability 0.05), so
#   the SFT model slips at random in every step and slips compound over T steps; RL
#   chains start from the correct states of a problem's last 2 steps, where most GRPO
#   groups can reach the answer. Here RC RL on 2-step chains matters at every T.
VARIANT_OVERRIDES: dict[str, dict[str, Any]] = {
    "base": {},
    "noisy": {"sft_slip_prob": 0.05, "rl_replay_last_steps": 2, "rl_replay_reference": True},
}
VARIANTS = {name: dataclasses.replace(FULL, **o) for name, o in VARIANT_OVERRIDES.items()}

SMOKE = Settings(
    t_eval=4, hidden=32, layers=2, heads=2, kv_heads=1, mlp=64,
    sft_steps=24, sft_batch=16, sft_lr=3e-3, sft_warmup=4, sft_max_ops=8,
    rl_steps=2, rl_batch=2, rl_group=4, rl_problems=16, rl_max_ops=12,
    eval_per_ops=1, eval_max_ops=12, eval_batch=16)


class Clock:
    """Wall and CPU (all threads) seconds per phase."""

    def __init__(self):
        self.phases: dict[str, dict[str, float]] = {}
        self._t0 = time.perf_counter(), time.process_time()

    def lap(self, name: str, since: tuple[float, float]) -> tuple[float, float]:
        now = time.perf_counter(), time.process_time()
        self.phases[name] = {"wall_s": round(now[0] - since[0], 1),
                             "cpu_s": round(now[1] - since[1], 1)}
        return now

    def total(self) -> dict[str, float]:
        return {"wall_s": round(time.perf_counter() - self._t0[0], 1),
                "cpu_s": round(time.process_time() - self._t0[1], 1)}


def _write_problems(path: Path, records: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def delethink_config(s: Settings):
    """The run config the `delethink` method runner reads for the toy's Delethink row: the
    toy's solve prompt (the empty-summary RC prompt), t_eval chunks."""
    c = default_config()
    c.method = "delethink"
    c.delethink.template = str(SOLVE_TEMPLATE)
    c.delethink.chunk_tokens = s.delethink_chunk
    c.delethink.keep_first = s.delethink_keep_first
    c.delethink.keep_last = s.delethink_keep_last
    c.delethink.max_chunks = s.t_eval
    return c


def write_replay_warm_start(engine, params, problems: list, s: Settings, path: str) -> int:
    """RC rollouts of `params` (t_eval steps, one sample) on the RL problems, stored in
    the replay-buffer JSON format ({problem: {summaries, starting_steps}}).

    Per problem: the empty summary (depth 0) and the rollout's summaries s_1..s_n at
    depths 1..n, n = the steps the problem needs, so the states with work left and the
    first finished state (from which the model must keep its answer: the SFT model
    drifts there, see docs/toy.md). Later summaries repeat that finished state. The
    summaries are the model's own, wrong ones included; with `s.rl_replay_reference`
    they are the correct ones instead (no rollouts: `engine` and `params` are unused).
    With `s.rl_replay_last_steps` = K > 0 only depths n - K .. n are kept.
    """
    if s.rl_replay_reference:
        step_summaries = [[p.summary(min(p.num_ops, d * s.ops_per_step))
                           for d in range(1, s.t_eval + 1)] for p in problems]
    else:
        records = evaluate.rc_records(
            engine, params,
            [Problem(f"rl-{i}", p.text, str(p.answer)) for i, p in enumerate(problems)],
            num_samples=1, num_steps=s.t_eval, seed=s.seed + 500, method="replay warm start",
            batch_size=s.eval_batch, log=lambda *_: None)
        step_summaries = [r["summary_clean"] for r in records]
    out: dict[str, dict[str, list]] = {}
    for p, summaries_of_p in zip(problems, step_summaries):
        n = p.steps_needed(s.ops_per_step)
        summaries = [""] + list(summaries_of_p[:n])
        first = max(0, n - s.rl_replay_last_steps) if s.rl_replay_last_steps else 0
        out[p.text] = {"summaries": summaries[first:],
                       "starting_steps": list(range(first, len(summaries)))}
    Path(path).write_text(json.dumps(out))
    return sum(len(v["summaries"]) for v in out.values())


def train_or_load_sft(s: Settings, work_dir: Path, tokenizer, tok_dir: Path, *,
                      reuse_sft: bool = False, log: Callable[[str], None] = print
                      ) -> tuple[Any, Any, list]:
    """The SFT phase: (model config, SFT params, loss history). Trains on single-step
    traces and writes the model to work_dir/sft, or, with `reuse_sft`, loads it from
    there when its settings hash matches."""
    sft_dir = work_dir / "sft"
    marker = sft_dir / "toy_sft.json"
    model_cfg = sft.toy_model_config(s.vocab_size, hidden=s.hidden, layers=s.layers,
                                     heads=s.heads, kv_heads=s.kv_heads, mlp=s.mlp,
                                     eos_ids=tokenizer.eos_ids)
    log(f"model: Qwen3-shaped, {model_cfg.num_params:,} parameters "
        f"(hidden {s.hidden}, {s.layers} layers, {s.heads} heads / {s.kv_heads} kv, mlp {s.mlp})")
    if reuse_sft and marker.is_file() and json.loads(marker.read_text()).get("sft_hash") == s.sft_hash():
        _, sft_params = load_hf_checkpoint(sft_dir)
        sft_history = json.loads(marker.read_text())["history"]
        log(f"SFT: reusing {sft_dir}")
    else:
        r_plan = make_plan(tokenizer, load_template(str(REASONING_TEMPLATE), "reasoning"))
        s_plan = make_plan(tokenizer, load_template(str(SUMMARY_TEMPLATE), "summary"))
        data_rng = np.random.default_rng([s.seed, 2])
        # Length bucketing drops a few examples per bucket: generate a little extra.
        examples = sft.build_examples(data_rng, s.sft_steps * s.sft_batch + 4 * s.sft_batch,
                                      tokenizer=tokenizer, reasoning_plan=r_plan,
                                      summary_plan=s_plan, ops_per_step=s.ops_per_step,
                                      min_ops=s.sft_min_ops, max_ops=s.sft_max_ops,
                                      summary_fraction=s.sft_summary_fraction,
                                      restart_fraction=s.sft_restart_fraction,
                                      slip_prob=s.sft_slip_prob)
        batches = sft.make_batches(examples, s.sft_batch, tokenizer.pad_id, data_rng)[:s.sft_steps]
        log(f"SFT: {len(batches)} steps x {s.sft_batch} single-step traces "
            f"({s.sft_min_ops}-{s.sft_max_ops} operations, <= {s.ops_per_step} per trace)"
            + (f", stopped after step {s.sft_stop_step}" if s.sft_stop_step else ""))
        sft_params, sft_history = sft.train_sft(model_cfg, batches, seed=s.seed, lr=s.sft_lr,
                                                warmup=s.sft_warmup, tokenizer=tokenizer,
                                                stop_step=s.sft_stop_step,
                                                log_every=max(1, len(batches) // 10), log=log)
        save_hf_checkpoint(sft_dir, model_cfg, sft_params, tokenizer_dir=tok_dir)
        marker.write_text(json.dumps({"sft_hash": s.sft_hash(), "history": sft_history}))
    return model_cfg, sft_params, sft_history


def run(s: Settings, *, work_dir: Path, results_dir: Path, reuse_sft: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the experiment; writes toy_curve.png, table.md, metrics.json to results_dir."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work_dir, results_dir = Path(work_dir), Path(results_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    t = clock._t0
    log(f"toy RC experiment (settings {s.hash()}): work dir {work_dir}, results {results_dir}")

    # ------------------------------------------------------------------ data
    tok_dir = build_toy_tokenizer(work_dir / "tokenizer")
    tokenizer = load_tokenizer(tok_dir)
    if tokenizer.vocab_size > s.vocab_size:
        raise ValueError(f"vocab_size {s.vocab_size} < tokenizer size {tokenizer.vocab_size}")
    rng = np.random.default_rng([s.seed, 0])
    eval_problems = task.sample_problems(
        rng, s.eval_per_ops * (s.eval_max_ops - s.eval_min_ops + 1), s.eval_min_ops,
        s.eval_max_ops)
    eval_records = task.problem_records(eval_problems, "eval")
    _write_problems(work_dir / "data" / "eval.jsonl", eval_records)
    rl_problems = task.sample_problems(np.random.default_rng([s.seed, 1]), s.rl_problems,
                                       s.rl_min_ops, s.rl_max_ops, stratified=False)
    rl_data = _write_problems(work_dir / "data" / "rl_train.jsonl",
                              task.problem_records(rl_problems, "rl"))
    t = clock.lap("data", t)

    # ------------------------------------------------------------------ SFT
    engine_settings = RCSettings(num_steps=s.t_eval, max_reasoning_tokens=s.max_reasoning_tokens,
                                 max_summary_tokens=s.max_summary_tokens,
                                 reasoning_template=str(REASONING_TEMPLATE),
                                 summary_template=str(SUMMARY_TEMPLATE))
    sampling = SamplingParams(temperature=s.temperature)
    buckets = Buckets(min_prompt=16, min_new_tokens=8, max_cache_length=4096)
    model_cfg, sft_params, sft_history = train_or_load_sft(s, work_dir, tokenizer, tok_dir,
                                                           reuse_sft=reuse_sft, log=log)
    t = clock.lap("sft", t)

    # ------------------------------------------------------------------ RL
    engine = RCEngine(model_cfg, tokenizer, engine_settings, sampling, slots=s.eval_batch,
                      buckets=buckets)
    rl_out = work_dir / "rl"
    if rl_out.exists():  # a fresh run (the trainer would resume or refuse to overwrite)
        shutil.rmtree(rl_out)
    replay_path = ""
    if s.rl_replay:
        replay_path = str(work_dir / "data" / "rl_replay.json")
        stored = write_replay_warm_start(engine, sft_params, rl_problems, s, replay_path)
        source = "correct states" if s.rl_replay_reference else "the SFT model's RC rollouts"
        log(f"RL replay buffer: {stored} summaries ({source}) of the "
            f"{len(rl_problems)} RL problems (up to the first finished state"
            + (f"; the last {s.rl_replay_last_steps} steps before it)"
               if s.rl_replay_last_steps else ")"))
    cfg = rl.rl_config(model_dir=str(work_dir / "sft"), data_path=rl_data, output_dir=str(rl_out),
                       reasoning_template=str(REASONING_TEMPLATE),
                       summary_template=str(SUMMARY_TEMPLATE), num_steps=s.t_train,
                       max_reasoning_tokens=s.max_reasoning_tokens,
                       max_summary_tokens=s.max_summary_tokens, train_steps=s.rl_steps,
                       batch_size=s.rl_batch, group_size=s.rl_group, learning_rate=s.rl_lr,
                       seed=s.seed, kl_coef=s.rl_kl_coef, replay_path=replay_path)
    cfg.sampling.temperature = s.temperature
    log(f"RC RL: {s.rl_steps} steps, T_train={s.t_train}, {s.rl_batch} problems x "
        f"{cfg.rl.snapshots_per_chain} snapshots x {s.rl_group} responses per step "
        f"({s.rl_min_ops}-{s.rl_max_ops} operations)")
    rl_params, rl_history = rl.run_rl(cfg, log=log)
    rl_params = jax.device_get(rl_params)
    save_hf_checkpoint(work_dir / "rl_model", model_cfg, rl_params, tokenizer_dir=tok_dir)
    t = clock.lap("rl", t)

    # ------------------------------------------------------------------ evaluation
    problems = [Problem(r["problem_id"], r["problem"], r["answer"]) for r in eval_records]
    steps_needed = {r["problem_id"]: -(-r["num_ops"] // s.ops_per_step) for r in eval_records}
    log(f"evaluation: {len(problems)} problems ({s.eval_min_ops}-{s.eval_max_ops} operations, "
        f"1-{max(steps_needed.values())} RC steps needed) x {s.eval_samples} samples, "
        f"T = 1..{s.t_eval}, temperature {s.temperature}")
    common = dict(num_samples=s.eval_samples, seed=s.seed + 1000, batch_size=s.eval_batch,
                  log=log)
    records = {}
    records[METHOD_SFT_RC] = evaluate.rc_records(engine, sft_params, problems,
                                                 num_steps=s.t_eval, method=METHOD_SFT_RC,
                                                 **common)
    records[METHOD_RL_RC] = evaluate.rc_records(engine, rl_params, problems,
                                                num_steps=s.t_eval, method=METHOD_RL_RC,
                                                **common)
    ar_cfg = default_config()
    step_tokens = s.max_reasoning_tokens + s.max_summary_tokens
    ar_cfg.autoregressive.max_tokens = s.t_eval * step_tokens
    ar_cfg.autoregressive.checkpoint_tokens = step_tokens
    ar_cfg.baselines.solve_template = str(SOLVE_TEMPLATE)
    for method, params in ((METHOD_AR, sft_params), (METHOD_RL_AR, rl_params)):
        ctx = MethodContext(ar_cfg, params, model_cfg, tokenizer, sampling, buckets=buckets)
        records[method] = evaluate.method_records("autoregressive", ctx, problems,
                                                  method=method, **common)
    ctx = MethodContext(delethink_config(s), sft_params, model_cfg, tokenizer, sampling,
                        buckets=buckets)
    records[METHOD_SFT_DT] = evaluate.method_records("delethink", ctx, problems,
                                                     method=METHOD_SFT_DT, **common)
    t = clock.lap("evaluation", t)

    order = [METHOD_AR, METHOD_SFT_RC, METHOD_RL_RC, METHOD_RL_AR, METHOD_SFT_DT]
    paths = [evaluate.write_jsonl(work_dir / "eval" / f"{i}.jsonl", records[m])
             for i, m in enumerate(order)]
    metrics = evaluate.grade(paths, order, work_dir / "eval" / "report")
    graded = {m: evaluate.graded_by_record(records[m]) for m in order}
    difficulty = {m: evaluate.per_difficulty(records[m], graded[m], steps_needed, s.t_eval)
                  for m in order}
    clock.lap("grading", t)
    summary = report.summarize(metrics, difficulty, steps_needed, s)
    # Same problems and sampling keys on both sides: the paired error is the right one.
    summary["checks"]["paired_at_largest_budget"] = {
        "c_minus_a": evaluate.paired_difference(graded[METHOD_RL_RC], graded[METHOD_AR], s.t_eval),
        "c_minus_b": evaluate.paired_difference(graded[METHOD_RL_RC], graded[METHOD_SFT_RC],
                                                s.t_eval),
        "b_minus_e": evaluate.paired_difference(graded[METHOD_SFT_RC], graded[METHOD_SFT_DT],
                                                s.t_eval)}
    summary["rl_vs_sft_rc"] = report.paired_interval(
        summary["checks"]["paired_at_largest_budget"]["c_minus_b"], s.t_eval)
    summary["settings"] = dataclasses.asdict(s) | {"hash": s.hash()}
    summary["model"] = {"num_params": model_cfg.num_params, **model_cfg.to_hf_dict()}
    summary["sft_history"] = sft_history
    kept = ("reward", "chain_acc", "kl", "zero_adv", "response_len", "truncated", "time_step",
            "stopped")
    summary["rl_history"] = [{k: v for k, v in h.items() if k.startswith(kept)}
                             for h in rl_history]
    summary["timing"] = {"phases": clock.phases, "total": clock.total(),
                         "cpu_count": os.cpu_count(),
                         "load_average_at_end": list(os.getloadavg())}
    summary["examples"] = report.examples(records, eval_records)
    results_dir.mkdir(parents=True, exist_ok=True)
    report.plot(summary, results_dir / "toy_curve.png")
    (results_dir / "table.md").write_text(report.table(summary))
    (results_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(report.table(summary))
    log(f"wrote {results_dir}/toy_curve.png, table.md, metrics.json "
        f"(total {clock.total()['wall_s']:.0f}s wall, {clock.total()['cpu_s']:.0f}s CPU)")
    return summary
