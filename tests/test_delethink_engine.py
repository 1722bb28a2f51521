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
from rc_jax.sampling.keys import row_key
from rc_jax.sampling import SamplingParams

PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1.", "Is 91 prime?",
            "Name the smallest prime.", "What is 10 / 4?"]
FIELDS = ("reasoning_ids", "prompts", "reasoning_text", "reasoning_clean", "prompt_tokens",
          "reasoning_tokens", "reasoning_finish", "answer_from", "method_fields")


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


def test_engine_resumes_from_finished_chunks(model, tiny_tokenizer):
    config, params = model
    c = default_config("delethink")
    c.delethink.chunk_tokens, c.delethink.keep_first = 10, 3
    c.delethink.keep_last, c.delethink.max_chunks = 4, 3
    sampling = SamplingParams(temperature=1.0)
    stops = tuple(tiny_tokenizer.eos_ids) + tuple(range(300, 312))
    keys = np.stack([row_key(0, str(i), 0) for i in range(len(PROBLEMS))])
    ctx = MethodContext(c, params, config, tiny_tokenizer, sampling)
    heads = dict(zip(PROBLEMS, delethink_heads(ctx, PROBLEMS)))
    engine = DelethinkEngine(config, tiny_tokenizer, c.delethink, sampling, heads, slots=3,
                             scheduling="continuous", stop_ids=stops)
    logged = []
    want = engine.traces(params, PROBLEMS, keys,
                         on_step=lambda i, k, rec: logged.append((i, k, rec)))
    assert sorted((i, k) for i, k, _ in logged) == sorted(
        (i, k) for i, t in enumerate(want) for k in range(len(t.chunks)))
    # Each trace restarts after its first chunk (a whole trace when it had one chunk).
    done = [[rec for i2, k, rec in logged if i2 == i and k == 0] for i in range(len(PROBLEMS))]
    # What the progress log keeps of a chunk: its ids and finish reason.
    assert all(set(d[0]) == {"ids", "finish"} for d in done)
    got = engine.traces(params, PROBLEMS, keys, done=done)
    assert [t.chunks for t in got] == [t.chunks for t in want]
    assert [t.prompts for t in got] == [t.prompts for t in want]
    assert [t.finish for t in got] == [t.finish for t in want]


def test_cli_resume_from_the_progress_log_equals_an_uninterrupted_run(tmp_path):
    import json
    from test_delethink import _records, _run_main
    full = tmp_path / "full"
    res = _run_main(tmp_path, full)
    assert res.returncode == 0, res.stderr[-2000:]
    progress = (full / "progress.jsonl").read_text().splitlines()
    results = (full / "results.jsonl").read_text().splitlines()
    chunks = sum(sum(n > 0 for n in json.loads(l)["token_counts"]["reasoning"])
                 for l in results)
    assert len(results) == 6 and len(progress) == chunks > 6  # one line per chunk
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    # Killed mid-run: two rollouts written, the others' first chunks logged, a torn line.
    first = [l for l in progress if json.loads(l)["step"] == 0]
    (crashed / "progress.jsonl").write_text("\n".join(first) + "\n" + progress[-1][:40])
    (crashed / "results.jsonl").write_text("\n".join(results[:2]) + "\n")
    (crashed / "config.json").write_text((full / "config.json").read_text())
    res = _run_main(tmp_path, crashed)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "4 rollouts to run" in res.stdout
    assert _records(crashed / "results.jsonl") == _records(full / "results.jsonl")
    # The four traces went on from their logged first chunk (none sampled it again).
    steps = [json.loads(l)["step"] for l in
             (crashed / "progress.jsonl").read_text().splitlines()]
    assert steps.count(0) == 6 and len(steps) == 6 + sum(
        sum(n > 0 for n in json.loads(l)["token_counts"]["reasoning"][1:])
        for l in results[2:])
