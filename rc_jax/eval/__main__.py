"""Command line: ``python -m rc_jax.eval results.jsonl [more ...] --output_dir=DIR``.

Grades every step of every rollout in the given files (rc_jax JSONL or the
authors' JSON list), prints the per-step table and writes report.md,
metrics.json, graded.jsonl and the accuracy plots to ``--output_dir``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rc_jax.data.jsonio import DataError
from rc_jax.eval.grading import DEFAULT_TIMEOUT_S


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rc_jax.eval",
        description="Grade RC results per step and write a report: table, accuracy-vs-tokens plot, "
        "metrics.json and graded.jsonl.",
    )
    p.add_argument("inputs", nargs="+", help="results files: rc_jax JSONL or the authors' JSON list")
    p.add_argument("--output_dir", required=True, help="directory for report.md, metrics.json, graded.jsonl, plots")
    p.add_argument("--tokenizer", default=None, help="tokenizer path to count tokens when files lack token_counts")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per grading call (hard limit)")
    p.add_argument("--k", type=_ks, default=None, help="k values for pass@k / maj@k, e.g. 1,4,16 (default 1,2,4,..,n)")
    p.add_argument("--num_workers", type=int, default=None, help="grading processes (default: number of CPUs)")
    p.add_argument("--labels", default=None, help="comma-separated display labels, one per input")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rc_jax.eval.report import evaluate_files, format_report  # after parsing: --help stays fast

    labels = [l.strip() for l in args.labels.split(",")] if args.labels else None
    try:
        metrics = evaluate_files(
            args.inputs,
            args.output_dir,
            tokenizer=args.tokenizer,
            timeout_s=args.timeout,
            ks=args.k,
            num_workers=args.num_workers,
            labels=labels,
            progress=not args.no_progress,
        )
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(metrics))
    print(f"wrote {args.output_dir}/report.md, metrics.json, graded.jsonl and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
