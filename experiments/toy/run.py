"""Toy RC experiment: data -> SFT -> RC RL -> evaluation -> plot (see docs/toy.md).

    python -m experiments.toy.run            # full run, writes experiments/toy/results/
    python -m experiments.toy.run --smoke    # tiny version (about a minute), writes to
                                             # outputs/toy_smoke/results/
    python experiments/toy/run.py [...]      # same

Options: --work_dir (models, rollouts; default outputs/toy[_smoke]), --results_dir,
--reuse_sft (skip SFT when <work_dir>/sft was trained with the same settings),
--seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # the program, not an import (tests): see rc_jax/main.py
    os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python experiments/toy/run.py` from anywhere
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny, fast version (tests)")
    p.add_argument("--work_dir", default=None)
    p.add_argument("--results_dir", default=None)
    p.add_argument("--reuse_sft", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    # Imported here, not at the top: `--help` answers without loading JAX and the models.
    from experiments.toy import pipeline
    settings = pipeline.SMOKE if args.smoke else pipeline.FULL
    if args.seed is not None:
        settings = dataclasses.replace(settings, seed=args.seed)
    name = "toy_smoke" if args.smoke else "toy"
    work = Path(args.work_dir or ROOT / "outputs" / name)
    results = Path(args.results_dir or (work / "results" if args.smoke
                                        else ROOT / "experiments" / "toy" / "results"))
    pipeline.run(settings, work_dir=work, results_dir=results, reuse_sft=args.reuse_sft)
    return 0


if __name__ == "__main__":
    sys.exit(main())
