"""Baselines and scaffolds (rc_jax.methods): prompts at every step, steps and budgets,
the s1 continuation cue, RSA's population prompts, batching independence, resume through
rc_jax.main, RC with a second summarizer model, and config errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import randomize, tiny_config
from rc_jax.config import config_hash, default_config, validate
from rc_jax.methods import get_runner
from rc_jax.methods.autoregressive import checkpoints
from rc_jax.methods.base import MethodContext, clean_ids, fold
from rc_jax.methods.budget_forcing import forcing_stop_ids
from rc_jax.methods.prompts import format_candidates, load_method_template
from rc_jax.models import init_params, save_hf_checkpoint
from rc_jax.rc.engine import RCEngine, RCSettings, row_key
from rc_jax.rc.prompts import load_template
from rc_jax.rc.tokens import clean_host, token_tables
from rc_jax.sampling import Buckets, SamplingParams
from rc_jax.sampling.generate import generate

ROOT = Path(__file__).parents[1]
PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1.", "Is 91 prime?"]
# One prompt bucket for every prompt of these tests: few programs to compile.
BUCKETS = Buckets(min_prompt=512)
H_R, H_S = 16, 8


@pytest.fixture(scope="module")
def model():
    config = tiny_config("qwen3", vocab_size=512)
    return config, randomize(init_params(config, jax.random.PRNGKey(0)), 0)


def _keys(n, offset=0):
    return np.stack([row_key(0, str(i + offset), 0) for i in range(n)])


def _config(method, **overrides):
    c = default_config()
    c.unlock()
    c.method = method
    c.rc.num_steps, c.rc.max_reasoning_tokens, c.rc.max_summary_tokens = 3, H_R, H_S
    for dotted, value in overrides.items():
        node = c
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return c


def _ctx(model, tokenizer, method, temperature=1.0, summarizer=None, **overrides):
    config, params = model
    return MethodContext(_config(method, **overrides), params, config, tokenizer,
                         SamplingParams(temperature=temperature), buckets=BUCKETS,
                         summarizer=summarizer, record_prompts=True)


def _text(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def _chat(tok, text):
    return tok.chat_prompt_text(text)


def _solve(tok, problem):
    return _chat(tok, load_method_template("math", "solve").format(problem=problem))


# ---------------------------------------------------------------- self-refine / self-verify
@pytest.mark.parametrize("method,kind,max_context", [("self_refine", "refine", 5),
                                                     ("self_verify", "verify", 0)])
def test_refine_and_verify_prompts_steps_and_budget(model, tiny_tokenizer, method, kind,
                                                    max_context):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, method, **{f"{method}__max_context_tokens": max_context})
    outs = get_runner(method)(PROBLEMS, _keys(3), ctx)
    follow = load_method_template("math", kind)
    for problem, r in zip(PROBLEMS, outs):
        assert len(r.reasoning_text) == len(r.prompts) == 3
        assert _text(tok, r.prompts[0][0]) == _solve(tok, problem)
        for t in (1, 2):
            attempt = r.reasoning_ids[t - 1]
            previous = attempt[-max_context:] if max_context else attempt
            assert len(previous) == (min(max_context, len(attempt)) if max_context
                                     else len(attempt))
            want = _chat(tok, follow.format(problem=problem, previous_attempt=tok.decode(previous)))
            assert _text(tok, r.prompts[t][0]) == want
            assert r.prompt_tokens[t] == len(r.prompts[t][0])
        for n, finish in zip(r.reasoning_tokens, r.reasoning_finish):
            assert n == H_R if finish == "length" else 0 < n <= H_R
        assert r.summary_text == [""] * 3 and r.summary_tokens == [0] * 3
        assert r.reasoning_text == [tok.decode(x) for x in r.reasoning_ids]
    if max_context:  # the previous attempt was really cut from the front
        assert any(len(x) > max_context for r in outs for x in r.reasoning_ids[:2])


# ---------------------------------------------------------------- autoregressive
def test_autoregressive_reads_one_generation_at_checkpoints(model, tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, "autoregressive", autoregressive__max_tokens=40,
               autoregressive__checkpoint_tokens=16)
    outs = get_runner("autoregressive")(PROBLEMS, _keys(3), ctx)
    assert checkpoints(40, 16) == [16, 32, 40]
    prompts = [r.prompts[0][0] for r in outs]
    assert [_text(tok, p) for p in prompts] == [_solve(tok, p) for p in PROBLEMS]
    free = generate(model[1], model[0], prompts, ctx.sampling, jax.random.PRNGKey(0), 40,
                    tok.eos_ids, pad_id=tok.pad_id, buckets=BUCKETS, row_keys=fold(_keys(3), 0))
    for prompt, tokens, finish, r in zip(prompts, free.tokens, free.finish_reasons, outs):
        assert r.prompts[1:] == [[], []]
        assert r.prompt_tokens == [len(prompt), 0, 0]
        assert len(r.reasoning_text) == 3
        assert sum(r.reasoning_tokens) == len(tokens) <= 40
        for t, mark in enumerate((16, 32, 40)):
            assert sum(r.reasoning_tokens[:t + 1]) == min(mark, len(tokens))
            assert r.reasoning_text[t] == tok.decode(tokens[:mark]).strip()
        if finish == "length":
            assert r.reasoning_tokens == [16, 16, 8] and r.reasoning_finish == ["length"] * 3


# ---------------------------------------------------------------- budget forcing
def test_budget_forcing_appends_the_cue_where_the_model_stopped(model, tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, "budget_forcing", temperature=0.0, budget_forcing__max_tokens=24,
               budget_forcing__num_forcings=2)
    run = get_runner("budget_forcing")
    solve = ctx.solve_plan().host_ids({"problem": tok.encode(PROBLEMS[0])})
    assert _text(tok, solve) == _solve(tok, PROBLEMS[0])
    free = generate(model[1], model[0], [solve], ctx.sampling, jax.random.PRNGKey(0), 24, [],
                    pad_id=tok.pad_id, buckets=BUCKETS).tokens[0]
    stop = free[3]  # greedy decoding emits it by position 3: force a stop there
    k = free.index(stop)
    cue = tok.encode("Wait")
    ctx.stop_ids = (stop,)
    assert forcing_stop_ids(ctx) == (stop,)
    once = run(PROBLEMS[:1], _keys(1), ctx)[0]
    # A second stop token the model emits after the first cue (and not before it).
    after = once.reasoning_ids[1][k + len(cue):]
    second = next(t for t in after[1:-2] if t not in free[:k + 1])
    j = after.index(second)
    ctx.stop_ids = (stop, second)
    r = run(PROBLEMS[:1], _keys(1), ctx)[0]

    assert len(r.reasoning_text) == len(r.prompts) == 3 and r.extra["forcings"] == 2
    assert r.prompts[0][0] == solve
    assert r.reasoning_tokens[:2] == [k + 1, j + 1]
    assert r.reasoning_finish[:2] == ["stop", "stop"]
    assert r.reasoning_ids[0] == free[:k]  # the stop token is removed ...
    assert r.prompts[1][0] == solve + free[:k] + cue  # ... and the cue put in its place
    assert _text(tok, r.prompts[1][0]) == _solve(tok, PROBLEMS[0]) + tok.decode(free[:k]) + "Wait"
    assert r.prompts[2][0] == solve + free[:k] + cue + after[:j] + cue
    assert r.reasoning_text[0] == tok.decode(free[:k]).strip()
    assert r.reasoning_text[1] == tok.decode(free[:k] + cue + after[:j]).strip()
    assert r.prompt_tokens[:2] == [len(solve), len(solve) + k + len(cue)]
    assert sum(r.reasoning_tokens) <= 24
    if r.reasoning_finish[2] == "length":
        assert sum(r.reasoning_tokens) == 24  # the whole budget, exactly


def test_budget_forcing_spends_exactly_the_budget_and_pads_steps(model, tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, "budget_forcing", budget_forcing__max_tokens=20,
               budget_forcing__num_forcings=3)
    outs = get_runner("budget_forcing")(PROBLEMS, _keys(3), ctx)
    for r in outs:
        assert len(r.reasoning_text) == 4 and sum(r.reasoning_tokens) <= 20
        if "length" in r.reasoning_finish:
            assert sum(r.reasoning_tokens) == 20
        end = next((t for t, n in enumerate(r.reasoning_tokens) if n == 0), 4)
        assert all(n == 0 for n in r.reasoning_tokens[end:])  # ended rows add nothing
        assert all(x == r.reasoning_text[end - 1] for x in r.reasoning_text[end:])


def test_budget_forcing_stop_tokens_must_be_single_tokens(model, tiny_tokenizer):
    ctx = _ctx(model, tiny_tokenizer, "budget_forcing", budget_forcing__stop_tokens="</think>")
    assert forcing_stop_ids(ctx) == tuple(tiny_tokenizer.eos_ids) + (tiny_tokenizer.think_end_id,)
    ctx = _ctx(model, tiny_tokenizer, "budget_forcing", rc__use_think_tags=True)
    assert tiny_tokenizer.think_end_id in forcing_stop_ids(ctx)
    ctx = _ctx(model, tiny_tokenizer, "budget_forcing", budget_forcing__stop_tokens="no such token")
    with pytest.raises(ValueError, match="config.budget_forcing.stop_tokens"):
        forcing_stop_ids(ctx)


# ---------------------------------------------------------------- RSA
@pytest.mark.parametrize("use_summaries", [False, True])
def test_rsa_population_prompts_and_token_counts(model, tiny_tokenizer, use_summaries):
    tok = tiny_tokenizer
    n, k, g = 3, 2, 2
    ctx = _ctx(model, tok, "rsa", rsa__population=n, rsa__k=k, rsa__generations=g,
               rsa__use_summaries=use_summaries, rsa__store_population=True)
    r = get_runner("rsa")(PROBLEMS[:1], _keys(1), ctx)[0]
    problem = PROBLEMS[0]
    aggregate = load_method_template("math", "aggregate")
    summary = load_template("math", "summary")
    pop = r.extra["population_store"]
    assert len(r.reasoning_text) == len(pop) == g + 1 and all(len(p) == n for p in pop)
    assert [_text(tok, x) for x in r.prompts[0]] == [_solve(tok, problem)] * n
    for round_ in range(1, g + 1):
        views = (r.extra["population_summary_store"][round_ - 1] if use_summaries
                 else pop[round_ - 1])
        for m, chosen in enumerate(r.extra["rsa_notes"][round_ - 1]):
            assert len(set(chosen)) == k and all(0 <= j < n for j in chosen)
            want = _chat(tok, aggregate.format(problem=problem, candidates=format_candidates(
                [views[j] for j in chosen])))
            assert _text(tok, r.prompts[round_][m]) == want
    for round_ in range(g + 1):
        assert r.reasoning_text[round_] == pop[round_][0]
        assert r.prompt_tokens[round_] == sum(len(p) for p in r.prompts[round_])
        assert r.reasoning_tokens[round_] <= n * H_R
    if use_summaries:
        for round_ in range(g):
            for m in range(n):
                want = tok.chat_prompt_text(summary.format(problem=problem, existing_summary="",
                                                           reasoning=pop[round_][m]))
                assert _text(tok, r.summary_prompts[round_][m]) == want
            assert 0 < r.summary_tokens[round_] <= n * H_S
            assert r.summary_text[round_] == r.extra["population_summary_store"][round_][0]
        assert r.summary_tokens[g] == 0 and r.summary_prompts[g] == []
    else:
        assert r.summary_tokens == [0] * (g + 1)


# ---------------------------------------------------------------- all methods
@pytest.mark.parametrize("method", ["autoregressive", "self_refine", "self_verify",
                                    "budget_forcing", "rsa"])
def test_rows_do_not_depend_on_batch_composition(model, tiny_tokenizer, method):
    ctx = _ctx(model, tiny_tokenizer, method, rc__num_steps=2, autoregressive__max_tokens=16,
               autoregressive__checkpoint_tokens=6, budget_forcing__max_tokens=16,
               rsa__population=2, rsa__k=2, rsa__generations=1)
    ctx.stop_ids = tuple(tiny_tokenizer.eos_ids) + (300, 301, 302)  # make some rows stop
    runner = get_runner(method)
    full = runner(PROBLEMS[:2], _keys(2), ctx)
    alone = runner(PROBLEMS[1:2], _keys(2)[1:], ctx)
    assert alone[0].reasoning_text == full[1].reasoning_text
    assert alone[0].reasoning_tokens == full[1].reasoning_tokens
    assert alone[0].summary_text == full[1].summary_text
    assert alone[0].extra == full[1].extra


def test_host_cleaning_equals_the_engine_rule(tiny_tokenizer):
    tok = tiny_tokenizer
    tables = token_tables(tok, 512)
    for text in ("  <think>plan</think> answer \\boxed{3} <|im_end|>", "\n\nresult 12\n\n",
                 "x</think>y</think> z \n", "<|im_end|>", ""):
        ids = tok.encode(text)
        for keep in ("before_think_end", "after_think_end"):
            assert clean_ids(ids, tables, keep) == clean_host(ids, tables, keep, tok.pad_id)


# ---------------------------------------------------------------- RC with two models
def test_rc_with_a_different_summarizer_model(model, tiny_tokenizer):
    tok = tiny_tokenizer
    config, params = model
    s_config = tiny_config("qwen3", vocab_size=512, hidden_size=32, num_heads=2,
                           num_kv_heads=1, num_layers=1)
    s_params = randomize(init_params(s_config, jax.random.PRNGKey(1)), 1)
    settings = RCSettings(num_steps=2, max_reasoning_tokens=H_R, max_summary_tokens=H_R)
    engine = RCEngine(params, config, tok, settings, SamplingParams(temperature=0.0),
                      buckets=BUCKETS, record_prompts=True, summarizer=(s_params, s_config))
    outs = engine.run(PROBLEMS, _keys(3))

    def greedy(p, cfg, prompts):
        res = generate(p, cfg, prompts, SamplingParams(temperature=0.0), jax.random.PRNGKey(0),
                       H_R, tok.eos_ids, pad_id=tok.pad_id, buckets=BUCKETS)
        return [clean_host(t, engine.tables, "after_think_end", tok.pad_id) for t in res.tokens]

    for step in range(2):
        prompts = [r.summary_prompts[step] for r in outs]
        assert [r.summary_ids[step] for r in outs] == greedy(s_params, s_config, prompts)
        assert [r.summary_ids[step] for r in outs] != greedy(params, config, prompts)
    # The second reasoning step sees the second model's summary.
    for r in outs:
        assert tok.decode(r.summary_ids[0]) in tok.decode(r.reasoning_prompts[1])


# ---------------------------------------------------------------- entry point: resume
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rc_jax_cache")
    old = os.environ.get("RC_JAX_CACHE")
    os.environ["RC_JAX_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RC_JAX_CACHE", None)
    else:
        os.environ["RC_JAX_CACHE"] = old


def _main_config(method, out, **overrides):
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo", ROOT / "experiments" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    c = demo.get_config()
    c.unlock()
    c.method, c.output_dir, c.evaluate = method, str(out), False
    c.model.path, c.show_rollouts = "builtin:tiny-random", 0  # the demo's real model is slow
    # 4 rollouts in one batch; every budget fits the 16-token output bucket: few programs.
    c.data.limit, c.num_samples, c.batch_size = 2, 2, 4
    c.rc.num_steps, c.rc.max_reasoning_tokens, c.rc.max_summary_tokens = 2, 16, 8
    c.autoregressive.max_tokens, c.autoregressive.checkpoint_tokens = 16, 6
    c.budget_forcing.max_tokens, c.budget_forcing.num_forcings = 16, 2
    c.rsa.population, c.rsa.k, c.rsa.generations = 2, 1, 1
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split("__")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return c


def _lines(path):
    strip = lambda l: {k: v for k, v in json.loads(l).items() if k != "wall_time_s"}
    return sorted(json.dumps(strip(l), sort_keys=True) for l in path.read_text().splitlines())


@pytest.mark.parametrize("method,steps", [("autoregressive", 3), ("self_refine", 2),
                                          ("self_verify", 2), ("budget_forcing", 3),
                                          ("rsa", 2)])
def test_main_runs_and_resumes_every_method(cache_dir, tmp_path, method, steps, capsys):
    from rc_jax.main import run
    full = tmp_path / "full"
    run(_main_config(method, full))
    lines = (full / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for line in map(json.loads, lines):
        assert line["method"] == method
        assert len(line["reasoning_store"]) == len(line["summarization_store"]) == steps
        for kind in ("prompt", "reasoning", "summary"):
            assert len(line["token_counts"][kind]) == steps
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    # Crash after one record and half of the next: the resumed batch holds the other
    # rows at other positions, plus padding (and reuses the compiled programs).
    (crashed / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:25])
    (crashed / "config.json").write_text((full / "config.json").read_text())
    capsys.readouterr()
    run(_main_config(method, crashed))
    assert "(3 rollouts to run)" in capsys.readouterr().out
    assert _lines(crashed / "results.jsonl") == _lines(full / "results.jsonl")


def test_main_rc_with_a_summarizer_checkpoint(cache_dir, tmp_path, monkeypatch):
    import rc_jax.rc.engine
    from rc_jax.main import run
    s_config = tiny_config("qwen3", vocab_size=512, num_layers=1)
    save_hf_checkpoint(tmp_path / "summarizer", s_config,
                       randomize(init_params(s_config, jax.random.PRNGKey(3)), 3))
    seen = []

    class Spy(RCEngine):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["summarizer"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(rc_jax.rc.engine, "RCEngine", Spy)
    out = tmp_path / "two"
    run(_main_config("rc", out, summarizer__model__path=str(tmp_path / "summarizer"),
                     data__limit=1, num_samples=1, rc__num_steps=1))
    (s_params, loaded), = seen  # both models held; the second one summarizes
    assert loaded.num_layers == 1 and loaded.vocab_size == 512
    record = json.loads((out / "results.jsonl").read_text())
    assert len(record["summarization_store"]) == 1 and record["token_counts"]["summary"][0] > 0


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("overrides,match", [
    (dict(method="rsa", rsa__k=5, rsa__population=4), "config.rsa.k: must be <= rsa.population"),
    (dict(rsa__population=0), "config.rsa.population"),
    (dict(rsa__generations=-1), "config.rsa.generations"),
    (dict(rsa__max_candidate_tokens=-2), "config.rsa.max_candidate_tokens"),
    (dict(autoregressive__checkpoint_tokens=0), "config.autoregressive.checkpoint_tokens"),
    (dict(autoregressive__max_tokens=8, autoregressive__checkpoint_tokens=16),
     "config.autoregressive.checkpoint_tokens: must be <= autoregressive.max_tokens"),
    (dict(self_refine__max_context_tokens=-1), "config.self_refine.max_context_tokens"),
    (dict(self_verify__template="/no/such/verify.txt"), "config.self_verify.template"),
    (dict(budget_forcing__cue=""), "config.budget_forcing.cue"),
    (dict(budget_forcing__num_forcings=-1), "config.budget_forcing.num_forcings"),
    (dict(budget_forcing__max_tokens=0), "config.budget_forcing.max_tokens"),
    (dict(baselines__solve_template="nope"), "config.baselines.solve_template"),
    (dict(method="beam_search"), "config.method"),
])
def test_bad_method_config_is_rejected_naming_the_field(overrides, match):
    c = _config("rc", model__path="builtin:tiny-random", data__source="builtin:demo")
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split("__")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        validate(c)


def test_template_files_and_summarizer_checks(tmp_path):
    base = dict(model__path="builtin:tiny-random", data__source="builtin:demo")
    bad = tmp_path / "aggregate.txt"
    bad.write_text("Problem: {problem}. Improve on these: {previous_attempt}")
    with pytest.raises(ValueError, match=r"config\.rsa\.template: .*unknown placeholder "
                                         r"\{previous_attempt\}"):
        validate(_config("rsa", rsa__template=str(bad), **base))
    good = tmp_path / "refine.txt"
    good.write_text("Fix this attempt at {problem}:\n{previous_attempt}\n\\boxed{{}}")
    validate(_config("self_refine", self_refine__template=str(good), **base))
    assert load_method_template(str(good), "refine").format(problem="p", previous_attempt="a") \
        == "Fix this attempt at p:\na\n\\boxed{}"
    with pytest.raises(ValueError, match="config.summarizer.model.path: method 'autoregressive'"):
        validate(_config("autoregressive", summarizer__model__path=str(tmp_path), **base))
    with pytest.raises(ValueError, match="rsa.use_summaries"):
        validate(_config("rsa", summarizer__model__path=str(tmp_path), **base))
    validate(_config("rsa", summarizer__model__path=str(tmp_path), rsa__use_summaries=True,
                     **base))


def test_bad_method_config_fails_on_the_command_line_before_loading(tmp_path):
    cmd = [sys.executable, "-m", "rc_jax.main", "--config=experiments/rsa_hmmt.py",
           "--config.model.path=builtin:tiny-random", "--config.rsa.k=0",
           f"--config.output_dir={tmp_path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode != 0 and "config.rsa.k" in res.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_resume_hash_ignores_sections_the_method_does_not_read():
    rc = _config("rc")
    before = config_hash(rc)
    rc.rsa.k, rc.self_refine.max_context_tokens, rc.baselines.solve_template = 1, 7, "science"
    assert config_hash(rc) == before
    rsa = _config("rsa")
    before = config_hash(rsa)
    rsa.self_refine.max_context_tokens = 7
    assert config_hash(rsa) == before
    rsa.rsa.k = 1
    assert config_hash(rsa) != before


@pytest.mark.parametrize("name,method", [
    ("autoregressive_hmmt", "autoregressive"), ("self_refine_hmmt", "self_refine"),
    ("self_verify_hmmt", "self_verify"), ("budget_forcing_hmmt", "budget_forcing"),
    ("rc_two_models_hmmt", "rc"), ("rsa_hmmt", "rsa")])
def test_experiment_configs_validate(tmp_path, name, method):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert c.method == method and c.data.source == "hf:MathArena/hmmt_nov_2025:train"
    c.model.path = "builtin:tiny-random"
    if method == "rc":
        with pytest.raises(ValueError, match="config.summarizer.model.path"):
            validate(c)  # the placeholder must be replaced by a real checkpoint
        c.summarizer.model.path = str(tmp_path)
    validate(c)
