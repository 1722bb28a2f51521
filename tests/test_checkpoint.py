"""HF safetensors checkpoints <-> rc_jax params: logits parity with `transformers`,
exact round trips (single file and sharded), bfloat16, sharded placement, and one-line
errors that name the culprit on bad input.

Tests that need torch/transformers skip cleanly without them; the rest use checkpoints
written by rc_jax itself (`write_random_checkpoint`).
"""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from helpers import left_padded_batch, tiny_config, tiny_hf_config
from rc_jax.models import (forward, init_params, load_hf_checkpoint, param_shapes, positions_from_mask,
                           save_hf_checkpoint)
from rc_jax.models.checkpoint import hf_state_dict
from rc_jax.models.safetensors_io import SafetensorsFile, save_file

VARIANTS = [("qwen3", False), ("qwen3", True), ("qwen2", False), ("qwen2", True),
            ("llama", False), ("llama", True)]
VARIANT_IDS = [f"{m}-{'tied' if t else 'untied'}" for m, t in VARIANTS]
LENGTHS = (9, 5, 1)  # left-padded rows, including a single-token row


# --------------------------------------------------------------------------- helpers
def _tree_equal(a, b) -> None:
    """Same structure, dtypes and bits (compared after an exact cast to float32)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def write_random_checkpoint(path: Path, model_type: str = "qwen3", tied: bool = False,
                            seed: int = 0):
    """Random params (numpy, no compilation: fast) saved as an HF directory."""
    config = tiny_config(model_type, tied)
    rng = np.random.RandomState(seed)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), param_shapes(config))
    save_hf_checkpoint(path, config, params)
    return config, params


def _our_logits(config, params, tokens, mask) -> np.ndarray:
    m = jnp.asarray(mask)
    logits, _ = forward(params, config, jnp.asarray(tokens), positions_from_mask(m),
                        token_mask=m)
    return np.asarray(logits)


def _hf_logits(model, tokens, mask) -> np.ndarray:
    import torch
    mask_t = torch.as_tensor(mask.astype(np.int64))
    positions = torch.clamp(torch.cumsum(mask_t, dim=-1) - 1, min=0)
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens.astype(np.int64)), attention_mask=mask_t,
                    position_ids=positions)
    return out.logits.float().numpy()


def _assert_logits_close(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray,
                         rel: float = 1e-4) -> None:
    """max |ours - ref| over real (non-pad) positions <= rel * max |ref|."""
    a, b = ours[mask], ref[mask]
    scale = float(np.max(np.abs(b)))
    err = float(np.max(np.abs(a - b)))
    assert scale > 1.0, "degenerate logits: the test would not be meaningful"
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} * max |logit| {scale:.3g}"


def _randomize_hf_(model, seed: int) -> None:
    """Every weight random: matrices N(0, 0.3), norm weights 1 + 0.3 N, biases N(0, 0.3)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3
            p.copy_(1.0 + noise if "norm" in name else noise)


def _hf_from_dir(path: Path):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                 attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """factory(model_type, tied) -> (HF model, directory saved by save_pretrained); cached."""
    cache: dict = {}

    def make(model_type: str, tied: bool):
        key = (model_type, tied)
        if key not in cache:
            torch = pytest.importorskip("torch")
            transformers = pytest.importorskip("transformers")
            hf = tiny_hf_config(model_type, tied)
            hf.pop("architectures")
            hf.pop("torch_dtype")
            hf_config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(
                hf_config, attn_implementation="eager").eval()
            _randomize_hf_(model, seed=len(cache) + 1)
            if tied:
                assert model.lm_head.weight is model.model.embed_tokens.weight
            path = tmp_path_factory.mktemp(f"hf_{model_type}_{'tied' if tied else 'untied'}")
            model.save_pretrained(str(path), safe_serialization=True)
            cache[key] = (model, path)
        return cache[key]

    return make


# ------------------------------------------------------------- 1. parity with transformers
@pytest.mark.parametrize("model_type,tied", VARIANTS, ids=VARIANT_IDS)
def test_logits_match_transformers(hf_checkpoint, model_type, tied):
    model, path = hf_checkpoint(model_type, tied)
    config, params = load_hf_checkpoint(path)
    assert config.model_type == model_type and config.tie_word_embeddings == tied
    assert ("lm_head" in params) != tied
    assert config.num_params == sum(p.numel() for p in model.parameters())
    tokens, mask = left_padded_batch(seed=7, lengths=LENGTHS, vocab=config.vocab_size)
    _assert_logits_close(_our_logits(config, params, tokens, mask),
                         _hf_logits(model, tokens, mask), mask)


# ------------------------------------------------------------------- 2. exact round trips
@pytest.mark.parametrize("model_type,tied", [("qwen3", False), ("qwen2", True),
                                             ("llama", True)])
def test_save_load_round_trip_is_exact_and_transformers_loads_it(hf_checkpoint, tmp_path,
                                                                   model_type, tied):
    model, path = hf_checkpoint(model_type, tied)
    config, params = load_hf_checkpoint(path)
    tokens, mask = left_padded_batch(seed=3, lengths=LENGTHS, vocab=config.vocab_size)
    reference = _hf_logits(model, tokens, mask)
    hf_tensors = {k: v.numpy() for k, v in model.state_dict().items()}

    single = save_hf_checkpoint(tmp_path / "single", config, params)
    assert [p.name for p in single.glob("*.safetensors")] == ["model.safetensors"]
    assert not (single / "model.safetensors.index.json").exists()

    sharded = save_hf_checkpoint(tmp_path / "sharded", config, params, max_shard_bytes=30_000)
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert not list(sharded.glob("*.partial")) and not list(sharded.glob("*.tmp"))

    for out in (single, sharded):
        config2, params2 = load_hf_checkpoint(out)
        assert config2 == config
        _tree_equal(params2, params)
        # Every exported tensor is bit-identical to the original HF tensor.
        files = [SafetensorsFile(f) for f in sorted(out.glob("*.safetensors"))]
        names = [n for f in files for n in f.keys()]
        assert len(names) == len(set(names)) == len(dict(hf_state_dict(config, params)))
        for f in files:
            for name in f.keys():
                np.testing.assert_array_equal(np.asarray(f.get(name)), hf_tensors[name],
                                              err_msg=name)
        # transformers loads the export and computes the same logits as the original.
        exported = _hf_from_dir(out)
        assert type(exported) is type(model)
        np.testing.assert_allclose(_hf_logits(exported, tokens, mask)[mask], reference[mask],
                                   rtol=0, atol=1e-6)


def test_round_trip_without_torch(tmp_path):
    """Save -> load -> save -> load on rc_jax-written checkpoints, all variants (no torch)."""
    for model_type, tied in VARIANTS:
        src = tmp_path / f"{model_type}{tied}"
        _, params = write_random_checkpoint(src, model_type, tied, seed=5)
        config, loaded = load_hf_checkpoint(src)
        _tree_equal(loaded, params)
        save_hf_checkpoint(src / "again", config, loaded, max_shard_bytes=50_000)
        _, again = load_hf_checkpoint(src / "again")
        _tree_equal(again, params)


# ----------------------------------------------------------------------------- 3. bfloat16
def test_bfloat16_checkpoint_loads_bit_exact(hf_checkpoint, tmp_path):
    torch = pytest.importorskip("torch")
    model, _ = hf_checkpoint("qwen3", False)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    bf16_model.save_pretrained(str(tmp_path), safe_serialization=True)
    expected = {k: v.float().numpy() for k, v in bf16_model.state_dict().items()}

    config, params = load_hf_checkpoint(tmp_path, dtype="bfloat16")
    assert config.param_dtype == config.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    ours = dict(hf_state_dict(config, params))
    assert set(ours) == set(expected)
    for name, value in ours.items():
        np.testing.assert_array_equal(value.astype(np.float32), expected[name], err_msg=name)

    # Without a dtype the same file loads as float32, exactly upcast.
    config32, params32 = load_hf_checkpoint(tmp_path)
    assert config32.param_dtype == "float32"
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params32))
    _tree_equal(jax.tree.map(lambda x: x.astype(jnp.float32), params), params32)

    # bf16 save keeps bf16 on disk and round-trips exactly.
    out = save_hf_checkpoint(tmp_path / "export", config, params)
    f = SafetensorsFile(out / "model.safetensors")
    assert {str(f.get(n).dtype) for n in f.keys()} == {"bfloat16"}
    _, again = load_hf_checkpoint(out, dtype="bfloat16")
    _tree_equal(again, params)


# ---------------------------------------------------------------------------- 4. bad input
@pytest.fixture(scope="module")
def _good_checkpoint_src(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "ckpt"
    write_random_checkpoint(path, "qwen3", tied=False, seed=0)
    return path


@pytest.fixture
def good_checkpoint(_good_checkpoint_src, tmp_path) -> Path:
    """A fresh copy of a valid tiny qwen3 checkpoint, for a test to break."""
    return Path(shutil.copytree(_good_checkpoint_src, tmp_path / "ckpt"))


def _rewrite(file: Path, edit) -> None:
    """Loads all tensors of a safetensors file (copied), applies edit(dict), saves back."""
    st = SafetensorsFile(file)
    tensors = {name: np.array(st.get(name)) for name in st.keys()}
    del st
    edit(tensors)
    save_file(tensors, file)


def _edit_config(path: Path, **changes) -> None:
    file = path / "config.json"
    hf = json.loads(file.read_text())
    hf.update(changes)
    file.write_text(json.dumps(hf))


def _raises_one_line(exc_type, pattern: str, path: Path):
    with pytest.raises(exc_type, match=pattern) as info:
        load_hf_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_missing_tensor_is_named(good_checkpoint):
    name = "model.layers.1.self_attn.k_norm.weight"
    _rewrite(good_checkpoint / "model.safetensors", lambda t: t.pop(name))
    _raises_one_line(ValueError, f"missing tensor {re.escape(repr(name))}", good_checkpoint)


def test_misshaped_tensor_is_named(good_checkpoint):
    name = "model.layers.0.mlp.up_proj.weight"

    def edit(t):
        t[name] = t[name][:, :-1].copy()  # [96, 64] -> [96, 63]
    _rewrite(good_checkpoint / "model.safetensors", edit)
    msg = _raises_one_line(ValueError, re.escape(f"tensor {name!r}"), good_checkpoint)
    assert "[96, 63]" in msg and "expected [96, 64]" in msg


def test_unknown_model_type_is_rejected(good_checkpoint):
    _edit_config(good_checkpoint, model_type="mistral")
    msg = _raises_one_line(ValueError, "model_type 'mistral' is not supported", good_checkpoint)
    assert "config.json" in msg


def test_unsupported_rope_scaling_is_rejected(good_checkpoint):
    _edit_config(good_checkpoint, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                "original_max_position_embeddings": 512})
    _raises_one_line(ValueError, "rope_scaling type 'yarn' is not supported", good_checkpoint)


def test_default_rope_scaling_is_accepted(good_checkpoint):
    _edit_config(good_checkpoint, rope_scaling={"rope_type": "default"})
    config, _ = load_hf_checkpoint(good_checkpoint)
    assert config.model_type == "qwen3"


def test_missing_config_json(good_checkpoint):
    (good_checkpoint / "config.json").unlink()
    _raises_one_line(FileNotFoundError, "no config.json", good_checkpoint)


def test_corrupted_safetensors_file_is_named(good_checkpoint):
    file = good_checkpoint / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 1000])  # truncated: tensor data cut short
    _raises_one_line(ValueError, f"corrupted safetensors file .*{re.escape(file.name)}",
                     good_checkpoint)
    file.write_bytes(data[:20])  # truncated inside the JSON header
    _raises_one_line(ValueError, f"corrupted safetensors file .*{re.escape(file.name)}",
                     good_checkpoint)


def test_missing_safetensors_files(good_checkpoint):
    (good_checkpoint / "model.safetensors").unlink()
    _raises_one_line(FileNotFoundError, "no \\*.safetensors files", good_checkpoint)


def test_sharded_checkpoint_with_missing_shard_is_named(tmp_path):
    config, params = write_random_checkpoint(tmp_path / "src", "qwen3")
    out = save_hf_checkpoint(tmp_path / "sharded", config, params, max_shard_bytes=30_000)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    _raises_one_line(FileNotFoundError, re.escape(victim.name), out)


def test_missing_directory(tmp_path):
    missing = tmp_path / "does_not_exist"
    _raises_one_line(FileNotFoundError, f"{re.escape(str(missing))} does not exist", missing)


# ----------------------------------------------------------------------- 5. sharded load
def _mesh() -> Mesh:
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should force 8 CPU devices"
    return Mesh(np.array(devices).reshape(2, 4), ("fsdp", "tensor"))


def _spec_for(shape: tuple[int, ...]) -> PartitionSpec:
    """'fsdp' on the first dim divisible by 2, 'tensor' on the next one divisible by 4."""
    spec: list = [None] * len(shape)
    rest = 0
    for i, n in enumerate(shape):
        if n % 2 == 0:
            spec[i] = "fsdp"
            rest = i + 1
            break
    else:
        return PartitionSpec()
    for i in range(rest, len(shape)):
        if shape[i] % 4 == 0:
            spec[i] = "tensor"
            break
    return PartitionSpec(*spec)


@pytest.mark.parametrize("model_type,tied", [("qwen3", False), ("qwen2", True)])
def test_sharded_load_matches_unsharded(tmp_path, model_type, tied):
    _, written = write_random_checkpoint(tmp_path, model_type, tied, seed=11)
    config, plain = load_hf_checkpoint(tmp_path)
    mesh = _mesh()
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, _spec_for(x.shape)), plain)
    # The tree must actually shard the stacked layer axis and the inner axes somewhere.
    specs = [s.spec for s in jax.tree.leaves(shardings)]
    assert any(len(s) > 1 and s[0] == "fsdp" and "tensor" in s for s in specs)

    config2, sharded = load_hf_checkpoint(tmp_path, shardings=shardings)
    assert config2 == config
    _tree_equal(sharded, plain)
    _tree_equal(plain, written)
    for arr, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(shardings)):
        assert arr.sharding.is_equivalent_to(want, arr.ndim), (arr.sharding, want)
        full = np.asarray(jax.device_get(arr))
        for shard in arr.addressable_shards:  # each device holds exactly its slice
            np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])

    # Sharded params run the forward pass to the same logits.
    tokens, mask = left_padded_batch(seed=2, lengths=(6, 3), vocab=config.vocab_size)
    np.testing.assert_allclose(_our_logits(config, sharded, tokens, mask)[mask],
                               _our_logits(config, plain, tokens, mask)[mask],
                               rtol=1e-5, atol=1e-5)


def test_sharded_bfloat16_load(tmp_path):
    write_random_checkpoint(tmp_path, "llama", False, seed=4)
    _, plain = load_hf_checkpoint(tmp_path, dtype="bfloat16")
    mesh = _mesh()
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, _spec_for(x.shape)), plain)
    _, sharded = load_hf_checkpoint(tmp_path, dtype="bfloat16", shardings=shardings)
    _tree_equal(sharded, plain)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(sharded))


def test_sharded_load_reads_only_each_devices_slice(tmp_path, monkeypatch):
    """Each device's callback touches only the HF tensors of its own layers and copies
    exactly its shard out of the memory maps: layout transforms are views, never copies
    of the whole tensor, so no host materialises a parameter it does not hold."""
    from rc_jax.models import checkpoint as ckpt
    config, _ = write_random_checkpoint(tmp_path, "qwen3", False, seed=3)
    _, plain = load_hf_checkpoint(tmp_path)
    mesh = _mesh()
    # 'fsdp' (2 devices) lands on the stacked layer axis (2 layers): one layer per device.
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, _spec_for(x.shape)), plain)
    assert shardings["layers"]["mlp"]["up_proj"].spec[0] == "fsdp"

    touched: set[int] = set()
    calls: list[dict] = []

    class RecordingList(list):
        def __getitem__(self, i):
            touched.add(i)
            return super().__getitem__(i)

    real_place, real_make = ckpt._place, jax.make_array_from_callback

    def spy_place(arrays, m, full_shape, dtype, sharding):
        for a in arrays:  # the HF -> ours transform must not copy the memory map
            assert np.shares_memory(m.to_ours(a), a), m.hf_name
        return real_place(RecordingList(arrays), m, full_shape, dtype, sharding)

    def spy_make(shape, sharding, callback):
        def wrapped(index):
            touched.clear()
            out = callback(index)
            calls.append(dict(shape=shape, index=index, touched=set(touched),
                              got=out.shape, want=sharding.shard_shape(shape),
                              nbytes=out.nbytes))
            return out
        return real_make(shape, sharding, wrapped)

    monkeypatch.setattr(ckpt, "_place", spy_place)
    monkeypatch.setattr(jax, "make_array_from_callback", spy_make)
    _, sharded = load_hf_checkpoint(tmp_path, shardings=shardings)
    _tree_equal(sharded, plain)

    per_layer = 0
    for c in calls:
        assert c["got"] == c["want"]  # exactly the device's slice, nothing more
        if len(c["shape"]) >= 2 and c["shape"][0] == config.num_layers and c["index"][0].stop:
            layers = set(range(*c["index"][0].indices(config.num_layers)))
            if len(layers) < config.num_layers:
                assert c["touched"] == layers, c
                per_layer += 1
    assert per_layer >= 8 * 7  # every per-layer weight on every device read one layer
    # Bytes copied = bytes the devices hold (no whole-tensor reads).
    held = sum(s.data.nbytes for x in jax.tree.leaves(sharded) for s in x.addressable_shards)
    assert sum(c["nbytes"] for c in calls) == held


def test_load_model_returns_a_model_record(tmp_path):
    """`main.load_model` gives one `Model` (config, params, shardings): weights travel as an
    argument of the engine and sampler calls, nothing holds them."""
    from rc_jax.main import load_model
    from rc_jax.models import Model
    config = tiny_config("qwen3", vocab_size=64)
    save_hf_checkpoint(str(tmp_path), config, init_params(config, jax.random.PRNGKey(0)))
    model = load_model(str(tmp_path), "float32")
    assert isinstance(model, Model) and model.shardings is None
    config, params, _ = model  # still unpacks like the (config, params, shardings) it was
    assert config.vocab_size == params["embedding"].shape[0]
