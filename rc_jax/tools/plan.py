"""Memory planner: will this model, batch and context fit that TPU slice / GPU host?

    python -m rc_jax.tools.plan --model=qwen3-4b --mesh=data:2,fsdp:8 --batch=64 \\
        --program=rc --max_reasoning_tokens=16384 --max_summary_tokens=2048 --hbm_gib=16
    python -m rc_jax.tools.plan --config=experiments/hmmt.py --mesh=fsdp:8 --batch=8,16,32
    python -m rc_jax.tools.plan --model=qwen3-32b --target=v5p-32 --mesh=data:2,fsdp:-1 \\
        --program=sampler --prompt_tokens=2048 --new_tokens=16384 --batch=64

It builds the *real* jitted program rc_jax would run (the RC engine, the sampler behind
`generate`, or the RL train step of `rc_jax.rl.step`) for the target shapes from abstract
arrays (`jax.ShapeDtypeStruct` with shardings: no weights, no memory), compiles it, and
prints per-device bytes from `compiled.memory_analysis()` next to an analytical breakdown
(params, gradients + optimizer state, KV caches, prefill attention scores, logits).

Targets (`--target`):
  cpu (default)  one fake XLA:CPU device per mesh device (the tool sets
                 `--xla_force_host_platform_device_count` before importing jax). Runs
                 anywhere. XLA:CPU computes bfloat16 in float32, so its temporaries
                 overstate an accelerator's (converted copies of weights and caches).
  v5e-16, v4-32, v5p-64, ... or a topology like v5e:4x4
                 ahead-of-time compilation for that TPU slice with the TPU compiler
                 (`pip install "jax[tpu]"`, i.e. libtpu); no TPU needed. These are the
                 numbers a TPU run gets.
Layers are planned scanned (`unroll_layers=False`), as accelerators run them.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import traceback
from typing import Any, Callable, Sequence

from rc_jax.tools.cache import cache_root

# why jax, and every rc_jax module that imports it, is imported inside the functions
# below: `main` sets XLA_FLAGS / JAX_PLATFORMS (fake CPU devices, or compile-only for a
# TPU target) from the command line, and those must be set before jax starts.

GIB = 1 << 30

# Hugging Face config.json of the Qwen3 dense models (as published on the Hub), so that
# planning needs neither weights nor network.
_QWEN3_COMMON = dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], vocab_size=151936,
                     head_dim=128, num_key_value_heads=8, hidden_act="silu",
                     rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                     attention_bias=False, bos_token_id=151643, eos_token_id=151645,
                     torch_dtype="bfloat16", use_sliding_window=False)
PRESETS: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": dict(_QWEN3_COMMON, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-1.7b": dict(_QWEN3_COMMON, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-4b": dict(_QWEN3_COMMON, hidden_size=2560, intermediate_size=9728,
                     num_hidden_layers=36, num_attention_heads=32, tie_word_embeddings=True),
    "qwen3-4b-instruct-2507": dict(_QWEN3_COMMON, hidden_size=2560, intermediate_size=9728,
                                   num_hidden_layers=36, num_attention_heads=32,
                                   tie_word_embeddings=True, rope_theta=5000000.0,
                                   max_position_embeddings=262144),
    "qwen3-8b": dict(_QWEN3_COMMON, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, tie_word_embeddings=False),
    "qwen3-14b": dict(_QWEN3_COMMON, hidden_size=5120, intermediate_size=17408,
                      num_hidden_layers=40, num_attention_heads=40, tie_word_embeddings=False),
    "qwen3-32b": dict(_QWEN3_COMMON, hidden_size=5120, intermediate_size=25600,
                      num_hidden_layers=64, num_attention_heads=64, tie_word_embeddings=False),
}

# Memory per device (GiB) by accelerator generation.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32, "h100": 80, "h200": 141, "a100": 80}

# Cloud TPU slice names -> (generation, topology). v4 and v5p names count TensorCores
# (2 per chip), v5e/v6e names count chips.
TPU_SLICES = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
    "v4-128": "v4:4x4x4", "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4",
    "v5p-64": "v5p:2x4x4", "v5p-128": "v5p:4x4x4", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4",
    "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8", "v5e-128": "v5e:8x16",
    "v5e-256": "v5e:16x16", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-64": "v6e:8x8",
}
PROGRAMS = ("rc", "sampler", "train")


# ------------------------------------------------------------------------------ target
def tpu_topology(target: str) -> str | None:
    """'v5e-16' / 'v5e:4x4' -> 'v5e:4x4'; None for the cpu target."""
    if target == "cpu":
        return None
    topology = TPU_SLICES.get(target.lower(), target.lower())
    gen = topology.split(":")[0]
    if ":" not in topology or gen not in HBM_GIB:
        raise ValueError(f"--target: unknown {target!r}; use cpu, a slice name "
                         f"({', '.join(sorted(TPU_SLICES))}) or a topology like v5e:4x4")
    return topology


def default_hbm_gib(target: str) -> float | None:
    topology = tpu_topology(target)
    return None if topology is None else HBM_GIB[topology.split(":")[0]]


def mesh_device_count(mesh: str) -> int:
    """Devices a mesh string names; -1 axes are not allowed here (cpu target). Parsed
    without importing jax (the device count must be set first); make_mesh validates."""
    sizes = []
    for part in filter(None, (x.strip() for x in mesh.split(","))):
        size = part.partition(":")[2]
        if not size.lstrip("-").isdigit():
            raise ValueError(f"--mesh: bad entry {part!r}; expected e.g. 'data:2,fsdp:4'")
        sizes.append(int(size))
    if any(s == -1 for s in sizes):
        raise ValueError("--mesh: with --target=cpu give every axis size (no -1)")
    return math.prod(sizes)


def prepare_cpu_devices(count: int) -> None:
    """Must run before jax is imported: `count` fake CPU devices."""
    if "jax" in sys.modules:
        return  # too late to change; plan() checks the device count
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags + [
        f"--xla_force_host_platform_device_count={count}"])
    os.environ["JAX_PLATFORMS"] = "cpu"


def _target_devices(target: str, count: int | None):
    import jax
    topology = tpu_topology(target)
    if topology is None:
        devices = jax.devices("cpu")
        if count is not None and len(devices) < count:
            raise RuntimeError(f"need {count} CPU devices but jax has {len(devices)}: run "
                               "`python -m rc_jax.tools.plan` in a fresh process")
        return devices[:count] if count else devices
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from jax.experimental import topologies
    try:
        return topologies.get_topology_desc(topology, "tpu").devices
    except Exception as e:  # noqa: BLE001 - libtpu missing or unknown topology
        raise RuntimeError(f"--target={target}: cannot get TPU topology {topology!r} ({e}); "
                           "TPU targets need libtpu: pip install 'jax[tpu]'") from None


# ------------------------------------------------------------------------------ model
def model_config(model: str, dtype: str = "bfloat16", remat_policy: str = "none",
                 quantization: str = "none", param_dtype: str | None = None,
                 attention: str = "auto"):
    """A preset name, an HF checkpoint directory or builtin:<name> -> ModelConfig.

    dtype: compute dtype; param_dtype: stored weights (None: dtype; training keeps
    float32 weights and optimizer state with bfloat16 compute, `model.param_dtype`)."""
    from rc_jax.models.config import ModelConfig
    kw = dict(dtype=dtype, param_dtype=param_dtype or dtype, remat_policy=remat_policy,
              quantization=quantization, attention=attention)
    if model.lower() in PRESETS:
        return ModelConfig.from_hf_dict(PRESETS[model.lower()], source=model, **kw)
    if model.startswith("builtin:"):
        from rc_jax.tools.builtin_models import resolve_model_path
        model = str(resolve_model_path(model))
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise ValueError(f"--model: directory {model!r} has no config.json (not an HF "
                         "checkpoint)")
    if os.path.isdir(model) or os.path.isfile(model):
        return ModelConfig.from_pretrained(model, **kw)
    raise ValueError(f"--model: {model!r} is neither a preset ({', '.join(PRESETS)}) "
                     "nor a checkpoint directory")


def _default_tokenizer_dir() -> str:
    """The cached real Qwen3 tokenizer if present (prompt widths match Qwen3), else the
    tiny project tokenizer (template lengths differ by a few hundred tokens; the
    power-of-two prompt buckets usually absorb that)."""
    qwen3 = cache_root(None) / "qwen3-tokenizer"
    if (qwen3 / "tokenizer.json").exists():
        return str(qwen3)
    from rc_jax.tools.builtin_models import ensure_tiny_random_model
    return str(ensure_tiny_random_model())


# ------------------------------------------------------------------------------ the plan
@dataclasses.dataclass
class Plan:
    """Per-device bytes of one program (compiled and analytical) and the shapes used."""
    program: str
    model: str
    num_params: int
    dtype: str
    mesh: dict[str, int]
    target: str
    batch: int                      # rows per program call (after bucketing)
    shapes: dict[str, Any]          # prompt widths, cache lengths, ...
    analytic: dict[str, int]        # bytes per device by component
    compiled: dict[str, Any] | None  # memory_analysis() bytes per device (peak included)
    hbm_bytes: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.compiled["peak"] if self.compiled else self.analytic["peak"]

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.peak <= self.hbm_bytes

    def to_json(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), peak=self.peak, fits=self.fits)


def _shard_bytes(shapes: Any, shardings: Any) -> int:
    import jax
    total = 0
    for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
        total += math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
    return total


def _axis_split(size: int, mesh, axis: str) -> int:
    n = mesh.shape.get(axis, 1)
    return n if n > 1 and size % n == 0 else 1


def _kv_bytes(config, mesh, rows: int, length: int) -> int:
    import jax

    from rc_jax.models import qwen3
    from rc_jax.parallel import kv_cache_shardings
    shapes = jax.eval_shape(lambda: qwen3.init_cache(config, rows, length))
    sh = kv_cache_shardings(config, mesh, rows, length)
    return sum(_shard_bytes(getattr(shapes, n), sh[n]) for n in ("k", "v", "valid"))


def _rows_per_device(rows: int, mesh) -> int:
    from rc_jax.parallel import batch_shards
    return -(-rows // batch_shards(mesh))


def _prefill_scores_bytes(config, mesh, rows: int, prompt: int, cache: int,
                         self_causal: bool = False) -> int:
    """Scores of one layer's prefill attention live at once for `config.attention`
    (`attention.live_score_bytes`: dense [rows, heads, prompt, cache] float32; blockwise
    a few [block_q, block_k] blocks per head); the prompt is prefilled in one chunk.
    `self_causal`: a forward without a cache (training)."""
    from rc_jax.models.attention import live_score_bytes
    heads = config.num_heads // _axis_split(config.num_heads, mesh, "tensor")
    return live_score_bytes(config.attention, _rows_per_device(rows, mesh), heads, prompt,
                            cache, backend=mesh.devices.flat[0].platform,
                            dtype=config.jnp_dtype, self_causal=self_causal)


def _logits_bytes(config, mesh, rows: int, positions: int = 1) -> int:
    vocab = config.vocab_size // _axis_split(config.vocab_size, mesh, "tensor")
    return _rows_per_device(rows, mesh) * positions * vocab * 4


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TPU_OOM = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\)[^(]*available HBM \(([\d.]+)([KMGT]?)\)")


def _memory(lowered, params_bytes: int) -> dict[str, Any]:
    """memory_analysis() of the compiled program. The TPU compiler refuses programs that
    do not fit HBM; its message still says how much they need, which is kept (with the
    arguments approximated by the params)."""
    try:
        m = lowered.compile().memory_analysis()
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError, version dependent
        hit = _TPU_OOM.search(str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or hit is None:
            raise
        temp = int(float(hit.group(1)) * _UNITS[hit.group(2)])
        return {"argument": params_bytes, "output": 0, "alias": 0, "temp": temp,
                "generated_code": 0, "peak": params_bytes + temp,
                "compile_error": "out of HBM: " + hit.group(0)}
    out: dict[str, Any] = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
                           ("argument", "output", "alias", "temp", "generated_code")}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _abstract_params(config, shardings):
    import jax

    from rc_jax.models import param_shapes
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        param_shapes(config), shardings)


def plan(program: str, model: str, mesh: str, batch: int, *, target: str = "cpu",
         dtype: str = "bfloat16", compile: bool = True, hbm_gib: float | None = None,
         problem_tokens: int = 512, max_reasoning_tokens: int = 16384,
         max_summary_tokens: int = 2048, prompt_tokens: int = 2048,
         new_tokens: int = 16384, num_samples: int = 1, seq_len: int = 18432,
         remat_policy: str = "full", tokenizer: str | None = None,
         max_cache_length: int = 1 << 20, quantization: str = "none",
         param_dtype: str | None = None, logprob_chunk: int = 0,
         attention: str = "auto") -> Plan:
    """Per-device memory of `program` ('rc', 'sampler' or 'train') for `batch` rows.

    rc: `problem_tokens` per problem, budgets H_R / H_S; sampler: `prompt_tokens` +
    `new_tokens`, `num_samples` per prompt (batch = prompts); train: one micro-batch of
    `batch` sequences of `seq_len` tokens (accumulate) and the AdamW update.
    quantization="int8": weight-only int8 projections (1 byte per weight + a float32 scale
    per output channel; embeddings and norms in `dtype`), rc and sampler only.
    """
    if program not in PROGRAMS:
        raise ValueError(f"program must be one of {PROGRAMS}, got {program!r}")
    if quantization != "none" and program == "train":
        raise ValueError(f"--quantization={quantization} is for inference (rc, sampler); "
                         "training updates float weights")
    from rc_jax.parallel import make_mesh, param_shardings
    from rc_jax.sampling import Buckets, SamplingParams

    count = None if tpu_topology(target) else mesh_device_count(mesh)
    the_mesh = make_mesh(mesh, devices=_target_devices(target, count))
    config = model_config(model, dtype, remat_policy if program == "train" else "none",
                          quantization, param_dtype=param_dtype, attention=attention)
    shardings = param_shardings(config, the_mesh)
    params = _abstract_params(config, shardings)
    buckets = Buckets(max_cache_length=max_cache_length)
    analytic = {"params": _shard_bytes(params, shardings)}
    shapes: dict[str, Any] = {}
    notes: list[str] = []
    lowered: list = []
    sampling = SamplingParams(temperature=1.0)

    # Decode is planned on the scanned layer layout (unroll_layers=False), as
    # accelerators run it, whatever the host is.
    if program == "sampler":
        from rc_jax.sampling.generate import lower_generate
        from rc_jax.parallel import batch_shards
        rows = buckets.batch(batch, multiple=batch_shards(the_mesh))
        p, n = buckets.prompt(prompt_tokens), buckets.new_tokens(new_tokens)
        shapes.update(prompt=p, new_tokens=n, cache=p + n, rows=rows * num_samples)
        analytic["kv_cache"] = _kv_bytes(config, the_mesh, rows * num_samples, p + n)
        if num_samples > 1:  # the prefill cache and its n-fold copy are both live
            analytic["kv_cache"] += _kv_bytes(config, the_mesh, rows, p + n)
        analytic["prefill_scores"] = _prefill_scores_bytes(config, the_mesh, rows, p, p + n)
        analytic["logits"] = _logits_bytes(config, the_mesh, rows * num_samples)
        if compile:
            lowered.append(lower_generate(
                params, config, batch, prompt_tokens, new_tokens, sampling,
                num_samples=num_samples, buckets=buckets, mesh=the_mesh,
                param_shardings=shardings, unroll_layers=False))
        batch_rows = rows
    elif program == "rc":
        from rc_jax.rc.engine import RCEngine, RCSettings
        from rc_jax.tokenizer import load_tokenizer
        tok_dir = tokenizer or _default_tokenizer_dir()
        engine = RCEngine(config, load_tokenizer(tok_dir),
                          RCSettings(num_steps=1, max_reasoning_tokens=max_reasoning_tokens,
                                     max_summary_tokens=max_summary_tokens),
                          sampling, slots=batch, buckets=buckets, mesh=the_mesh,
                          param_shardings=shardings, unroll_layers=False)
        rows = engine.slots
        width = buckets.prompt(problem_tokens)
        (shape,) = engine.shapes(width)
        shapes.update(problem=width, prompt_width=shape.prompt_width,
                      cache=shape.cache_length, refill_rows=shape.refill_rows, rows=rows,
                      tokenizer=os.path.basename(tok_dir.rstrip("/")))
        # One cache for every slot (a slot holds either phase). A refill prefills
        # refill_rows prompts of the widest bucket at a time on one device, every slot
        # (rows where they live) on a batch-sharded mesh; its prefill cache and that
        # cache moved to slot = position order are live together (RCEngine._refill).
        from rc_jax.parallel import batch_shards
        refill = rows if batch_shards(the_mesh) > 1 else shape.refill_rows
        analytic["kv_cache"] = _kv_bytes(config, the_mesh, rows, shape.cache_length)
        analytic["refill_kv"] = (_kv_bytes(config, the_mesh, refill, shape.prompt_width)
                                 + _kv_bytes(config, the_mesh, refill, shape.cache_length))
        analytic["prefill_scores"] = _prefill_scores_bytes(
            config, the_mesh, refill, shape.prompt_width, shape.prompt_width)
        analytic["logits"] = _logits_bytes(config, the_mesh, rows)
        if compile:
            lowered.append(engine.lower(params, batch, problem_tokens))
        batch_rows = rows
    else:
        lowered_train, extra = _train_plan(config, the_mesh, shardings, params, batch,
                                           logprob_chunk, seq_len, compile)
        analytic.update(extra["analytic"])
        shapes.update(extra["shapes"])
        notes += extra["notes"]
        lowered += lowered_train
        batch_rows = extra["shapes"]["rows"]

    analytic["peak"] = sum(v for k, v in analytic.items() if k != "peak")
    compiled = None
    if compile:
        stats = [_memory(low, analytic["params"]) for low in lowered]
        compiled = max(stats, key=lambda s: s["peak"])  # programs run one at a time
        if len(stats) > 1:
            notes.append("compiled: the larger of " + ", ".join(
                f"{name} {s['peak'] / GIB:.2f} GiB" for name, s in zip(
                    ("accumulate", "update"), stats)))
    if tpu_topology(target) is None and compile and config.dtype != "float32":
        notes.append("XLA:CPU upcasts bfloat16 to float32: compiled temporaries overstate "
                     "a TPU/GPU's; use --target=<tpu slice> for TPU numbers")
    hbm = hbm_gib if hbm_gib is not None else default_hbm_gib(target)
    if quantization != "none":
        notes.append(f"{quantization} weights: projections 1 byte/param + float32 scales per "
                     f"output channel; embeddings and norms {dtype}")
    label = dtype if quantization == "none" else f"{dtype}+{quantization}"
    return Plan(program=program, model=model, num_params=config.num_params, dtype=label,
                mesh=dict(the_mesh.shape), target=target, batch=batch_rows, shapes=shapes,
                analytic=analytic, compiled=compiled,
                hbm_bytes=None if hbm is None else int(hbm * GIB), notes=notes)


def _train_plan(config, mesh, shardings, params, batch, logprob_chunk, seq_len, compile):
    """The RL train step (`rc_jax.rl.step`): accumulate one micro-batch, then AdamW."""
    import jax
    import jax.numpy as jnp

    from rc_jax.parallel import batch_axes, batch_shards
    from rc_jax.rl.step import MICRO_FIELDS, LossSettings, OptimizerSettings, train_programs
    rows = -(-batch // batch_shards(mesh)) * batch_shards(mesh)
    progs = train_programs(config, LossSettings(logprob_chunk=logprob_chunk),
                           OptimizerSettings(), mesh, shardings,
                           batch_axes(mesh) or ("data",))
    grads = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32,
                                                        sharding=p.sharding), params)
    opt_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(progs.optimizer.init, params), progs.opt_shardings)
    ints = ("tokens", "positions")
    bools = ("mask", "response_mask")
    per_row = ("advantages", "seq_weights")
    micro = {}
    for f in MICRO_FIELDS:
        shape = (rows,) if f in per_row else (rows, seq_len)
        dt = jnp.int32 if f in ints else jnp.bool_ if f in bools else jnp.float32
        micro[f] = jax.ShapeDtypeStruct(shape, dt, sharding=progs.rows)
    rows_dev = _rows_per_device(rows, mesh)
    analytic = {
        "grads_f32": _shard_bytes(grads, shardings),
        "optimizer_state": _shard_bytes(opt_state, progs.opt_shardings),
        # remat 'full': the layer inputs are saved for the backward pass ...
        "saved_layer_inputs": rows_dev * seq_len * config.hidden_size
        * config.jnp_dtype.itemsize * config.num_layers,
        # ... and one layer's attention scores are live at a time (model.attention).
        "attention_scores": _prefill_scores_bytes(config, mesh, rows, seq_len, seq_len,
                                                  self_causal=True),
        # float32 logits of the positions projected at once (rl.logprob_chunk).
        "logits": _logits_bytes(config, mesh, rows, min(seq_len, logprob_chunk or seq_len)),
    }
    lowered = []
    if compile:
        from rc_jax.rl.step import sharding_scope
        with sharding_scope(mesh):
            lowered.append(progs._accumulate.lower(params, grads, micro))
            lowered.append(progs._update.lower(params, opt_state, grads))
    notes = [f"train: one micro-batch of {rows} x {seq_len} tokens, remat "
             f"{config.remat_policy!r}, params {config.param_dtype}, logprob_chunk "
             f"{logprob_chunk}, AdamW (rc_jax.rl.step)"]
    return lowered, {"analytic": analytic, "notes": notes,
                     "shapes": {"rows": rows, "seq_len": seq_len}}


# ------------------------------------------------------------------------------ output
def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:8.2f} GiB"


def format_plan(p: Plan) -> str:
    mesh = ",".join(f"{a}:{n}" for a, n in p.mesh.items())
    lines = [f"program={p.program} model={p.model} ({p.num_params / 1e9:.2f} B params, "
             f"{p.dtype}) mesh={mesh} ({math.prod(p.mesh.values())} devices) "
             f"target={p.target} rows={p.batch}",
             "  shapes: " + ", ".join(f"{k}={v}" for k, v in p.shapes.items()
                                      if not k.startswith("kv_"))]
    if p.compiled:
        c = p.compiled
        lines.append("  compiled (memory_analysis, per device):")
        for k in ("argument", "output", "alias", "temp"):
            lines.append(f"    {k:<28}{_gib(c[k])}")
        lines.append(f"    {'peak = arg + out - alias + temp':<28}{_gib(c['peak'])}")
        if c.get("compile_error"):
            lines.append(f"    TPU compiler: {c['compile_error']}")
    lines.append("  analytical (per device):")
    for k, v in p.analytic.items():
        lines.append(f"    {k:<28}{_gib(v)}")
    if p.hbm_bytes is not None:
        verdict = "FITS" if p.fits else "DOES NOT FIT"
        lines.append(f"  {verdict}: peak {p.peak / GIB:.2f} GiB vs {p.hbm_bytes / GIB:.0f} "
                     "GiB per device")
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)


def _positive(kind: type, what: str) -> Callable[[str], Any]:
    """An argparse type: one `kind` (int or float) > 0; `what` names it in the error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_count = _positive(int, "a positive integer")
_gib_arg = _positive(float, "a positive number of GiB")


def _ints(text: str) -> list[int]:
    """Comma-separated positive integers (--batch=8,16,32)."""
    try:
        values = [_count(x) for x in text.split(",") if x.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rc_jax.tools.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiment config (model, dtype, batch, budgets, mesh)")
    p.add_argument("--model", help=f"preset ({', '.join(PRESETS)}) or checkpoint dir")
    p.add_argument("--mesh", help="e.g. data:2,fsdp:4,tensor:1 (-1 only with a TPU target)")
    p.add_argument("--target", default="cpu", help="cpu, a TPU slice (v5e-16) or topology")
    p.add_argument("--program", default="rc", choices=PROGRAMS)
    p.add_argument("--batch", type=_ints, help="rows (comma list to plan several)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float32"))
    p.add_argument("--param_dtype", default=None, choices=("bfloat16", "float32"),
                   help="stored weights (default: --dtype; RL training keeps float32)")
    p.add_argument("--logprob_chunk", type=_count, default=None,
                   help="train: positions per LM-head chunk (rl.logprob_chunk; default: all)")
    p.add_argument("--quantization", default=None, choices=("none", "int8"),
                   help="int8: weight-only int8 projections (model.quantization)")
    p.add_argument("--problem_tokens", type=_count, default=512)
    p.add_argument("--max_reasoning_tokens", type=_count, default=None)
    p.add_argument("--max_summary_tokens", type=_count, default=None)
    p.add_argument("--prompt_tokens", type=_count, default=2048)
    p.add_argument("--new_tokens", type=_count, default=16384)
    p.add_argument("--num_samples", type=_count, default=1)
    p.add_argument("--seq_len", type=_count, default=18432, help="train: tokens per sequence")
    p.add_argument("--remat", default="full", help="train: remat policy (none, full, dots, ...)")
    p.add_argument("--attention", default=None,
                   help="model.attention: auto, dense, blockwise, cudnn, pallas")
    p.add_argument("--hbm_gib", type=_gib_arg, default=None, help="memory per device")
    p.add_argument("--tokenizer", default=None, help="rc: tokenizer dir for prompt widths")
    p.add_argument("--no_compile", action="store_true", help="analytical numbers only")
    p.add_argument("--json", default=None, help="also write the plans to this JSON file")
    return p


def _from_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
        raise ValueError(f"--config: file {path!r} not found{where}")
    spec = importlib.util.spec_from_file_location("_plan_config", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--config: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        c = module.get_config()
    except Exception as e:  # noqa: BLE001  (the user's code: say where, in one line)
        if isinstance(e, SyntaxError):
            line = f" line {e.lineno}"
        else:
            frames = [f for f in traceback.extract_tb(e.__traceback__)
                      if os.path.realpath(f.filename) == os.path.realpath(path)]
            line = f" line {frames[-1].lineno}" if frames else ""
        raise ValueError(f"--config: {path}{line}: {type(e).__name__}: {e}") from None
    batch = c.batch_size if "batch_size" in c else c.rl.batch_size if "rl" in c else None
    out = dict(model=c.model.path, dtype=c.model.dtype, batch=[batch] if batch else None,
               mesh=c.mesh, max_reasoning_tokens=c.rc.max_reasoning_tokens,
               max_summary_tokens=c.rc.max_summary_tokens,
               tokenizer=c.tokenizer.path if "tokenizer" in c else "",
               quantization=c.model.get("quantization", "none"),
               param_dtype=c.model.get("param_dtype", None),
               attention=c.model.get("attention", None),
               logprob_chunk=c.rl.get("logprob_chunk", None) if "rl" in c else None)
    return {k: v for k, v in out.items() if v}


def _model_tokenizer(model: str) -> str | None:
    """The tokenizer of a checkpoint directory or builtin model (None for presets)."""
    if model.lower() in PRESETS:
        return None
    if model.startswith("builtin:"):
        from rc_jax.tools.builtin_models import resolve_model_path
        model = str(resolve_model_path(model))
    has_files = any(os.path.exists(os.path.join(model, f))
                    for f in ("tokenizer.json", "tokenizer_config.json"))
    return model if has_files else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings: dict[str, Any] = _from_config(args.config) if args.config else {}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in ("model", "mesh", "batch", "dtype", "max_reasoning_tokens",
                 "max_summary_tokens", "quantization", "param_dtype", "logprob_chunk",
                 "attention"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    settings.setdefault("dtype", "bfloat16")
    settings.setdefault("batch", [64])
    settings.setdefault("max_reasoning_tokens", 16384)
    settings.setdefault("max_summary_tokens", 2048)
    if args.tokenizer is not None:
        settings["tokenizer"] = args.tokenizer
    for need in ("model", "mesh"):
        if not settings.get(need):
            print(f"error: --{need} is required (or a --config that sets it)", file=sys.stderr)
            return 2
    if args.json:
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent) or os.path.isdir(args.json):
            print(f"error: --json: cannot write {args.json!r} (its directory {parent!r} does "
                  "not exist)" if not os.path.isdir(args.json) else
                  f"error: --json: {args.json!r} is a directory", file=sys.stderr)
            return 2
    try:
        if args.program == "rc" and not settings.get("tokenizer"):
            settings["tokenizer"] = _model_tokenizer(settings["model"])  # prompt widths
        if tpu_topology(args.target) is None:
            prepare_cpu_devices(mesh_device_count(settings["mesh"]))
        else:
            os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile only; run nothing
        from rc_jax.models.config import REMAT_POLICIES  # after the device setup above
        if args.remat not in REMAT_POLICIES:
            raise ValueError(f"--remat: unknown policy {args.remat!r}; choose from "
                             f"{', '.join(REMAT_POLICIES)}")
        plans = []
        for batch in settings["batch"]:
            pl = plan(args.program, settings["model"], settings["mesh"], batch,
                      target=args.target, dtype=settings["dtype"], compile=not args.no_compile,
                      hbm_gib=args.hbm_gib, problem_tokens=args.problem_tokens,
                      max_reasoning_tokens=settings["max_reasoning_tokens"],
                      max_summary_tokens=settings["max_summary_tokens"],
                      prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                      num_samples=args.num_samples, seq_len=args.seq_len,
                      remat_policy=args.remat, tokenizer=settings.get("tokenizer"),
                      quantization=settings.get("quantization", "none"),
                      param_dtype=settings.get("param_dtype"),
                      logprob_chunk=settings.get("logprob_chunk", 0),
                      attention=settings.get("attention", "auto"))
            print(format_plan(pl), flush=True)
            plans.append(pl)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([p.to_json() for p in plans], f, indent=2)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
