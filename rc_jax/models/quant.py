"""Weight-only int8 quantization (`model.quantization = "int8"`).

Every projection matrix of the decoder (attention q/k/v/o, MLP gate/up/down, an untied
lm_head; in the decode layout of `qwen3.pack_for_decode` the fused `qkv_t`, `o_t`,
`gate_up_t`, `down_t`, `lm_head_t`) becomes a `QuantizedWeight`: int8 values of the
weight's own shape and one float32 scale per output channel (symmetric, absmax / 127
over the contracted input axes). Embeddings, norms and biases stay as they are (a tied
embedding therefore also stays the float logits head).

A matmul with a quantized weight multiplies the int8 values, converted to the activation
dtype, and scales the *output*: `(x @ values) * scale`, which equals `x @ (values * scale)`
because the scale is constant along the contracted axes. So quantizing once after loading
any float checkpoint is all it takes (`quantize_params`; `load_hf_checkpoint` does it for a
`ModelConfig(quantization="int8")`); nothing is stored quantized on disk.

Shardings: the values shard exactly like the float weight; the scale keeps the weight's
logical names of the output axes (and `layers` when stacked), so it shards like the
weight's output axis (`quantized_logical_axes`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rc_jax.models.config import QUANTIZATIONS as QUANTIZATIONS  # re-exported


# Weight name -> the axes it contracts with the activations (per layer: a stacked
# parameter has a leading `layers` axis in front of these). Negative: the decode layout,
# whose weights are [out, in].
CONTRACTED_AXES: dict[str, tuple[int, ...]] = {
    "q_proj": (0,), "k_proj": (0,), "v_proj": (0,),  # [E, heads, D]
    "o_proj": (0, 1),                                  # [H, D, E]
    "gate_proj": (0,), "up_proj": (0,), "down_proj": (0,),  # [E, I], [I, E]
    "lm_head": (0,),                                   # [E, V]
    "qkv_t": (-1,), "o_t": (-1,), "gate_up_t": (-1,), "down_t": (-1,), "lm_head_t": (-1,),
}


@flax.struct.dataclass
class QuantizedWeight:
    """A weight-only int8 matrix.

    Attributes:
      values: int8, the float weight's shape.
      scale: float32, the weight's shape without its contracted axes (the output axes,
        and a leading layers axis when stacked): weight ~= values * scale broadcast over
        the contracted axes. Leaf order (values first) keeps Flax's parameter shape check
        comparing the values with the float weight's declared shape.
    """
    values: Any
    scale: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)


def is_quantized(w: Any) -> bool:
    return isinstance(w, QuantizedWeight)


def _axes(ndim: int, contracted: tuple[int, ...], lead: int) -> tuple[int, ...]:
    return tuple(a % ndim if a < 0 else a + lead for a in contracted)


def quantize_weight(w: jax.Array, contracted: tuple[int, ...]) -> QuantizedWeight:
    """Symmetric per-output-channel int8: scale = max |w| over `contracted` / 127 (1 for an
    all-zero channel), values = round(w / scale) in [-127, 127]."""
    w32 = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=contracted, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    values = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
    return QuantizedWeight(values=values, scale=jnp.squeeze(scale, axis=contracted))


def dequantize_weight(w: QuantizedWeight, contracted: tuple[int, ...],
                      dtype: Any = jnp.float32) -> jax.Array:
    """values * scale as a float array (tests and debugging; matmuls never build it)."""
    return (w.values.astype(jnp.float32)
            * jnp.expand_dims(w.scale, contracted)).astype(dtype)


def _map_quantizable(params: Any, fn: Callable[[Any, tuple[int, ...]], Any]) -> Any:
    """`params` with fn(leaf, contracted axes) at every quantizable weight (leaves of
    `CONTRACTED_AXES` names; already-quantized ones are kept)."""
    layers = params.get("layers", {}) if isinstance(params, Mapping) else {}
    stacked = isinstance(layers, Mapping) and "0" not in layers  # decode layout: '0'..'L-1'

    def visit(tree: Any, under_layers: bool) -> Any:
        out = {}
        for name, value in tree.items():
            if isinstance(value, Mapping):
                out[name] = visit(value, under_layers or name == "layers")
            elif name in CONTRACTED_AXES and not is_quantized(value):
                ndim = len(value.shape) if hasattr(value, "shape") else len(value)
                lead = 1 if under_layers and stacked else 0
                out[name] = fn(value, _axes(ndim, CONTRACTED_AXES[name], lead))
            else:
                out[name] = value
        return out

    return visit(params, False)


def quantize_params(params: Any) -> Any:
    """The params pytree (stacked or decode layout) with every projection matrix int8
    (`QuantizedWeight`); embeddings, norms and biases unchanged. Idempotent."""
    return _map_quantizable(params, quantize_weight)


def quantized_logical_axes(axes: Any) -> Any:
    """The logical-axes pytree (`PartitionSpec` leaves) of `quantize_params`'s result,
    from the float one: values keep the weight's names, the scale its output axes'."""
    def spec(s: PartitionSpec, contracted: tuple[int, ...]) -> QuantizedWeight:
        names = tuple(s)
        return QuantizedWeight(
            values=s, scale=PartitionSpec(*(n for i, n in enumerate(names)
                                            if i not in contracted)))
    return _map_quantizable(axes, spec)


def weight_bytes(params: Any) -> int:
    """Bytes of a params pytree (arrays or ShapeDtypeStructs), quantized or not."""
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))


# ------------------------------------------------------------------- matmul helpers
def operand(w: Any, dtype: Any) -> jax.Array:
    """The matmul operand of a weight: the float weight, or the int8 values, in `dtype`."""
    return (w.values if is_quantized(w) else w).astype(dtype)


def scale_output(y: jax.Array, w: Any) -> jax.Array:
    """y = x @ operand(w) -> x @ w: the per-output-channel scale on the trailing output
    axes of y (identity for a float weight)."""
    return y * w.scale.astype(y.dtype) if is_quantized(w) else y


def to_out_in(w: Any, rows: int) -> Any:
    """A weight [in..., out...] with `rows` input features -> [out, in] (decode layout);
    for a quantized one the scale is flattened to [out]."""
    if is_quantized(w):
        return QuantizedWeight(values=w.values.reshape(rows, -1).T, scale=w.scale.reshape(-1))
    return w.reshape(rows, -1).T


def concat_out(ws: list[Any]) -> Any:
    """[out_k, in] weights -> one [sum out_k, in] (a fused projection)."""
    if is_quantized(ws[0]):
        return QuantizedWeight(values=jnp.concatenate([w.values for w in ws], axis=0),
                               scale=jnp.concatenate([w.scale for w in ws], axis=0))
    return jnp.concatenate(ws, axis=0)


def contracted_axes(name: str, ndim: int, stacked: bool) -> tuple[int, ...]:
    """The contracted axes of the weight called `name` (a `CONTRACTED_AXES` key) with
    `ndim` dims, `stacked` when it has a leading layers axis."""
    return _axes(ndim, CONTRACTED_AXES[name], 1 if stacked else 0)


def tie(x: jax.Array, *ws: Any) -> tuple[Any, ...]:
    """(x, *ws) with the int8 values of the quantized weights tied to the activations x by
    an optimization barrier, so that XLA cannot hoist their int8 -> float conversion out
    of a loop (the scanned layers, a decode or RC while loop). Hoisted, it makes a float
    copy of every weight before the loop and keeps it for the loop's lifetime: the memory
    int8 saves is spent again (TPU AOT plan, Qwen3-4B RC on a v5e-4: +1.5 GiB of
    temporaries). The scanned layout (accelerators) ties; the CPU decode layout does not:
    XLA:CPU cannot fuse the conversion into its dot, so its decode-sized int8 matmuls run
    in rc_jax's int8 kernel instead (`cpu_kernels`, which reads the int8 values directly) and
    larger ones convert once, hoisted (benchmarks/int8_decode.py). Float weights pass
    unchanged."""
    if not any(is_quantized(w) for w in ws):
        return (x, *ws)
    values = [w.values if is_quantized(w) else None for w in ws]
    x, tied = jax.lax.optimization_barrier((x, [v for v in values if v is not None]))
    it = iter(tied)
    return (x, *(w.replace(values=next(it)) if is_quantized(w) else w for w in ws))
