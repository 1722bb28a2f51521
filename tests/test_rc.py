"""RC engine: prompt ids == the text prompt's tokenization, engine == reference loop token
for token, continuous == lockstep, compile counts, slot reuse, raw stores, think tags,
templates, resume and config errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import qwen3_tokenizer_dir, randomize, tiny_config
from rc_jax.compile_counter import count_compiles
from rc_jax.models import init_params, qwen3
from rc_jax.progress import StepLog
from rc_jax.rc.engine import Job, RCEngine, RCSettings
from rc_jax.sampling.keys import row_key
from rc_jax.prompts import Template, load_template
from rc_jax.rc.reference import run_text_reference
from rc_jax.rc.rollout import PhasePrompts, Rollout
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.records import RolloutRecord
from rc_jax.sampling import SamplingParams
from rc_jax.tools.tiny_tokenizer import build_tiny_tokenizer
from rc_jax.tokenizer import load_tokenizer

ROOT = Path(__file__).parents[1]
# Punctuation before the template's blank line, escaped braces, a think tag in the text.
PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1.", "Is 91 prime? Put it in \\boxed{}.",
            "Find x if {x} = 4.", "Say <think> twice!"]
SETTINGS = RCSettings(num_steps=2, max_reasoning_tokens=20, max_summary_tokens=10)
GREEDY, SAMPLED = SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def model():
    config = tiny_config("qwen3", vocab_size=512)
    return config, randomize(init_params(config, jax.random.PRNGKey(0)), 0)


def _keys(n, seed=0):
    return np.stack([row_key(seed, str(i), 0) for i in range(n)])


def _jobs(problems, steps=SETTINGS.num_steps, seed=0):
    return [Job(p, k, steps) for p, k in zip(problems, _keys(len(problems), seed))]


def _stops(tok):
    """Frequent ids as extra stop tokens, so phases end at different lengths."""
    return list(tok.eos_ids) + list(range(3, tok.vocab_size, 6))


def _same(a: Rollout, b: RolloutRecord):
    """The engine's rollout `a` holds the record the reference loop returned (`b`)."""
    assert a.record.prompts == b.prompts
    assert a.record.summary_prompts == b.summary_prompts
    assert a.record == b


@pytest.fixture(scope="module")
def greedy_pair(model, tiny_tokenizer):
    config, params = model
    engine = RCEngine(config, tiny_tokenizer, SETTINGS, GREEDY, slots=2,
                      stop_ids=_stops(tiny_tokenizer))
    got, stats = engine.run(params, _jobs(PROBLEMS), record_prompts=True)
    ref = run_text_reference(params, config, tiny_tokenizer, SETTINGS, GREEDY, PROBLEMS,
                             _keys(len(PROBLEMS)), record_prompts=True,
                             stop_ids=_stops(tiny_tokenizer))
    return got, ref, stats


def test_engine_equals_reference_loop_token_for_token(greedy_pair):
    got, ref, stats = greedy_pair
    for a, b in zip(got, ref):
        _same(a, b)
    lengths = {n for r in got for n in r.record.reasoning_tokens}
    assert len(lengths) > 2, "stop ids should make phases end at different lengths"
    assert stats.services > 2 and 0 < stats.utilization <= 1


def test_prompt_ids_are_the_whole_prompt_string_encoded(greedy_pair, tiny_tokenizer):
    got, _, _ = greedy_pair
    prompts = PhasePrompts(tiny_tokenizer, "math", "math", False)
    for problem, r in zip(PROBLEMS, (x.record for x in got)):
        summary = ""
        for t in range(r.num_steps):
            text = prompts.reasoning_text(problem, summary, conditioned=t > 0)
            assert r.prompts[t] == [tiny_tokenizer.encode(text)]
            assert r.prompt_tokens[t] == len(r.prompts[t][0])
            text = prompts.summary_text(problem, summary, r.reasoning_clean[t])
            assert r.summary_prompts[t] == [tiny_tokenizer.encode(text)]
            summary = r.summary_clean[t]
        assert f"## Problem\n{problem}\n\n" in tiny_tokenizer.decode(
            r.prompts[0][0], skip_special_tokens=False)


def test_first_step_sees_empty_summary_and_later_steps_the_previous_one(greedy_pair,
                                                                        tiny_tokenizer):
    r = greedy_pair[0][0].record
    first = tiny_tokenizer.decode(r.prompts[0][0], skip_special_tokens=False)
    assert "## Summary of an earlier attempt\n\n\n## What to do" in first
    second = tiny_tokenizer.decode(r.prompts[1][0], skip_special_tokens=False)
    assert f"## Summary of an earlier attempt\n{r.summary_clean[0]}\n\n## What" in second


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_continuous_equals_lockstep_for_any_slot_count(model, tiny_tokenizer, sampling):
    config, params = model
    stops = _stops(tiny_tokenizer)
    runs = {}
    for slots in (1, 3, 8):
        for scheduling in ("continuous", "lockstep"):
            engine = RCEngine(config, tiny_tokenizer, SETTINGS, sampling, slots=slots,
                              scheduling=scheduling, stop_ids=stops)
            runs[slots, scheduling] = engine.run(params, _jobs(PROBLEMS))
    base = runs[3, "continuous"][0]
    for (slots, scheduling), (rollouts, stats) in runs.items():
        for a, b in zip(rollouts, base):
            assert a.record == b.record, (slots, scheduling)
    # Continuous batching keeps slots busier than lockstep on uneven phase lengths.
    assert runs[3, "continuous"][1].utilization > runs[3, "lockstep"][1].utilization


def test_scanned_layers_path_keeps_the_engine_exact(model, tiny_tokenizer, monkeypatch):
    """The layout accelerators decode on (scanned layers, stacked cache, per-row write
    index, `cached_attention`), executed on CPU: continuous equals lockstep for any slot
    count, as on the packed layout, and no weight is packed."""
    config, params = model

    def no_packing(*args):
        raise AssertionError("the scanned path must not pack weights")
    monkeypatch.setattr(qwen3, "pack_for_decode", no_packing)
    stops = _stops(tiny_tokenizer)
    runs = [RCEngine(config, tiny_tokenizer, SETTINGS, SAMPLED, slots=slots,
                     scheduling=scheduling, stop_ids=stops, unroll_layers=False)
            .run(params, _jobs(PROBLEMS))[0]
            for slots, scheduling in ((3, "continuous"), (1, "lockstep"), (8, "lockstep"))]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.record == b.record
    assert {n for r in runs[0] for n in r.record.reasoning_tokens} != {SETTINGS.max_reasoning_tokens}


def test_segmented_decode_cache_keeps_rows_independent(model, tiny_tokenizer, monkeypatch):
    """The CPU decode form skips cache segments no row has reached (caches here are small,
    so segments start at 16 slots): which segments run depends on the other rows, yet
    every schedule and slot count gives the same rollouts."""
    from rc_jax.models import attention
    jax.clear_caches()  # programs compiled by earlier tests hold the one-segment form
    monkeypatch.setattr(attention, "DECODE_FIRST_SEGMENT", 16)
    seen = []
    decode_attention = attention.decode_attention

    def spy(q, keys, *args):
        seen.append(len(keys))
        return decode_attention(q, keys, *args)
    monkeypatch.setattr("rc_jax.models.qwen3.decode_attention", spy)
    config, params = model
    runs = []
    for slots, scheduling in ((1, "continuous"), (3, "continuous"), (3, "lockstep")):
        engine = RCEngine(config, tiny_tokenizer, SETTINGS, SAMPLED, slots=slots,
                          scheduling=scheduling, stop_ids=_stops(tiny_tokenizer))
        runs.append(engine.run(params, _jobs(PROBLEMS[:4]))[0])
    jax.clear_caches()  # later tests must not reuse these segmented programs
    assert seen and min(seen) >= 5  # the decode form really was segmented
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.record == b.record


def test_reused_slot_never_sees_its_previous_occupant(model, tiny_tokenizer):
    config, params = model
    engine = RCEngine(config, tiny_tokenizer, SETTINGS, SAMPLED, slots=1,
                      stop_ids=_stops(tiny_tokenizer))
    jobs = _jobs(PROBLEMS[:3])
    together, _ = engine.run(params, jobs)  # one slot: each rollout reuses the last one's
    for job, shared in zip(jobs, together):
        alone, _ = engine.run(params, [job])
        assert alone[0].record == shared.record


def test_compiles_once_whatever_steps_problems_or_finish_order(model, tiny_tokenizer):
    config, params = model
    engine = RCEngine(config, tiny_tokenizer, SETTINGS, SAMPLED, slots=2,
                      stop_ids=_stops(tiny_tokenizer))
    with count_compiles() as first:
        one, _ = engine.run(params, _jobs(PROBLEMS[:2], steps=1))
    with count_compiles() as later:
        three, _ = engine.run(params, _jobs(PROBLEMS[:2], steps=3))
        engine.run(params, _jobs(PROBLEMS[2:], steps=2, seed=7))  # other rows finish first
    assert first.count >= 1 and later.count == 0
    assert [r.steps_done for r in three] == [3, 3]
    # T never matters
    assert [r.record.step_json(0) for r in one] == [r.record.step_json(0) for r in three]


def test_resume_from_finished_steps_equals_an_uninterrupted_run(model, tiny_tokenizer):
    config, params = model
    engine = RCEngine(config, tiny_tokenizer, SETTINGS, SAMPLED, slots=2,
                      stop_ids=_stops(tiny_tokenizer))
    full, _ = engine.run(params, _jobs(PROBLEMS[:3], steps=3))
    jobs = [Job(j.problem, j.key, 3, done_steps=[r.record.step_json(t) for t in range(k)])
            for j, r, k in zip(_jobs(PROBLEMS[:3], steps=3), full, (1, 2, 3))]
    seen = []
    resumed, _ = engine.run(params, jobs, on_step=lambda i, t, rec: seen.append((i, t)))
    assert [r.record for r in resumed] == [r.record for r in full]
    assert sorted(seen) == [(0, 1), (0, 2), (1, 2)]  # only the missing steps ran


def test_two_model_rc_with_its_own_tokenizer_and_sampling(model, tiny_tokenizer, tmp_path):
    config, params = model
    s_tok = load_tokenizer(build_tiny_tokenizer(tmp_path / "other", vocab_size=400))
    s_config = tiny_config("qwen3", vocab_size=400)
    s_params = randomize(init_params(s_config, jax.random.PRNGKey(1)), 1)
    kw = dict(summarizer=(s_params, s_config), summarizer_tokenizer=s_tok,
              summarizer_sampling=SAMPLED)
    engine = RCEngine(config, tiny_tokenizer, SETTINGS, GREEDY, slots=2,
                      summarizer_config=s_config, summarizer_tokenizer=s_tok,
                      summarizer_sampling=SAMPLED)
    got, _ = engine.run(params, _jobs(PROBLEMS[:3]), summarizer_params=s_params,
                        record_prompts=True)
    ref = run_text_reference(params, config, tiny_tokenizer, SETTINGS, GREEDY, PROBLEMS[:3],
                             _keys(3), record_prompts=True, **kw)
    for a, b in zip(got, ref):
        _same(a, b)
    prompts = PhasePrompts(tiny_tokenizer, "math", "math", False, summary_tokenizer=s_tok)
    record = got[0].record
    text = prompts.summary_text(PROBLEMS[0], "", record.reasoning_clean[0])
    assert record.summary_prompts[0] == [s_tok.encode(text)]
    assert s_tok.encode(text) != tiny_tokenizer.encode(text)


def test_stores_are_raw_and_cleaned_texts_feed_the_next_prompt():
    r = Rollout("p", np.zeros(2, np.uint32), 2)
    r.finish_reasoning("<think>plan</think> so \\boxed{5} \n", 10, 7, "stop")
    r.finish_summary("<think>x</think> I found 5. ", 12, 6, "length")
    rec = r.record
    assert rec.reasoning_text == ["<think>plan</think> so \\boxed{5} \n"]  # graded from this
    assert (rec.reasoning_clean, rec.summary_clean) == (["plan"], ["I found 5."])
    assert rec.summary_text == ["<think>x</think> I found 5. "]
    assert (rec.prompt_tokens, rec.reasoning_tokens, rec.reasoning_finish) == ([10], [7], ["stop"])
    assert (rec.summary_prompt_tokens, rec.summary_tokens, rec.summary_finish) == (
        [12], [6], ["length"])
    assert r.summary == "I found 5." and r.conditioned
    step = rec.step_json(0)
    assert step["reasoning_raw"] == rec.reasoning_text[0]
    assert step["summary_raw"] == rec.summary_text[0]
    assert RolloutRecord.from_steps([json.loads(json.dumps(step))]) == rec


def test_think_tags_follow_the_paper_rule():
    tok = load_tokenizer(_qwen3_dir())
    off = PhasePrompts(tok, "math", "math", use_think_tags=False)
    on = PhasePrompts(tok, "math", "math", use_think_tags=True)
    # Thinking disabled: the Qwen3 template renders its closed, empty think block.
    for text in (off.reasoning_text("p", "", False), off.reasoning_text("p", "s", True),
                 off.summary_text("p", "s", "r")):
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # Thinking on: the first step leaves <think> to the model; a summary-conditioned step
    # opens it; the summarizer is never forced into a think block.
    assert on.reasoning_text("p", "", False).endswith("<|im_start|>assistant\n")
    assert on.reasoning_text("p", "s", True).endswith("<|im_start|>assistant\n<think>")
    assert on.summary_text("p", "s", "r").endswith("<|im_start|>assistant\n")


def _qwen3_dir():
    path = qwen3_tokenizer_dir()
    if path is None:
        pytest.skip("Qwen3 tokenizer not prepared (python -m rc_jax.tools.prepare_demo_model "
                    "--with_qwen3_tokenizer)")
    return path


@pytest.mark.parametrize("think", [False, True], ids=["think_off", "think_on"])
def test_real_qwen3_tokenizer_engine_equals_reference(think):
    """Real BPE: '?' + '\\n\\n' merge into one token; the engine must produce it too."""
    tok = load_tokenizer(_qwen3_dir())
    config = tiny_config("qwen3", vocab_size=tok.vocab_size)
    params = randomize(init_params(config, jax.random.PRNGKey(2)), 2)
    settings = RCSettings(num_steps=2, max_reasoning_tokens=12, max_summary_tokens=8,
                          use_think_tags=think)
    problems = PROBLEMS[:2] + PROBLEMS[3:4]
    engine = RCEngine(config, tok, settings, GREEDY, slots=2)
    got, _ = engine.run(params, _jobs(problems), record_prompts=True)
    ref = run_text_reference(params, config, tok, settings, GREEDY, problems,
                             _keys(len(problems)), record_prompts=True)
    for a, b in zip(got, ref):
        _same(a, b)
    merged = tok.hf.convert_tokens_to_ids("?ĊĊ")  # '?\n\n' as one token
    assert merged in got[0].record.prompts[0][0]


@pytest.fixture(scope="module")
def smollm2():
    from rc_jax.tools.prepare_demo_model import DemoModelUnavailableError, ensure_demo_model
    try:
        return ensure_demo_model()
    except DemoModelUnavailableError as exc:
        pytest.skip(f"SmolLM2 unavailable: {exc}")


def test_smollm2_greedy_rollouts_equal_between_engines(smollm2):
    from rc_jax.models import load_hf_checkpoint
    config, params = load_hf_checkpoint(smollm2)
    tok = load_tokenizer(smollm2)
    settings = RCSettings(num_steps=2, max_reasoning_tokens=16, max_summary_tokens=8)
    problems = ["What is 2 + 3?", "How many primes are below 10? Answer in \\boxed{}."]
    engine = RCEngine(config, tok, settings, GREEDY, slots=2)
    got, _ = engine.run(params, _jobs(problems), record_prompts=True)
    ref = run_text_reference(params, config, tok, settings, GREEDY, problems, _keys(2),
                             record_prompts=True)
    for a, b in zip(got, ref):
        _same(a, b)


def test_step_log_drops_a_torn_line_and_ignores_other_configs(tmp_path):
    rec = RolloutRecord()
    rec.add_step("r", "r", (), 5, 3, "stop", summary="s", summary_clean="s",
                 summary_prompt_tokens=7, summary_tokens=2, summary_finish="length")
    step = rec.step_json(0)
    log = StepLog(tmp_path, "h1")
    log.append("p1", 0, 0, step)
    log.append("p1", 0, 1, step)
    StepLog(tmp_path, "other").append("p2", 0, 0, step)
    with open(log.path, "a") as f:
        f.write('{"problem_id": "p1", "sample_id": 0, "st')  # killed mid-write
    log = StepLog(tmp_path, "h1")
    assert log.load() == {("p1", 0): [step, step]}
    assert log.path.read_text().endswith("\n")


@pytest.mark.parametrize("text,reasoning,summary", [
    ("  <think>plan</think> answer \\boxed{3} ", "plan", "answer \\boxed{3}"),
    ("no tags here\n", "no tags here", "no tags here"),
    ("a</think>b</think>c", "a", "b"),  # the paper's code keeps what follows the first one
    ("<think>open only", "open only", "open only"),
])
def test_text_post_processing(text, reasoning, summary):
    assert clean_reasoning(text) == reasoning
    assert clean_summary(text) == summary


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


def _main_cmd(out, *overrides):
    return [sys.executable, "-m", "rc_jax.main", "--config=experiments/demo.py",
            f"--config.output_dir={out}", "--config.data.limit=3", "--config.num_samples=2",
            "--config.batch_size=2", "--config.rc.num_steps=3", "--config.evaluate=False",
            "--config.model.path=builtin:tiny-random", "--config.show_rollouts=0",
            "--config.rc.max_reasoning_tokens=24", "--config.rc.max_summary_tokens=12",
            *overrides]


def _env(tmp_path):
    return dict(os.environ, RC_JAX_CACHE=str(tmp_path.parent / "cache"))


def _run_main(tmp_path, out, *overrides, timeout=600):
    return subprocess.run(_main_cmd(out, *overrides), capture_output=True, text=True,
                          timeout=timeout, env=_env(tmp_path), cwd=ROOT)


def _records(path):
    strip = lambda l: {k: v for k, v in json.loads(l).items() if k != "wall_time_s"}  # noqa: E731
    return sorted(map(json.dumps, map(strip, path.read_text().splitlines())))


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    res = _run_main(tmp_path, full, "--config.rc.scheduling=lockstep")
    assert res.returncode == 0, res.stderr[-2000:]
    assert len((full / "results.jsonl").read_text().splitlines()) == 6
    killed = tmp_path / "killed"  # continuous schedule (the default) here, lockstep above
    proc = subprocess.Popen(_main_cmd(killed),
                            env=_env(tmp_path), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = killed / "progress.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # kill after a few finished steps
        if progress.exists() and len(progress.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_before = len(progress.read_text().splitlines())
    done_before = (len((killed / "results.jsonl").read_text().splitlines())
                   if (killed / "results.jsonl").exists() else 0)
    assert steps_before >= 4 and done_before < 6, "the kill came too late to test resume"
    res = _run_main(tmp_path, killed, "--config.rc.scheduling=continuous")
    assert res.returncode == 0, res.stderr[-2000:]
    assert _records(killed / "results.jsonl") == _records(full / "results.jsonl")
    # The resumed run re-ran no finished step: each (rollout, step) was logged once.
    lines = [json.loads(l) for l in progress.read_text().splitlines()]
    keys = [(d["problem_id"], d["sample_id"], d["step"]) for d in lines]
    assert len(keys) == len(set(keys)) == 6 * 3


def test_resume_after_a_torn_results_line_gives_the_same_file(tmp_path):
    full = tmp_path / "full"
    assert _run_main(tmp_path, full, "--config.rc.num_steps=2").returncode == 0
    lines = (full / "results.jsonl").read_text().splitlines()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    (crashed / "config.json").write_text((full / "config.json").read_text())
    res = _run_main(tmp_path, crashed, "--config.rc.num_steps=2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert _records(crashed / "results.jsonl") == _records(full / "results.jsonl")
    assert "3 rollouts to run" in res.stdout


@pytest.mark.parametrize("override,match", [
    ("--config.rc.num_steps=0", "config.rc.num_steps"),
    ("--config.sampling.top_p=1.5", "config.sampling.top_p"),
    ("--config.rc.engine=gpu", "config.rc.engine"),
    ("--config.rc.scheduling=eager", "config.rc.scheduling"),
    ("--config.method=beam", "config.method"),
    ("--config.model.path=/does/not/exist", "config.model.path"),
    ("--config.rc.reasoning_template=/no/such/template.txt", "config.rc.reasoning_template"),
    ("--config.no_such_field=1", "no_such_field"),
])
def test_bad_config_fails_before_loading_a_model(tmp_path, override, match):
    res = _run_main(tmp_path, tmp_path / "bad", override, timeout=120)
    assert res.returncode != 0
    assert match in res.stderr
    assert not (tmp_path / "bad" / "results.jsonl").exists()


def test_ctrl_c_stops_the_device_engine_at_once_and_keeps_finished_steps(tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_main_cmd(out, "--config.rc.num_steps=200"), env=_env(tmp_path),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = out / "progress.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # not after the remaining ~1000 steps
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "re-run the same command to resume" in err
    assert len(progress.read_text().splitlines()) >= 2


def test_a_rollout_logged_whole_but_not_written_is_written_on_resume(tmp_path):
    # Killed after a rollout's last step reached progress.jsonl but before its results
    # line: the re-run has nothing left to generate for it, and still writes it.
    def run(out):
        cmd = [sys.executable, "-m", "rc_jax.main", "--config=experiments/demo.py",
               "--config.model.path=builtin:tiny-random", f"--config.output_dir={out}",
               "--config.data.limit=3", "--config.num_samples=2", "--config.batch_size=2",
               "--config.evaluate=False", "--config.rc.num_steps=2",
               "--config.rc.max_reasoning_tokens=8", "--config.rc.max_summary_tokens=4",
               "--config.rc.prompt_margin=3"]
        env = dict(os.environ, RC_JAX_CACHE=str(tmp_path / "cache"))
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                             cwd=ROOT)
        assert res.returncode == 0, res.stderr[-2000:]

    def records(d):  # without wall-clock times
        return sorted(json.dumps({k: v for k, v in json.loads(l).items() if k != "wall_time_s"},
                                 sort_keys=True)
                      for l in (d / "results.jsonl").read_text().splitlines())
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    run(full)
    results = (full / "results.jsonl").read_text().splitlines()
    crashed.mkdir()
    for name in ("progress.jsonl", "config.json"):
        (crashed / name).write_text((full / name).read_text())
    (crashed / "results.jsonl").write_text("\n".join(results[:2]) + "\n")
    run(crashed)
    assert len(results) == 6 and records(crashed) == records(full)
