#!/usr/bin/env bash
# The README's first command, run the way a newcomer runs it (.ci/run calls this first):
# a fresh `python -m venv` (no system site-packages, no test extras, no pip cache), then
#     pip install -e . && python -m rc_jax.main --config=experiments/demo.py
# verbatim except for --config.output_dir, then a check of its results and first screen.
# The demo model is fetched and converted into $RC_JAX_CACHE (default: a fresh temporary
# directory, as on a new machine). Usage: bash scripts/first_run.sh [work_dir]
set -uo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
export RC_JAX_CACHE=${RC_JAX_CACHE:-$work/cache}
export PIP_NO_CACHE_DIR=1
demo_out="$work/demo"
log="$work/first_run.log"
python -m venv "$work/venv" || { echo "first run: could not create a venv"; exit 1; }
start=$(date +%s)
(
  source "$work/venv/bin/activate"
  pip install -e . && python -m rc_jax.main --config=experiments/demo.py \
    --config.output_dir="$demo_out"
) > "$log" 2>&1
status=$?
echo "first run: install + demo took $(( $(date +%s) - start )) s (log: $log)"
if [ "$status" -ne 0 ]; then tail -40 "$log"; echo "first run: the README's first command failed"; exit 1; fi
"$work/venv/bin/python" - "$demo_out" "$log" <<'PY' || exit 1
import json, re, sys
from pathlib import Path
out, log = Path(sys.argv[1]), Path(sys.argv[2]).read_text(errors="replace")
lines = (out / "results.jsonl").read_text().splitlines()
assert len(lines) == 4, f"expected 4 results lines, got {len(lines)}"
for line in lines:
    r = json.loads(line)
    assert len(r["reasoning_store"]) == len(r["summarization_store"]) == 3, r["problem_id"]
    assert all(0 < n <= 200 for n in r["token_counts"]["reasoning"]), r["token_counts"]
assert (out / "metrics.json").exists() and (out / "accuracy_vs_tokens.png").exists()
# The first screen: the banner and the table, no backend probing or absl INFO lines.
demo = log[log.index("rc_jax: method="):] if "rc_jax: method=" in log else log
noise = [l for l in log.splitlines() if "Unable to initialize backend" in l
         or re.match(r"I\d{4} \d\d:\d\d:\d\d", l)]
assert not noise, f"console noise: {noise[:3]}"
assert "step  accuracy" in demo, "no per-step table printed"
print(f"first run ok: {len(lines)} rollouts x 3 steps in {out}")
PY
