"""End-to-end report: rc_jax JSONL and the authors' JSON list, CLI, outputs on disk."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rc_jax.data import DataError
from rc_jax.eval.grading import MathVerifyGrader
from rc_jax.eval.records import load_rollouts
from rc_jax.eval.report import evaluate_files, make_token_counter

REPO = Path(__file__).resolve().parents[1]

# Problem A (gold 1/2), problem B (gold 5): same outcomes as tests/test_metrics.py,
# written as model text so that extraction and math-verify are part of the check.
STEP_TEXTS = {
    ("A", 0): [r"so $\boxed{0.5}$", r"hence \boxed{\frac{1}{2}}"],
    ("A", 1): [r"\boxed{2}", r"\boxed{\dfrac{2}{4}}"],
    ("A", 2): [r"\boxed{\frac12}", r"\boxed{1/2}"],
    ("A", 3): ["I am not sure.", r"\boxed{3}"],
    ("B", 0): [r"\boxed{5}", r"\boxed{5.0}"],
    ("B", 1): [r"\boxed{5}", r"\boxed{6}"],
    ("B", 2): [r"\boxed{6}", r"\boxed{6}"],
    ("B", 3): [r"\boxed{6}"],
}
GOLD = {"A": r"\frac{1}{2}", "B": "5"}


def records(with_rc_fields: bool):
    out = []
    for (pid, sid), texts in STEP_TEXTS.items():
        rec = {
            "problem": f"problem {pid}",
            "label": GOLD[pid],
            "problem_id": pid,
            "sample_id": sid,
            "reasoning_store": list(texts),  # a copy: tests edit records
            "summarization_store": [f"summary of step {t} here" for t in range(len(texts))],
        }
        if with_rc_fields:
            T = len(texts)
            rec["method"] = "rc"
            rec["token_counts"] = {"prompt": [50] * T, "reasoning": [100] * T, "summary": [10] * T}
            rec["finish_reasons"] = {"reasoning": ["stop"] * T, "summary": ["stop"] * T}
        out.append(rec)
    return out


def write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def grader():
    with MathVerifyGrader(timeout_s=1.5, num_workers=2) as g:
        yield g


def word_count(text: str) -> int:
    return len(text.split())


def test_report_numbers_by_hand(tmp_path, grader):
    path = write_jsonl(tmp_path / "rc.jsonl", records(with_rc_fields=True))
    m = evaluate_files([path], tmp_path / "out", grader=grader, ks=[1, 2, 4], progress=False)
    (inp,) = m["inputs"]
    assert inp["label"] == "rc" and inp["num_problems"] == 2 and inp["num_samples"] == 8
    s1, s2 = inp["steps"]
    assert s1["accuracy"] == pytest.approx(0.5) and s1["stderr"] == pytest.approx(0.0)
    assert s2["accuracy"] == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert s2["stderr"] == pytest.approx((3 / 4 - 1 / 3) / 2)
    assert s1["pass_at_k"]["2"] == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))
    # Majority@4 at step 1: votes group by normalised string, so A's "0.5" and "\frac12" are
    # separate answers: {0.5: 1, 2: 1, \frac12: 1} is a three-way tie, 2 of 3 right; B ties 2-2.
    assert s1["majority_at_k"]["4"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert s1["mean_tokens"] == {"prompt": 50, "reasoning": 100, "summary": 10, "cumulative": 110}
    assert s2["mean_tokens"]["cumulative"] == 220
    assert any("fewer than 2 steps" in n for n in inp["notes"])

    out = tmp_path / "out"
    rows = [json.loads(l) for l in (out / "graded.jsonl").read_text().splitlines()]
    assert len(rows) == 15  # 7 samples x 2 steps + 1 sample x 1 step
    assert set(rows[0]) >= {"problem_id", "sample_id", "step", "extracted", "correct", "timed_out"}
    first = next(r for r in rows if r["problem_id"] == "A" and r["sample_id"] == 3 and r["step"] == 1)
    assert first["extracted"] is None and first["correct"] is False
    assert json.loads((out / "metrics.json").read_text())["inputs"][0]["steps"] == inp["steps"]
    report = (out / "report.md").read_text()
    assert "| step | samples | acc % ± s.e. |" in report and "| 2 | 7 | 54.2 ± 20.8 |" in report
    for png in ("accuracy_vs_tokens.png", "accuracy_vs_step.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_authors_json_and_rc_jsonl_give_same_report(tmp_path, grader):
    rc_path = write_jsonl(tmp_path / "rc_plain.jsonl", records(with_rc_fields=False))
    authors_path = tmp_path / "authors_output.json"
    authors_path.write_text(json.dumps(records(with_rc_fields=False), indent=1))
    m = evaluate_files(
        [rc_path, authors_path], tmp_path / "out", grader=grader, tokenizer=word_count, progress=False
    )
    a, b = m["inputs"]
    assert (a["label"], b["label"]) == ("rc_plain", "authors_output")
    assert a["steps"] == b["steps"] and a["notes"] == b["notes"] and a["ks"] == b["ks"] == [1, 2, 4]
    # Re-tokenised with the given counter: 5 words per summary, 2-4 per reasoning text.
    assert a["steps"][0]["mean_tokens"]["summary"] == 5
    assert a["steps"][0]["mean_tokens"]["prompt"] is None  # prompts cannot be rebuilt from text
    graded = (tmp_path / "out" / "graded.jsonl").read_text().splitlines()
    per_input = {}
    for line in graded:
        row = json.loads(line)
        per_input.setdefault(row.pop("input"), []).append(row)
    assert per_input["rc_plain"] == per_input["authors_output"]


def test_tokens_missing_without_counts_or_tokenizer(tmp_path, grader):
    path = tmp_path / "authors.json"
    path.write_text(json.dumps(records(with_rc_fields=False)))
    m = evaluate_files([path], tmp_path / "out", grader=grader, progress=False)
    inp = m["inputs"][0]
    assert all(v is None for s in inp["steps"] for v in s["mean_tokens"].values())
    assert any("token counts missing" in n for n in inp["notes"])
    assert m["outputs"]["accuracy_vs_tokens"] is None  # nothing exact to plot
    assert not (tmp_path / "out" / "accuracy_vs_tokens.png").exists()
    assert (tmp_path / "out" / "accuracy_vs_step.png").exists()
    assert "no complete token counts" in (tmp_path / "out" / "report.md").read_text()


def test_timeouts_are_reported(tmp_path, grader):
    recs = records(with_rc_fields=True)
    recs[0]["reasoning_store"][0] = r"\boxed{10^{10^{10^{10}}}}"
    path = write_jsonl(tmp_path / "rc.jsonl", recs)
    m = evaluate_files([path], tmp_path / "out", grader=grader, progress=False)
    inp = m["inputs"][0]
    assert inp["timeouts"] == [
        {"problem_id": "A", "sample_id": 0, "step": 1, "extracted": r"10^{10^{10^{10}}}"}
    ]
    assert inp["steps"][0]["timed_out"] == 1
    assert inp["steps"][0]["accuracy"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert "timed out (counted as incorrect)" in (tmp_path / "out" / "report.md").read_text()


def test_other_graders_plug_in(tmp_path):
    from rc_jax.eval.grading import StringMatchGrader

    path = write_jsonl(tmp_path / "rc.jsonl", records(with_rc_fields=True))
    m = evaluate_files([path], None, grader=StringMatchGrader(), ks=[1], progress=False)
    # String matching alone misses 0.5 == \frac{1}{2} and 5.0 == 5: lower step-1 accuracy.
    assert m["settings"]["grader"] == "StringMatchGrader"
    assert m["inputs"][0]["steps"][0]["accuracy"] == pytest.approx((0 / 4 + 2 / 4) / 2)


def test_hf_tokenizer_counter(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(tmp_path / "tok"))
    count = make_token_counter(str(tmp_path / "tok"))
    assert count("a b c d") == 4
    assert make_token_counter(tok)("a a") == 2  # a bare `tokenizers.Tokenizer`
    assert make_token_counter(None) is None
    with pytest.raises(TypeError):
        make_token_counter(42)


def test_results_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem_id": "A", "label": "1"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 1: missing field 'reasoning_store'"):
        load_rollouts(bad)
    dup = write_jsonl(tmp_path / "dup.jsonl", records(True)[:1] * 2)
    with pytest.raises(DataError, match="line 2: duplicate rollout problem_id='A' sample_id=0"):
        load_rollouts(dup)
    recs = records(True)[:2]
    recs[1]["label"] = "7"
    with pytest.raises(DataError, match="label '7' differs"):
        load_rollouts(write_jsonl(tmp_path / "lab.jsonl", recs))
    recs = records(True)[:1]
    recs[0]["token_counts"]["reasoning"] = [1.5, 2]
    with pytest.raises(DataError, match="token_counts\\['reasoning'\\]"):
        load_rollouts(write_jsonl(tmp_path / "tc.jsonl", recs))


def test_cli_end_to_end(tmp_path):
    path = write_jsonl(tmp_path / "rc.jsonl", records(with_rc_fields=True))
    out = tmp_path / "cli_out"
    proc = subprocess.run(
        [sys.executable, "-m", "rc_jax.eval", str(path), f"--output_dir={out}", "--timeout=3", "--k=1,2",
         "--num_workers=1", "--no_progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| 1 | 8 | 50.0 ± 0.0 | 50.0 | 83.3 |" in proc.stdout, proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["ks"] == [1, 2] and metrics["settings"]["timeout_s"] == 3.0
    assert (out / "graded.jsonl").exists() and (out / "accuracy_vs_tokens.png").exists()

    bad = subprocess.run(
        [sys.executable, "-m", "rc_jax.eval", str(tmp_path / "missing.jsonl"), f"--output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "missing.jsonl: no such file" in bad.stderr
