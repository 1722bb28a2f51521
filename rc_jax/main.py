"""Entry point: `python -m rc_jax.main --config=experiments/hmmt.py [--config.x.y=...]`.

Loads problems and the model, runs the configured method for every (problem, sample)
not already in `<output_dir>/results.jsonl`, appends results as batches finish, and
finally grades everything and writes the per-step report (`rc_jax.eval`).
"""
from __future__ import annotations

import os

# The project never uses PyTorch; as the command-line entry point, stop `transformers`
# from importing it (it would if installed), which also makes start-up faster. Only when
# run as a program: imported as a module (tests, the toy) it must not change the process.
if __name__ == "__main__":
    os.environ.setdefault("USE_TORCH", "0")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import TYPE_CHECKING, Any, Sequence  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from tqdm import tqdm  # noqa: E402

if TYPE_CHECKING:  # JAX loads only after the log level is set (see run)
    from rc_jax.models import Model

from rc_jax.config import config_hash, flag_error_message, steps_per_record, validate  # noqa: E402
from rc_jax.data import demo_problems_path, load_problems  # noqa: E402
from rc_jax.eval import extract_boxed  # noqa: E402
from rc_jax.eval.grading import MathVerifyGrader  # noqa: E402
from rc_jax.methods import get_runner  # noqa: E402
from rc_jax.outputs import ResultsFile  # noqa: E402
from rc_jax.progress import StepLog  # noqa: E402
from rc_jax.records import RolloutRecord  # noqa: E402
from rc_jax.tokenizer import load_tokenizer  # noqa: E402

# Why JAX, and every rc_jax module that imports it, is imported inside the functions
# below: `_quiet_logs` sets TF_CPP_MIN_LOG_LEVEL after flag parsing, which only takes
# effect before JAX's first import; and `--help` or a bad config fails at once.

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show library logs (JAX backend probing, absl INFO lines, XLA "
    "messages). Also on with the environment variable RC_JAX_VERBOSE=1.")


def _quiet_logs() -> None:
    """A clean console by default: banner, progress bars, results; warnings still show.

    Runs after flag parsing and before `main`, i.e. before JAX is first imported (the
    environment variables only take effect then). `--verbose` keeps everything.
    """
    if _VERBOSE.value or os.environ.get("RC_JAX_VERBOSE", "") not in ("", "0"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's C++ INFO/WARNING lines
    logging.set_verbosity(logging.WARNING)  # absl INFO, incl. JAX's "Unable to initialize
    #                                          backend 'tpu'" from probing absent backends


app.call_after_init(_quiet_logs)


def load_problem_set(config) -> list:
    d = config.data
    source = str(demo_problems_path()) if d.source == "builtin:demo" else d.source
    return load_problems(source, problem_field=d.problem_field or None,
                         answer_field=d.answer_field or None, id_field=d.id_field or None,
                         split=d.split or None, limit=d.limit or None)


def load_model(path: str, dtype: str, mesh=None, attention: str = "auto",
               quantization: str = "none") -> "Model":
    """The `Model` (config, params, shardings) of an HF directory, sharded on `mesh` if given;
    `attention`: the `ModelConfig.attention` implementation (config `model.attention`);
    `quantization`: "int8" quantizes the projections as they load (`model.quantization`)."""
    from rc_jax.models import Model, ModelConfig, load_hf_checkpoint
    shardings = None
    if mesh is not None:
        from rc_jax.parallel import param_shardings
        cfg = ModelConfig.from_pretrained(path, dtype=dtype, param_dtype=dtype,
                                          attention=attention, quantization=quantization)
        shardings = param_shardings(cfg, mesh)
    config, params = load_hf_checkpoint(path, dtype=dtype, shardings=shardings,
                                        attention=attention, quantization=quantization)
    return Model(config, params, shardings)


def run(config) -> dict[str, Any] | None:
    """Runs a configured job end to end; returns the evaluation metrics (if evaluated).

    On a multi-process job (a TPU pod slice, several GPU hosts: see launch/) every process
    runs this same function on the same data; only process 0 reads/writes the results
    file, prints and evaluates, and the others return None.
    """
    from rc_jax.parallel.distributed import (broadcast_from_main, is_main_process,
                                             maybe_initialize)
    maybe_initialize()  # before any JAX computation; no-op on a single host
    if config.method == "train":  # RC reinforcement learning (rc_jax.rl)
        from rc_jax.rl.train import run_training
        return run_training(config)
    validate(config)
    import jax

    from rc_jax.batches import run_batches
    from rc_jax.rc.engine import RCSettings
    from rc_jax.sampling import Buckets, SamplingParams
    from rc_jax.tools.builtin_models import resolve_model_path

    problems = load_problem_set(config)
    chash = config_hash(config)
    main_process = is_main_process()
    if not main_process:
        logging.set_verbosity(logging.WARNING)
    # Only process 0 touches output_dir (workers may not share a disk); it tells the
    # others what is already done so that every process runs the same batches.
    results = (ResultsFile(config.output_dir, config.to_dict(), chash, problems,
                           config.data.source) if main_process else None)
    done = broadcast_from_main(results.done if results is not None else set())
    todo = [(p, j) for p in problems for j in range(config.num_samples)
            if (p.problem_id, j) not in done]
    logging.info("%d problems x %d samples; %d already done, %d to run",
                 len(problems), config.num_samples, len(done), len(todo))
    print_main = print if main_process else (lambda *a, **k: None)
    print_main(f"rc_jax: method={config.method} model={config.model.path} "
               f"problems={len(problems)} samples={config.num_samples} "
               f"steps={steps_per_record(config)} "
               f"H_R={config.rc.max_reasoning_tokens} H_S={config.rc.max_summary_tokens} "
               f"-> {config.output_dir}/results.jsonl ({len(todo)} rollouts to run)")
    if todo:
        model_dir = resolve_model_path(config.model.path)
        tokenizer = load_tokenizer(config.tokenizer.path or model_dir)
        from rc_jax.limits import check_run_fits  # every phase fits the context (no params yet)
        check_run_fits(config, tokenizer, [p for p, _ in todo], model_dir)
        mesh = None
        if config.mesh or jax.process_count() > 1:  # several hosts: one global mesh
            from rc_jax.parallel import make_mesh
            mesh = make_mesh(config.mesh or "data:-1")
        model_config, params, shardings = load_model(str(model_dir), config.model.dtype, mesh,
                                                        config.model.attention,
                                                        config.model.quantization)
        summarizer = summarizer_shardings = None
        if config.summarizer.model.path:
            s_cfg, s_params, summarizer_shardings = load_model(
                config.summarizer.model.path, config.model.dtype, mesh, config.model.attention,
                config.model.quantization)
            summarizer = (s_params, s_cfg)
        settings = RCSettings(
            num_steps=config.rc.num_steps, max_reasoning_tokens=config.rc.max_reasoning_tokens,
            max_summary_tokens=config.rc.max_summary_tokens,
            reasoning_template=config.rc.reasoning_template,
            summary_template=config.rc.summary_template, use_think_tags=config.rc.use_think_tags)
        sampling = SamplingParams(config.sampling.temperature, config.sampling.top_p,
                                  config.sampling.top_k, config.sampling.min_p)
        buckets = Buckets(max_cache_length=config.model.max_cache_length)
        if config.method == "rc" and config.rc.engine == "device":
            # One continuous-batching loop for all rollouts; its bar counts RC steps.
            _run_rc_engine(config, todo, params, model_config, tokenizer, settings, sampling,
                           buckets, mesh, shardings, summarizer, summarizer_shardings,
                           results, chash)
            todo = []
        if config.method == "delethink" and config.rc.engine == "device":
            _run_delethink_engine(config, todo, params, model_config, tokenizer, sampling,
                                  buckets, mesh, shardings, results, chash)
            todo = []
        bar = tqdm(total=len(todo), desc="rollouts", unit="rollout",
                   disable=not main_process or not todo)
        run_batch = _batch_runner(config, params, model_config, tokenizer, settings, sampling,
                                  buckets, mesh, shardings, summarizer,
                                  summarizer_shardings=summarizer_shardings)
        tokens = 0
        start = time.time()
        for records in run_batches(run_batch, todo, config.batch_size, config.sampling.seed,
                                   config.method, chash):
            if results is not None:  # the main process
                results.append(r.to_json() for r in records)
            tokens += sum(sum(r.reasoning_tokens) + sum(r.summary_tokens) for r in records)
            bar.update(len(records))
            bar.set_postfix(tok_s=f"{tokens / (time.time() - start):.1f}")
        bar.close()
        jax.effects_barrier()
    if not config.evaluate or results is None:  # workers: results is None
        return None
    from rc_jax.eval.report import evaluate_files
    with MathVerifyGrader(timeout_s=config.grading_timeout, mode=config.grading.mode) as grader:
        metrics = evaluate_files([results.path], config.output_dir, grader=grader,
                                 timeout_s=config.grading_timeout)
    if config.show_rollouts:
        show_rollouts(results.path, config.show_rollouts)
    print_step_table(metrics)
    print(f"report: {config.output_dir}/report.md, plot and metrics.json in {config.output_dir}")
    return metrics


def show_rollouts(path, limit: int) -> None:
    """Prints the first `limit` rollouts: per step the boxed answer and the summary."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(list(f)[:limit], 1):
            r = RolloutRecord.from_json(json.loads(line), f"{path}: line {n}")
            print(f"\n=== {r.problem_id} sample {r.sample_id}: {r.problem} (gold {r.label})")
            # answer_texts: a step's own text, or (Delethink) the trace up to that step.
            for t, (text, summary) in enumerate(zip(r.answer_texts(), r.summary_text)):
                print(f"  step {t + 1}: answer {extract_boxed(text)!r}")
                print(f"    summary: {' '.join(summary.split())[:300]}")


def print_step_table(metrics: dict[str, Any]) -> None:
    """Accuracy and tokens per step, for the run's results file."""
    for entry in metrics.get("inputs", []):
        print(f"\n{entry['label']}: {entry['num_problems']} problems, "
              f"{entry['num_samples']} samples")
        print("step  accuracy (± s.e.)  no answer  cumulative tokens")
        for s in entry["steps"]:
            tokens = (s.get("mean_tokens") or {}).get("cumulative")
            # One problem x one sample has no standard error (None): print n/a, not crash.
            acc = "n/a" if s.get("accuracy") is None else f"{100 * s['accuracy']:.1f}%"
            err = "n/a" if s.get("stderr") is None else f"{100 * s['stderr']:.1f}"
            print(f"{s['step']:>4}  {acc:>7} ± {err:>4}"
                  f"  {s.get('no_answer', 0):>9}  {tokens if tokens is not None else 'n/a'}")


def _summarizer_options(config, sampling) -> dict[str, Any]:
    """The summarizer's own tokenizer (summarizer.tokenizer.path, default: its model
    directory) and sampling (summarizer.sampling.*, negative fields: the reasoner's value),
    for the device engine and the reference loop alike."""
    from rc_jax.sampling import SamplingParams
    s = config.summarizer.sampling
    pick = lambda own, base: base if own < 0 else own  # noqa: E731
    return dict(
        summarizer_tokenizer=load_tokenizer(config.summarizer.tokenizer.path
                                            or config.summarizer.model.path),
        summarizer_sampling=SamplingParams(
            pick(s.temperature, sampling.temperature), pick(s.top_p, sampling.top_p),
            pick(s.top_k, sampling.top_k), pick(s.min_p, sampling.min_p)))


def _run_rc_engine(config, todo, params, model_config, tokenizer, settings, sampling, buckets,
                   mesh, shardings, summarizer, summarizer_shardings, results, chash):
    """RC on the device engine: all rollouts through one loop over `batch_size` slots;
    each finished step goes durably to progress.jsonl, each finished rollout to
    results.jsonl."""
    from rc_jax.parallel.distributed import is_main_process
    from rc_jax.rc.engine import Job, RCEngine
    from rc_jax.sampling.keys import row_key

    main_process = is_main_process()
    log = StepLog(config.output_dir, chash) if main_process else None
    restored = log.load() if main_process else {}
    s_kwargs = {}
    if summarizer is not None:
        s_kwargs = dict(summarizer_config=summarizer[1], summarizer_shardings=summarizer_shardings,
                        **_summarizer_options(config, sampling))
    engine = RCEngine(model_config, tokenizer, settings, sampling, slots=config.batch_size,
                      scheduling=config.rc.scheduling, refill_rows=config.rc.refill_rows,
                      prompt_margin=config.rc.prompt_margin,
                      buckets=buckets, mesh=mesh, param_shardings=shardings, **s_kwargs)
    jobs = [Job(p.problem, row_key(config.sampling.seed, p.problem_id, j), settings.num_steps,
                done_steps=restored.get((str(p.problem_id), j), ())) for p, j in todo]
    resumed = sum(len(j.done_steps) for j in jobs)
    if resumed:
        logging.info("resuming %d finished steps from %s", resumed, log.path)
    bar = tqdm(total=len(jobs) * settings.num_steps, initial=resumed, desc="RC steps",
               unit="step", disable=not main_process)
    tokens = [0]
    start = time.time()
    finished = [0]

    def on_step(i, step, fields):
        p, j = todo[i]
        if log is not None:
            log.append(p.problem_id, j, step, fields)
        tokens[0] += fields["reasoning_tokens"] + fields["summary_tokens"]
        bar.update(1)
        bar.set_postfix(rollouts=f"{finished[0]}/{len(jobs)}",
                        tok_s=f"{tokens[0] / max(time.time() - start, 1e-9):.1f}")

    written = set()

    def on_done(i, rollout, wall):
        p, j = todo[i]
        if results is not None:
            results.append([rollout.record.with_identity(p, j, config.method, wall,
                                                         chash).to_json()])
        written.add(i)
        finished[0] += 1

    rollouts, stats = engine.run(params, jobs,
                                 summarizer_params=summarizer[0] if summarizer else None,
                                 on_step=on_step, on_done=on_done)
    # Rollouts whose every step was in the log (the run died before their results line):
    # the engine has nothing left to run for them, so they are written here.
    for i, rollout in enumerate(rollouts):
        if i not in written and rollout.done:
            on_done(i, rollout, 0.0)
    bar.close()
    logging.info("RC engine: %d loop iterations, slot utilization %.2f, %d host callbacks",
                 stats.iterations, stats.utilization, stats.services)


def _run_delethink_engine(config, todo, params, model_config, tokenizer, sampling, buckets,
                          mesh, shardings, results, chash):
    """Delethink on the device engine's loop (rc_jax.methods.delethink.DelethinkEngine): the
    chunks of all rollouts through `batch_size` slots, scheduled by `rc.scheduling`; each
    finished chunk goes durably to progress.jsonl (a re-run continues every trace from its
    last finished chunk), each finished rollout to results.jsonl (its records equal the
    batched runner's)."""
    from rc_jax.methods.base import MethodContext
    from rc_jax.methods.delethink import DelethinkEngine, delethink_heads, delethink_records
    from rc_jax.parallel.distributed import is_main_process
    from rc_jax.rc.engine import Job
    from rc_jax.sampling.keys import row_key

    main_process = is_main_process()
    log = StepLog(config.output_dir, chash) if main_process else None
    restored = log.load() if main_process else {}
    ctx = MethodContext(config, params, model_config, tokenizer, sampling, buckets=buckets,
                        mesh=mesh, param_shardings=shardings)
    texts = list(dict.fromkeys(p.problem for p, _ in todo))
    engine = DelethinkEngine(model_config, tokenizer, config.delethink, sampling,
                             dict(zip(texts, delethink_heads(ctx, texts))),
                             slots=config.batch_size, scheduling=config.rc.scheduling,
                             refill_rows=config.rc.refill_rows, buckets=buckets, mesh=mesh,
                             param_shardings=shardings)
    jobs = [Job(p.problem, row_key(config.sampling.seed, p.problem_id, j),
                config.delethink.max_chunks,
                done_steps=restored.get((str(p.problem_id), j), ())) for p, j in todo]
    resumed = sum(len(j.done_steps) for j in jobs)
    if resumed:
        logging.info("resuming %d finished chunks from %s", resumed, log.path)
    bar = tqdm(total=len(jobs), desc="rollouts", unit="rollout", disable=not main_process)
    written = set()

    def on_step(i, chunk, fields):
        p, j = todo[i]
        if log is not None:
            log.append(p.problem_id, j, chunk, fields)

    def on_done(i, rollout, wall):
        p, j = todo[i]
        if results is not None:
            (record,) = delethink_records([rollout.trace], config.delethink, ctx.decode)
            results.append([record.with_identity(p, j, config.method, wall, chash).to_json()])
        written.add(i)
        bar.update(1)

    rollouts, stats = engine.run(params, jobs, on_step=on_step, on_done=on_done)
    # Traces whose every chunk was in the log (the run died before their results line).
    for i, rollout in enumerate(rollouts):
        if i not in written and rollout.done:
            on_done(i, rollout, 0.0)
    bar.close()
    logging.info("Delethink engine: %d loop iterations, slot utilization %.2f, %d host "
                 "callbacks", stats.iterations, stats.utilization, stats.services)


def _batch_runner(config, params, model_config, tokenizer, settings, sampling, buckets, mesh,
                  shardings, summarizer, summarizer_shardings=None):
    """A function problems, keys -> rollouts for the configured method / engine."""
    if config.method != "rc":  # baselines and scaffolds (rc_jax.methods)
        from rc_jax.methods.base import MethodContext
        runner = get_runner(config.method)
        ctx = MethodContext(config, params, model_config, tokenizer, sampling, buckets=buckets,
                            mesh=mesh, param_shardings=shardings, summarizer=summarizer,
                            summarizer_shardings=summarizer_shardings)
        return lambda problems, keys: runner(problems, keys, ctx)
    from rc_jax.rc.reference import run_text_reference
    s_kwargs = {} if summarizer is None else _summarizer_options(config, sampling)

    def run_reference(problems: Sequence[str], keys):
        return run_text_reference(params, model_config, tokenizer, settings, sampling,
                                  problems, keys, buckets=buckets, summarizer=summarizer,
                                  **s_kwargs)
    return run_reference


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"rc_jax: error: unexpected arguments: {' '.join(argv[1:])} "
                 "(overrides are written --config.a.b=value)")
    try:
        config = _CONFIG.value
        if config is not None:
            config.method  # noqa: B018  (a file that failed to load raises on first use)
    except Exception as e:  # noqa: BLE001
        message = flag_error_message(e, list(sys.argv))
        if message is None:
            raise
        sys.exit(f"rc_jax: error: {message}")
    if config is None:
        sys.exit("rc_jax: error: --config=experiments/<name>.py is required")
    try:
        run(config)
    except (ValueError, OSError, UnicodeError) as e:
        # Bad input (DataError is a ValueError), an output directory that cannot be
        # written, text that cannot be encoded: one line naming the culprit, exit 1.
        logging.debug("failed", exc_info=True)
        sys.exit(f"rc_jax: error: {e}")
    except KeyboardInterrupt:
        print(f"\nrc_jax: interrupted; everything finished so far is kept in "
              f"{config.output_dir}: re-run the same command to resume", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit: tearing down the interpreter while XLA still runs a computation
        # can crash (segfault). Results are fsync'ed as written; nothing is lost here.
        os._exit(130)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with mistakes in the config file or an override (unknown
    field, missing file, error inside the file) reported in one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"rc_jax: error: {e} (--helpshort lists the flags)")
    except Exception as e:  # noqa: BLE001  (config_flags raises KeyError, OSError, ...)
        message = flag_error_message(e, list(argv))
        if message is None:
            raise
        sys.exit(f"rc_jax: error: {message}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
