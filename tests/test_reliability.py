"""Issue 18: no silent wrong results, no tracebacks for user mistakes, no data loss on
restart. User-facing behaviour is tested through the command line (exit status, one
error line naming the culprit, earlier output unchanged); the pieces behind it in process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "demo.py")
# A seconds-long RC run: the tiny random model, one short step, tiny budgets.
TINY = ["--config.model.path=builtin:tiny-random", "--config.num_samples=1",
        "--config.rc.num_steps=1", "--config.rc.max_reasoning_tokens=8",
        "--config.rc.max_summary_tokens=4", "--config.show_rollouts=0", "--config.batch_size=2"]


def run_cli(module: str, *args: str, cwd: Path = ROOT, timeout: int = 600):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def error_line(res, prefix: str = "rc_jax: error:") -> str:
    """The one error line of a failed run (no traceback, nothing else claiming an error)."""
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, res.stderr
    return lines[0]


def write_problems(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1. context length
def test_problem_longer_than_the_context_fails_before_any_model_work(tmp_path):
    data = write_problems(tmp_path / "data.jsonl", [
        {"problem_id": "short", "problem": "What is 1+1?", "answer": "2"},
        {"problem_id": "long7", "problem": "Compute. " + "one plus one " * 12000, "answer": "2"},
    ])
    out = tmp_path / "out"
    res = run_cli("rc_jax.main", f"--config={DEMO}", *TINY, f"--config.data.source={data}",
                  f"--config.output_dir={out}")
    line = error_line(res)
    assert "problem long7" in line and "rc" in line and "phase" in line
    assert "over the 32768-token context" in line and "max_position_embeddings" in line
    # Nothing ran: no rollout of the short problem either.
    assert not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text()


def test_budget_beyond_the_context_is_refused_for_every_method(tiny_tokenizer):
    from rc_jax.config import METHODS, default_config
    from rc_jax.data import Problem
    from rc_jax.limits import check_context

    problems = [Problem("p1", "What is 1+1?", "2")]
    for method in METHODS:
        c = default_config()
        c.unlock()
        c.method = method
        c.rc.num_steps, c.rc.max_reasoning_tokens, c.rc.max_summary_tokens = 2, 64, 32
        c.autoregressive.max_tokens, c.autoregressive.checkpoint_tokens = 64, 32
        c.budget_forcing.max_tokens, c.budget_forcing.num_forcings = 64, 1
        if "continuation_tokens" in c.budget_forcing:
            c.budget_forcing.continuation_tokens = 32
        c.rsa.population, c.rsa.k, c.rsa.generations = 2, 2, 1
        c.delethink.chunk_tokens, c.delethink.keep_last = 64, 32
        check_context(c, tiny_tokenizer, problems, context=4096)  # fits
        with pytest.raises(ValueError, match=rf"problem p1: the {method} .* phase needs up to "
                                             r"\d+ tokens .*, \d+ over the 120-token context"):
            check_context(c, tiny_tokenizer, problems, context=120)


def test_rc_bound_counts_summary_and_reasoning_fields(tiny_tokenizer):
    from rc_jax.config import default_config
    from rc_jax.limits import method_phases

    c = default_config()
    reasoning, summary = method_phases(c, tiny_tokenizer)
    assert reasoning.generated == {"curr_summary": c.rc.max_summary_tokens}
    assert reasoning.budget == c.rc.max_reasoning_tokens
    assert summary.generated == {"existing_summary": c.rc.max_summary_tokens,
                                 "reasoning": c.rc.max_reasoning_tokens}
    assert summary.budget == c.rc.max_summary_tokens


# ------------------------------------------------------------------ 2. stale inputs
def test_resume_refuses_results_graded_with_an_old_gold_answer(tmp_path):
    rows = [{"problem_id": "p0", "problem": "What is 0+1?", "answer": "1"},
            {"problem_id": "p1", "problem": "What is 1+1?", "answer": "2"}]
    data = write_problems(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    args = [f"--config={DEMO}", *TINY, f"--config.data.source={data}",
            f"--config.output_dir={out}"]
    first = run_cli("rc_jax.main", *args)
    assert first.returncode == 0, first.stderr
    before = snapshot(out)
    rows[1]["answer"] = "3"  # a corrected gold answer
    write_problems(data, rows)
    line = error_line(run_cli("rc_jax.main", *args, "--config.evaluate=False"))
    assert "problem p1" in line and "'2'" in line and "'3'" in line and "answer" in line
    assert snapshot(out) == before
    rows[1]["answer"], rows[0]["problem"] = "2", "What is 0+2?"  # an edited problem text
    write_problems(data, rows)
    line = error_line(run_cli("rc_jax.main", *args, "--config.evaluate=False"))
    assert "problem p0" in line and "problem text differs" in line
    assert snapshot(out) == before


def test_results_file_compares_inputs(tmp_path):
    from rc_jax.data import Problem
    from rc_jax.outputs import ResultsFile

    r = ResultsFile(tmp_path, {}, "h")
    r.append([{"problem_id": "a", "sample_id": 0, "problem": "x", "label": "1"}])
    r.close()
    ResultsFile(tmp_path, {}, "h", [Problem("a", "x", "1"), Problem("b", "y", "2")])  # same
    with pytest.raises(ValueError, match=r"problem a: answer '1' in results.jsonl line 1, '7'"):
        ResultsFile(tmp_path, {}, "h", [Problem("a", "x", "7")], "data.jsonl")


# ------------------------------------------------------------------ 3. user mistakes
@pytest.mark.parametrize("args,culprit", [
    (["--config.rc.num_stepz=3"], "--config.rc.num_stepz: the config has no field "
                                  "'rc.num_stepz'; did you mean --config.rc.num_steps?"),
    (["--config.rcc.num_steps=3"], "did you mean --config.rc.num_steps?"),
])
def test_unknown_config_field_is_one_line_with_the_suggestion(args, culprit):
    assert culprit in error_line(run_cli("rc_jax.main", f"--config={DEMO}", *args))


def test_config_file_that_does_not_exist(tmp_path):
    # Run from another directory with the README's relative path.
    res = run_cli("rc_jax.main", "--config=experiments/demo.py", cwd=tmp_path)
    line = error_line(res)
    assert "'experiments/demo.py' not found" in line and str(tmp_path) in line


def test_config_file_that_fails_to_load(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return 1 / 0\n")
    line = error_line(run_cli("rc_jax.main", f"--config={bad}"))
    assert str(bad) in line and "line 2" in line and "ZeroDivisionError" in line


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_output_dir_that_cannot_be_used(tmp_path, kind):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    out = blocker if kind == "file" else blocker / "sub" / "dir"
    line = error_line(run_cli("rc_jax.main", f"--config={DEMO}", *TINY,
                              f"--config.output_dir={out}"))
    assert f"'{blocker}' is a file" in line
    assert blocker.read_text() == "keep me"


def test_problem_with_a_lone_surrogate_names_file_line_and_field(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"problem_id": "ok", "problem": "What is 1+1?", "answer": "2"}\n'
                    '{"problem_id": "bad", "problem": "What is \\ud83d 2+2?", "answer": "4"}\n')
    line = error_line(run_cli("rc_jax.main", f"--config={DEMO}", *TINY,
                              f"--config.data.source={data}",
                              f"--config.output_dir={tmp_path / 'out'}"))
    assert f"{data}: line 2: field 'problem'" in line and "U+D83D" in line


def test_unreadable_record_is_graded_and_reported_and_the_rest_completes(tmp_path):
    good = {"problem_id": "p0", "sample_id": 0, "problem": "1+1?", "label": "2",
            "reasoning_store": [r"so \boxed{2}"], "summarization_store": [""]}
    bad = dict(good, problem_id="p1", reasoning_store=["so \\boxed{2\ud800}"])
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")  # \ud800 escaped
    out = tmp_path / "report"
    res = run_cli("rc_jax.eval", str(results), f"--output_dir={out}", "--no_progress",
                  "--timeout=60")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (out / "graded.jsonl").read_text().splitlines()]
    assert [(r["problem_id"], r["correct"]) for r in rows] == [("p0", True), ("p1", False)]
    assert "unreadable" in rows[1]["error"] and "line 2" in rows[1]["error"]
    report = (out / "report.md").read_text()
    assert "1 unreadable record(s)" in report and "U+D800" in report
    assert not list(out.glob(".*.tmp*"))  # no temporary files left behind


def test_record_parsing_sanitizes_unencodable_text():
    from rc_jax.records import RolloutRecord

    r = RolloutRecord.from_json(
        {"problem_id": "p", "label": "1", "reasoning_store": ["a\ud800b", "ok"]}, "f: line 3", 0)
    assert r.unreadable.startswith("f: line 3: reasoning_store[0]")
    assert r.reasoning_text == ["a\ufffdb", "ok"]
    assert RolloutRecord.from_json({"problem_id": "p", "label": "1", "reasoning_store": ["x"]},
                                   "f", 0).unreadable is None


def test_flag_error_message_cases(tmp_path):
    from rc_jax.config import flag_error_message

    err = AttributeError(KeyError("'num_stepz'\nDid you mean \"num_steps\" instead of \"num_stepz\"?"))
    assert flag_error_message(err, ["x", "--config", DEMO, "--config.rc.num_stepz=1"]) == (
        "--config.rc.num_stepz: the config has no field 'rc.num_stepz'; "
        "did you mean --config.rc.num_steps?")
    missing = str(tmp_path / "nope.py")
    assert "not found" in flag_error_message(OSError("x"), ["x", f"--config={missing}"])


# ------------------------------------------------------------------ 4. starting over (RL)
def _old_run(directory: Path) -> dict[str, bytes]:
    (directory / "checkpoints" / "2").mkdir(parents=True)
    (directory / "checkpoints" / "2" / "state").write_bytes(b"params")
    (directory / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    return snapshot(directory)


def test_rl_start_over_moves_the_old_run_aside_before_anything_else(tmp_path):
    out = tmp_path / "rct"
    old = _old_run(out)
    bad_data = tmp_path / "data.jsonl"
    bad_data.write_text("{not json\n")  # the new run fails right after starting over
    res = run_cli("rc_jax.main", f"--config={ROOT / 'experiments' / 'rct_tiny.py'}",
                  f"--config.output_dir={out}", "--config.checkpoint.resume=False",
                  f"--config.data.source={bad_data}")
    assert str(bad_data) in error_line(res)
    moved, = tmp_path.glob("rct.replaced-*")
    assert snapshot(moved) == old  # the whole old run, unchanged
    assert f"moved the previous run {out} to {moved}" in res.stdout


def test_rl_start_over_refuses_when_an_input_lies_inside_the_old_run(tmp_path):
    out = tmp_path / "rct"
    old = _old_run(out)
    model = out / "export" / "step_2"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")  # an export: passes the model.path check
    old = snapshot(out)
    line = error_line(run_cli("rc_jax.main", f"--config={ROOT / 'experiments' / 'rct_tiny.py'}",
                              f"--config.output_dir={out}", "--config.checkpoint.resume=False",
                              f"--config.model.path={model}"))
    assert "config.model.path" in line and "checkpoint.resume=False" in line
    assert snapshot(out) == old and not list(tmp_path.glob("rct.replaced-*"))


def test_set_aside_previous_run(tmp_path):
    from rc_jax.outputs import set_aside_previous_run

    assert set_aside_previous_run(tmp_path / "new") == []  # nothing to move
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "notes.txt").write_text("not a run")
    assert set_aside_previous_run(fresh) == []  # only a previous run's files count
    out = tmp_path / "run"
    old = _old_run(out)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "1").write_text("x")
    moves = set_aside_previous_run(out, extra_dirs=[ckpt])
    assert [m[0] for m in moves] == [out, ckpt] and not out.exists() and not ckpt.exists()
    assert snapshot(moves[0][1]) == old


# ------------------------------------------------------------------ 6, 7
def test_template_with_an_empty_placeholder_says_how_to_write_a_brace():
    from rc_jax.prompts import REASONING_FIELDS, Template

    with pytest.raises(ValueError, match=r"\\boxed\{\{\}\}"):
        Template("{problem} {curr_summary} \\boxed{}", REASONING_FIELDS)


def test_one_problem_one_sample_prints_the_table(tmp_path):
    out = tmp_path / "out"
    res = run_cli("rc_jax.main", f"--config={DEMO}", *TINY, "--config.data.limit=1",
                  f"--config.output_dir={out}")
    assert res.returncode == 0, res.stderr
    assert "n/a" in res.stdout and "report:" in res.stdout
    assert (out / "report.md").exists()


def test_print_step_table_without_standard_error(capsys):
    from rc_jax.main import print_step_table

    print_step_table({"inputs": [{"label": "rc", "num_problems": 1, "num_samples": 1, "steps": [
        {"step": 1, "accuracy": 1.0, "stderr": None, "no_answer": 0,
         "mean_tokens": {"cumulative": 12.0}}]}]})
    assert "100.0% ±  n/a" in capsys.readouterr().out


# ------------------------------------------------------------------ beyond the list
def test_eval_of_a_results_file_being_written_leaves_out_the_torn_last_line(tmp_path):
    from rc_jax.data.jsonio import DataError, read_json_records

    good = {"problem_id": "p0", "sample_id": 0, "label": "2", "reasoning_store": ["\\boxed{2}"]}
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(good) + "\n" + json.dumps(good)[:20])
    out = tmp_path / "report"
    res = run_cli("rc_jax.eval", str(results), f"--output_dir={out}", "--no_progress",
                  "--timeout=60")
    assert res.returncode == 0, res.stderr
    assert "line 2 is incomplete" in res.stderr
    assert len((out / "graded.jsonl").read_text().splitlines()) == 1
    # Problem files (and a bad line that is not the last) are still errors.
    with pytest.raises(DataError, match="line 2"):
        read_json_records(results)
    results.write_text(json.dumps(good)[:20] + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match="line 1"):
        read_json_records(results, allow_torn_tail=True)


def test_eval_output_dir_that_is_a_file_fails_before_grading(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"problem_id": "p0", "label": "2",
                                   "reasoning_store": ["\\boxed{2}"]}) + "\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    res = run_cli("rc_jax.eval", str(results), f"--output_dir={blocker}", "--no_progress")
    line = error_line(res, prefix="error:")
    assert f"'{blocker}' is a file" in line and blocker.read_text() == "keep me"


@pytest.mark.parametrize("args,culprit", [
    (["--config=experiments/nope.py"], "--config: file 'experiments/nope.py' not found"),
    (["--model=qwen3-4b", "--problem_tokens=-5"], "--problem_tokens: expected a positive"),
    (["--model=qwen3-4b", "--hbm_gib=0"], "--hbm_gib: expected a positive number"),
    (["--model=qwen3-4b", "--remat=foo"], "--remat: unknown policy 'foo'"),
    (["--model=qwen3-4b", "--json=/nonexistent-dir/plan.json"], "--json: cannot write"),
])
def test_plan_mistakes_are_one_line(args, culprit):
    res = run_cli("rc_jax.tools.plan", "--mesh=data:1", "--no_compile", *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert culprit in res.stderr.strip().splitlines()[-1]


def test_plan_config_errors_and_model_directories(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    raise RuntimeError('boom')\n")
    res = run_cli("rc_jax.tools.plan", "--mesh=data:1", "--no_compile", f"--config={bad}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{bad} line 2: RuntimeError: boom" in res.stderr
    res = run_cli("rc_jax.tools.plan", "--mesh=data:1", "--no_compile", f"--model={tmp_path}")
    assert res.returncode == 2 and "has no config.json" in res.stderr


def test_plan_of_a_config_uses_the_model_tokenizer():
    # An RL config (rl.batch_size, no top-level batch_size) whose model has its own small
    # tokenizer: prompt widths come from that tokenizer, not the default Qwen3 one.
    res = run_cli("rc_jax.tools.plan", "--mesh=data:1", "--no_compile",
                  f"--config={ROOT / 'experiments' / 'rct_tiny.py'}")
    assert res.returncode == 0, res.stderr
    assert "peak" in res.stdout


def test_eval_inputs_that_are_not_files_or_tokenizers(tmp_path):
    from rc_jax.data.jsonio import DataError, read_json_records
    from rc_jax.eval.report import make_token_counter

    with pytest.raises(DataError, match="is a directory"):
        read_json_records(tmp_path)
    with pytest.raises(ValueError, match="no such directory"):
        make_token_counter(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no tokenizer.json"):
        make_token_counter(str(tmp_path))


def test_config_paths_are_checked_before_loading(tmp_path):
    from rc_jax.config import default_config, validate

    c = default_config()
    c.unlock()
    c.model.path, c.data.source = str(tmp_path), "builtin:demo"
    with pytest.raises(ValueError, match="config.model.path: .* has no config.json"):
        validate(c)
    c.model.path, c.tokenizer.path = "builtin:tiny-random", str(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.tokenizer.path: directory .* does not exist"):
        validate(c)


def test_problem_file_with_any_suffix_is_read_as_json(tmp_path):
    from rc_jax.data import load_problems
    from rc_jax.data.jsonio import DataError

    f = tmp_path / "problems.txt"
    f.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"\n')
    with pytest.raises(DataError, match=r"problems.txt: line 2 column \d+: invalid JSON"):
        load_problems(f)


def test_ctrl_c_is_one_line_and_keeps_finished_results(tmp_path):
    import signal
    import threading

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rc_jax.main", f"--config={DEMO}",
         "--config.model.path=builtin:tiny-random", f"--config.output_dir={out}",
         "--config.rc.num_steps=30", "--config.num_samples=4", "--config.rc.engine=reference"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    seen, chunks = threading.Event(), []

    def read_stderr():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            chunks.append(chunk)
            if b"rollouts" in b"".join(chunks):  # the progress bar: the run has started
                seen.set()
        seen.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert seen.wait(600)
        proc.send_signal(signal.SIGINT)
        proc.stdout.read()
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(60)
    err = b"".join(chunks).decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"rc_jax: interrupted; everything finished so far is kept in {out}" in err
    assert (out / "config.json").exists()


def test_inputs_of_unfinished_rollouts_are_compared_too(tmp_path):
    from rc_jax.data import Problem
    from rc_jax.outputs import ResultsFile

    ResultsFile(tmp_path, {}, "h", [Problem("a", "x", "1")])
    (tmp_path / "progress.jsonl").write_text('{"problem_id": "a", "sample_id": 0, "step": 0}\n')
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"problem a: its text or answer in data.jsonl differs"):
        ResultsFile(tmp_path, {}, "h", [Problem("a", "x", "2")], "data.jsonl")
    assert (tmp_path / "config.json").read_text() == before
    ResultsFile(tmp_path, {}, "h", [Problem("a", "x", "1"), Problem("b", "y", "3")])


def test_two_runs_never_append_to_one_results_file(tmp_path):
    from rc_jax.outputs import ResultsFile

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rc_jax.outputs import ResultsFile; "
         f"r = ResultsFile({str(tmp_path)!r}, {{}}, 'h'); print('locked', flush=True); "
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match="being written by another run right now"):
            ResultsFile(tmp_path, {}, "h")
    finally:
        holder.stdin.close()
        holder.wait(60)
    ResultsFile(tmp_path, {}, "h").close()  # free again once the other run ended


def test_unknown_field_set_inside_a_config_file(tmp_path):
    cfg = tmp_path / "mine.py"
    cfg.write_text("from rc_jax.config import default_config\n\ndef get_config():\n"
                   "    c = default_config()\n    c.rc.num_stepz = 3\n    return c\n")
    line = error_line(run_cli("rc_jax.main", f"--config={cfg}"))
    assert f"config file '{cfg}' line 5" in line
    assert "no field 'num_stepz'; did you mean 'num_steps'?" in line
