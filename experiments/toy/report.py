"""The toy's results: summary numbers, the Markdown table and the accuracy-vs-tokens plot."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

ORACLE = "perfect RC model (fraction of problems solvable in T steps)"


def _curve(inp: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for st in inp["steps"]:
        out.append({"step": st["step"], "tokens": st["mean_tokens"]["cumulative"],
                    "accuracy": st["accuracy"], "stderr": st["stderr"],
                    "no_answer": st["no_answer"], "num_samples": st["num_samples"]})
    return out


def summarize(metrics: dict[str, Any], difficulty: dict[str, dict[int, float]],
              steps_needed: dict[str, int], s) -> dict[str, Any]:
    """Curves per method, the oracle, and the two checks the issue asks for."""
    curves = {inp["label"]: _curve(inp) for inp in metrics["inputs"]}
    needed = list(steps_needed.values())
    oracle = [sum(n <= t for n in needed) / len(needed) for t in range(1, s.t_eval + 1)]
    labels = list(curves)
    ar, sft_rc, rl_rc = labels[0], labels[1], labels[2]
    c = curves[rl_rc]
    tt, te = s.t_train, s.t_eval

    def diff(a: dict, b: dict) -> dict[str, float]:
        d = a["accuracy"] - b["accuracy"]
        se = math.sqrt((a["stderr"] or 0) ** 2 + (b["stderr"] or 0) ** 2)
        return {"difference": d, "stderr": se, "z": d / se if se > 0 else float("inf")}

    final = {m: curves[m][-1] for m in labels}
    checks = {
        "rl_rc_accuracy_at_t_train": c[tt - 1]["accuracy"],
        "rl_rc_accuracy_at_t_eval": c[te - 1]["accuracy"],
        "rl_rc_gain_beyond_t_train": diff(c[te - 1], c[tt - 1]),
        "rl_rc_still_rising_beyond_t_train": c[te - 1]["accuracy"] > c[tt - 1]["accuracy"],
        "rl_rc_per_step_gain_after_t_train": [
            c[t]["accuracy"] - c[t - 1]["accuracy"] for t in range(tt, te)],
        "largest_budget": {m: {"tokens": final[m]["tokens"], "accuracy": final[m]["accuracy"],
                               "stderr": final[m]["stderr"]} for m in labels},
        "c_minus_a_at_largest_budget": diff(final[rl_rc], final[ar]),
        "c_minus_b_at_largest_budget": diff(final[rl_rc], final[sft_rc]),
        "c_above_a_and_b_at_largest_budget": (final[rl_rc]["accuracy"] > final[ar]["accuracy"]
                                              and final[rl_rc]["accuracy"] > final[sft_rc]["accuracy"]),
    }
    return {"curves": curves, "oracle": oracle, "accuracy_by_steps_needed_at_t_eval": {
        m: {str(k): v for k, v in d.items()} for m, d in difficulty.items()},
        "problems_by_steps_needed": {str(k): needed.count(k) for k in sorted(set(needed))},
        "checks": checks, "methods": labels}


def paired_interval(paired: dict[str, Any], t: int) -> dict[str, Any]:
    """`rl_vs_sft_rc` of metrics.json: a paired difference (`evaluate.paired_difference`:
    mean of per-(problem, sample) differences and its standard error) as percentage points
    with a normal 95% interval (mean ± 1.96 s.e.; 512 pairs), and the exact two-sided sign
    test (McNemar) on the discordant pairs, which assumes nothing about the distribution."""
    d, se, n = paired["difference"], paired["stderr"], paired["pairs"]
    wins, losses = paired["a_only"], paired["b_only"]
    m = wins + losses
    tail = sum(math.comb(m, i) for i in range(min(wins, losses) + 1)) / 2 ** m if m else 1.0
    return {"t": t, "paired_diff": 100 * d, "ci95_low": 100 * (d - 1.96 * se),
            "ci95_high": 100 * (d + 1.96 * se), "n_pairs": n, "rl_only": wins,
            "sft_only": losses, "sign_test_p": min(1.0, 2 * tail),
            "test": "paired: same problems and sampling keys on both sides; mean +- 1.96 "
                    "s.e. of the per-pair differences; exact two-sided sign test on the "
                    "pairs solved by one side only"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    labels = summary["methods"]
    curves = summary["curves"]
    lines = [
        f"Toy RC (seed {s['seed']}, settings {s['hash']}): accuracy (%) ± s.e. and mean cumulative "
        f"tokens per sample (reasoning + summary) after T steps. "
        f"H_R = {s['max_reasoning_tokens']}, H_S = {s['max_summary_tokens']}, "
        f"T_train = {s['t_train']}; autoregressive rows read one generation of up to "
        f"{s['t_eval'] * (s['max_reasoning_tokens'] + s['max_summary_tokens'])} tokens at "
        f"every {s['max_reasoning_tokens'] + s['max_summary_tokens']} tokens.",
        "",
        "| T | " + " | ".join(f"{m}: acc" for m in labels) + " | oracle |",
        "|---|" + "---|" * len(labels) + "---|",
    ]
    for t in range(s["t_eval"]):
        cells = []
        for m in labels:
            row = curves[m][t]
            cells.append(f"{_pct(row['accuracy'])} ± {_pct(row['stderr'])} "
                         f"({row['tokens']:.0f} tok)")
        mark = " (T_train)" if t + 1 == s["t_train"] else ""
        lines.append(f"| {t + 1}{mark} | " + " | ".join(cells)
                     + f" | {_pct(summary['oracle'][t])} |")
    lines += ["", f"Accuracy (%) at T = {s['t_eval']} by the number of RC steps a problem "
              f"needs (ceil(N / {s['ops_per_step']})):", ""]
    by = summary["accuracy_by_steps_needed_at_t_eval"]
    counts = summary["problems_by_steps_needed"]
    keys = sorted(counts, key=int)
    lines.append("| method | " + " | ".join(f"{k} ({counts[k]})" for k in keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for m in labels:
        lines.append(f"| {m} | " + " | ".join(_pct(by[m].get(k)) for k in keys) + " |")
    ch = summary["checks"]
    g = ch["rl_rc_gain_beyond_t_train"]
    lines += ["", f"RC-RL with RC decoding: {_pct(ch['rl_rc_accuracy_at_t_train'])}% at "
              f"T_train = {s['t_train']} -> {_pct(ch['rl_rc_accuracy_at_t_eval'])}% at "
              f"T = {s['t_eval']} ({100 * g['difference']:+.1f} ± {100 * g['stderr']:.1f} points).",
              f"At the largest budget, (c) - (a) = {100 * ch['c_minus_a_at_largest_budget']['difference']:+.1f} "
              f"± {100 * ch['c_minus_a_at_largest_budget']['stderr']:.1f} points, "
              f"(c) - (b) = {100 * ch['c_minus_b_at_largest_budget']['difference']:+.1f} "
              f"± {100 * ch['c_minus_b_at_largest_budget']['stderr']:.1f} points."]
    paired = ch.get("paired_at_largest_budget")
    if paired:
        cb = paired["c_minus_b"]
        lines.append(f"Paired over the same {cb['pairs']} (problem, sample) rollouts: (c) - (b) = "
                     f"{100 * cb['difference']:+.1f} ± {100 * cb['stderr']:.1f} points "
                     f"({cb['a_only']} solved only by (c), {cb['b_only']} only by (b)).")
        iv = summary.get("rl_vs_sft_rc")
        if iv:
            lines.append(f"RC-RL vs SFT with RC decoding at T = {iv['t']}: paired 95% interval "
                         f"[{iv['ci95_low']:+.1f}, {iv['ci95_high']:+.1f}] points, sign test "
                         f"p = {iv['sign_test_p']:.2g}.")
        be = paired.get("b_minus_e")
        if be:
            lines.append(f"SFT model, RC decoding vs Delethink, paired: (b) - (e) = "
                         f"{100 * be['difference']:+.1f} ± {100 * be['stderr']:.1f} points "
                         f"({be['a_only']} solved only by (b), {be['b_only']} only by (e)).")
    lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: str | Path) -> None:
    s = summary["settings"]
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    styles = {0: dict(color="tab:gray", marker="s", linestyle="-"),
              1: dict(color="tab:blue", marker="o", linestyle="-"),
              2: dict(color="tab:red", marker="o", linestyle="-", linewidth=2),
              3: dict(color="tab:orange", marker="^", linestyle=":"),
              4: dict(color="tab:purple", marker="D", linestyle="--")}
    curves = summary["curves"]
    for i, m in enumerate(summary["methods"]):
        pts = [p for p in curves[m] if p["tokens"] is not None and p["accuracy"] is not None]
        xs = [p["tokens"] for p in pts]
        ys = [100 * p["accuracy"] for p in pts]
        es = [100 * (p["stderr"] or 0) for p in pts]
        ax.errorbar(xs, ys, yerr=es, capsize=3, label=m, **styles.get(i, {}))
        if i in (1, 2):
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(f"T={p['step']}", (x, y), textcoords="offset points",
                            xytext=(4, -10 if i == 1 else 5), fontsize=7,
                            color=styles[i]["color"])
    rc = curves[summary["methods"][1]]
    ax.plot([p["tokens"] for p in rc], [100 * o for o in summary["oracle"]], color="black",
            linestyle="--", linewidth=1, label="perfect RC model (oracle)")
    x_train = curves[summary["methods"][2]][s["t_train"] - 1]["tokens"]
    ax.axvline(x_train, color="tab:red", linestyle="-.", linewidth=0.8)
    ax.annotate(f"T_train = {s['t_train']}", (x_train, 2), textcoords="offset points",
                xytext=(4, 0), fontsize=8, color="tab:red")
    ax.set_xlabel("total tokens per problem (reasoning + summaries, mean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Toy RC: chains of 1-{s['eval_max_ops']} modular operations, "
                 f"{s['ops_per_step']} fit in one step (H_R = {s['max_reasoning_tokens']})",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(str(path), dpi=130)


def examples(records: dict[str, Sequence[dict]], eval_records: Sequence[dict],
             count: int = 2) -> dict[str, list[dict]]:
    """A couple of full rollouts per method (the longest problems), for the docs."""
    longest = sorted(eval_records, key=lambda r: -r["num_ops"])[:count]
    ids = {r["problem_id"] for r in longest}
    out = {}
    for m, rs in records.items():
        out[m] = [{"problem": r["problem"], "label": r["label"],
                   "reasoning_store": r["reasoning_store"],
                   "summarization_store": r["summarization_store"]}
                  for r in rs if r["problem_id"] in ids and r["sample_id"] == 0]
    return out
