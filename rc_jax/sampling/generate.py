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

    @staticmethod
    def round_up(n: int, minimum: int, multiple: int = 1) -> int:
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
             param_shardings_key: Any):
    """One jitted sampler per static signature (array shapes add jit's own cache keys)."""
    fn = functools.partial(core.sample, config=config, buffer_length=buffer_length,
                           greedy=greedy, truncates=truncates, num_samples=num_samples,
                           pad_id=pad_id)

    def run(params, tokens, mask, active, row_keys, max_new, stops, values):
        return fn(params, tokens=tokens, mask=mask, row_keys=row_keys, max_new_tokens=max_new,
                  stop_ids=stops, values=values, active=active)

    if mesh is None:
        return jax.jit(run)
    rows = NamedSharding(mesh, P(data_axes))
    repl = NamedSharding(mesh, P())
    params_sh = param_shardings_key.value if param_shardings_key is not None else repl
    out = core.Decoded(rows, rows, rows, rows, rows)
    return jax.jit(run, in_shardings=(params_sh, rows, rows, rows, rows, repl, repl, repl),
                   out_shardings=out)


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
             data_axes: tuple[str, ...] = ("data",), param_shardings: Any = None,
             row_keys: np.ndarray | None = None) -> GenerationResult:
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
      mesh / data_axes: shard rows over these mesh axes (params replicated unless
        `param_shardings` is given). Batch is padded to a multiple of their size.

    Returns:
      A `GenerationResult` with len(prompts) * num_samples rows.
    """
    validate_request(prompts, max_new_tokens, stop_ids, config.vocab_size, buckets)
    shards = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in data_axes]))
    # Rows are sharded after the n-fold repeat, so the prompt batch must divide by shards.
    batch = buckets.batch(len(prompts), multiple=shards)
    tokens, mask = left_pad(prompts, buckets.prompt(max(len(p) for p in prompts)), batch, pad_id)
    active = np.arange(batch) < len(prompts)
    mask[~active, -1] = True  # padding rows hold one dummy token so nothing is all-masked
    program = _program(config, buckets.new_tokens(max_new_tokens), sampling.greedy,
                       sampling.truncates, num_samples, pad_id, mesh, tuple(data_axes),
                       None if param_shardings is None else _Hashable(param_shardings))
    total = batch * num_samples
    keys = np.array(jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(total)))
    if row_keys is not None:
        row_keys = np.asarray(row_keys, np.uint32)
        if row_keys.shape != (len(prompts) * num_samples, 2):
            raise ValueError(f"row_keys must have shape ({len(prompts) * num_samples}, 2), "
                             f"got {row_keys.shape}")
        keys[:len(row_keys)] = row_keys
    out = program(params, tokens, mask, active, keys, jnp.int32(max_new_tokens),
                  stop_array(stop_ids), sampling.values())
    out = jax.device_get(out)
    rows = len(prompts) * num_samples
    lengths = out.lengths[:rows]
    return GenerationResult(
        tokens=[out.tokens[i, :n].tolist() for i, n in enumerate(lengths)],
        finish_reasons=["stop" if s else "length" for s in out.stopped[:rows]],
        logprobs=[out.logprobs[i, :n] for i, n in enumerate(lengths)],
        model_logprobs=[out.model_logprobs[i, :n] for i, n in enumerate(lengths)],
        prompt_index=[i // num_samples for i in range(rows)],
    )
