"""Host API: validate, bucket and pad prompts, run one jitted program per shape bucket.

`generate` turns Python token lists into fixed-shape device arrays (left padding, batch /
prompt / output lengths rounded up to buckets), runs `core.sample` under `jax.jit`
(optionally with `in_shardings`/`out_shardings` on a mesh), and returns numpy results.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rc_jax.models.config import ModelConfig
from rc_jax.parallel import batch_axes, batch_shards, put_global, sharding_context, to_host
from rc_jax.sampling import core
from rc_jax.sampling.core import SamplingParams


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Shape buckets: sizes are rounded up to powers of two no smaller than the minimum,
    so a run compiles a small, known set of programs."""
    min_batch: int = 1
    min_prompt: int = 16
    min_new_tokens: int = 16
    max_cache_length: int = 1 << 17
    # Above this size, round to multiples of `linear_step` instead of powers of two: a
    # 19k-token prompt takes 19.5k slots, not 32k. (Multiples of the prefill chunk.)
    linear_above: int = 2048
    linear_step: int = 512

    def round_up(self, n: int, minimum: int, multiple: int = 1) -> int:
        if n > self.linear_above:
            size = -(-n // self.linear_step) * self.linear_step
        else:
            size = max(minimum, 1 << max(0, (n - 1).bit_length()))
        return -(-size // multiple) * multiple

    def batch(self, n: int, multiple: int = 1) -> int:
        return self.round_up(n, self.min_batch, multiple)

    def prompt(self, n: int) -> int:
        return self.round_up(n, self.min_prompt)

    def new_tokens(self, n: int) -> int:
        return self.round_up(n, self.min_new_tokens)


@dataclasses.dataclass
class GenerationResult:
    """Per output row (prompt-major: row i*num_samples + j is sample j of prompt i)."""
    tokens: list[list[int]]           # generated ids, stop token included
    finish_reasons: list[str]         # 'stop' or 'length'
    logprobs: list[np.ndarray]        # [len] under the sampling distribution
    model_logprobs: list[np.ndarray]  # [len] under the unmodified model
    prompt_index: list[int]

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


def validate_request(prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop_ids: Sequence[int], vocab_size: int, buckets: Buckets) -> None:
    """Raises ValueError naming the offending parameter."""
    if not prompts:
        raise ValueError("prompts: empty list, nothing to generate")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompts[{i}] has token id {bad[0]} outside [0, {vocab_size})")
    longest = max(len(p) for p in prompts)
    need = buckets.prompt(longest) + buckets.new_tokens(max_new_tokens)
    if need > buckets.max_cache_length:
        raise ValueError(f"prompts: longest prompt ({longest} tokens) plus max_new_tokens "
                         f"({max_new_tokens}) needs a cache of {need} slots, more than "
                         f"max_cache_length={buckets.max_cache_length}")
    for s in stop_ids:
        if not 0 <= s < vocab_size:
            raise ValueError(f"stop_ids: unknown token id {s} (vocabulary size {vocab_size})")


def left_pad(prompts: Sequence[Sequence[int]], length: int, rows: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """tokens [rows, length] int32 and mask [rows, length] bool, prompts right-aligned."""
    tokens = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), bool)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p):] = p
        mask[i, length - len(p):] = True
    return tokens, mask


def stop_array(stop_ids: Sequence[int], size: int = 8) -> np.ndarray:
    """Stop ids padded with -1 to a bucketed length (so their count does not recompile)."""
    size = max(size, 1 << max(0, (len(stop_ids) - 1).bit_length()))
    out = np.full((size,), -1, np.int32)
    out[:len(stop_ids)] = list(stop_ids)
    return out


@functools.lru_cache(maxsize=None)
def _program(config: ModelConfig, buffer_length: int, greedy: bool, truncates: bool,
             num_samples: int, pad_id: int, mesh: Mesh | None, data_axes: tuple[str, ...],
             param_shardings_key: Any, unroll_layers: bool):
    """One jitted sampler per static signature (array shapes add jit's own cache keys)."""
    fn = functools.partial(core.sample, config=config, buffer_length=buffer_length,
                           greedy=greedy, truncates=truncates, num_samples=num_samples,
                           pad_id=pad_id, unroll_layers=unroll_layers)

    def run(params, tokens, mask, active, row_keys, max_new, stops, values):
        return fn(params, tokens=tokens, mask=mask, row_keys=row_keys, max_new_tokens=max_new,
                  stop_ids=stops, values=values, active=active)

    if mesh is None:
        return jax.jit(run)
    rows = NamedSharding(mesh, P(data_axes))
    out = core.Decoded(rows, rows, rows, rows, rows)  # type: ignore[arg-type]  # shardings
    return jax.jit(run, in_shardings=_input_shardings(
        mesh, data_axes, None if param_shardings_key is None else param_shardings_key.value),
        out_shardings=out)


def _input_shardings(mesh: Mesh, data_axes: tuple[str, ...], param_shardings: Any) -> tuple:
    """Shardings of (params, tokens, mask, active, row_keys, max_new, stops, values)."""
    rows = NamedSharding(mesh, P(data_axes))
    repl = NamedSharding(mesh, P())
    params_sh = param_shardings if param_shardings is not None else repl
    return (params_sh, rows, rows, rows, rows, repl, repl, repl)


class _Hashable:
    """Wraps a shardings pytree so it can key the program cache by identity."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Hashable) and other.value is self.value


def generate(params: Any, config: ModelConfig, prompts: Sequence[Sequence[int]],
             sampling: SamplingParams, rng: jax.Array, max_new_tokens: int,
             stop_ids: Sequence[int], *, num_samples: int = 1, pad_id: int = 0,
             buckets: Buckets = Buckets(), mesh: Mesh | None = None,
             data_axes: tuple[str, ...] | None = None, param_shardings: Any = None,
             row_keys: np.ndarray | None = None,
             unroll_layers: bool | None = None) -> GenerationResult:
    """Samples up to `max_new_tokens` tokens for each prompt, `num_samples` times each.

    Args:
      params, config: the model.
      prompts: token id lists (no padding), any lengths.
      sampling: temperature / top-p / top-k / min-p (temperature 0 = greedy).
      rng: a `jax.random.PRNGKey`; output row r uses fold_in(rng, r) unless `row_keys`
        ([rows, 2], one key per output row) is given.
      max_new_tokens: per-row budget; the buffer is bucketed, the budget itself is traced.
      stop_ids: ids that end a row (EOS, `<|im_end|>`, user ids); the stop token is kept.
      num_samples: rows per prompt; they share one prefill (the cache is replicated).
      mesh / data_axes: shard rows over these mesh axes (default: the axes of the
        `activation_batch` rule, `rc_jax.parallel.batch_axes`); params are replicated
        unless `param_shardings` is given. Batch is padded to a multiple of their size.
        The program is traced under `sharding_context(mesh)`, so the model's activation
        constraints apply. On a multi-process mesh every process passes the same
        prompts and gets the full result.
      unroll_layers: decode on the packed per-layer layout (True) or the scanned one
        (False); None: the default for the mesh's platform (`core.default_unroll_layers`).

    Returns:
      A `GenerationResult` with len(prompts) * num_samples rows.
    """
    validate_request(prompts, max_new_tokens, stop_ids, config.vocab_size, buckets)
    data_axes = () if mesh is None else tuple(batch_axes(mesh) if data_axes is None
                                              else data_axes)
    shards = batch_shards(mesh, data_axes)
    # Rows are sharded after the n-fold repeat, so the prompt batch must divide by shards.
    batch = buckets.batch(len(prompts), multiple=shards)
    tokens, mask = left_pad(prompts, buckets.prompt(max(len(p) for p in prompts)), batch, pad_id)
    active = np.arange(batch) < len(prompts)
    mask[~active, -1] = True  # padding rows hold one dummy token so nothing is all-masked
    program = _program(config, buckets.new_tokens(max_new_tokens), sampling.greedy,
                       sampling.truncates, num_samples, pad_id, mesh, tuple(data_axes),
                       None if param_shardings is None else _Hashable(param_shardings),
                       core.resolve_unroll_layers(unroll_layers, mesh))
    total = batch * num_samples
    keys = np.array(jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(total)))
    if row_keys is not None:
        row_keys = np.asarray(row_keys, np.uint32)
        if row_keys.shape != (len(prompts) * num_samples, 2):
            raise ValueError(f"row_keys must have shape ({len(prompts) * num_samples}, 2), "
                             f"got {row_keys.shape}")
        keys[:len(row_keys)] = row_keys
    args = (params, tokens, mask, active, keys, np.int32(max_new_tokens),
            stop_array(stop_ids), sampling.values())
    with sharding_context(mesh):
        if mesh is not None:  # global arrays: each process places its devices' rows
            args = put_global(args, _input_shardings(mesh, data_axes, param_shardings))
        out = to_host(program(*args))
    rows = len(prompts) * num_samples
    lengths = out.lengths[:rows]
    return GenerationResult(
        tokens=[out.tokens[i, :n].tolist() for i, n in enumerate(lengths)],
        finish_reasons=["stop" if s else "length" for s in out.stopped[:rows]],
        logprobs=[out.logprobs[i, :n] for i, n in enumerate(lengths)],
        model_logprobs=[out.model_logprobs[i, :n] for i, n in enumerate(lengths)],
        prompt_index=[i // num_samples for i in range(rows)],
    )


def lower_generate(params: Any, config: ModelConfig, batch: int, prompt_length: int,
                   max_new_tokens: int, sampling: SamplingParams, *, num_samples: int = 1,
                   pad_id: int = 0, buckets: Buckets = Buckets(), mesh: Mesh | None = None,
                   data_axes: tuple[str, ...] | None = None, param_shardings: Any = None,
                   unroll_layers: bool | None = None):
    """The program `generate` would run for `batch` prompts of up to `prompt_length`
    tokens, lowered from abstract inputs (`params` may be `jax.ShapeDtypeStruct`s).

    `.compile().memory_analysis()` of the result is the per-device memory plan
    (`rc_jax.tools.plan`); nothing is allocated.
    """
    data_axes = () if mesh is None else tuple(batch_axes(mesh) if data_axes is None
                                              else data_axes)
    rows = buckets.batch(batch, multiple=batch_shards(mesh, data_axes))
    width = buckets.prompt(prompt_length)
    program = _program(config, buckets.new_tokens(max_new_tokens), sampling.greedy,
                       sampling.truncates, num_samples, pad_id, mesh, data_axes,
                       None if param_shardings is None else _Hashable(param_shardings),
                       core.resolve_unroll_layers(unroll_layers, mesh))
    sds = jax.ShapeDtypeStruct
    values = jax.tree.map(lambda v: sds(v.shape, v.dtype), sampling.values())
    args = (params, sds((rows, width), jnp.int32), sds((rows, width), jnp.bool_),
            sds((rows,), jnp.bool_), sds((rows * num_samples, 2), jnp.uint32),
            sds((), jnp.int32), sds((8,), jnp.int32), values)
    with sharding_context(mesh):
        return program.lower(*args)
