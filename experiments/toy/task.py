"""The toy problem family: a long chain of labelled modular operations.

A problem is a start value and N labelled operations, all modulo 10::

    7:a+3b+7c-5d+1

reads "start at 7; op a is +3, op b is +7, op c is -5, op d is +1; what is the final
value (mod 10)?" (answer: 7+3=0, 0+7=7, 7-5=2, 2+1=3 -> 3). Labels are the letters
a..z then A..F, so N <= 32; the toy tokenizer makes each labelled operation (`c-5`) one
token, so a problem is N + 2 tokens. Operations are +d or -d (d in 1..9), so every operation is a
bijection and the final value is uniform: a blind guess is right 10% of the time.
(Multiplication by the units 3, 7, 9 would keep that property but made the value table
too slow to learn for a CPU-sized model in an earlier version of this toy.)

One RC reasoning step continues from the state in the summary for at most `ops_per_step`
operations. It writes each operation as its label, the labelled operation copied from
the problem, the value before and the value after it; the step that does the last
operation then boxes the final value (an unfinished step gives no answer)::

    state ""      -> aa+370bb+707cc-572dd+123\\boxed{3}   (4 ops, the last ones: 20 tokens)
    state ""      -> aa+370bb+707cc-572dd+123              (4 ops of 6: no answer yet)
    state "d=3"   -> \\boxed{3}                              (nothing left to do)

(`cc-572` reads: next is op c; op c is `c-5`; 7 - 5 = 2. With the toy tokenizer that is
4 tokens, `c` `c-5` `7` `2`: finding the operation is a one-hop lookup of the label,
and the new value depends only on the two tokens before it.)

A summary records the last operation done and the value after it: ``d=3`` (empty
before any progress). So a problem of N operations needs ceil(N / ops_per_step)
reasoning steps, and the progress between steps fits in a 3-token summary: the
difficulty knob is N (and `ops_per_step`, fixed by the reasoning budget).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

MOD = 10
LABELS = "abcdefghijklmnopqrstuvwxyzABCDEF"
MAX_OPS = len(LABELS)
OPS = tuple(f"{s}{d}" for s in "+-" for d in range(1, 10))
BOX_OPEN, BOX_CLOSE = "\\boxed{", "}"

_STEP_RE = re.compile(r"([A-Za-z])\1([+\-][0-9])([0-9])([0-9])")
_SUMMARY_RE = re.compile(r"^\s*([A-Za-z])=([0-9])\s*$")


def apply_op(value: int, op: str) -> int:
    sign, d = op[0], int(op[1])
    if sign == "+":
        return (value + d) % MOD
    if sign == "-":
        return (value - d) % MOD
    raise ValueError(f"unknown operation {op!r}")


@dataclasses.dataclass(frozen=True)
class ChainProblem:
    """A start value and a list of operations; `values[k]` is the value after k ops."""
    start: int
    ops: tuple[str, ...]

    def __post_init__(self):
        if not 0 <= self.start < MOD:
            raise ValueError(f"start {self.start} not in [0, {MOD})")
        if not 1 <= len(self.ops) <= MAX_OPS:
            raise ValueError(f"a problem has 1..{MAX_OPS} operations, got {len(self.ops)}")
        for op in self.ops:
            if op not in OPS:
                raise ValueError(f"unknown operation {op!r}")

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def values(self) -> list[int]:
        out = [self.start]
        for op in self.ops:
            out.append(apply_op(out[-1], op))
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def text(self) -> str:
        return f"{self.start}:" + "".join(LABELS[i] + op for i, op in enumerate(self.ops))

    def steps_needed(self, ops_per_step: int) -> int:
        return -(-self.num_ops // ops_per_step)

    # ------------------------------------------------------------ traces
    def summary(self, k: int) -> str:
        """The summary of the state after k operations ("" for k = 0)."""
        if k == 0:
            return ""
        return f"{LABELS[k - 1]}={self.values[k]}"

    def reasoning(self, k: int, ops_per_step: int) -> str:
        """The reasoning step that continues from the state after k operations."""
        end = min(self.num_ops, k + ops_per_step)
        return self.write_step(k, self.values[k:end + 1])

    def write_step(self, k: int, written: Sequence[int]) -> str:
        """A reasoning step from the state after k operations that writes the values
        `written` (the value before operation k, then the value after each operation
        done); `reasoning` writes the correct ones."""
        end = k + len(written) - 1
        body = "".join(f"{LABELS[i]}{LABELS[i]}{self.ops[i]}{written[i - k]}{written[i - k + 1]}"
                       for i in range(k, end))
        if end < self.num_ops:  # unfinished: no answer (a boxed partial value would be
            return body         # right by chance 1 time in 10 and reward a wrong step)
        return f"{body}{BOX_OPEN}{written[-1]}{BOX_CLOSE}"

    def reference_rc(self, ops_per_step: int, num_steps: int) -> list[tuple[str, str]]:
        """(reasoning, summary) of every step of a perfect RC rollout."""
        out, k = [], 0
        for _ in range(num_steps):
            r = self.reasoning(k, ops_per_step)
            k = min(self.num_ops, k + ops_per_step)
            out.append((r, self.summary(k)))
        return out

    @classmethod
    def parse(cls, text: str) -> "ChainProblem":
        start, _, body = text.partition(":")
        ops = re.findall(r"[A-Za-z]([+\-][0-9])", body)
        return cls(int(start), tuple(ops))


def sample_problem(rng: np.random.Generator, num_ops: int) -> ChainProblem:
    ops = tuple(OPS[i] for i in rng.integers(0, len(OPS), size=num_ops))
    return ChainProblem(int(rng.integers(0, MOD)), ops)


def sample_problems(rng: np.random.Generator, count: int, min_ops: int, max_ops: int,
                    *, stratified: bool = True) -> list[ChainProblem]:
    """`count` problems with N in [min_ops, max_ops]: evenly spread over N (stratified)
    or uniform at random."""
    if not 1 <= min_ops <= max_ops <= MAX_OPS:
        raise ValueError(f"need 1 <= min_ops <= max_ops <= {MAX_OPS}, got {min_ops}, {max_ops}")
    span = max_ops - min_ops + 1
    if stratified:
        sizes = [min_ops + (i % span) for i in range(count)]
    else:
        sizes = [int(x) for x in rng.integers(min_ops, max_ops + 1, size=count)]
    return [sample_problem(rng, n) for n in sizes]


def problem_records(problems: Sequence[ChainProblem], prefix: str) -> list[dict]:
    """Problems in the project's data format (problem / answer / problem_id / num_ops)."""
    return [{"problem_id": f"{prefix}-{i:05d}", "problem": p.text, "answer": str(p.answer),
             "num_ops": p.num_ops} for i, p in enumerate(problems)]


# ------------------------------------------------------------------ reading model output
def last_state(reasoning: str) -> tuple[str, int] | None:
    """(label, value) of the last complete operation written in a reasoning text."""
    steps = _STEP_RE.findall(reasoning)
    if not steps:
        return None
    label, _, _, value = steps[-1]
    return label, int(value)


def summary_of(existing_summary: str, reasoning: str) -> str:
    """What the summarizer should write: the last op done in `reasoning`, else the
    existing summary unchanged."""
    state = last_state(reasoning)
    if state is None:
        return existing_summary
    return f"{state[0]}={state[1]}"


def parse_summary(summary: str) -> tuple[int, int] | None:
    """(ops done, value) of a well-formed summary; None when empty or malformed."""
    m = _SUMMARY_RE.match(summary)
    if not m:
        return None
    return LABELS.index(m.group(1)) + 1, int(m.group(2))
