"""Grading: a table of answer/gold cases through math-verify + string fallback, and
hard timeouts that never hang the pool."""
import os
import signal
import threading
import time

import pytest

from rc_jax.eval import grading
from rc_jax.eval.grading import GradeResult, Grader, MathVerifyGrader, StringMatchGrader, gold_answer_text
from rc_jax.eval.verify import verify_answer

# Correctness tests must not depend on the machine's speed: their grader has a limit no
# legitimate case comes near, even on a loaded 2-core machine. The time-out mechanism is
# tested on its own, with inputs built to hang (power towers, huge factorials) and a short
# limit, asserting only that they time out and that the pool recovers.
TIMEOUT_S = 60.0
HANG_TIMEOUT_S = 1.5

# (response, gold, expected correct). Each expectation was checked against
# math-verify 0.9.0; the comment says which behaviour a row pins down.
GRADING_CASES = [
    # Equivalent numeric forms, \dfrac/\tfrac, nested fractions and roots.
    (r"\boxed{0.5}", r"\frac12", True),
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{\frac{1}{2}}", "1/2", True),
    (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", True),
    (r"\boxed{\tfrac{3}{4}}", "0.75", True),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", True),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{2}}{2}", False),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
    (r"\boxed{\frac{1}{1+\frac{1}{2}}}", r"\frac{2}{3}", True),
    (r"\boxed{\sqrt{\frac{9}{4}}}", r"\frac32", True),
    # Intervals, sets, tuples.
    (r"\boxed{(1, 3]}", "(1,3]", True),
    (r"\boxed{(1,3)}", "(1,3]", False),
    (r"\boxed{[2, \infty)}", r"[2,\infty)", True),
    (r"\boxed{(-\infty, 0) \cup (1, \infty)}", r"(-\infty,0)\cup(1,\infty)", True),
    (r"\boxed{\{1,2,3\}}", r"\{3,2,1\}", True),
    (r"\boxed{\{1,2\}}", r"\{1,2,3\}", False),
    (r"\boxed{(3, -1)}", "(3,-1)", True),
    (r"\boxed{(1, 2, 3)}", "(1,2,3)", True),
    (r"\boxed{(1,2,4)}", "(1,2,3)", False),
    # Degrees and percents.
    (r"\boxed{30^\circ}", "30", True),
    (r"\boxed{30^{\circ}}", r"30^\circ", True),
    (r"\boxed{60^\circ}", "30", False),
    (r"\boxed{45\%}", "45", True),
    (r"\boxed{46\%}", r"45\%", False),
    # \text{} answers and multiple choice.
    (r"\boxed{\text{Monday}}", "Monday", True),
    (r"\boxed{\text{Tuesday}}", "Monday", False),
    (r"\boxed{\text{(B)}}", "B", True),
    (r"\boxed{C}", "B", False),
    # Thousands separators; 1,001 must not become 1000.
    (r"\boxed{1,000}", "1000", True),
    (r"\boxed{1{,}000}", "1000", True),
    (r"\boxed{12,345,678}", "12345678", True),
    (r"\boxed{1,001}", "1000", False),
    # Negative numbers.
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    # Wrong answers that look close.
    (r"\boxed{3.14}", r"\pi", False),
    (r"\boxed{3.1416}", "3.1415", False),
    (r"\boxed{100}", "99", False),
    (r"\boxed{0.333}", r"\frac13", False),
    (r"\boxed{\frac{2}{3}}", r"\frac{3}{2}", False),
    # Expressions and equations.
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{x=3}", "3", True),
    (r"\boxed{\pi/2}", r"\frac{\pi}{2}", True),
    (r"\boxed{10^3}", "1000", True),
    # Several boxes (last wins), no box, malformed boxes, brace-less box.
    (r"First \boxed{4}, wait, actually \boxed{5}.", "5", True),
    (r"First \boxed{5}, wait, actually \boxed{4}.", "5", False),
    ("The answer is 5.", "5", False),
    (r"so the answer is \boxed{5", "5", False),
    (r"\boxed{5} and then \boxed{", "5", False),
    (r"$\boxed 7$", "7", True),
    # Gold already boxed, or a whole worked solution; wrappers and \fbox.
    (r"\boxed{12}", r"\boxed{12}", True),
    (r"\boxed{12}", r"We compute $3 \cdot 4$, so the answer is $\boxed{12}$.", True),
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)", True),
    (r"\boxed{\$5}", "5", True),
    (r"\boxed{5\text{ cm}}", "5", True),
    (r"\fbox{8}", "8", True),
    (r"\boxed{\boxed{9}}", "9", True),
    (r"\boxed{\left\{1,2\right\}}", r"\{1,2\}", True),
    # String fallback: math-verify returns False for these word answers.
    (r"\boxed{\text{north-east}}", "North-East", True),
    (r"\boxed{\text{Alice and Bob}}", "alice and bob", True),
    (r"\boxed{\text{Alice and Carol}}", "alice and bob", False),
]


@pytest.fixture(scope="module")
def grader():
    """One pool for the whole module: worker start-up is paid once."""
    with MathVerifyGrader(timeout_s=TIMEOUT_S, num_workers=2) as g:
        g.start()
        yield g


@pytest.fixture(scope="module")
def hang_grader():
    """A short limit, for the time-out tests only (inputs that would never finish)."""
    with MathVerifyGrader(timeout_s=HANG_TIMEOUT_S, num_workers=2) as g:
        g.start()
        yield g


def test_case_table_is_large_enough():
    assert len(GRADING_CASES) >= 40


def test_grading_table(grader):
    results = grader.grade_batch([(r, g) for r, g, _ in GRADING_CASES])
    wrong = [
        (response, gold, expected, res)
        for (response, gold, expected), res in zip(GRADING_CASES, results)
        if res.correct != expected or res.timed_out
    ]
    assert not wrong, wrong


def test_grade_result_fields(grader):
    ok, missing, bad = grader.grade_batch(
        [(r"so \boxed{\frac{1}{2}}", "0.5"), ("no answer", "1"), (r"\boxed{3}", "4")]
    )
    assert ok == GradeResult(extracted=r"\frac{1}{2}", correct=True, timed_out=False, error=None)
    assert missing == GradeResult(extracted=None, correct=False)
    assert bad.extracted == "3" and not bad.correct and not bad.timed_out


def test_math_verify_itself_decides_symbolic_cases():
    # These pass through math-verify, not the string fallback.
    assert verify_answer(r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}")
    assert verify_answer("x^2+2x+1", "(x+1)^2")
    assert not verify_answer(r"\frac{2}{3}", r"\frac{3}{2}")


def test_gold_answer_text():
    assert gold_answer_text("12") == "12"
    assert gold_answer_text(r"so it is $\boxed{\frac{1}{2}}$") == r"\frac{1}{2}"


def test_pathological_input_times_out_and_pool_recovers(hang_grader):
    grader = hang_grader
    replaced_before = grader.workers_replaced
    start = time.monotonic()
    res = grader.grade_batch([(r"\boxed{10^{10^{10^{10}}}}", "1"), (r"\boxed{(10^{8})!}", "2")])
    elapsed = time.monotonic() - start
    assert [r.timed_out for r in res] == [True, True]
    assert [r.correct for r in res] == [False, False]
    assert "timed out" in res[0].error
    # These never finish on their own: returning at all shows the limit was enforced.
    # The bound is far above the 1.5 s limit so that a loaded machine cannot fail it.
    assert elapsed < 60, elapsed
    assert grader.workers_replaced == replaced_before + 2
    # The pool keeps working after its hung workers were killed.
    after = grader.grade_batch([(r"\boxed{\frac{6}{8}}", "0.75"), (r"\boxed{7}", "8")])
    assert [r.correct for r in after] == [True, False]
    assert not any(r.timed_out for r in after)


def test_cached_timeout_is_reported_without_rerunning(hang_grader):
    grader = hang_grader
    grader.grade_batch([(r"\boxed{9^{9^{9}}}", "3")])
    replaced, hits = grader.workers_replaced, grader.stats["cache_hits"]
    res = grader.grade_batch([(r"\boxed{9^{9^{9}}}", "3")])[0]
    assert res.timed_out and not res.correct
    # Not re-run (no worker hung and was replaced again), answered from the cache.
    assert grader.workers_replaced == replaced
    assert grader.stats["cache_hits"] == hits + 1


def test_cache_hits(grader):
    hits = grader.stats["cache_hits"]
    items = [(r"\boxed{\sqrt{12}}", r"2\sqrt{3}")] * 5
    assert all(r.correct for r in grader.grade_batch(items))
    assert grader.grade_batch(items[:1])[0].correct
    assert grader.stats["cache_hits"] >= hits + 1


def test_crashed_idle_worker_is_replaced(grader):
    grader.start()  # all workers ready
    victim = grader._pool._workers[0].process
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=5)
    res = grader.grade_batch([(r"\boxed{\frac{10}{4}}", "2.5"), (r"\boxed{\frac{9}{4}}", "2.5")])
    assert [r.correct for r in res] == [True, False]
    assert all(w.process.poll() is None for w in grader._pool._workers)


def test_worker_killed_mid_task_counts_as_error_not_hang(grader):
    grader.start()
    pool = grader._pool

    def kill_busy_worker():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            busy = [w for w in pool._workers if w.task is not None]
            if busy:
                os.kill(busy[0].process.pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_busy_worker)
    killer.start()
    res = grader.grade_batch([(r"\boxed{7^{7^{7^{7}}}}", "5")], timeout_s=30)[0]
    killer.join()
    assert not res.correct and not res.timed_out
    assert "crashed" in res.error
    assert (r"7^{7^{7^{7}}}", "5") not in grader._cache  # a crash may be transient: not cached
    assert grader.grade_batch([(r"\boxed{0.2}", r"\frac15")])[0].correct


def test_grader_protocol():
    assert isinstance(MathVerifyGrader(), Grader)
    assert isinstance(StringMatchGrader(), Grader)


def test_string_match_grader():
    res = StringMatchGrader().grade_batch(
        [(r"\boxed{\text{Monday}}", "monday"), (r"\boxed{0.5}", r"\frac12"), ("none", "1")]
    )
    assert [r.correct for r in res] == [True, False, False]
    assert res[0].extracted == r"\text{Monday}"


def test_grade_one_uses_shared_grader(monkeypatch):
    shared = MathVerifyGrader(timeout_s=TIMEOUT_S, num_workers=1)
    monkeypatch.setattr(grading, "_default_grader", shared)
    try:
        assert grading.grade_one(r"The answer is \boxed{\dfrac{1}{4}}", "0.25") is True
        assert grading.grade_one(r"The answer is \boxed{4}", "0.25") is False
        assert grading.grade_one("no box", "0.25") is False
        assert grading.default_grader() is shared
    finally:
        shared.close()


def test_close_and_restart():
    g = MathVerifyGrader(timeout_s=TIMEOUT_S, num_workers=1)
    with g:
        assert g.grade_batch([(r"\boxed{2/4}", "1/2")])[0].correct
        pool = g._pool
    assert pool.closed and not pool._workers
    assert g._pool is None
    # Used again after close: starts a fresh pool transparently.
    try:
        assert g.grade_batch([(r"\boxed{3/6}", "1/2")])[0].correct
    finally:
        g.close()


def test_invalid_timeout():
    with pytest.raises(ValueError, match="timeout_s"):
        MathVerifyGrader(timeout_s=0)
