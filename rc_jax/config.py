"""The run configuration: one `ml_collections.ConfigDict` schema for every method,
evaluation and training alike, validated up front.

Experiments (`experiments/*.py`) start from `default_config()` (evaluation) or
`default_config("train")` (RC training, rc_jax.rl) and override fields; any field can be
overridden on the command line as `--config.rc.num_steps=8`. The dict is locked and its
fields typed, so a misspelt field or a value of the wrong type fails immediately, and
`validate` checks values before any model is loaded, naming the field at fault.

The sections both kinds of run read (model, tokenizer, data, sampling, rc, and the run
fields output_dir, mesh, grading_timeout) are defined once, in `_shared_fields`;
evaluation adds the summarizer and the methods' sections, training adds the `rl` and
`checkpoint` sections (`rc_jax.rl.config`). `config_hash` is the one resume hash.
"""
from __future__ import annotations

import hashlib
import json
import re
import traceback
from pathlib import Path

import ml_collections

# The config module stays free of JAX (experiment files import it; the CLI validates a
# config before anything heavy loads): modules that import JAX are imported where used.
from rc_jax.data.problems import _split_source
from rc_jax.eval.grading import GRADING_MODES
from rc_jax.prompts import load_template

METHODS = ("rc", "autoregressive", "self_refine", "self_verify", "budget_forcing", "rsa",
           "delethink")
TRAIN = "train"  # the RC training method (rc_jax.rl); every other method evaluates
ENGINES = ("device", "reference")
SCHEDULES = ("continuous", "lockstep")
DTYPES = ("float32", "bfloat16")
BUILTIN_MODEL_PREFIX = "builtin:"

# Fields that do not change what a run computes: changing them keeps a run resumable.
_NON_SEMANTIC_SHARED = ("output_dir", "grading_timeout", "model.max_cache_length")
_NON_SEMANTIC = _NON_SEMANTIC_SHARED + (
    "batch_size", "data.limit", "evaluate", "show_rollouts", "mesh", "grading", "rc.engine",
    "rc.scheduling", "rc.refill_rows", "rc.prompt_margin", "model.attention")
# Training: the data limit and the mesh change the problem stream and the loss weighting.
_NON_SEMANTIC_TRAIN = _NON_SEMANTIC_SHARED + (
    "checkpoint.directory", "checkpoint.save_every", "checkpoint.keep", "checkpoint.resume",
    "checkpoint.export_every", "log_every", "tensorboard", "rl.total_steps", "progress")
# Training fields added after runs were checkpointed: left out of the hash at their
# default, so those runs still resume.
_ADDED_LATER_TRAIN = {"rl.kl_coef_summary": -1.0, "rl.microbatch_agg_shards": 0,
                      "model.attention": "auto", "rl.rollout": "rc"}
# Shared fields added later (both kinds of run): left out of the hash at their default.
_ADDED_LATER_SHARED = {"model.quantization": "none"}

# Config sections that only some methods read. A run's resume hash leaves out the sections
# its method does not read, so adding or changing another method's knobs never makes
# existing results unresumable. (`rc` is read by every method: steps, budgets, think tags.)
METHOD_SECTIONS = {
    "rc": (),
    "autoregressive": ("baselines", "autoregressive"),
    "self_refine": ("self_refine",),
    "self_verify": ("self_verify",),
    "budget_forcing": ("budget_forcing",),
    "rsa": ("baselines", "rsa"),
    "delethink": ("delethink",),
}
# Methods that run a summarization phase (the only ones a summarizer model can serve).
_SUMMARIZING = ("rc", "rsa")


def default_config(method: str = "rc") -> ml_collections.ConfigDict:
    """Every field rc_jax.main understands for `method`, with defaults.

    Evaluation methods (`METHODS`) share one schema (`method` may be changed afterwards);
    `default_config("train")` is the training schema: the same shared sections plus `rl`
    and `checkpoint`, with the paper's training recipe as defaults.
    """
    if method != TRAIN and method not in METHODS:
        _fail("method", f"unknown method {method!r}; choose from "
              f"{', '.join(METHODS + (TRAIN,))}")
    c = ml_collections.ConfigDict()
    c.method = method
    c.name = "run"
    _shared_fields(c)
    if method == TRAIN:
        from rc_jax.rl.config import add_training_fields  # imports JAX: training only
        add_training_fields(c)
    else:
        _evaluation_fields(c)
    c.lock()
    return c


def _shared_fields(c: ml_collections.ConfigDict) -> None:
    """The sections evaluation and training both read, with the evaluation defaults."""
    c.model = ml_collections.ConfigDict()
    c.model.path = ""                 # HF-format directory, or builtin:<name>
    c.model.dtype = "float32"         # activations / matmuls
    c.model.attention = "auto"        # auto|dense|blockwise|cudnn|pallas (rc_jax.models.attention)
    c.model.quantization = "none"     # none | int8: weight-only int8 projections, quantized at
    #                                   load from the float checkpoint (rc_jax.models.quant)
    c.model.max_cache_length = 1 << 17

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""             # empty: the model directory

    c.data = ml_collections.ConfigDict()
    c.data.source = ""                # JSON/JSONL path, hf:<id>[:split], tfds:<name>, a
    #                                   dataset directory, builtin:demo
    c.data.split = ""                 # empty: the source's :split suffix, else `data_split`
    c.data.limit = 0                  # 0: all problems
    c.data.problem_field = ""         # empty: auto-detect (the authors' chat `prompt` works)
    c.data.answer_field = ""          # e.g. reward_model.ground_truth
    c.data.id_field = ""

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 1.0      # 0: greedy (evaluation only)
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.min_p = 0.0
    c.sampling.seed = 0

    c.rc = ml_collections.ConfigDict()
    c.rc.num_steps = 12               # T (training: the online chain length T_train)
    c.rc.max_reasoning_tokens = 16384  # H_R
    c.rc.max_summary_tokens = 2048    # H_S
    c.rc.reasoning_template = "math"  # builtin name (math, science) or a text file
    c.rc.summary_template = "math"
    c.rc.use_think_tags = False

    # Delethink ("The Markovian Thinker", arXiv 2510.06557; rc_jax.methods.delethink):
    # chunk 0 gets chunk_tokens (C) new tokens; chunk k > 0 is prompted with the wrapped
    # problem + the first keep_first (m0) tokens of the trace + the last keep_last (m)
    # tokens of chunk k-1 and gets C - m new tokens; stops on EOS or after max_chunks.
    # Read by method delethink and by training with rl.rollout = delethink.
    c.delethink = ml_collections.ConfigDict()
    c.delethink.template = "math"         # the solve prompt ({problem}): math, science, bare, file
    c.delethink.chunk_tokens = 8192       # C (the paper's 8K)
    c.delethink.keep_first = 100          # m0 (the authors' 100)
    c.delethink.keep_last = 4096          # m (the paper's C / 2)
    c.delethink.max_chunks = 5            # I (the paper's 5: 8K + 4 x 4K = 24K tokens)

    c.output_dir = "outputs/run"
    c.mesh = ""                       # e.g. "data:-1" or "data:2,fsdp:4"; empty: one device
    #                                   (training: every device on `data`)
    c.grading_timeout = 5.0           # seconds per graded answer


def _evaluation_fields(c: ml_collections.ConfigDict) -> None:
    """What evaluation methods add to the shared sections."""
    c.summarizer = ml_collections.ConfigDict()
    c.summarizer.model = ml_collections.ConfigDict()
    c.summarizer.model.path = ""      # empty: the reasoning model also summarizes
    c.summarizer.tokenizer = ml_collections.ConfigDict()
    c.summarizer.tokenizer.path = ""  # empty: the summarizer model's directory
    c.summarizer.sampling = ml_collections.ConfigDict()  # negative: same as sampling.*
    c.summarizer.sampling.temperature = -1.0
    c.summarizer.sampling.top_p = -1.0
    c.summarizer.sampling.top_k = -1
    c.summarizer.sampling.min_p = -1.0

    c.rc.engine = "device"            # device: the jitted slot loop; reference: host loop
    c.rc.scheduling = "continuous"    # continuous: refill a slot when its phase ends;
    #                                   lockstep: whole batches, phase by phase (same
    #                                   results; benchmarks/README.md compares them)
    c.rc.refill_rows = 0              # slots prefilled together (0: min(batch_size, 4))
    c.rc.prompt_margin = 1 / 16       # planned re-encoding growth of generated text; random
    #                                   weights need ~3 (their bytes re-encode to ~3x tokens)

    # Baselines and scaffolds (rc_jax.methods). self_refine / self_verify run rc.num_steps
    # steps of at most rc.max_reasoning_tokens tokens; rsa gives every candidate
    # rc.max_reasoning_tokens and every summary rc.max_summary_tokens; all wrap prompts
    # like RC does (Tokenizer.phase_prompt, enable_thinking = rc.use_think_tags).
    c.baselines = ml_collections.ConfigDict()
    c.baselines.solve_template = "math"   # autoregressive, rsa round 0 ({problem}): math,
    #                                       science or a file

    c.autoregressive = ml_collections.ConfigDict()
    c.autoregressive.max_tokens = 131072  # one generation of at most this many tokens
    c.autoregressive.checkpoint_tokens = 16384  # a "step" is read every this many tokens

    c.self_refine = ml_collections.ConfigDict()
    c.self_refine.template = "math"       # {problem}, {previous_attempt} (empty at step 1)
    c.self_refine.max_context_tokens = 0  # previous attempt keeps its last N tokens; 0: all

    c.self_verify = ml_collections.ConfigDict()
    c.self_verify.template = "math"       # {problem}, {previous_attempt}
    c.self_verify.max_context_tokens = 0

    c.budget_forcing = ml_collections.ConfigDict()
    c.budget_forcing.mode = "paper"       # paper: s1 as the paper ran it; on_stop: force
    #                                       only after an early stop, one shared budget
    c.budget_forcing.template = "bare"    # the prompt ({problem}); bare: the problem alone
    c.budget_forcing.max_tokens = 16384   # paper: the first segment's budget;
    #                                       on_stop: total generated tokens, all generations
    c.budget_forcing.continuation_tokens = 2048  # paper: budget of every later segment
    c.budget_forcing.num_forcings = 4     # continuations (steps - 1); on_stop: at most
    c.budget_forcing.cue = "Wait, let me think this through once more."  # continuation cue
    c.budget_forcing.stop_tokens = ""     # on_stop: forcing stops besides EOS, comma-separated;
    #                                       empty: </think> when rc.use_think_tags

    c.rsa = ml_collections.ConfigDict()
    c.rsa.population = 8                  # N candidates per (problem, sample)
    c.rsa.k = 4                           # K candidates shown to each new candidate
    c.rsa.generations = 4                 # G aggregation rounds after the first population
    c.rsa.use_summaries = False           # show RC summaries of candidates, not full texts
    c.rsa.max_candidate_tokens = 0        # each shown candidate keeps its last N tokens; 0: all
    c.rsa.template = "math"               # {problem}, {candidates}
    c.rsa.store_population = False        # also write every candidate's text (large)

    c.num_samples = 16
    c.batch_size = 64                 # rollouts per engine call
    c.evaluate = True                 # grade and report at the end
    c.show_rollouts = 0               # print this many rollouts (per-step answers, summaries)
    c.grading = ml_collections.ConfigDict()
    # rc_jax: rc_jax's own grader (any brace nesting, string match, verify(gold, answer));
    # paper: the paper authors' evaluator (one level of braces inside \boxed{},
    # verify(answer, gold)), for numbers comparable with the paper's. See rc_jax.eval.grading.
    c.grading.mode = "rc_jax"


def _fail(field: str, message: str) -> None:
    raise ValueError(f"config.{field}: {message}")


def validate(c: ml_collections.ConfigDict, *, device_count: int | None = None,
             batch_shards: int | None = None) -> None:
    """Checks every value of an evaluation or training config; raises ValueError naming
    the first bad field.

    Training only: the batch must divide over the mesh's batch shards, `batch_shards`
    when given (a mesh built by the caller), else computed from `config.mesh` and
    `device_count` (default: `jax.device_count()`).
    """
    if c.method != TRAIN and c.method not in METHODS:
        _fail("method", f"unknown method {c.method!r}; choose from "
              f"{', '.join(METHODS + (TRAIN,))}")
    training = c.method == TRAIN
    if training != ("rl" in c):
        _fail("method", f"{c.method!r} needs the {'training' if training else 'evaluation'} "
              f"schema: start from rc_jax.config.default_config({c.method!r})")
    _validate_shared(c)
    if training:
        from rc_jax.rl.config import validate_training  # imports JAX: training only
        validate_training(c, device_count=device_count, batch_shards=batch_shards)
    else:
        _validate_evaluation(c)


def _validate_shared(c: ml_collections.ConfigDict) -> None:
    """The sections evaluation and training share (see `_shared_fields`)."""
    if not c.model.path:
        _fail("model.path", "required (an HF-format checkpoint directory or builtin:<name>)")
    if not c.model.path.startswith(BUILTIN_MODEL_PREFIX) and not Path(c.model.path).is_dir():
        _fail("model.path", f"directory {c.model.path!r} does not exist")
    if not c.model.path.startswith(BUILTIN_MODEL_PREFIX) \
            and not (Path(c.model.path) / "config.json").is_file():
        _fail("model.path", f"directory {c.model.path!r} has no config.json (not a Hugging Face "
              "checkpoint directory)")
    if c.tokenizer.path and not Path(c.tokenizer.path).is_dir():
        _fail("tokenizer.path", f"directory {c.tokenizer.path!r} does not exist")
    if c.model.dtype not in DTYPES:
        _fail("model.dtype", f"must be one of {DTYPES}, got {c.model.dtype!r}")
    from rc_jax.models.config import ATTENTION_IMPLS, QUANTIZATIONS  # why: imports JAX (seconds)
    if c.model.attention not in ATTENTION_IMPLS:
        _fail("model.attention", f"must be one of {ATTENTION_IMPLS}, got {c.model.attention!r}")
    if c.model.quantization not in QUANTIZATIONS:
        _fail("model.quantization", f"must be one of {QUANTIZATIONS}, got "
              f"{c.model.quantization!r}")
    if c.method == TRAIN and c.model.quantization != "none":
        _fail("model.quantization", f"{c.model.quantization!r} is for inference only: training "
              "updates float weights (use 'none')")
    if not c.data.source:
        _fail("data.source", "required (a JSON/JSONL file, hf:<id>, tfds:<name>, a dataset "
              "directory or builtin:demo)")
    if c.data.limit < 0:
        _fail("data.limit", f"must be >= 0, got {c.data.limit}")
    s = c.sampling
    if not s.temperature >= 0:
        _fail("sampling.temperature", f"must be >= 0, got {s.temperature}")
    if not 0 < s.top_p <= 1:
        _fail("sampling.top_p", f"must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        _fail("sampling.top_k", f"must be >= 0, got {s.top_k}")
    if not 0 <= s.min_p < 1:
        _fail("sampling.min_p", f"must be in [0, 1), got {s.min_p}")
    for name in ("num_steps", "max_reasoning_tokens", "max_summary_tokens"):
        _positive(c, f"rc.{name}")
    for name in ("reasoning_template", "summary_template"):
        kind = "reasoning" if name.startswith("reasoning") else "summary"
        try:
            load_template(getattr(c.rc, name), kind)
        except (ValueError, FileNotFoundError) as e:
            _fail(f"rc.{name}", str(e))
    if not c.output_dir:
        _fail("output_dir", "required")
    if not c.grading_timeout > 0:
        _fail("grading_timeout", f"must be > 0, got {c.grading_timeout}")
    if c.mesh:
        from rc_jax.parallel.mesh import parse_mesh_shape  # why: imports JAX (seconds)
        try:
            parse_mesh_shape(c.mesh)
        except ValueError as e:
            _fail("mesh", str(e))
    _validate_delethink(c)


def _validate_delethink(c: ml_collections.ConfigDict) -> None:
    """The `delethink` section (method delethink; training with rl.rollout = delethink)."""
    try:
        load_template(c.delethink.template, "solve")
    except (ValueError, FileNotFoundError) as e:
        _fail("delethink.template", str(e))
    _positive(c, "delethink.chunk_tokens")
    _positive(c, "delethink.keep_first", minimum=0)
    _positive(c, "delethink.keep_last", minimum=0)
    _positive(c, "delethink.max_chunks")
    if c.delethink.keep_last >= c.delethink.chunk_tokens:
        _fail("delethink.keep_last", f"must be < delethink.chunk_tokens "
              f"({c.delethink.chunk_tokens}): later chunks get chunk_tokens - keep_last new "
              f"tokens, got {c.delethink.keep_last}")


def _validate_evaluation(c: ml_collections.ConfigDict) -> None:
    """What evaluation methods add (see `_evaluation_fields`)."""
    if c.summarizer.model.path and not Path(c.summarizer.model.path).is_dir():
        _fail("summarizer.model.path", f"directory {c.summarizer.model.path!r} does not exist")
    if c.grading.mode not in GRADING_MODES:
        _fail("grading.mode", f"must be one of {GRADING_MODES}, got {c.grading.mode!r}")
    if c.rc.engine not in ENGINES:
        _fail("rc.engine", f"must be one of {ENGINES}, got {c.rc.engine!r}")
    if c.rc.scheduling not in SCHEDULES:
        _fail("rc.scheduling", f"must be one of {SCHEDULES}, got {c.rc.scheduling!r}")
    if int(c.rc.refill_rows) != c.rc.refill_rows or c.rc.refill_rows < 0:
        _fail("rc.refill_rows", f"must be a non-negative integer, got {c.rc.refill_rows!r}")
    if not c.rc.prompt_margin >= 0:
        _fail("rc.prompt_margin", f"must be >= 0, got {c.rc.prompt_margin!r}")
    if c.summarizer.tokenizer.path and not c.summarizer.model.path:
        _fail("summarizer.tokenizer.path", "needs summarizer.model.path (a second model)")
    _validate_methods(c)
    _positive(c, "num_samples")
    _positive(c, "batch_size")


def _positive(c: ml_collections.ConfigDict, field: str, minimum: int = 1) -> None:
    node = c
    for part in field.split("."):
        node = getattr(node, part)
    if isinstance(node, bool) or not isinstance(node, int) or node < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        _fail(field, f"must be {what}, got {node!r}")


def _validate_methods(c: ml_collections.ConfigDict) -> None:
    """The baseline / scaffold sections (every section is checked, whatever the method)."""

    def template(field: str, kind: str) -> None:
        section, name = field.split(".")
        try:
            load_template(getattr(getattr(c, section), name), kind)
        except (ValueError, FileNotFoundError) as e:
            _fail(field, str(e))

    template("baselines.solve_template", "solve")
    _positive(c, "autoregressive.max_tokens")
    _positive(c, "autoregressive.checkpoint_tokens")
    if c.autoregressive.checkpoint_tokens > c.autoregressive.max_tokens:
        _fail("autoregressive.checkpoint_tokens",
              f"must be <= autoregressive.max_tokens ({c.autoregressive.max_tokens}), got "
              f"{c.autoregressive.checkpoint_tokens}")
    for section, kind in (("self_refine", "refine"), ("self_verify", "verify")):
        template(f"{section}.template", kind)
        _positive(c, f"{section}.max_context_tokens", minimum=0)
    if c.budget_forcing.mode not in ("paper", "on_stop"):
        _fail("budget_forcing.mode", f"must be 'paper' or 'on_stop', got "
              f"{c.budget_forcing.mode!r}")
    template("budget_forcing.template", "solve")
    _positive(c, "budget_forcing.max_tokens")
    _positive(c, "budget_forcing.continuation_tokens")
    _positive(c, "budget_forcing.num_forcings", minimum=0)
    if not c.budget_forcing.cue:
        _fail("budget_forcing.cue", "must be non-empty text (e.g. 'Wait')")
    _positive(c, "rsa.population")
    _positive(c, "rsa.k")
    if c.rsa.k > c.rsa.population:
        _fail("rsa.k", f"must be <= rsa.population ({c.rsa.population}), got {c.rsa.k}")
    _positive(c, "rsa.generations", minimum=0)
    _positive(c, "rsa.max_candidate_tokens", minimum=0)
    template("rsa.template", "aggregate")
    if c.summarizer.model.path and c.method not in _SUMMARIZING:
        _fail("summarizer.model.path", f"method {c.method!r} has no summarization phase; "
              f"a summarizer model is used by {' and '.join(_SUMMARIZING)} only")
    if c.summarizer.model.path and c.method == "rsa" and not c.rsa.use_summaries:
        _fail("summarizer.model.path", "rsa only summarizes with rsa.use_summaries=True")


def steps_per_record(c: ml_collections.ConfigDict) -> int:
    """Number of steps every record of this run has (len(reasoning_store))."""
    if c.method == "autoregressive":
        return -(-c.autoregressive.max_tokens // c.autoregressive.checkpoint_tokens)
    if c.method == "budget_forcing":
        return c.budget_forcing.num_forcings + 1
    if c.method == "rsa":
        return c.rsa.generations + 1
    if c.method == "delethink":
        return c.delethink.max_chunks
    return c.rc.num_steps


def data_split(c: ml_collections.ConfigDict) -> str:
    """The dataset split a run loads ("": let the loader choose).

    `data.split` when set; else the source's `:split` suffix (`hf:<id>:test`); else the
    loader's choice (the only split, else test, validation, train) for evaluation, and
    `train` for training.
    """
    if c.data.split or c.method != TRAIN:
        return c.data.split
    source = c.data.source
    if source.startswith(("hf:", "tfds:")):
        if _split_source(source.split(":", 1)[1])[1]:
            return ""
    return "train"


def semantic_dict(c: ml_collections.ConfigDict) -> dict:
    """The config minus fields that do not change results (used for the resume hash)."""
    d = json.loads(c.to_json())
    non_semantic: tuple[str, ...]
    if c.method == TRAIN:
        non_semantic = _NON_SEMANTIC_TRAIN
        if d["rl"].get("rollout", "rc") == "rc":
            d.pop("delethink", None)  # read by Delethink rollouts only
        for dotted, default in _ADDED_LATER_TRAIN.items():
            section, name = dotted.split(".")
            if d.get(section, {}).get(name, default) == default:
                d.get(section, {}).pop(name, None)
        d["data"]["split"] = data_split(c)  # the split loaded, whichever way it was chosen
    else:
        non_semantic = _NON_SEMANTIC
        used = set(METHOD_SECTIONS.get(c.method, ()))
        for section in {s for ss in METHOD_SECTIONS.values() for s in ss} - used:
            d.pop(section, None)
    for dotted, default in _ADDED_LATER_SHARED.items():
        section, name = dotted.split(".")
        if d.get(section, {}).get(name, default) == default:
            d.get(section, {}).pop(name, None)
    for dotted in non_semantic:
        parts = dotted.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return d


def config_hash(c: ml_collections.ConfigDict) -> str:
    """Hash of the fields that change results: a resumed run must match it (evaluation:
    `results.jsonl` / `progress.jsonl`; training: the checkpoints)."""
    blob = json.dumps(semantic_dict(c), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flag_error_message(error: BaseException, argv: list[str]) -> str | None:
    """One line for a mistake on the command line or in a config file, or None.

    Handles what `ml_collections.config_flags` raises while parsing `--config=FILE` and
    `--config.a.b=value`: a config file that does not exist or fails to load, and an
    override naming a field the schema does not have (with ml_collections' suggestion).
    """
    inner = error.args[0] if error.args else ""
    while isinstance(inner, BaseException):  # AttributeError(KeyError(message))
        inner = inner.args[0] if inner.args else ""
    text = str(inner) if inner else str(error)
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None and "--config" in argv[:-1]:
        config_arg = argv[argv.index("--config") + 1]
    if isinstance(error, (KeyError, AttributeError)):
        # ml_collections: "'num_stepz'\nDid you mean "num_steps" instead of "num_stepz"?"
        lines = [line.strip() for line in text.strip("'\"").replace("\\n", "\n").splitlines()]
        key = lines[0].strip("'\"") if lines else ""
        hint = next((line for line in lines[1:] if line.startswith("Did you mean")), "")
        flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                     and key in a.split("=", 1)[0].split(".")), None)
        if flag is not None:
            field = flag[len("--config."):]
            suggestion = ""
            if hint:
                m = re.match(r'Did you mean "([^"]+)"', hint)
                if m:
                    parts = field.split(".")
                    parts[parts.index(key)] = m.group(1)
                    suggestion = f"; did you mean --config.{'.'.join(parts)}?"
            return f"{flag}: the config has no field {field!r}{suggestion}"
    if config_arg is not None:
        path = Path(config_arg.split(":", 1)[0])
        if not path.is_file():
            where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
            return f"--config={config_arg}: config file {str(path)!r} not found{where}"
        cause = error.__cause__ or error.__context__ or error
        while isinstance(cause, OSError) and (cause.__cause__ or cause.__context__):
            cause = cause.__cause__ or cause.__context__ or cause  # config_flags wraps it
        line = ""
        if isinstance(cause, SyntaxError):
            line = f" line {cause.lineno}"
        else:
            # The config file's frame may be on any exception of the chain.
            chain: list[BaseException] = []
            e: BaseException | None = error
            while e is not None and e not in chain:
                chain.append(e)
                e = e.__cause__ or e.__context__
            frames = [f for x in chain for f in traceback.extract_tb(x.__traceback__)
                      if Path(f.filename).resolve() == path.resolve()]
            line = f" line {frames[-1].lineno}" if frames else ""
        detail = cause.msg if isinstance(cause, SyntaxError) else str(cause)
        unknown = re.search(r'Key "([^"]+)" does not exist', detail)
        if unknown:  # ml_collections' locked-config message: keep the name and suggestion
            guess = re.search(r'Did you mean "([^"]+)"', detail)
            detail = f"the config has no field {unknown.group(1)!r}" + (
                f"; did you mean {guess.group(1)!r}?" if guess else "")
        return f"config file {str(path)!r}{line}: {type(cause).__name__}: {detail}"
    return None
