"""The run configuration: one `ml_collections.ConfigDict` schema, validated up front.

Experiments (`experiments/*.py`) start from `default_config()` and override fields; any
field can be overridden on the command line as `--config.rc.num_steps=8`. The dict is
locked, so a misspelt field fails immediately, and `validate` checks values before any
model is loaded, naming the field at fault.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ml_collections

METHODS = ("rc",)
ENGINES = ("device", "reference")
DTYPES = ("float32", "bfloat16")
BUILTIN_MODEL_PREFIX = "builtin:"

# Fields that do not change what a run computes: changing them keeps a run resumable.
_NON_SEMANTIC = ("batch_size", "output_dir", "data.limit", "evaluate", "mesh",
                 "grading_timeout", "model.max_cache_length", "rc.engine")


def default_config() -> ml_collections.ConfigDict:
    """Every field rc_jax.main understands, with defaults."""
    c = ml_collections.ConfigDict()
    c.method = "rc"
    c.name = "run"

    c.model = ml_collections.ConfigDict()
    c.model.path = ""                 # HF-format directory, or builtin:<name>
    c.model.dtype = "float32"
    c.model.max_cache_length = 1 << 17

    c.summarizer = ml_collections.ConfigDict()
    c.summarizer.model = ml_collections.ConfigDict()
    c.summarizer.model.path = ""      # empty: the reasoning model also summarizes

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""             # empty: the model directory

    c.data = ml_collections.ConfigDict()
    c.data.source = ""                # JSON/JSONL path, hf:<id>[:split], tfds:<name>, builtin:demo
    c.data.split = ""
    c.data.limit = 0                  # 0: all problems
    c.data.problem_field = ""         # empty: auto-detect
    c.data.answer_field = ""
    c.data.id_field = ""

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.min_p = 0.0
    c.sampling.seed = 0

    c.rc = ml_collections.ConfigDict()
    c.rc.num_steps = 12
    c.rc.max_reasoning_tokens = 16384
    c.rc.max_summary_tokens = 2048
    c.rc.reasoning_template = "math"  # builtin name (math, science) or a text file
    c.rc.summary_template = "math"
    c.rc.use_think_tags = False
    c.rc.engine = "device"

    c.num_samples = 16
    c.batch_size = 64                 # rollouts per engine call
    c.output_dir = "outputs/run"
    c.mesh = ""                       # e.g. "data:-1" or "data:2,fsdp:4"; empty: one device
    c.evaluate = True                 # grade and report at the end
    c.grading_timeout = 5.0
    c.lock()
    return c


def _fail(field: str, message: str) -> None:
    raise ValueError(f"config.{field}: {message}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Checks every value; raises ValueError naming the first bad field."""
    if c.method not in METHODS:
        _fail("method", f"unknown method {c.method!r}; choose from {', '.join(METHODS)}")
    if not c.model.path:
        _fail("model.path", "required (an HF-format checkpoint directory or builtin:<name>)")
    if not c.model.path.startswith(BUILTIN_MODEL_PREFIX) and not Path(c.model.path).is_dir():
        _fail("model.path", f"directory {c.model.path!r} does not exist")
    if c.model.dtype not in DTYPES:
        _fail("model.dtype", f"must be one of {DTYPES}, got {c.model.dtype!r}")
    if c.summarizer.model.path and not Path(c.summarizer.model.path).is_dir():
        _fail("summarizer.model.path", f"directory {c.summarizer.model.path!r} does not exist")
    if not c.data.source:
        _fail("data.source", "required (a JSON/JSONL file, hf:<id>, tfds:<name> or builtin:demo)")
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
        if getattr(c.rc, name) <= 0:
            _fail(f"rc.{name}", f"must be a positive integer, got {getattr(c.rc, name)}")
    if c.rc.engine not in ENGINES:
        _fail("rc.engine", f"must be one of {ENGINES}, got {c.rc.engine!r}")
    for name in ("reasoning_template", "summary_template"):
        kind = "reasoning" if name.startswith("reasoning") else "summary"
        from rc_jax.rc.prompts import load_template
        try:
            load_template(getattr(c.rc, name), kind)
        except (ValueError, FileNotFoundError) as e:
            _fail(f"rc.{name}", str(e))
    if c.num_samples <= 0:
        _fail("num_samples", f"must be a positive integer, got {c.num_samples}")
    if c.batch_size <= 0:
        _fail("batch_size", f"must be a positive integer, got {c.batch_size}")
    if not c.output_dir:
        _fail("output_dir", "required")
    if c.mesh:
        from rc_jax.parallel.mesh import parse_mesh_shape
        try:
            parse_mesh_shape(c.mesh)
        except ValueError as e:
            _fail("mesh", str(e))


def semantic_dict(c: ml_collections.ConfigDict) -> dict:
    """The config minus fields that do not change results (used for the resume hash)."""
    d = json.loads(c.to_json())
    for dotted in _NON_SEMANTIC:
        parts = dotted.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return d


def config_hash(c: ml_collections.ConfigDict) -> str:
    blob = json.dumps(semantic_dict(c), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
