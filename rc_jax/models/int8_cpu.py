"""Weight-only int8 matmuls on XLA:CPU through a small C++ kernel (an XLA FFI custom call).

XLA:CPU cannot read int8 weights at 1 byte per weight in a decode step: its dot is a
library call on float operands, so the int8 -> float conversion is either hoisted out of
the decode loop (a float copy of every weight, read at 4 bytes per weight each step) or
paid as a separate pass per step (benchmarks/README.md, "Weight-only int8"). The kernel in
`int8_cpu.cc` widens each int8 weight in registers as it streams it, which is what makes
int8 decode faster than fp32 on CPU.

The kernel is compiled on first use with the system C++ compiler (`$CXX`, else `c++`)
against the XLA FFI headers that jaxlib ships, for this machine's CPU (`-march=native`),
into the rc_jax cache (`$RC_JAX_CACHE/kernels`, else `~/.cache/rc_jax/kernels`), keyed by
the source, jaxlib's version and the CPU, then loaded and registered with JAX once per
process. Where it cannot be built (no compiler, an unsupported platform) or
`RC_JAX_INT8_KERNEL=0` is set, `usable` says no, the reason is logged once, and int8
decode falls back to XLA's ops (correct, at fp32 speed).
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

SOURCE = Path(__file__).with_name("int8_cpu.cc")
TARGET = "rc_jax_int8_matmul"
SYMBOL = "RcJaxInt8Matmul"
DISABLE_ENV = "RC_JAX_INT8_KERNEL"
# Above this many activation rows XLA's float GEMM (on a converted copy) is faster than
# the kernel, which re-widens each weight per 4 rows (SmolLM2's gate_up on the 2-core
# Xeon: kernel 1.45x faster than fp32 at 16 rows, 0.9x at 32; benchmarks/README.md).
MAX_ROWS = 16


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (a -march=native library is only valid on
    a CPU with the same features)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return f"{fields.get('model name', '')}|{fields.get('flags', fields.get('Features', ''))}"


def _compile_flags() -> list[str]:
    return ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
            f"-I{jax.ffi.include_dir()}"]


def library_path() -> Path:
    """Where the compiled kernel for this source, jaxlib and CPU lives in the cache."""
    from rc_jax.tools.cache import cache_root
    import jaxlib

    key = hashlib.sha256("\n".join([
        SOURCE.read_text(), jaxlib.__version__, platform.machine(), _cpu_identity(),
        " ".join(_compile_flags()[:-1])]).encode()).hexdigest()[:16]
    return cache_root() / "kernels" / f"int8_cpu-{key}.so"


def build(path: Path) -> None:
    """Compile `int8_cpu.cc` into `path` (atomically: a half-written library is never
    loaded). Raises RuntimeError naming the compiler and its output on failure."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX or install g++)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *_compile_flags(), str(SOURCE), "-o", tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed to compile {SOURCE}:\n{proc.stderr[-4000:]}")
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
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(lib, SYMBOL)),
                                    platform="cpu")
    except Exception as e:  # noqa: BLE001 - any failure means: use XLA's ops instead
        reason = f"{type(e).__name__}: {e}"
        log.warning("int8 CPU kernel unavailable, int8 decode uses XLA ops (fp32 speed): %s",
                    reason)
        return reason
    return None


def unavailable_reason() -> str | None:
    """None if the kernel can be used in this process, else why not."""
    return _load()


def usable(x: jax.Array, w: Any, platform_name: str) -> bool:
    """Whether `matmul_t(x, w)` applies: an int8 weight, at most `MAX_ROWS` float32
    activation rows (decode), a program compiled for the CPU, and the kernel built."""
    return (isinstance(w, QuantizedWeight) and platform_name == "cpu"
            and x.dtype == jnp.float32 and w.values.ndim == 2
            and math.prod(x.shape[:-1]) <= MAX_ROWS and _load() is None)


def matmul_t(x: jax.Array, w: QuantizedWeight) -> jax.Array:
    """x [..., in] float32 times an int8 weight in the decode layout (values [out, in],
    scale [out]) -> [..., out] float32: (x @ values.T) * scale, reading each int8 weight
    once. Raises RuntimeError if the kernel is unavailable (`unavailable_reason`)."""
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"int8 CPU kernel unavailable: {reason}")
    lead, n_in = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, n_in)
    out_type = jax.ShapeDtypeStruct((x2.shape[0], w.values.shape[0]), jnp.float32)
    y = jax.ffi.ffi_call(TARGET, out_type)(x2, w.values, w.scale.astype(jnp.float32))
    return y.reshape(*lead, w.values.shape[0])
