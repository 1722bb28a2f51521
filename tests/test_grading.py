"""Grading: a table of answer/gold cases through math-verify + string fallback, and
hard timeouts that never hang the pool."""
import os
import signal
import time

import pytest

from rc_jax.eval import grading
from rc_jax.eval.grading import GradeResult, Grader, MathVerifyGrader, StringMatchGrader, gold_answer_text
from rc_jax.eval.verify import verify_answer

TIMEOUT_S = 1.5

# (response, gold, expected correct). Each expectation was checked against
# math-verify 0.9.0; the comment says which behaviour a row pins down.
GRADING_CASES = [
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
    (r"\boxed{(1, 3]}", "(1,3]", True),
    (r"\boxed{(1,3)}", "(1,3]", False),
    (r"\boxed{[2, \infty)}", r"[2,\infty)", True),
    (r"\boxed{(-\infty, 0) \cup (1, \infty)}", r"(-\infty,0)\cup(1,\infty)", True),
    (r"\boxed{\{1,2,3\}}", r"\{3,2,1\}", True),
    (r"\boxed{\{1,2\}}", r"\{1,2,3\}", False),
    (r"\boxed{(3, -1)}", "(3,-1)", True),
    (r"\boxed{(1, 2, 3)}", "(1,2,3)", True),
    (r"\boxed{(1,2,4)}", "(1,2,3)", False),
    (r"\boxed{30^\circ}", "30", True),
    (r"\boxed{30^{\circ}}", r"30^\circ", True),
    (r"\boxed{60^\circ}", "30", False),
    (r"\boxed{45\%}", "45", True),
    (r"\boxed{46\%}", r"45\%", False),
    (r"\boxed{\text{Monday}}", "Monday", True),
    (r"\boxed{\text{Tuesday}}", "Monday", False),
    (r"\boxed{\text{(B)}}", "B", True),
    (r"\boxed{C}", "B", False),
    (r"\boxed{1,000}", "1000", True),
    (r"\boxed{1{,}000}", "1000", True),
    (r"\boxed{12,345,678}", "12345678", True),
    (r"\boxed{1,001}", "1000", False),
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    (r"\boxed{3.14}", r"\pi", False),
    (r"\boxed{3.1416}", "3.1415", False),
    (r"\boxed{100}", "99", False),
    (r"\boxed{0.333}", r"\frac13", False),
    (r"\boxed{\frac{2}{3}}", r"\frac{3}{2}", False),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{x=3}", "3", True),
    (r"\boxed{\pi/2}", r"\frac{\pi}{2}", True),
    (r"\boxed{10^3}", "1000", True),
    (r"First \boxed{4}, wait, actually \boxed{5}.", "5", True),
    (r"First \boxed{5}, wait, actually \boxed{4}.", "5", False),
    ("The answer is 5.", "5", False),
    (r"so the answer is \boxed{5", "5", False),
    (r"\boxed{5} and then \boxed{", "5", False),
    (r"$\boxed 7$", "7", True),
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
