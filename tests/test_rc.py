"""RC engine: greedy engine == token stepper, prompts == text reference, one compile for
any T, bounded cache, templates, resume and config errors."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import randomize, tiny_config
from rc_jax.compile_counter import count_compiles
from rc_jax.models import init_cache, init_params
from rc_jax.rc.engine import RCEngine, RCSettings, row_key
from rc_jax.rc.prompts import Template, load_template
from rc_jax.rc.reference import reasoning_prompt, run_text_reference, summary_prompt
from rc_jax.rc.stepper import run_token_stepper
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.rc.tokens import clean_host, token_tables
from rc_jax.sampling import SamplingParams

PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1.", "Is 91 prime?"]
SETTINGS = RCSettings(num_steps=2, max_reasoning_tokens=20, max_summary_tokens=10)


@pytest.fixture(scope="module")
def model():
    config = tiny_config("qwen3", vocab_size=512)
    return config, randomize(init_params(config, jax.random.PRNGKey(0)), 0)


def _keys(n):
    return np.stack([row_key(0, str(i), 0) for i in range(n)])


@pytest.fixture(scope="module")
def greedy_engine(model, tiny_tokenizer):
    config, params = model
    return RCEngine(params, config, tiny_tokenizer, SETTINGS, SamplingParams(temperature=0.0),
                    record_prompts=True)


@pytest.fixture(scope="module")
def greedy_run(greedy_engine):
    return greedy_engine.run(PROBLEMS, _keys(len(PROBLEMS)))


def test_greedy_engine_equals_token_stepper(greedy_engine, greedy_run):
    ref = run_token_stepper(greedy_engine, PROBLEMS, SETTINGS.num_steps)
    for got, want in zip(greedy_run, ref):
        assert got.reasoning_prompts == want.reasoning_prompts
        assert got.reasoning_ids == want.reasoning_ids
        assert got.reasoning_tokens == want.reasoning_tokens
        assert got.summary_prompts == want.summary_prompts
        assert got.summary_ids == want.summary_ids
        assert got.summary_tokens == want.summary_tokens
    assert any(len(x) > 3 for r in greedy_run for x in r.summary_ids)  # non-trivial summaries


def test_assembled_prompts_decode_to_text_reference_prompts(greedy_run, tiny_tokenizer):
    tok = tiny_tokenizer
    for problem, r in zip(PROBLEMS, greedy_run):
        summary = ""
        for t in range(SETTINGS.num_steps):
            got = tok.decode(r.reasoning_prompts[t], skip_special_tokens=False)
            assert got == reasoning_prompt(tok, SETTINGS, problem, summary)
            got = tok.decode(r.summary_prompts[t], skip_special_tokens=False)
            assert got == summary_prompt(tok, SETTINGS, problem, summary, r.reasoning_text[t])
            summary = r.summary_text[t]
        assert r.prompt_tokens[0] == len(r.reasoning_prompts[0])


def test_first_step_sees_empty_summary_and_later_steps_the_previous_one(greedy_run, tiny_tokenizer):
    r = greedy_run[0]
    first = tiny_tokenizer.decode(r.reasoning_prompts[0], skip_special_tokens=False)
    assert "## Summary of an earlier attempt\n\n\n## What to do" in first
    second = tiny_tokenizer.decode(r.reasoning_prompts[1], skip_special_tokens=False)
    assert f"## Summary of an earlier attempt\n{r.summary_text[0]}\n\n## What to do" in second


def test_compiles_once_whatever_the_number_of_steps(model, tiny_tokenizer):
    config, params = model
    engine = RCEngine(params, config, tiny_tokenizer, SETTINGS, SamplingParams(temperature=1.0))
    with count_compiles() as first:
        out1 = engine.run(PROBLEMS, _keys(3), num_steps=1)
    with count_compiles() as later:
        out3 = engine.run(PROBLEMS, _keys(3), num_steps=3)
        out5 = engine.run(PROBLEMS, _keys(3), num_steps=5)
    assert first.count >= 1 and later.count == 0
    assert [len(r.reasoning_text) for r in out3 + out5] == [3] * 3 + [5] * 3
    # Same keys: the first step is identical whatever T is.
    assert [r.reasoning_ids[0] for r in out1] == [r.reasoning_ids[0] for r in out5]


def test_cache_size_is_independent_of_steps(model, tiny_tokenizer):
    config, params = model
    engine = RCEngine(params, config, tiny_tokenizer, SETTINGS, SamplingParams(temperature=1.0))
    problem_bucket = 16
    reason_cache, summary_cache = engine.cache_lengths(problem_bucket)
    # reasoning: template + problem + summary + H_R; summarizing: + reasoning + H_S.
    assert reason_cache <= engine.buckets.prompt(
        engine.reasoning_plan.constant_length + problem_bucket + 16) + 32
    lowered = engine._program.lower(params, params, np.zeros((4, problem_bucket), np.int32),
                                    np.ones(4, np.int32), np.zeros((4, 2), np.uint32),
                                    np.ones(4, bool), 7, np.array([20, 10], np.int32),
                                    np.full(8, -1, np.int32), engine.sampling.values(),
                                    np.zeros((4, engine.summary_buffer), np.int32),
                                    np.zeros(4, np.int32))
    text = lowered.as_text()

    def kv_shapes(slots):
        cache = jax.eval_shape(lambda: init_cache(config, 4, slots))
        return {"x".join(map(str, a.shape)) for a in (cache.k, cache.v)}

    for n in (reason_cache, summary_cache):
        assert all(shape in text for shape in kv_shapes(n)), n
    # No KV buffer longer than the larger phase bucket appears in the program.
    longest = max(reason_cache, summary_cache)
    for n in range(longest + 1, longest * 4):
        assert not any(shape in text for shape in kv_shapes(n)), n


def test_sampled_rows_do_not_depend_on_batch_composition(model, tiny_tokenizer):
    config, params = model
    engine = RCEngine(params, config, tiny_tokenizer, SETTINGS, SamplingParams(temperature=1.0))
    full = engine.run(PROBLEMS, _keys(3))
    alone = engine.run(PROBLEMS[1:2], _keys(3)[1:2])
    assert alone[0].reasoning_ids == full[1].reasoning_ids
    assert alone[0].summary_ids == full[1].summary_ids


def test_text_reference_runs_and_post_processes(model, tiny_tokenizer):
    config, params = model
    out = run_text_reference(params, config, tiny_tokenizer, SETTINGS,
                             SamplingParams(temperature=1.0), PROBLEMS[:2], _keys(2))
    assert len(out) == 2 and all(len(o.summary_text) == 2 for o in out)
    assert all(o.reasoning_tokens[0] <= 20 and o.summary_tokens[0] <= 10 for o in out)
    assert out[0].reasoning_prompts[0] == reasoning_prompt(tiny_tokenizer, SETTINGS,
                                                           PROBLEMS[0], "")


@pytest.mark.parametrize("text,reasoning,summary", [
    ("  <think>plan</think> answer \\boxed{3} ", "plan", "answer \\boxed{3}"),
    ("no tags here\n", "no tags here", "no tags here"),
    ("a</think>b</think>c", "a", "c"),
    ("<think>open only", "open only", "open only"),
])
def test_text_post_processing(text, reasoning, summary):
    assert clean_reasoning(text) == reasoning
    assert clean_summary(text) == summary


@pytest.mark.parametrize("text", ["  <think>plan</think> answer \\boxed{3} <|im_end|>",
                                  "\n\nresult 12\n\n<|im_end|>", "x</think>y</think> z \n"])
def test_token_post_processing_matches_text_rules(tiny_tokenizer, text):
    tok = tiny_tokenizer
    tables = token_tables(tok, 512)
    ids = tok.encode(text)
    for keep, rule in (("before_think_end", clean_reasoning), ("after_think_end", clean_summary)):
        cleaned = tok.decode(clean_host(ids, tables, keep, tok.pad_id))
        # Documented normalisation: whitespace inside a text token may survive the strip.
        assert cleaned.strip() == rule(tok.decode(ids))


def test_templates_reject_missing_and_unknown_placeholders(tmp_path):
    with pytest.raises(ValueError, match=r"missing required placeholder \{curr_summary\}"):
        Template("{problem} only", ("problem", "curr_summary"))
    with pytest.raises(ValueError, match=r"unknown placeholder \{answer\}"):
        Template("{problem} {curr_summary} {answer}", ("problem", "curr_summary"))
    with pytest.raises(ValueError, match="literal braces"):
        Template("{problem} {curr_summary} \\boxed{", ("problem", "curr_summary"))
    ok = Template("{problem}|{curr_summary}|\\boxed{{}}", ("problem", "curr_summary"))
    assert ok.format(problem="p", curr_summary="s") == "p|s|\\boxed{}"
    file = tmp_path / "r.txt"
    file.write_text("Solve {problem}. Summary: {curr_summary}.")
    assert load_template(str(file), "reasoning").format(problem="x", curr_summary="") == \
        "Solve x. Summary: ."
    with pytest.raises(ValueError, match=r"unknown placeholder \{curr_summary\}"):
        load_template(str(file), "summary")
    with pytest.raises(FileNotFoundError, match="neither a builtin"):
        load_template(str(tmp_path / "nope.txt"), "reasoning")
    for name in ("math", "science"):
        load_template(name, "reasoning"), load_template(name, "summary")


def _run_main(tmp_path, *overrides, timeout=600):
    cmd = [sys.executable, "-m", "rc_jax.main", "--config=experiments/demo.py",
           f"--config.output_dir={tmp_path}", "--config.data.limit=3", "--config.num_samples=2",
           "--config.batch_size=2", "--config.rc.num_steps=2", "--config.evaluate=False",
           "--config.model.path=builtin:tiny-random", "--config.show_rollouts=0",
           "--config.rc.max_reasoning_tokens=24", "--config.rc.max_summary_tokens=12",
           *overrides]
    env = dict(__import__("os").environ, RC_JAX_CACHE=str(tmp_path.parent / "cache"))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=__import__("pathlib").Path(__file__).parents[1])


def test_resume_after_crash_gives_the_same_file(tmp_path):
    full = tmp_path / "full"
    assert _run_main(full).returncode == 0
    lines = (full / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    (crashed / "config.json").write_text((full / "config.json").read_text())
    res = _run_main(crashed)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = (crashed / "results.jsonl").read_text().splitlines()
    strip = lambda l: {k: v for k, v in json.loads(l).items() if k != "wall_time_s"}
    assert sorted(map(json.dumps, map(strip, resumed))) == sorted(map(json.dumps, map(strip, lines)))
    assert "4 to run" not in res.stdout and "3 rollouts to run" in res.stdout


@pytest.mark.parametrize("override,match", [
    ("--config.rc.num_steps=0", "config.rc.num_steps"),
    ("--config.sampling.top_p=1.5", "config.sampling.top_p"),
    ("--config.rc.engine=gpu", "config.rc.engine"),
    ("--config.method=beam", "config.method"),
    ("--config.model.path=/does/not/exist", "config.model.path"),
    ("--config.rc.reasoning_template=/no/such/template.txt", "config.rc.reasoning_template"),
    ("--config.no_such_field=1", "no_such_field"),
])
def test_bad_config_fails_before_loading_a_model(tmp_path, override, match):
    res = _run_main(tmp_path / "bad", override, timeout=120)
    assert res.returncode != 0
    assert match in res.stderr
    assert not (tmp_path / "bad" / "results.jsonl").exists()
