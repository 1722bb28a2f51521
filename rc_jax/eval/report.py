"""Evaluate results files: grade every step, compute metrics, write the report.

``evaluate_files`` is the entry point (also behind ``python -m rc_jax.eval``). For
each input file it grades the answer of every step of every rollout, computes
per-step metrics (``rc_jax.eval.metrics``) and writes to ``output_dir``:

* ``report.md``  - one Markdown table per input (accuracy +- s.e., pass@k,
  majority@k, mean tokens per step) plus notes and timed-out cases;
* ``accuracy_vs_tokens.png`` - accuracy vs cumulative tokens, one line per input
  (inputs without complete token counts are left out, and the report says so);
* ``accuracy_vs_compute.png`` - accuracy vs cumulative compute, prefill + decode tokens
  (``rc_jax.eval.metrics.compute_accounting``: RC re-reads its prompts every step,
  Delethink its carry-over), next to it;
* ``accuracy_vs_step.png`` - accuracy vs RC step, one line per input;
* ``metrics.json`` - everything above in machine-readable form;
* ``graded.jsonl`` - one line per (input, problem, sample, step).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from rc_jax.eval.grading import DEFAULT_TIMEOUT_S, Grader, GradeResult, MathVerifyGrader
from rc_jax.eval.metrics import SampleOutcome, StepOutcome, compute_metrics, default_ks
from rc_jax.eval.records import load_rollouts
from rc_jax.outputs import prepare_output_dir
from rc_jax.records import RolloutRecord

TokenCounter = Callable[[str], int]


# -- tokens --------------------------------------------------------------------


def make_token_counter(tokenizer: Any) -> TokenCounter | None:
    """A function text -> number of tokens, from a tokenizer path or object.

    Accepts None (no counter), a local tokenizer path/name for
    ``transformers.AutoTokenizer``, any object with ``encode`` (transformers or
    ``tokenizers`` style), or a callable returning a count.
    """
    if tokenizer is None:
        return None
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer  # heavy; only when re-tokenising

        spec = str(tokenizer)
        local = Path(spec).expanduser()
        if not local.exists() and (spec.startswith(("/", ".", "~")) or local.parent != Path(".")
                                   and local.parent.exists()):
            raise ValueError(f"tokenizer {spec!r}: no such directory")
        if local.is_dir() and not any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise ValueError(f"tokenizer {spec!r}: no tokenizer.json or tokenizer_config.json in this directory")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else spec)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ValueError(f"tokenizer {spec!r}: cannot be loaded ({first})") from None
    if hasattr(tokenizer, "encode"):
        encode = tokenizer.encode

        def count(text: str) -> int:
            try:
                return len(encode(text, add_special_tokens=False))
            except TypeError:  # `tokenizers.Tokenizer.encode` has no such keyword
                return len(encode(text))

        return count
    if callable(tokenizer):
        return lambda text: int(tokenizer(text))
    raise TypeError(f"tokenizer must be a path, an object with encode(), or a callable; got {type(tokenizer)}")


def _count_at(rollout: RolloutRecord, kind: str, step: int) -> int | None:
    counts = rollout.token_counts.get(kind)
    return counts[step] if counts is not None and step < len(counts) else None


def step_tokens(rollout: RolloutRecord, step: int,
                counter: TokenCounter | None) -> tuple[int | None, int | None, int | None]:
    """(prompt, reasoning, summary) tokens of one step; None where unknown.

    Recorded counts win; otherwise reasoning/summary text is re-tokenised with
    ``counter``. Prompt tokens cannot be rebuilt from the output (the template is
    not stored), so they come only from recorded counts. A step without summary
    text generated no summary: 0 tokens.
    """
    prompt = _count_at(rollout, "prompt", step)
    reasoning = _count_at(rollout, "reasoning", step)
    if reasoning is None and counter is not None:
        reasoning = counter(rollout.reasoning_text[step])
    summary = _count_at(rollout, "summary", step)
    if summary is None:
        if step >= len(rollout.summary_text):
            summary = 0
        elif counter is not None:
            summary = counter(rollout.summary_text[step])
    return prompt, reasoning, summary


# -- inputs --------------------------------------------------------------------


def _default_labels(paths: Sequence[str | Path], rollouts: Sequence[Sequence[RolloutRecord]]) -> list[str]:
    """The file's single ``method`` if it has one, else the file stem; made unique."""
    labels = []
    for path, rs in zip(paths, rollouts):
        methods = {r.method for r in rs}
        method = methods.pop() if len(methods) == 1 else None
        labels.append(method if method is not None else Path(path).stem)
    counts = Counter(labels)
    labels = [f"{l} [{Path(p).name}]" if counts[l] > 1 else l for l, p in zip(labels, paths)]
    seen: Counter[str] = Counter()
    unique = []
    for label in labels:
        seen[label] += 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


def _grade_all(
    rollouts: Sequence[Sequence[RolloutRecord]], grader: Grader, progress: bool
) -> list[list[list[GradeResult]]]:
    """Grades per input, rollout, step. One batch for all inputs: shared cache, full parallelism."""
    # Unreadable records (text that is not valid Unicode) are not sent to the grader:
    # every step is graded "unreadable" (no answer, incorrect) and the report lists them.
    items = [(text, r.label) for rs in rollouts for r in rs if not r.unreadable for text in r.answer_texts()]
    if isinstance(grader, MathVerifyGrader):
        flat = grader.grade_batch(items, progress=progress)
    else:
        flat = grader.grade_batch(items)
    if len(flat) != len(items):
        raise RuntimeError(f"grader returned {len(flat)} results for {len(items)} items")
    out, i = [], 0
    for rs in rollouts:
        per_input = []
        for r in rs:
            if r.unreadable:
                per_input.append([GradeResult(None, False, error=f"unreadable: {r.unreadable}")] * r.num_steps)
                continue
            per_input.append(flat[i : i + r.num_steps])
            i += r.num_steps
        out.append(per_input)
    return out


def _outcomes(
    rollouts: Sequence[RolloutRecord], grades: Sequence[Sequence[GradeResult]], counter: TokenCounter | None
) -> list[SampleOutcome]:
    samples = []
    for r, gs in zip(rollouts, grades):
        steps = []
        for t, g in enumerate(gs):
            prompt, reasoning, summary = step_tokens(r, t, counter)
            steps.append(StepOutcome(g.extracted, g.correct, g.timed_out, prompt, reasoning, summary,
                                     _count_at(r, "summary_prompt", t)))
        samples.append(SampleOutcome(str(r.problem_id), str(r.sample_id), tuple(steps)))
    return samples


def _token_notes(samples: Sequence[SampleOutcome], has_counter: bool) -> list[str]:
    steps = [s for sample in samples for s in sample.steps]
    missing = {
        kind: sum(getattr(s, f"{kind}_tokens") is None for s in steps) for kind in ("prompt", "reasoning", "summary")
    }
    notes = []
    if missing["reasoning"] or missing["summary"]:
        how = "" if has_counter else " (no token_counts in the file and no tokenizer given)"
        notes.append(
            f"token counts missing for {max(missing['reasoning'], missing['summary'])} of {len(steps)} steps{how}; "
            "affected token means are reported as missing, not estimated"
        )
    if missing["prompt"]:
        notes.append(f"prompt token counts missing for {missing['prompt']} of {len(steps)} "
                     "steps (only recorded counts are used)")
    return notes


def _graded_rows(label: str, rollouts: Sequence[RolloutRecord], grades) -> list[dict[str, Any]]:
    rows = []
    for r, gs in zip(rollouts, grades):
        for t, g in enumerate(gs):
            row = {
                "input": label,
                "problem_id": r.problem_id,
                "sample_id": r.sample_id,
                "step": t + 1,
                "extracted": g.extracted,
                "correct": g.correct,
                "timed_out": g.timed_out,
            }
            if g.error:
                row["error"] = g.error
            rows.append(row)
    return rows


# -- rendering -----------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _tok(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def format_table(input_metrics: dict[str, Any]) -> str:
    """Markdown table of one input's per-step metrics (percentages, mean tokens)."""
    ks = input_metrics["ks"]
    head = (
        ["step", "samples", "acc % ± s.e."]
        + [f"pass@{k}" for k in ks]
        + [f"maj@{k}" for k in ks]
        + ["prompt tok", "reasoning tok", "summary tok", "cumulative tok"]
        + ["prefill tok", "cumulative compute", "peak context"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for s in input_metrics["steps"]:
        acc = _pct(s["accuracy"]) + ("" if s["stderr"] is None else f" ± {100 * s['stderr']:.1f}")
        tok = s["mean_tokens"]
        comp = s.get("compute") or {}
        row = (
            [str(s["step"]), str(s["num_samples"]), acc]
            + [_pct(s["pass_at_k"][str(k)]) for k in ks]
            + [_pct(s["majority_at_k"][str(k)]) for k in ks]
            + [_tok(tok["prompt"]), _tok(tok["reasoning"]), _tok(tok["summary"]), _tok(tok["cumulative"])]
            + [_tok(comp.get("prefill")), _tok(comp.get("cumulative_total")), _tok(comp.get("peak_context"))]
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_report(metrics: dict[str, Any]) -> str:
    """The whole Markdown report: one section per input."""
    parts = ["# Evaluation report", ""]
    for inp in metrics["inputs"]:
        parts += [
            f"## {inp['label']}",
            "",
            f"`{inp['path']}`: {inp['num_problems']} problems, {inp['num_samples']} samples, "
            f"up to {inp['max_steps']} steps. Accuracy: mean over problems of the fraction of correct "
            "samples; ± clustered standard error over problems. Tokens: mean per sample; cumulative = "
            "reasoning + summary through the step; prefill = prompt tokens read by the step's phases; "
            "cumulative compute = prefill + generated tokens through the step; peak context = the "
            "longest sequence held through the step.",
            "",
            format_table(inp),
            "",
        ]
        parts += [f"- {note}" for note in inp["notes"]]
        if inp["timeouts"]:
            parts.append(f"- {len(inp['timeouts'])} grading calls timed out (counted as incorrect):")
            parts += [
                f"  - problem {t['problem_id']} sample {t['sample_id']} step {t['step']}: `{t['extracted']}`"
                for t in inp["timeouts"][:20]
            ]
        parts.append("")
    plots = metrics.get("outputs", {})
    if plots.get("accuracy_vs_tokens"):
        parts.append("![accuracy vs tokens](accuracy_vs_tokens.png)")
    if plots.get("accuracy_vs_compute"):
        parts.append("![accuracy vs compute](accuracy_vs_compute.png)")
    for note in metrics.get("plot_notes", []):
        parts.append(f"- {note}")
    return "\n".join(parts).rstrip() + "\n"


def _new_axes(xlabel: str):
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend switch

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Accuracy (%)")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _series(inp: dict[str, Any], x_key: str) -> tuple[list[float], list[float], list[float], list[int]]:
    xs, ys, es, steps = [], [], [], []
    for s in inp["steps"]:
        if x_key == "step":
            x = s["step"]
        elif x_key == "compute":
            x = (s.get("compute") or {}).get("cumulative_total")
        else:
            x = s["mean_tokens"]["cumulative"]
        if x is None or s["accuracy"] is None:
            continue
        xs.append(x)
        ys.append(100 * s["accuracy"])
        es.append(100 * (s["stderr"] or 0.0))
        steps.append(s["step"])
    return xs, ys, es, steps


def plot_accuracy(metrics: dict[str, Any], path: str | Path, x: str = "tokens") -> list[str]:
    """Plot accuracy vs cumulative tokens (``x="tokens"``, log scale), vs cumulative compute
    (``x="compute"``: prefill + decode tokens, log scale) or vs step.

    One line per input, error bars = s.e., points annotated with their step.
    Returns the labels of the inputs that had data to plot; writes nothing if none.
    """
    xlabel = {
        "tokens": "Total tokens spent (reasoning + summary, cumulative mean per sample)",
        "compute": "Total compute (prefill + decode tokens, cumulative mean per sample)",
    }.get(x, "RC step")
    fig, ax = _new_axes(xlabel)
    plotted = []
    for inp in metrics["inputs"]:
        xs, ys, es, steps = _series(inp, x if x in ("step", "compute") else "tokens")
        if not xs:
            continue
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=inp["label"])
        if x != "step":
            for xi, yi, st in zip(xs, ys, steps):
                ax.annotate(str(st), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        plotted.append(inp["label"])
    if not plotted:
        return []
    if x != "step":
        positive = all(v > 0 for inp in metrics["inputs"] for v in _series(inp, x)[0])
        if positive:
            ax.set_xscale("log")
        ax.set_title("Accuracy vs. total tokens (labels: step)" if x == "tokens"
                     else "Accuracy vs. total compute, prefill + decode (labels: step)")
    else:
        ax.set_title("Accuracy per step")
    ax.legend()
    fig.savefig(str(path), dpi=150)
    return plotted


# -- entry point ---------------------------------------------------------------


def evaluate_files(
    paths: Sequence[str | Path],
    output_dir: str | Path | None = None,
    *,
    grader: Grader | None = None,
    tokenizer: Any = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ks: Sequence[int] | None = None,
    num_workers: int | None = None,
    labels: Sequence[str] | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Grade and summarise results files; write the report to ``output_dir``.

    Args:
      paths: rc_jax JSONL files and/or the authors' JSON-list files.
      output_dir: where to write report.md, metrics.json, graded.jsonl and the
        plots; None computes the metrics without writing anything.
      grader: any ``Grader``; default a ``MathVerifyGrader(timeout_s, num_workers)``
        created and closed here.
      tokenizer: path or object used to count tokens when a file has no
        ``token_counts`` (see ``make_token_counter``); without either, token
        metrics are reported missing.
      timeout_s: hard limit per grading call of the default grader.
      ks: k values for pass@k and majority@k; default 1, powers of two, n.
      labels: one display label per path (default: the file's ``method`` or stem).
      progress: show a tqdm bar while grading.
      plots: write the PNG plots.

    Returns:
      The metrics dict also written to ``metrics.json``.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("evaluate_files needs at least one input file")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"got {len(labels)} labels for {len(paths)} files")
    if output_dir is not None:  # before grading: a bad output_dir fails at once
        prepare_output_dir(output_dir)
    rollouts = [load_rollouts(p) for p in paths]
    labels = list(labels) if labels is not None else _default_labels(paths, rollouts)
    counter = make_token_counter(tokenizer)

    own_grader = grader is None
    active = grader if grader is not None else MathVerifyGrader(timeout_s=timeout_s, num_workers=num_workers)
    try:
        grades = _grade_all(rollouts, active, progress)
    finally:
        if own_grader:
            active.close()  # type: ignore[attr-defined]

    if ks is None:
        max_n = max(max(Counter(str(r.problem_id) for r in rs).values()) for rs in rollouts)
        ks = default_ks(max_n)
    inputs, graded_rows = [], []
    for path, label, rs, gs in zip(paths, labels, rollouts, grades):
        samples = _outcomes(rs, gs, counter)
        m = compute_metrics(samples, ks)
        m["notes"] += _token_notes(samples, counter is not None)
        unreadable = [r.unreadable for r in rs if r.unreadable]
        if unreadable:
            m["notes"].append(
                f"{len(unreadable)} unreadable record(s) graded as incorrect with no answer: "
                + "; ".join(unreadable[:5])
                + (f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
            )
        rows = _graded_rows(label, rs, gs)
        timeouts = [
            {k: row[k] for k in ("problem_id", "sample_id", "step")} | {"extracted": (row["extracted"] or "")[:200]}
            for row in rows
            if row["timed_out"]
        ]
        inputs.append({"label": label, "path": str(path), **m, "timeouts": timeouts})
        graded_rows += rows

    metrics: dict[str, Any] = {
        "settings": {
            "grader": type(active).__name__,
            "grading_mode": getattr(active, "mode", None),
            "timeout_s": timeout_s if own_grader else getattr(active, "timeout_s", None),
            "ks": list(ks),
            "tokenizer": str(tokenizer) if isinstance(tokenizer, (str, Path))
            else (type(tokenizer).__name__ if tokenizer else None),
            "step_numbering": "1-based",
        },
        "inputs": inputs,
    }
    if output_dir is not None:
        _write_outputs(Path(output_dir), metrics, graded_rows, plots)
    return metrics


def _write_outputs(out: Path, metrics: dict[str, Any], graded_rows: list[dict[str, Any]], plots: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str | None] = {"metrics": str(out / "metrics.json"), "graded": str(out / "graded.jsonl")}
    plot_notes = []
    if plots:
        for kind, name in (("tokens", "accuracy_vs_tokens.png"), ("compute", "accuracy_vs_compute.png"),
                           ("step", "accuracy_vs_step.png")):
            tmp = out / f".{name}.tmp.png"
            try:
                plotted = plot_accuracy(metrics, tmp, x=kind)
                if plotted:
                    os.replace(tmp, out / name)
            finally:
                tmp.unlink(missing_ok=True)
            outputs[f"accuracy_vs_{kind}"] = str(out / name) if plotted else None
            if kind in ("tokens", "compute"):
                left_out = [i["label"] for i in metrics["inputs"] if i["label"] not in plotted]
                if left_out:
                    plot_notes.append(
                        f"not in the {kind} plot (no complete token counts): {', '.join(left_out)}"
                    )
    outputs["report"] = str(out / "report.md")
    metrics["outputs"] = outputs
    metrics["plot_notes"] = plot_notes
    # Each file is written whole to a temporary name, then renamed: a failure leaves the
    # previous report in place rather than a half-written one.
    _write_atomic(out / "graded.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in graded_rows))
    _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(out / "report.md", format_report(metrics))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
