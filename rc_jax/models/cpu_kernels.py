"""The CPU decode step's matmuls and attention through small C++ kernels (XLA FFI calls).

A decode step on CPU is a stream of weight bytes through matmuls of a few activation
rows, plus a read of the KV cache. Two kernels in `cpu_matmul.cc` stream the weights
better than XLA:CPU's own ops:

* `rc_jax_f32_matmul` (float32 weights): XLA's dot starts every matrix cold and leaves
  the stream to the hardware prefetcher; the kernel prefetches the next channels in
  software while it computes the current ones (SmolLM2's projections at batch 1 on the
  2-core Xeon: 1.22x faster than XLA's dots, benchmarks/README.md).
* `rc_jax_int8_matmul` (`QuantizedWeight`): XLA:CPU has no dot that reads int8: the
  int8 -> float conversion is either hoisted out of the decode loop (a float copy of every
  weight, read at 4 bytes per weight each step) or paid as a separate pass per step. The
  kernel widens each int8 weight in registers as it streams it (1 byte per weight).

and one in `cpu_attention.cc` reads the cache:

* `rc_jax_decode_attention_write`: one segment of the decode-form cache, the step's new
  keys and values written in place first, then each cache row read once and only up to
  its last visible slot, returning the softmax parts that `attention.decode_attention`
  merges (XLA:CPU's ~10 ops per layer for this cost 3x a
  read of the cache at batch 8 on SmolLM2, benchmarks/README.md).

`qwen3.project_t` calls the matmul kernels for the decode layout's matmuls of at most
`MAX_ROWS` rows in a program compiled for the CPU, `attention.decode_attention` the
attention kernel for float32 caches. They are compiled on first use with the system C++
compiler (`$CXX`, else `c++`) against the XLA FFI headers that jaxlib ships, for this
machine's CPU (`-march=native`), into the rc_jax cache (`$RC_JAX_CACHE/kernels`, else
`~/.cache/rc_jax/kernels`), keyed by the source, jaxlib's version and the CPU, then loaded
and registered with JAX once per process. Where they cannot be built (no compiler, an
unsupported platform) or `RC_JAX_CPU_KERNELS=0` is set, `usable` says no, the reason is
logged once, and decode uses XLA's ops (the same numbers up to float summation order;
int8 then decodes at fp32 speed).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from rc_jax.models.quant import QuantizedWeight

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(f) for f in ("cpu_matmul.cc", "cpu_attention.cc"))
# FFI target name -> the handler's symbol in the library.
TARGETS = {"rc_jax_f32_matmul": "RcJaxF32Matmul", "rc_jax_int8_matmul": "RcJaxInt8Matmul",
           "rc_jax_decode_attention_write": "RcJaxDecodeAttention"}
DISABLE_ENV = "RC_JAX_CPU_KERNELS"
# Above this many activation rows XLA's GEMM can be faster (2-core Xeon, weights streamed,
# f32 kernel vs XLA's dot: SmolLM2's gate|up 1.22x / 1.68x / 1.11x at 1 / 8 / 16 rows,
# benchmarks/README.md; the sampler model's 4096 x 768, one-off: 1.14x / 1.18x / 0.85x).
MAX_ROWS = 8


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (a -march=native library is only valid on
    a CPU with the same features)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return f"{fields.get('model name', '')}|{fields.get('flags', fields.get('Features', ''))}"


def _compile_flags() -> list[str]:
    return ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
            f"-I{jax.ffi.include_dir()}"]


def library_path() -> Path:
    """Where the compiled kernels for these sources, jaxlib and CPU live in the cache."""
    from rc_jax.tools.cache import cache_root
    import jaxlib

    key = hashlib.sha256("\n".join([
        *(src.read_text() for src in SOURCES), jaxlib.__version__, platform.machine(),
        _cpu_identity(), " ".join(_compile_flags()[:-1])]).encode()).hexdigest()[:16]
    return cache_root() / "kernels" / f"cpu_kernels-{key}.so"


def build(path: Path) -> None:
    """Compile the kernel sources into one library at `path` (atomically: a half-written
    library is never loaded). Raises RuntimeError naming the compiler and its output on
    failure."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX or install g++)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *_compile_flags(), *map(str, SOURCES), "-o", tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed to compile "
                               f"{', '.join(map(str, SOURCES))}:\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> str | None:
    """Build (if needed), load and register the kernel once per process. Returns None
    when it is ready, else the reason it is not."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return f"disabled by {DISABLE_ENV}=0"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return f"not built for {platform.system()} {platform.machine()}"
    try:
        path = library_path()
        if not path.exists():
            from rc_jax.tools.cache import file_lock
            with file_lock(path.with_suffix(".lock")):  # parallel workers build once
                if not path.exists():
                    build(path)
        lib = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except Exception as e:  # noqa: BLE001 - any failure means: use XLA's ops instead
        reason = f"{type(e).__name__}: {e}"
        log.warning("rc_jax CPU kernels unavailable, decode uses XLA's ops (slower; "
                    "int8 at fp32 speed): %s", reason)
        return reason
    return None


def unavailable_reason() -> str | None:
    """None if the kernels can be used in this process, else why not."""
    return _load()


def _require() -> None:
    """Raises RuntimeError (with the reason) unless the kernels are loaded."""
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"rc_jax CPU kernels unavailable: {reason}")


def usable(x: jax.Array, w: Any, platform_name: str) -> bool:
    """Whether `matmul_t(x, w)` applies: a float32 [out, in] weight or an int8 one, at most
    `MAX_ROWS` float32 activation rows (decode), a program compiled for the CPU, and the
    kernels built."""
    quantized = isinstance(w, QuantizedWeight)
    values = w.values if quantized else w
    return (getattr(values, "dtype", None) == (jnp.int8 if quantized else jnp.float32)
            and platform_name == "cpu" and x.dtype == jnp.float32 and values.ndim == 2
            and math.prod(x.shape[:-1]) <= MAX_ROWS and _load() is None)


def matmul_t(x: jax.Array, w: Any) -> jax.Array:
    """x [..., in] float32 times a weight in the decode layout -> [..., out] float32:
    x @ w.T for a float32 w [out, in], (x @ values.T) * scale for a `QuantizedWeight`.
    Raises RuntimeError if the kernels are unavailable (`unavailable_reason`)."""
    _require()
    lead, n_in = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, n_in)
    weight_args: tuple[jax.Array, ...]
    if isinstance(w, QuantizedWeight):
        target, weight_args = "rc_jax_int8_matmul", (w.values, w.scale.astype(jnp.float32))
    else:
        target, weight_args = "rc_jax_f32_matmul", (w,)
    n_out = weight_args[0].shape[0]
    y = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((x2.shape[0], n_out), jnp.float32))(
        x2, *weight_args)
    return y.reshape(*lead, n_out)


def attention_usable(q: jax.Array, keys: jax.Array, values: jax.Array,
                     platform_name: str) -> bool:
    """Whether `decode_attention_parts` applies: float32 queries and cache, a program
    compiled for the CPU, and the kernels built."""
    return (platform_name == "cpu" and q.dtype == keys.dtype == values.dtype == jnp.float32
            and _load() is None)


def decode_attention_parts(qg: jax.Array, keys: jax.Array, values: jax.Array,
                           valid: jax.Array, query_slots: jax.Array,
                           new: tuple[jax.Array, jax.Array, jax.Array] | None = None
                           ) -> tuple[jax.Array, jax.Array,
                                      tuple[jax.Array, jax.Array, jax.Array]]:
    """Softmax parts of grouped queries over one decode-form cache segment, after writing
    this step's keys and values into it.

    qg [N, M, D] (N = B*K cache rows, query m = g*S + s), keys [N, D, C], values
    [N, C, D], valid [B, C] bool, query_slots [B, S] int32 (slots local to the segment);
    new: None or (slots [N, W] int32 local to the segment, a slot outside [0, C) dropped;
    new_k [N, W, D]; new_v [N, W, D]), written in place by the kernel (its keys / values
    outputs aliased to the inputs; None writes nothing, W = 0).
    Returns (keys, values, (max [N, M], sum [N, M], weighted values [N, M, D])), float32,
    the parts as `attention._segment_parts`' but (kMaskValue, 0, 0) for a query that
    sees nothing. Raises RuntimeError if the kernels are unavailable
    (`unavailable_reason`)."""
    _require()
    n, m, d = qg.shape
    f32 = jnp.float32
    if new is None:
        new = (jnp.zeros((n, 0), jnp.int32), jnp.zeros((n, 0, d), f32),
               jnp.zeros((n, 0, d), f32))
    slots, new_k, new_v = new
    out = (jax.ShapeDtypeStruct((n, m), f32), jax.ShapeDtypeStruct((n, m), f32),
           jax.ShapeDtypeStruct((n, m, d), f32), jax.ShapeDtypeStruct(keys.shape, f32),
           jax.ShapeDtypeStruct(values.shape, f32))
    top, total, weighted, keys, values = jax.ffi.ffi_call(
        "rc_jax_decode_attention_write", out, input_output_aliases={1: 3, 2: 4})(
        qg, keys, values, valid.astype(bool), query_slots.astype(jnp.int32),
        slots.astype(jnp.int32), new_k.astype(f32), new_v.astype(f32))
    return keys, values, (top, total, weighted)
