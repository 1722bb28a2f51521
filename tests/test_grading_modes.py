"""grading.mode = paper (the paper authors' evaluator) against rc_jax's own grader, on
cases where the two disagree, and the side-by-side CLI (`--grading=paper,rc_jax`)."""
import json

import pytest

from rc_jax.eval.__main__ import main as eval_main
from rc_jax.eval.extract import extract_boxed, extract_boxed_paper
from rc_jax.eval.grading import GRADING_MODES, MathVerifyGrader
from rc_jax.eval.verify import verify_answer

# (text, paper extraction, rc_jax extraction)
EXTRACTION_CASES = [
    (r"so \boxed{5}.", "5", "5"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", r"\frac{1}{2}"),  # one level: both read it
    # Two levels: not a box for the paper, so nothing, or an *earlier* box, is read.
    (r"\boxed{\frac{\sqrt{3}}{2}}", None, r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{1} then \boxed{\frac{\sqrt{3}}{2}}", "1", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{\sqrt{\frac{9}{4}}}", None, r"\sqrt{\frac{9}{4}}"),
    # Only `\boxed{` counts for the paper.
    (r"\fbox{5}", None, "5"),
    (r"\boxed 5", None, "5"),
    (r"\boxed {5}", None, "5"),
    # Content as written (no strip, no unwrap); an empty box is "" not None.
    (r"\boxed{ 7 }", " 7 ", "7"),
    (r"\boxed{}", "", None),
    (r"\boxed{\boxed{5}}", r"\boxed{5}", "5"),
    # Escaped braces count as braces for the paper (one level here, so still read).
    (r"\boxed{\{1,2\}}", r"\{1,2\}", r"\{1,2\}"),
    (r"\boxed{\left\{1,\{2\}\right\}}", None, r"\left\{1,\{2\}\right\}"),
    # A box inside an unreadable box can still be found.
    (r"\boxed{x{\boxed{3}}", "3", None),
    ("no box at all", None, None),
    (r"cut off \boxed{\frac{1}{", None, None),
]


@pytest.mark.parametrize("text,paper,ours", EXTRACTION_CASES)
def test_paper_extraction_reads_one_level_of_braces(text, paper, ours):
    assert extract_boxed_paper(text) == paper
    assert extract_boxed(text) == ours


def test_paper_extraction_is_fast_on_long_texts():
    import time
    text = (r"\boxed{a{b{ " + "x" * 50) * 20000 + r"\boxed{42}"
    t0 = time.perf_counter()
    assert extract_boxed_paper(text) == "42"
    assert time.perf_counter() - t0 < 2.0


def test_verify_argument_order_differs():
    # math-verify is not symmetric: the paper calls verify(answer, gold), rc_jax verify(gold, answer).
    assert verify_answer(r"1 \le x \le 2", "[1,2]", "paper")
    assert not verify_answer(r"1 \le x \le 2", "[1,2]", "rc_jax")
    assert not verify_answer("[1,2]", r"1 \le x \le 2", "paper")
    assert verify_answer("[1,2]", r"1 \le x \le 2", "rc_jax")
    assert verify_answer("x>1", r"(1,\infty)", "paper") and not verify_answer("x>1", r"(1,\infty)")
    with pytest.raises(ValueError, match="unknown grading mode"):
        verify_answer("1", "1", "strict")


# (response, gold, correct under paper, correct under rc_jax)
DISAGREEMENTS = [
    (r"so \boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", False, True),  # 2 levels of braces
    (r"\boxed{\frac{1}{1+\frac{1}{2}}}", r"\frac{2}{3}", False, True),
    (r"first \boxed{1}, finally \boxed{\frac{\sqrt{3}}{2}}", "1", True, False),  # earlier box
    (r"\fbox{5}", "5", False, True),
    (r"\boxed 5", "5", False, True),
    (r"\boxed{1 \le x \le 2}", "[1,2]", True, False),  # verify's argument order
    (r"\boxed{[1,2]}", r"1 \le x \le 2", False, True),
    (r"\boxed{x>1}", r"(1,\infty)", True, False),
    ("I could not finish.", "None", True, False),  # the paper grades a missing box as "None"
]
AGREEMENTS = [
    (r"\boxed{\frac{1}{2}}", "0.5", True, True),
    (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", True, True),
    (r"\boxed{\text{Monday}}", "Monday", True, True),
    (r"\boxed{1{,}000}", "1000", True, True),
    (r"\boxed{45\%}", "45", True, True),
    (r"\boxed{\{1,2\}}", r"\{2,1\}", True, True),
    (r"\boxed{ 7 }", "7", True, True),
    (r"\boxed{5}", r"\boxed{5}", True, True),  # a boxed gold: unwrapped / double-boxed
    (r"\boxed{6}", "5", False, False),
    (r"\boxed{}", "5", False, False),
    ("no answer", "5", False, False),
]


@pytest.fixture(scope="module")
def graders():
    with MathVerifyGrader(timeout_s=30.0, num_workers=1, mode="paper") as paper, \
            MathVerifyGrader(timeout_s=30.0, num_workers=1) as ours:
        yield paper, ours


def test_paper_mode_and_rc_jax_mode_on_cases_where_they_disagree(graders):
    paper, ours = graders
    assert GRADING_MODES == ("rc_jax", "paper") and ours.mode == "rc_jax"
    cases = DISAGREEMENTS + AGREEMENTS
    items = [(text, gold) for text, gold, _, _ in cases]
    got_paper = paper.grade_batch(items)
    got_ours = ours.grade_batch(items)
    for (text, gold, want_paper, want_ours), p, o in zip(cases, got_paper, got_ours):
        assert (p.correct, o.correct) == (want_paper, want_ours), (text, gold, p, o)
        assert p.extracted == extract_boxed_paper(text) and o.extracted == extract_boxed(text)
    assert sum(p.correct != o.correct for p, o in zip(got_paper, got_ours)) == len(DISAGREEMENTS)
    # The paper mode never uses the normalised string match.
    assert paper.stats["string_matches"] == 0 and ours.stats["string_matches"] > 0
    with pytest.raises(ValueError, match="unknown grading mode"):
        MathVerifyGrader(mode="lenient")


def _write_results(path):
    """Two problems x one sample x two steps; four answers, two graded differently."""
    recs = [
        {"problem": "p1", "label": r"\frac{\sqrt{3}}{2}", "problem_id": "A", "sample_id": 0,
         "reasoning_store": [r"\boxed{\frac{\sqrt{3}}{2}}", r"\boxed{\frac{\sqrt{3}}{2}}"],
         "summarization_store": ["s", "s"]},
        {"problem": "p2", "label": "[1,2]", "problem_id": "B", "sample_id": 0,
         "reasoning_store": [r"\boxed{[1, 2]}", r"\boxed{1 \le x \le 2}"],
         "summarization_store": ["s", "s"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def test_cli_reports_both_modes_side_by_side(tmp_path, capsys):
    path = _write_results(tmp_path / "results.jsonl")
    out = tmp_path / "report"
    rc = eval_main([str(path), f"--output_dir={out}", "--grading=paper,rc_jax", "--num_workers=1",
                    "--no_progress", "--timeout=30"])
    assert rc == 0
    printed = capsys.readouterr().out
    cmp = json.loads((out / "grading_comparison.json").read_text())
    assert cmp["modes"] == ["paper", "rc_jax"] and cmp["answers"] == 4 and cmp["disagree"] == 3
    (inp,) = cmp["inputs"]
    # Step 1: A correct only under rc_jax (nested), B correct under both.
    # Step 2: A correct only under rc_jax, B (1 <= x <= 2 vs [1,2]) only under paper.
    assert [s["disagree"] for s in inp["steps"]] == [1, 2]
    assert [s["correct"] for s in inp["steps"]] == [{"paper": 1, "rc_jax": 2}, {"paper": 1, "rc_jax": 1}]
    assert inp["correct_only_in"] == {"paper": 1, "rc_jax": 2}
    assert "| 1 | 50.0% | 100.0% | 1 / 2 |" in printed and "| 2 | 50.0% | 50.0% | 2 / 2 |" in printed
    assert "3 of 4 answers graded differently" in printed
    for mode in ("paper", "rc_jax"):
        metrics = json.loads((out / mode / "metrics.json").read_text())
        assert metrics["settings"]["grading_mode"] == mode
        assert (out / mode / "report.md").exists()
    # One mode: the usual report, in --output_dir itself.
    assert eval_main([str(path), f"--output_dir={tmp_path / 'one'}", "--grading=paper", "--num_workers=1",
                      "--timeout=30", "--no_progress"]) == 0
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["settings"]["grading_mode"] == "paper"
    with pytest.raises(SystemExit):
        eval_main([str(path), f"--output_dir={out}", "--grading=paper,strict"])


def test_run_config_grading_mode():
    from rc_jax import config as run_config
    c = run_config.default_config()
    assert c.grading.mode == "rc_jax"
    c.model.path, c.data.source = "builtin:tiny-random", "builtin:demo"
    before = run_config.config_hash(c)
    c.grading.mode = "paper"
    run_config.validate(c)
    assert run_config.config_hash(c) == before  # grading only: the run stays resumable
    assert "grading" not in run_config.semantic_dict(c)
    c.grading.mode = "strict"
    with pytest.raises(ValueError, match="config.grading.mode"):
        run_config.validate(c)
