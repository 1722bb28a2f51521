"""The one config schema (rc_jax.config): evaluation and training share their sections,
one `validate`, one resume hash."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rc_jax import config as run_config
from rc_jax.config import config_hash, data_split, default_config, semantic_dict, validate
from rc_jax.parallel.mesh import batch_shards_of, mesh_axis_sizes, parse_mesh_shape

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("model", "tokenizer", "data", "sampling", "rc")


def _experiment(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _leaves(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def test_training_schema_is_the_shared_sections_plus_its_own():
    ev = json.loads(default_config().to_json())
    tr = json.loads(default_config("train").to_json())
    for section in SHARED:
        only_eval = _leaves(ev[section]) - _leaves(tr[section])
        only_train = _leaves(tr[section]) - _leaves(ev[section])
        # What one kind adds to a shared section, and nothing else.
        assert only_eval == ({"engine", "scheduling", "refill_rows", "prompt_margin"}
                             if section == "rc" else set()), section
        assert only_train == {"model": {"param_dtype", "remat_policy"},
                              "data": {"shuffle", "seed"}}.get(section, set()), section
    assert {"rl", "checkpoint"} <= set(tr) and not {"rl", "checkpoint"} & set(ev)
    for field in ("output_dir", "mesh", "grading_timeout", "name", "method"):
        assert field in ev and field in tr
    # One definition: the shared defaults are the same unless training states its own.
    assert ev["data"]["split"] == tr["data"]["split"] == ""
    assert ev["sampling"] == tr["sampling"]
    assert (tr["method"], tr["model"]["dtype"], tr["rc"]["num_steps"]) == ("train", "bfloat16", 3)
    from rc_jax.rl import config as rl_config
    assert rl_config.default_config().to_json() == default_config("train").to_json()


def test_unknown_method_and_wrong_schema_name_the_field():
    with pytest.raises(ValueError, match="config.method: unknown method 'trian'"):
        default_config("trian")
    c = default_config()
    c.model.path, c.data.source = "builtin:tiny-random", "builtin:demo"
    c.method = "train"
    with pytest.raises(ValueError, match=r"config.method: 'train' needs the training schema"):
        validate(c)
    t = default_config("train")
    t.model.path, t.data.source = "builtin:tiny-random", "builtin:demo"
    t.method = "rc"
    with pytest.raises(ValueError, match=r"config.method: 'rc' needs the evaluation schema"):
        validate(t)


def test_temperature_zero_is_greedy_for_evaluation_and_refused_for_training():
    for method, ok in (("rc", True), ("train", False)):
        c = default_config(method)
        c.model.path, c.data.source = "builtin:tiny-random", "builtin:demo"
        if method == "train":
            c.rl.batch_size, c.rl.num_minibatches = 4, 1
        c.sampling.temperature = 0.0
        if ok:
            validate(c, device_count=1)
        else:
            with pytest.raises(ValueError, match=r"config.sampling.temperature: must be > 0 "
                                                 r"for RL \(log-probs divide by it\), got 0.0"):
                validate(c, device_count=1)
        c.sampling.temperature = -0.5
        with pytest.raises(ValueError, match="config.sampling.temperature: must be >= 0"):
            validate(c, device_count=1)


@pytest.mark.parametrize("method", ["rc", "train"])
def test_shared_checks_name_the_field_for_both_kinds(tmp_path, method):
    def check(field_value, match):
        c = default_config(method)
        c.model.path, c.data.source = "builtin:tiny-random", "builtin:demo"
        section, _, name = field_value[0].rpartition(".")
        setattr(c[section] if section else c, name, field_value[1])
        with pytest.raises(ValueError, match=match):
            validate(c, device_count=1)
    check(("model.path", str(tmp_path)), "config.model.path: directory .* has no config.json")
    check(("tokenizer.path", str(tmp_path / "nope")), "config.tokenizer.path: directory")
    check(("data.limit", -1), "config.data.limit: must be >= 0")
    check(("rc.num_steps", 0), "config.rc.num_steps: must be a positive integer, got 0")
    check(("sampling.top_p", 0.0), r"config.sampling.top_p: must be in \(0, 1\]")
    check(("grading_timeout", 0.0), "config.grading_timeout: must be > 0")
    check(("output_dir", ""), "config.output_dir: required")
    check(("mesh", "data:2,bogus:1"), "config.mesh: mesh: bad entry 'bogus:1'")


def test_training_split_defaults_to_train_unless_the_source_names_one():
    t = default_config("train")
    t.data.source = "hf:HerrHruby/acemath_rl_4b_inst_hard"
    assert data_split(t) == "train"
    t.data.source = "hf:MathArena/hmmt_nov_2025:test"  # the suffix is the split
    assert data_split(t) == ""
    t.data.split = "validation"  # an explicit split wins (the loader's rule)
    assert data_split(t) == "validation"
    e = default_config()
    e.data.source = "hf:HerrHruby/acemath_rl_4b_inst_hard"
    assert data_split(e) == ""  # evaluation: the loader picks (only split, else test, ...)
    # Training runs checkpointed with the former default data.split="train" still resume.
    t.data.source, t.data.split = "builtin:demo", ""
    before = config_hash(t)
    t.data.split = "train"
    assert config_hash(t) == before and semantic_dict(t)["data"]["split"] == "train"


# Resume hashes of the configs as shipped. They must not change silently: a new field
# that changes no result belongs to the non-semantic lists of rc_jax.config, and a new
# training field to `_ADDED_LATER_TRAIN` at its default, so that existing runs resume.
PINNED = {
    "default:rc": "82375edf373d8b1c", "default:train": "4dcfa08aeb3f0bcb",
    "demo": "0b0821a03daf8e40", "hmmt": "97d4ec66241ea978",
    "rct_tiny": "9d1b7782413b0b37", "rct_stage1": "82a1071629a85e66",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_resume_hashes_of_shipped_configs_are_unchanged(name):
    c = default_config(name.split(":")[1]) if name.startswith("default:") else _experiment(name)
    assert config_hash(c) == PINNED[name], (
        f"the resume hash of {name} changed: existing runs would no longer resume")


def _experiment_names():
    return sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("name", _experiment_names())
def test_every_experiment_config_loads_and_validates(tmp_path, name):
    c = _experiment(name)
    if not c.model.path or not c.model.path.startswith("builtin:"):
        c.model.path = "builtin:tiny-random"  # placeholder: a real checkpoint directory
    if c.method != run_config.TRAIN and c.summarizer.model.path:
        c.summarizer.model.path = str(tmp_path)
    devices = 1  # the slice the config is written for (a free axis: 1 device)
    for size in parse_mesh_shape(c.mesh).values():
        devices *= max(size, 1)
    validate(c, device_count=devices)


def test_batch_shards_of_a_mesh_spec():
    assert batch_shards_of("", 8) == 8  # everything on data
    assert batch_shards_of("data:4,fsdp:4", 16) == 16
    assert batch_shards_of("fsdp:1,tensor:4", 4) == 1
    assert batch_shards_of("data:2,tensor:-1", 8) == 2
    assert mesh_axis_sizes("fsdp:-1", 32) == {"data": 1, "fsdp": 32, "tensor": 1}
    with pytest.raises(ValueError, match="only one axis may be -1"):
        batch_shards_of("data:-1,fsdp:-1", 8)
    with pytest.raises(ValueError, match="need 4 devices, have 8"):
        batch_shards_of("data:4", 8)
