"""Toy RC experiment: data -> SFT -> RC RL -> evaluation -> plot (see docs/toy.md).

    python -m experiments.toy.run            # full run, writes experiments/toy/results/
    python -m experiments.toy.run --variant=noisy     # careless SFT teacher, writes
                                             # experiments/toy/results/noisy/
    python -m experiments.toy.run --smoke    # tiny version (about a minute), writes to
                                             # outputs/toy_smoke/results/
    python experiments/toy/run.py [...]      # same

Options: --work_dir (models, rollouts; default outputs/toy[_smoke]), --results_dir,
--reuse_sft (skip SFT when <work_dir>/sft was trained with the same settings),
--seed, --variant (base | noisy: see docs/toy.md).
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
    p.add_argument("--variant", default="base", choices=("base", "noisy"),
                   help="base: exact SFT teacher (RL has little to teach); noisy: a careless "
                        "SFT teacher whose slips RC RL learns to avoid (docs/toy.md)")
    args = p.parse_args(argv)
    # Imported here, not at the top: `--help` answers without loading JAX and the models.
    from experiments.toy import pipeline
    settings = pipeline.VARIANTS[args.variant]
    if args.smoke:  # the variant's options at the smoke sizes
        settings = dataclasses.replace(pipeline.SMOKE,
                                       **pipeline.VARIANT_OVERRIDES[args.variant])
    if args.seed is not None:
        settings = dataclasses.replace(settings, seed=args.seed)
    suffix = "" if args.variant == "base" else f"_{args.variant}"
    name = ("toy_smoke" if args.smoke else "toy") + suffix
    work = Path(args.work_dir or ROOT / "outputs" / name)
    default_results = ROOT / "experiments" / "toy" / "results"
    if args.variant != "base":
        default_results = default_results / args.variant
    results = Path(args.results_dir or (work / "results" if args.smoke else default_results))
    pipeline.run(settings, work_dir=work, results_dir=results, reuse_sft=args.reuse_sft)
    return 0


if __name__ == "__main__":
    sys.exit(main())
