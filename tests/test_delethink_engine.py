"""Delethink on the RC engine's loop (`DelethinkEngine`): its records equal the method's
(`run_delethink` on the batched sampler) token for token, greedy and sampled, for 1 and 3
slots under both schedules, with traces that stop in different chunks."""
import jax
import numpy as np
import pytest

from helpers import randomize, tiny_config
from rc_jax.config import default_config
from rc_jax.methods import get_runner
from rc_jax.methods.base import MethodContext
from rc_jax.methods.delethink import DelethinkEngine, delethink_heads, delethink_records
from rc_jax.models import init_params
from rc_jax.rc.engine import row_key
from rc_jax.sampling import SamplingParams

PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1.", "Is 91 prime?",
            "Name the smallest prime.", "What is 10 / 4?"]
FIELDS = ("reasoning_ids", "prompts", "reasoning_text", "reasoning_clean", "prompt_tokens",
          "reasoning_tokens", "reasoning_finish", "method_fields")


@pytest.fixture(scope="module")
def model():
    config = tiny_config("qwen3", vocab_size=512)
    return config, randomize(init_params(config, jax.random.PRNGKey(0)), 0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_records_equal_the_method_records(model, tiny_tokenizer, temperature):
    config, params = model
    c = default_config("delethink")
    c.delethink.chunk_tokens, c.delethink.keep_first = 10, 3
    c.delethink.keep_last, c.delethink.max_chunks = 4, 3
    sampling = SamplingParams(temperature=temperature)
    # Extra stop ids: the random model then ends traces in different chunks.
    stops = tuple(tiny_tokenizer.eos_ids) + tuple(range(300, 312))
    keys = np.stack([row_key(0, str(i), 0) for i in range(len(PROBLEMS))])
    ctx = MethodContext(c, params, config, tiny_tokenizer, sampling, record_prompts=True,
                        stop_ids=stops)
    want = get_runner("delethink")(PROBLEMS, keys, ctx)
    chunks = [sum(t > 0 for t in r.reasoning_tokens) for r in want]
    assert len(set(chunks)) > 1, chunks  # traces of different lengths
    heads = dict(zip(PROBLEMS, delethink_heads(ctx, PROBLEMS)))
    for slots, scheduling in ((1, "lockstep"), (3, "continuous"), (3, "lockstep")):
        engine = DelethinkEngine(config, tiny_tokenizer, c.delethink, sampling, heads,
                                 slots=slots, scheduling=scheduling, stop_ids=stops)
        got = delethink_records(engine.traces(params, PROBLEMS, keys), c.delethink,
                                ctx.decode, record_prompts=True)
        for i, (a, b) in enumerate(zip(want, got)):
            for field in FIELDS:
                assert getattr(a, field) == getattr(b, field), (slots, scheduling, i, field)


def test_cli_engine_equals_the_batched_runner(tmp_path):
    # `rc.engine=device` (the default) runs Delethink on the engine's loop, `reference` on
    # the method's batched runner: the same results file (wall times aside).
    from test_delethink import _records, _run_main
    runs = {}
    for name, overrides in (("device", ("--config.rc.scheduling=continuous",)),
                            ("reference", ("--config.rc.engine=reference",))):
        res = _run_main(tmp_path, tmp_path / name, *overrides)
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = _records(tmp_path / name / "results.jsonl")
    assert len(runs["device"]) == 6 and runs["device"] == runs["reference"]


def test_engine_on_an_8_device_mesh_equals_one_device(model, tiny_tokenizer):
    from rc_jax.parallel import make_mesh, param_shardings
    config, params = model
    c = default_config("delethink")
    c.delethink.chunk_tokens, c.delethink.keep_first = 10, 3
    c.delethink.keep_last, c.delethink.max_chunks = 4, 3
    sampling = SamplingParams(temperature=1.0)
    stops = tuple(tiny_tokenizer.eos_ids) + tuple(range(300, 312))
    keys = np.stack([row_key(0, str(i), 0) for i in range(len(PROBLEMS))])
    ctx = MethodContext(c, params, config, tiny_tokenizer, sampling)
    heads = dict(zip(PROBLEMS, delethink_heads(ctx, PROBLEMS)))
    want = DelethinkEngine(config, tiny_tokenizer, c.delethink, sampling, heads, slots=8,
                           stop_ids=stops).traces(params, PROBLEMS, keys)
    mesh = make_mesh("data:2,fsdp:4")
    shardings = param_shardings(config, mesh)
    placed = jax.device_put(params, shardings)
    engine = DelethinkEngine(config, tiny_tokenizer, c.delethink, sampling, heads, slots=8,
                             scheduling="continuous", mesh=mesh, param_shardings=shardings,
                             stop_ids=stops)
    got = engine.traces(placed, PROBLEMS, keys)
    assert [t.chunks for t in got] == [t.chunks for t in want]
    assert [t.prompts for t in got] == [t.prompts for t in want]
