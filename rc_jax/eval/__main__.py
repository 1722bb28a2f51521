"""Command line: ``python -m rc_jax.eval results.jsonl [more ...] --output_dir=DIR``.

Grades every step of every rollout in the given files (rc_jax JSONL or the
authors' JSON list), prints the per-step table and writes report.md,
metrics.json, graded.jsonl and the accuracy plots to ``--output_dir``.

``--grading=paper,rc_jax`` grades with several modes (``rc_jax.eval.grading.GRADING_MODES``:
``paper`` reproduces the paper authors' evaluator, ``rc_jax`` is rc_jax's own): each
mode's full report goes to ``--output_dir/<mode>/``, and a side-by-side per-step table
with the number of answers the modes grade differently is printed and written to
``grading_comparison.md`` / ``.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from rc_jax.data.jsonio import DataError
from rc_jax.eval.grading import DEFAULT_TIMEOUT_S, GRADING_MODES, MathVerifyGrader


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


def _modes(text: str) -> list[str]:
    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in modes if m not in GRADING_MODES]
    if not modes or bad:
        raise argparse.ArgumentTypeError(
            f"--grading must be comma-separated modes from {', '.join(GRADING_MODES)}, got {text!r}")
    return modes


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
    p.add_argument(
        "--grading",
        type=_modes,
        default=["rc_jax"],
        help="grading mode(s): rc_jax (default), paper (the paper authors' evaluator) or both, "
        "e.g. paper,rc_jax for a side-by-side comparison",
    )
    return p


def compare_grading(graded: dict[str, list[dict[str, Any]]], metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per input and step: each mode's accuracy and how many answers the modes grade differently.

    ``graded``: mode -> rows of its graded.jsonl (same rollouts, same order);
    ``metrics``: mode -> its metrics dict.
    """
    modes = list(graded)
    first = graded[modes[0]]
    for m in modes[1:]:
        keys = [(r["input"], r["problem_id"], r["sample_id"], r["step"]) for r in graded[m]]
        if keys != [(r["input"], r["problem_id"], r["sample_id"], r["step"]) for r in first]:
            raise RuntimeError(f"grading modes {modes[0]} and {m} graded different answers")
    inputs = []
    for n, inp in enumerate(metrics[modes[0]]["inputs"]):
        label = inp["label"]
        idx = [i for i, r in enumerate(first) if r["input"] == label]
        steps = []
        for s in inp["steps"]:
            at = [i for i in idx if first[i]["step"] == s["step"]]
            correct = {m: [bool(graded[m][i]["correct"]) for i in at] for m in modes}
            differ = sum(len({correct[m][j] for m in modes}) > 1 for j in range(len(at)))
            steps.append(
                {
                    "step": s["step"],
                    "accuracy": {m: metrics[m]["inputs"][n]["steps"][s["step"] - 1]["accuracy"] for m in modes},
                    "correct": {m: sum(correct[m]) for m in modes},
                    "answers": len(at),
                    "disagree": differ,
                }
            )
        only = {m: sum(graded[m][i]["correct"] and not any(graded[o][i]["correct"] for o in modes if o != m)
                       for i in idx) for m in modes}
        inputs.append(
            {
                "label": label,
                "answers": len(idx),
                "disagree": sum(s["disagree"] for s in steps),
                "correct_only_in": only,
                "steps": steps,
            }
        )
    return {"modes": modes, "inputs": inputs, "disagree": sum(i["disagree"] for i in inputs),
            "answers": sum(i["answers"] for i in inputs)}


def format_comparison(cmp: dict[str, Any]) -> str:
    """Markdown: per input, a per-step table of each mode's accuracy and the disagreements."""
    modes = cmp["modes"]
    parts = [
        "# Grading modes side by side",
        "",
        "Accuracy per step under each grading mode (`paper`: the paper authors' evaluator; "
        "`rc_jax`: rc_jax's own); *disagree*: answers graded correct by one mode and wrong by another.",
        "",
    ]
    for inp in cmp["inputs"]:
        only = ", ".join(f"{n} correct only under {m}" for m, n in inp["correct_only_in"].items())
        parts += [
            f"## {inp['label']}",
            "",
            f"{inp['disagree']} of {inp['answers']} answers graded differently ({only}).",
            "",
            "| step | " + " | ".join(f"acc {m}" for m in modes) + " | disagree |",
            "|---:|" + "---:|" * len(modes) + "---:|",
        ]
        for s in inp["steps"]:
            accs = " | ".join("-" if s["accuracy"][m] is None else f"{100 * s['accuracy'][m]:.1f}%" for m in modes)
            parts.append(f"| {s['step']} | {accs} | {s['disagree']} / {s['answers']} |")
        parts.append("")
    parts.append(f"Total: {cmp['disagree']} of {cmp['answers']} answers graded differently.")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # why: the report pulls in matplotlib; after parsing, --help stays fast
    from rc_jax.eval.report import evaluate_files, format_report

    labels = [l.strip() for l in args.labels.split(",")] if args.labels else None
    several = len(args.grading) > 1
    all_metrics: dict[str, dict[str, Any]] = {}
    for mode in args.grading:
        out = Path(args.output_dir) / mode if several else Path(args.output_dir)
        try:
            with MathVerifyGrader(timeout_s=args.timeout, num_workers=args.num_workers, mode=mode) as grader:
                all_metrics[mode] = evaluate_files(
                    args.inputs,
                    out,
                    grader=grader,
                    tokenizer=args.tokenizer,
                    timeout_s=args.timeout,
                    ks=args.k,
                    labels=labels,
                    progress=not args.no_progress,
                )
        except (DataError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not several:
            print(format_report(all_metrics[mode]))
            print(f"wrote {out}/report.md, metrics.json, graded.jsonl and plots (grading mode {mode})")
            return 0
    graded = {
        mode: [json.loads(line) for line in (Path(args.output_dir) / mode / "graded.jsonl").open(encoding="utf-8")]
        for mode in args.grading
    }
    cmp = compare_grading(graded, all_metrics)
    text = format_comparison(cmp)
    out = Path(args.output_dir)
    (out / "grading_comparison.md").write_text(text, encoding="utf-8")
    (out / "grading_comparison.json").write_text(json.dumps(cmp, indent=2) + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {out}/grading_comparison.md and .json; each mode's report in {out}/<mode>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
