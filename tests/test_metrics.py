"""Metrics on hand-built outcomes with numbers worked out by hand."""
import itertools
import math

import pytest

from rc_jax.eval.metrics import (
    SampleOutcome,
    StepOutcome,
    compute_metrics,
    cumulative_tokens,
    default_ks,
    majority_at_k,
    mean_stderr,
    pass_at_k,
    sampling_stderr,
)


def closed_form_pass_at_k(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_pass_at_k_matches_closed_form(n):
    for c, k in itertools.product(range(n + 1), range(1, n + 1)):
        assert pass_at_k(n, c, k) == pytest.approx(closed_form_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_known_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(3, 3, 1) == 1.0
    assert pass_at_k(16, 3, 1) == pytest.approx(3 / 16)
    # Large n: the product form stays finite where binomials would be huge.
    assert 0.0 < pass_at_k(2000, 1, 1000) <= 1.0


@pytest.mark.parametrize("n,c,k", [(3, 4, 1), (3, 1, 4), (3, 1, 0), (0, 0, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_at_k_by_hand():
    answers, correct = ["1", "2", "1", None], [True, False, True, False]
    assert majority_at_k(answers, correct, 1) == pytest.approx(0.5)
    # 6 pairs: (1,2) tie .5, (1,1) 1, (1,None) 1, (2,1) .5, (2,None) 0, (1,None) 1 -> 4/6.
    assert majority_at_k(answers, correct, 2) == pytest.approx(4 / 6)
    assert majority_at_k(answers, correct, 4) == 1.0
    # Tie between a right and a wrong answer scores 0.5; equivalent spellings vote together.
    assert majority_at_k(["5", "6"], [True, False], 2) == 0.5
    assert majority_at_k([r"\text{5}", "5", "6"], [True, True, False], 3) == 1.0
    assert majority_at_k([None, None], [False, False], 2) == 0.0


def test_majority_at_k_sampled_subsets_are_deterministic():
    answers = [str(i % 3) for i in range(16)]
    correct = [a == "0" for a in answers]
    a = majority_at_k(answers, correct, 8, max_subsets=50)
    assert a == majority_at_k(answers, correct, 8, max_subsets=50)
    assert 0.0 < a < 1.0


def test_mean_stderr_and_sampling_stderr():
    assert mean_stderr([]) == (None, None)
    assert mean_stderr([0.25]) == (0.25, None)
    mean, se = mean_stderr([0.0, 1.0])
    assert mean == 0.5 and se == pytest.approx(0.5)
    # p=.5, n=4 for two problems: sqrt(2 * .25/3) / 2.
    assert sampling_stderr([[True, False, True, False]] * 2) == pytest.approx(math.sqrt(2 * 0.25 / 3) / 2)
    assert sampling_stderr([[True]]) is None


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8, 12]


def step(answer, correct, tokens=(50, 100, 10)):
    return StepOutcome(answer, correct, False, *tokens)


def hand_built_samples():
    """Problem A (gold 1): 4 samples x 2 steps. Problem B (gold 5): 4 samples, one stops after step 1."""
    a = [
        [("1", True), ("1", True)],
        [("2", False), ("1", True)],
        [("1", True), ("1", True)],
        [(None, False), ("3", False)],
    ]
    b = [
        [("5", True), ("5", True)],
        [("5", True), ("6", False)],
        [("6", False), ("6", False)],
        [("6", False)],
    ]
    samples = []
    for pid, rows in (("A", a), ("B", b)):
        for sid, steps in enumerate(rows):
            samples.append(SampleOutcome(pid, str(sid), tuple(step(x, c) for x, c in steps)))
    return samples


def test_compute_metrics_by_hand():
    m = compute_metrics(hand_built_samples(), ks=[1, 2, 4])
    assert (m["num_samples"], m["num_problems"], m["max_steps"]) == (8, 2, 2)
    assert any("1 of 8 samples have fewer than 2 steps" in n for n in m["notes"])
    s1, s2 = m["steps"]

    assert s1["step"] == 1 and s1["num_samples"] == 8 and s1["num_problems"] == 2
    assert s1["accuracy"] == pytest.approx(0.5)  # A 2/4, B 2/4
    assert s1["stderr"] == pytest.approx(0.0)
    assert s1["stderr_samples"] == pytest.approx(math.sqrt(2 * 0.25 / 3) / 2)
    assert s1["pass_at_k"]["1"] == pytest.approx(0.5)
    assert s1["pass_at_k"]["2"] == pytest.approx(closed_form_pass_at_k(4, 2, 2))  # 5/6 for both
    assert s1["pass_at_k"]["4"] == 1.0
    assert s1["majority_at_k"]["1"] == pytest.approx(0.5)
    assert s1["majority_at_k"]["2"] == pytest.approx((4 / 6 + 3 / 6) / 2)
    assert s1["majority_at_k"]["4"] == pytest.approx((1.0 + 0.5) / 2)  # B is a 2-2 tie
    assert s1["no_answer"] == 1 and s1["timed_out"] == 0

    assert s2["num_samples"] == 7
    acc_a, acc_b = 3 / 4, 1 / 3
    assert s2["accuracy"] == pytest.approx((acc_a + acc_b) / 2)
    assert s2["stderr"] == pytest.approx(abs(acc_a - acc_b) / 2)
    expected_p2 = (closed_form_pass_at_k(4, 3, 2) + closed_form_pass_at_k(3, 1, 2)) / 2
    assert s2["pass_at_k"]["2"] == pytest.approx(expected_p2)
    assert s2["pass_at_k"]["4"] == 1.0  # only A has 4 samples at step 2
    assert s2["majority_at_k"]["4"] == 1.0

    assert s1["mean_tokens"] == {"prompt": 50, "reasoning": 100, "summary": 10, "cumulative": 110}
    assert s2["mean_tokens"]["cumulative"] == 220


def test_missing_tokens_are_reported_missing_not_estimated():
    samples = hand_built_samples()
    broken = SampleOutcome("A", "0", (step("1", True), step("1", True, tokens=(None, None, 10))))
    samples[0] = broken
    m = compute_metrics(samples, ks=[1])
    s1, s2 = m["steps"]
    assert s1["mean_tokens"]["cumulative"] == 110
    assert s2["mean_tokens"]["reasoning"] is None
    assert s2["mean_tokens"]["prompt"] is None
    assert s2["mean_tokens"]["cumulative"] is None
    assert cumulative_tokens(broken, 0) == 110 and cumulative_tokens(broken, 1) is None


def test_uneven_sample_counts_note_and_pass_at_k_eligibility():
    samples = [SampleOutcome("A", str(i), (step("1", True),)) for i in range(4)]
    samples.append(SampleOutcome("B", "0", (step("2", False),)))
    m = compute_metrics(samples)
    assert m["ks"] == [1, 2, 4]
    s = m["steps"][0]
    assert s["pass_at_k"]["1"] == pytest.approx(0.5)
    assert s["pass_at_k"]["4"] == 1.0  # B (1 sample) is not eligible for k=4
    assert any("different sample counts" in n for n in m["notes"])
