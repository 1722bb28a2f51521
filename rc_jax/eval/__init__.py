"""Evaluation: answer extraction, math grading with hard timeouts, per-step metrics, reports.

Light imports only here (no matplotlib, no math-verify in the calling process);
``rc_jax.eval.report`` holds ``evaluate_files`` and is imported lazily.
"""
from rc_jax.eval.extract import extract_boxed, find_boxed_all
from rc_jax.eval.grading import (
    DEFAULT_TIMEOUT_S,
    GradeResult,
    Grader,
    MathVerifyGrader,
    StringMatchGrader,
    default_grader,
    grade_one,
)
from rc_jax.eval.metrics import majority_at_k, pass_at_k
from rc_jax.eval.normalize import normalize_answer

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "GradeResult",
    "Grader",
    "MathVerifyGrader",
    "StringMatchGrader",
    "default_grader",
    "evaluate_files",
    "extract_boxed",
    "find_boxed_all",
    "grade_one",
    "majority_at_k",
    "normalize_answer",
    "pass_at_k",
]


def __getattr__(name: str):
    # Lazy: the report pulls in matplotlib, which the RL reward path does not need.
    if name == "evaluate_files":
        from rc_jax.eval.report import evaluate_files

        return evaluate_files
    raise AttributeError(f"module 'rc_jax.eval' has no attribute {name!r}")
