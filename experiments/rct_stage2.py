"""RCT Stage II: continue from the Stage I policy on the "_with_dishsoap" data.

The authors released no Stage II script (docs/training.md, Stage II): the released RCT-4B is
step 120 of a run named `offline_..._with_dishsoap_16k_no_summ_curr`, i.e. the Stage I
recipe on the Stage II dataset, started from the Stage I policy. Here Stage I's final HF
export is both the initial policy and the frozen KL reference (the authors' reference
is the actor's initial weights). Whether their Stage II used the summary replay buffer
("offline"?) is not known; `--config.rl.replay_buffer=True` turns it on, with their
script's settings below (1 summary per problem, purge on add).

    python -m rc_jax.main --config=experiments/rct_stage2.py \
        --config.model.path=outputs/rct_stage1/export/step_<N>
"""
import importlib.util
from pathlib import Path


def _stage1():
    spec = importlib.util.spec_from_file_location(
        "rct_stage1", Path(__file__).with_name("rct_stage1.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _stage1()
    c.name = "rct_stage2"
    c.model.path = ""  # required override: Stage I's export, outputs/rct_stage1/export/step_N
    c.data.source = "hf:HerrHruby/acemath_rl_4b_inst_hard_with_dishsoap"
    c.rl.replay_samples_per_problem = 1
    c.rl.replay_purge_on_add = True
    c.output_dir = "outputs/rct_stage2"
    return c
