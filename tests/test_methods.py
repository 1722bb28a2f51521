"""Baselines and scaffolds (rc_jax.methods): prompts at every step (compared as token
ids), raw stores next to cleaned fields, the chat template's thinking switch, budget
forcing as the paper ran it (segments, budgets, contexts) and its on_stop variant,
self-refine's single template, RSA's population prompts, batching independence, resume
through rc_jax.main, RC with a second summarizer model, and config errors."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import pytest

from helpers import randomize, tiny_config
from rc_jax.config import config_hash, default_config, validate
from rc_jax.methods import get_runner
from rc_jax.methods.autoregressive import checkpoints
from rc_jax.methods.base import MethodContext
from rc_jax.methods.budget_forcing import continuation_context, forcing_stop_ids
from rc_jax.models import init_params, save_hf_checkpoint
from rc_jax.rc.engine import RCEngine, RCSettings
from rc_jax.sampling.keys import fold, row_key
from rc_jax.prompts import format_candidates, load_template
from rc_jax.rc.text import clean_reasoning, clean_summary
from rc_jax.sampling import Buckets, SamplingParams
from rc_jax.sampling.generate import GenerationResult, generate

ROOT = Path(__file__).parents[1]
PROBLEMS = ["What is 2 + 3?", "Compute 7 * 8, then add 1.", "Is 91 prime?"]
# One prompt bucket for every prompt of these tests: few programs to compile.
BUCKETS = Buckets(min_prompt=512)
H_R, H_S = 16, 8
METHOD_NAMES = ["autoregressive", "self_refine", "self_verify", "budget_forcing", "rsa"]


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


def _wrap(tok, text, think=False, open_think=False):
    """The expected prompt text: the one chat-wrapping rule."""
    return tok.phase_prompt(text, use_think_tags=think, open_think=open_think)


def _ids(tok, text, think=False, open_think=False):
    """The expected prompt ids: the whole chat-wrapped string tokenized at once."""
    return tok.encode(_wrap(tok, text, think, open_think))


def _solve(problem):
    return load_template("math", "solve").format(problem=problem)


# ---------------------------------------------------------------- scripted generations
@dataclasses.dataclass
class Scripted(MethodContext):
    """A context whose sampler returns scripted texts (+ EOS), cut at the budget.

    script(call, row, model) -> text; every call is logged as (model, budget, prompts).
    """
    script: Callable[[int, int, str], str] | None = None
    calls: list[Any] = dataclasses.field(default_factory=list)

    def generate(self, prompts, max_new_tokens, keys, *, model="reasoner", stop_ids=None):
        call = len(self.calls)
        self.calls.append((model, int(max_new_tokens), [list(p) for p in prompts]))
        tokens, finish = [], []
        for row in range(len(prompts)):
            ids = self.tokenizer.encode(self.script(call, row, model)) + [self.eos_ids[0]]
            finish.append("stop" if len(ids) <= max_new_tokens else "length")
            tokens.append(ids[:max_new_tokens])
        zeros = [np.zeros(len(t), np.float32) for t in tokens]
        return GenerationResult(tokens, finish, zeros, zeros, list(range(len(prompts))))


def _scripted(tok, method, script, model_config=None, **overrides):
    config = model_config or tiny_config("qwen3", vocab_size=512)
    overrides.setdefault("rc__max_reasoning_tokens", 64)  # scripted texts fit uncut
    overrides.setdefault("rc__max_summary_tokens", 64)
    return Scripted(_config(method, **overrides), None, config, tok, SamplingParams(),
                    record_prompts=True, script=script)


# A generation that thinks, closes the block and answers after it, with whitespace around.
THINKING = "<think>plan: add</think>\n\nThe sum is \\boxed{5}.  \n"


# ---------------------------------------------------------------- self-refine / self-verify
@pytest.mark.parametrize("method,kind", [("self_refine", "refine"), ("self_verify", "verify")])
def test_refine_and_verify_one_template_raw_stores_and_cleaned_context(tiny_tokenizer, method,
                                                                       kind):
    tok = tiny_tokenizer
    texts = [THINKING, " second \\boxed{6} ", "third"]
    ctx = _scripted(tok, method, lambda call, row, m: texts[call])
    r = get_runner(method)(PROBLEMS[:1], _keys(1), ctx)[0]
    template = load_template("math", kind)
    # Step 1 uses the same template as later steps, with an empty previous attempt.
    assert r.prompts[0][0] == _ids(tok, template.format(problem=PROBLEMS[0], previous_attempt=""))
    assert r.prompts[1][0] == _ids(tok, template.format(problem=PROBLEMS[0],
                                                        previous_attempt="plan: add"))
    assert r.prompts[2][0] == _ids(tok, template.format(problem=PROBLEMS[0],
                                                        previous_attempt="second \\boxed{6}"))
    # Stores: raw generations (EOS skipped, nothing cut or stripped); cleaned beside them.
    assert r.reasoning_text == texts
    assert r.reasoning_clean == ["plan: add", "second \\boxed{6}", "third"]
    assert r.summary_text == r.summary_clean == [""] * 3
    assert r.reasoning_tokens == [len(tok.encode(t)) + 1 for t in texts]
    assert r.prompt_tokens == [len(p[0]) for p in r.prompts]
    assert [b for _, b, _ in ctx.calls] == [ctx.config.rc.max_reasoning_tokens] * 3
    from types import SimpleNamespace

    record = r.with_identity(SimpleNamespace(problem=PROBLEMS[0], answer="5", problem_id="p"),
                             0, method, 1.0, "hash").to_json()
    assert record["reasoning_store"] == texts and record["summarization_store"] == [""] * 3
    assert record["reasoning_clean"] == ["plan: add", "second \\boxed{6}", "third"]
    assert record["summary_clean"] == [""] * 3


@pytest.mark.parametrize("method,kind,max_context", [("self_refine", "refine", 5),
                                                     ("self_verify", "verify", 0)])
def test_refine_and_verify_prompts_steps_and_budget(model, tiny_tokenizer, method, kind,
                                                    max_context):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, method, **{f"{method}__max_context_tokens": max_context})
    outs = get_runner(method)(PROBLEMS, _keys(3), ctx)
    template = load_template("math", kind)
    cut = False
    for problem, r in zip(PROBLEMS, outs):
        assert len(r.reasoning_text) == len(r.prompts) == 3
        assert r.prompts[0][0] == _ids(tok, template.format(problem=problem, previous_attempt=""))
        for t in (1, 2):
            previous = clean_reasoning(r.reasoning_text[t - 1])
            assert r.reasoning_clean[t - 1] == previous
            ids = tok.encode(previous)
            if max_context and len(ids) > max_context:
                previous, cut = tok.decode(ids[-max_context:]), True
            want = template.format(problem=problem, previous_attempt=previous)
            assert r.prompts[t][0] == _ids(tok, want)
            assert r.prompt_tokens[t] == len(r.prompts[t][0])
        for n, finish in zip(r.reasoning_tokens, r.reasoning_finish):
            assert n == H_R if finish == "length" else 0 < n <= H_R
        assert r.summary_text == [""] * 3 and r.summary_tokens == [0] * 3
        assert r.reasoning_text == [tok.decode(x) for x in r.reasoning_ids]
        assert r.reasoning_tokens == [len(x) for x in r.reasoning_ids]
    if max_context:  # the previous attempt was really cut from the front
        assert cut


# ---------------------------------------------------------------- thinking mode
@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("think", [False, True])
def test_every_prompt_calls_the_chat_template_with_enable_thinking(tiny_tokenizer, method,
                                                                   think):
    """The tiny template renders a closed empty think block only for enable_thinking=False:
    with rc.use_think_tags off every prompt of every phase has it right after the
    generation prompt; with it on no prompt has it, and only prompts conditioned on
    earlier output end in an opened `<think>`."""
    tok = tiny_tokenizer
    ctx = _scripted(tok, method, lambda call, row, m: f"step {call} \\boxed{{{call}}}",
                    rc__use_think_tags=think, rc__num_steps=2, budget_forcing__num_forcings=1,
                    autoregressive__max_tokens=8, autoregressive__checkpoint_tokens=4,
                    rsa__population=2, rsa__k=1, rsa__generations=1, rsa__use_summaries=True)
    get_runner(method)(PROBLEMS[:1], _keys(1), ctx)
    off = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    for call, (role, _, prompts) in enumerate(ctx.calls):
        for p in prompts:
            text = _text(tok, p)
            if not think:
                assert off in text and not text.endswith("<think>")
            else:
                assert "</think>" not in text
                conditioned = call > 0 and method in ("self_refine", "self_verify", "rsa")
                assert text.endswith("<think>") == (conditioned and role == "reasoner")
    first = ctx.calls[0][2][0]
    message = {"autoregressive": _solve(PROBLEMS[0]), "rsa": _solve(PROBLEMS[0]),
               "budget_forcing": PROBLEMS[0],
               "self_refine": load_template("math", "refine").format(
                   problem=PROBLEMS[0], previous_attempt=""),
               "self_verify": load_template("math", "verify").format(
                   problem=PROBLEMS[0], previous_attempt="")}[method]
    # Independently of phase_prompt: the template itself, called with enable_thinking.
    rendered = tok.hf.apply_chat_template([{"role": "user", "content": message}],
                                          tokenize=False, add_generation_prompt=True,
                                          enable_thinking=think)
    assert first == tok.encode(rendered)


def test_thinking_switch_with_the_real_qwen3_template():
    from helpers import qwen3_tokenizer_dir
    from rc_jax.tokenizer import load_tokenizer
    path = qwen3_tokenizer_dir()
    if path is None:
        pytest.skip("real Qwen3 tokenizer unavailable")
    tok = load_tokenizer(path)
    big = tiny_config("qwen3", vocab_size=tok.vocab_size)
    for think in (False, True):
        ctx = _scripted(tok, "self_refine", lambda call, row, m: f"<think>a</think>\\boxed{{{call}}}",
                        model_config=big, rc__use_think_tags=think, rc__num_steps=2)
        r = get_runner("self_refine")(PROBLEMS[:1], _keys(1), ctx)[0]
        template = load_template("math", "refine")
        user = template.format(problem=PROBLEMS[0], previous_attempt="")
        want0 = tok.hf.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=think)
        assert r.prompts[0][0] == tok.encode(want0)
        assert want0.endswith("<think>\n\n</think>\n\n") == (not think)
        user = template.format(problem=PROBLEMS[0], previous_attempt="a")
        want1 = tok.hf.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=think)
        assert r.prompts[1][0] == tok.encode(want1 + ("<think>" if think else ""))
        assert r.reasoning_text == ["<think>a</think>\\boxed{0}", "<think>a</think>\\boxed{1}"]
        assert r.reasoning_clean == ["a", "a"]


# ---------------------------------------------------------------- autoregressive
def test_autoregressive_reads_one_generation_at_checkpoints(model, tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, "autoregressive", autoregressive__max_tokens=40,
               autoregressive__checkpoint_tokens=16)
    outs = get_runner("autoregressive")(PROBLEMS, _keys(3), ctx)
    assert checkpoints(40, 16) == [16, 32, 40]
    prompts = [r.prompts[0][0] for r in outs]
    assert prompts == [_ids(tok, _solve(p)) for p in PROBLEMS]
    free = generate(model[1], model[0], prompts, ctx.sampling, jax.random.PRNGKey(0), 40,
                    tok.eos_ids, pad_id=tok.pad_id, buckets=BUCKETS, row_keys=fold(_keys(3), 0))
    for prompt, tokens, finish, r in zip(prompts, free.tokens, free.finish_reasons, outs):
        assert r.prompts[1:] == [[], []]
        assert r.prompt_tokens == [len(prompt), 0, 0]
        assert len(r.reasoning_text) == 3
        assert sum(r.reasoning_tokens) == len(tokens) <= 40
        for t, mark in enumerate((16, 32, 40)):
            assert sum(r.reasoning_tokens[:t + 1]) == min(mark, len(tokens))
            assert r.reasoning_text[t] == tok.decode(tokens[:mark])  # raw: not stripped
            assert r.reasoning_clean[t] == clean_reasoning(r.reasoning_text[t])
        if finish == "length":
            assert r.reasoning_tokens == [16, 16, 8] and r.reasoning_finish == ["length"] * 3


def test_autoregressive_stores_raw_prefixes(tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _scripted(tok, "autoregressive", lambda call, row, m: THINKING,
                    autoregressive__max_tokens=64, autoregressive__checkpoint_tokens=32)
    r = get_runner("autoregressive")(PROBLEMS[:1], _keys(1), ctx)[0]
    ids = tok.encode(THINKING)
    assert len(ids) < 32 and r.reasoning_text == [THINKING, THINKING]
    assert r.reasoning_clean == ["plan: add"] * 2
    assert r.reasoning_tokens == [len(ids) + 1, 0]


# ---------------------------------------------------------------- budget forcing: paper
def test_budget_forcing_paper_segments_budgets_and_stores(tiny_tokenizer):
    """A concrete example: 3 segments; the second one is cut by its budget and the run
    still continues; every context is the wrapped problem + segments and cues."""
    tok = tiny_tokenizer
    cue = "Wait, more."
    segments = [" First try: \\boxed{4}. ", "Hmm, one more check of the sum that I did above",
                "\\boxed{5}\n"]  # 5 tokens + EOS: fits its budget of 6
    ctx = _scripted(tok, "budget_forcing", lambda call, row, m: segments[call],
                    budget_forcing__max_tokens=40, budget_forcing__continuation_tokens=6,
                    budget_forcing__num_forcings=2, budget_forcing__cue=cue)
    r = get_runner("budget_forcing")(PROBLEMS[:1], _keys(1), ctx)[0]
    assert [b for _, b, _ in ctx.calls] == [40, 6, 6]  # first: whole budget; then each its own
    cut = tok.encode(segments[1])[:6]
    assert r.reasoning_ids[1] == cut and r.reasoning_finish == ["stop", "length", "stop"]
    raw = [segments[0], tok.decode(cut), segments[2]]
    assert r.reasoning_text == raw  # each step stores its own raw segment
    assert r.reasoning_clean == [x.strip() for x in raw]
    assert r.reasoning_tokens == [len(tok.encode(segments[0])) + 1, 6,
                                  len(tok.encode(segments[2])) + 1]
    head = ("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert _wrap(tok, PROBLEMS[0]) == head  # the bare problem, thinking off
    contexts = [head,
                head + "\n\nFirst try: \\boxed{4}.\n\n" + cue,
                head + "\n\nFirst try: \\boxed{4}.\n\n" + cue + "\n\n" + raw[1].strip()
                + "\n\n" + cue]
    assert [continuation_context(head, r.reasoning_clean[:s], cue) for s in range(3)] == contexts
    assert [p[0] for p in r.prompts] == [tok.encode(c) for c in contexts]
    assert r.prompt_tokens == [len(tok.encode(c)) for c in contexts]
    assert r.summary_text == r.summary_clean == [""] * 3 and r.method_fields == {}
    # What the results line adds beside the stores (as for RC's rollouts): the cleaned texts.
    assert r.extra == {"reasoning_clean": r.reasoning_clean, "summary_clean": [""] * 3}


def test_budget_forcing_paper_with_the_model(model, tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, "budget_forcing", budget_forcing__max_tokens=12,
               budget_forcing__continuation_tokens=5, budget_forcing__num_forcings=2)
    outs = get_runner("budget_forcing")(PROBLEMS, _keys(3), ctx)
    cue = ctx.config.budget_forcing.cue
    for problem, r in zip(PROBLEMS, outs):
        assert len(r.reasoning_text) == len(r.prompts) == 3
        assert r.reasoning_tokens[0] <= 12 and all(0 < n <= 5 for n in r.reasoning_tokens[1:])
        assert r.reasoning_text == [tok.decode(x) for x in r.reasoning_ids]
        assert r.reasoning_clean == [x.strip() for x in r.reasoning_text]
        head = _wrap(tok, problem)
        for s in range(3):
            assert r.prompts[s][0] == tok.encode(continuation_context(head, r.reasoning_clean[:s],
                                                                      cue))


# ---------------------------------------------------------------- budget forcing: on_stop
def test_budget_forcing_on_stop_appends_the_cue_where_the_model_stopped(model, tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, "budget_forcing", temperature=0.0, budget_forcing__mode="on_stop",
               budget_forcing__max_tokens=24, budget_forcing__num_forcings=2,
               budget_forcing__cue="Wait")
    run = get_runner("budget_forcing")
    solve = _ids(tok, PROBLEMS[0])  # the bare problem (budget_forcing.template = bare)
    free = generate(model[1], model[0], [solve], ctx.sampling, jax.random.PRNGKey(0), 24, [],
                    pad_id=tok.pad_id, buckets=BUCKETS).tokens[0]
    stop = free[3]  # greedy decoding emits it by position 3: force a stop there
    k = free.index(stop)
    cue = tok.encode("Wait")
    ctx.stop_ids = (stop,)
    assert forcing_stop_ids(ctx) == (stop,)
    once = run(PROBLEMS[:1], _keys(1), ctx)[0]
    # A second stop token the model emits after the first cue (and not before it).
    after = once.reasoning_ids[1]
    second = next(t for t in after[1:-2] if t not in free[:k + 1])
    j = after.index(second)
    ctx.stop_ids = (stop, second)
    r = run(PROBLEMS[:1], _keys(1), ctx)[0]

    assert len(r.reasoning_text) == len(r.prompts) == 3 and r.method_fields["forcings"] == 2
    assert r.prompts[0][0] == solve
    assert r.reasoning_tokens[:2] == [k + 1, j + 1]
    assert r.reasoning_finish[:2] == ["stop", "stop"]
    assert r.reasoning_ids[:2] == [free[:k + 1], after[:j + 1]]  # generated, stop included
    assert r.prompts[1][0] == solve + free[:k] + cue  # the stop removed, the cue in its place
    assert r.prompts[2][0] == solve + free[:k] + cue + after[:j] + cue
    assert r.reasoning_text[0] == tok.decode(free[:k])  # cumulative, raw
    assert r.reasoning_text[1] == tok.decode(free[:k] + cue + after[:j])
    assert r.reasoning_clean[:2] == [x.strip() for x in r.reasoning_text[:2]]
    assert r.prompt_tokens[:2] == [len(solve), len(solve) + k + len(cue)]
    assert sum(r.reasoning_tokens) <= 24
    if r.reasoning_finish[2] == "length":
        assert sum(r.reasoning_tokens) == 24  # the whole budget, exactly


def test_budget_forcing_on_stop_spends_exactly_the_budget_and_pads_steps(model, tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _ctx(model, tok, "budget_forcing", budget_forcing__mode="on_stop",
               budget_forcing__max_tokens=20, budget_forcing__num_forcings=3)
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
    aggregate = load_template("math", "aggregate")
    summary = load_template("math", "summary")
    pop = r.method_fields["population_store"]
    assert len(r.reasoning_text) == len(pop) == g + 1 and all(len(p) == n for p in pop)
    assert r.prompts[0] == [_ids(tok, _solve(problem))] * n
    for round_ in range(1, g + 1):
        views = ([clean_summary(x) for x in r.method_fields["population_summary_store"][round_ - 1]]
                 if use_summaries else [clean_reasoning(x) for x in pop[round_ - 1]])
        for m, chosen in enumerate(r.method_fields["rsa_notes"][round_ - 1]):
            assert len(set(chosen)) == k and all(0 <= j < n for j in chosen)
            want = aggregate.format(problem=problem,
                                    candidates=format_candidates([views[j] for j in chosen]))
            assert r.prompts[round_][m] == _ids(tok, want, open_think=True)
    for round_ in range(g + 1):
        assert r.reasoning_text[round_] == pop[round_][0]
        assert r.reasoning_clean[round_] == clean_reasoning(pop[round_][0])
        assert r.prompt_tokens[round_] == sum(len(p) for p in r.prompts[round_])
        assert r.reasoning_tokens[round_] <= n * H_R
    if use_summaries:
        for round_ in range(g):
            for m in range(n):
                want = summary.format(problem=problem, existing_summary="",
                                      reasoning=clean_reasoning(pop[round_][m]))
                assert r.summary_prompts[round_][m] == _ids(tok, want)
            assert 0 < r.summary_tokens[round_] <= n * H_S
            assert r.summary_text[round_] == r.method_fields["population_summary_store"][round_][0]
            assert r.summary_clean[round_] == clean_summary(r.summary_text[round_])
        assert r.summary_tokens[g] == 0 and r.summary_prompts[g] == []
    else:
        assert r.summary_tokens == [0] * (g + 1)


def test_rsa_stores_raw_candidates_and_shows_cleaned_ones(tiny_tokenizer):
    tok = tiny_tokenizer
    ctx = _scripted(tok, "rsa", lambda call, row, m: THINKING if m == "reasoner" else
                    "<think>hm</think> I added. ", rsa__population=2, rsa__k=1,
                    rsa__generations=1, rsa__use_summaries=True)
    r = get_runner("rsa")(PROBLEMS[:1], _keys(1), ctx)[0]
    assert r.reasoning_text == [THINKING, THINKING]
    assert r.reasoning_clean == ["plan: add", "plan: add"]
    assert r.summary_text == ["<think>hm</think> I added. ", ""]
    assert r.summary_clean == ["I added.", ""]
    want = load_template("math", "aggregate").format(
        problem=PROBLEMS[0], candidates=format_candidates(["I added."]))
    assert ctx.calls[2][2] == [_ids(tok, want)] * 2


# ---------------------------------------------------------------- all methods
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_rows_do_not_depend_on_batch_composition(model, tiny_tokenizer, method):
    ctx = _ctx(model, tiny_tokenizer, method, rc__num_steps=2, autoregressive__max_tokens=16,
               autoregressive__checkpoint_tokens=6, budget_forcing__max_tokens=16,
               budget_forcing__continuation_tokens=6,
               rsa__population=2, rsa__k=2, rsa__generations=1)
    ctx.stop_ids = tuple(tiny_tokenizer.eos_ids) + (300, 301, 302)  # make some rows stop
    runner = get_runner(method)
    full = runner(PROBLEMS[:2], _keys(2), ctx)
    alone = runner(PROBLEMS[1:2], _keys(2)[1:], ctx)
    assert alone[0].reasoning_text == full[1].reasoning_text
    assert alone[0].reasoning_clean == full[1].reasoning_clean
    assert alone[0].reasoning_tokens == full[1].reasoning_tokens
    assert alone[0].summary_text == full[1].summary_text
    assert alone[0].extra == full[1].extra


# ---------------------------------------------------------------- RC with two models
def test_rc_with_a_different_summarizer_model(model, tiny_tokenizer):
    from rc_jax.rc.engine import Job
    tok = tiny_tokenizer
    config, params = model
    s_config = tiny_config("qwen3", vocab_size=512, hidden_size=32, num_heads=2,
                           num_kv_heads=1, num_layers=1)
    s_params = randomize(init_params(s_config, jax.random.PRNGKey(1)), 1)
    settings = RCSettings(num_steps=2, max_reasoning_tokens=H_R, max_summary_tokens=H_R)
    engine = RCEngine(config, tok, settings, SamplingParams(temperature=0.0), buckets=BUCKETS,
                      summarizer_config=s_config)
    outs, _ = engine.run(params, [Job(p, k, 2) for p, k in zip(PROBLEMS, _keys(3))],
                         summarizer_params=s_params, record_prompts=True)

    def greedy(p, cfg, prompts):
        res = generate(p, cfg, prompts, SamplingParams(temperature=0.0), jax.random.PRNGKey(0),
                       H_R, tok.eos_ids, pad_id=tok.pad_id, buckets=BUCKETS)
        return [tok.decode(t) for t in res.tokens]

    recs = [r.record for r in outs]
    for step in range(2):
        prompts = [r.summary_prompts[step][0] for r in recs]
        assert [r.summary_text[step] for r in recs] == greedy(s_params, s_config, prompts)
        assert [r.summary_text[step] for r in recs] != greedy(params, config, prompts)
    # The second reasoning step sees the second model's (cleaned) summary.
    for r in recs:
        assert r.summary_clean[0] in tok.decode(r.prompts[1][0])


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
    c.budget_forcing.continuation_tokens = 8
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
        assert len(line["reasoning_clean"]) == len(line["summary_clean"]) == steps
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
    import shutil

    from rc_jax.tools.builtin_models import resolve_model_path
    main_dir = Path(resolve_model_path("builtin:tiny-random"))
    for f in main_dir.iterdir():  # the summarizer checkpoint shares the main tokenizer
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, tmp_path / "summarizer" / f.name)
    seen = []

    class Spy(RCEngine):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["summarizer_config"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(rc_jax.rc.engine, "RCEngine", Spy)
    out = tmp_path / "two"
    run(_main_config("rc", out, summarizer__model__path=str(tmp_path / "summarizer"),
                     data__limit=1, num_samples=1, rc__num_steps=1))
    loaded, = seen  # both models held; the second one summarizes
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
    (dict(budget_forcing__continuation_tokens=0), "config.budget_forcing.continuation_tokens"),
    (dict(budget_forcing__mode="wait"), "config.budget_forcing.mode"),
    (dict(budget_forcing__template="/no/such/prompt.txt"), "config.budget_forcing.template"),
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
    assert load_template(str(good), "refine").format(problem="p", previous_attempt="a") \
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
    refine = _config("self_refine")  # one template at every step: no solve template read
    before = config_hash(refine)
    refine.baselines.solve_template = "science"
    assert config_hash(refine) == before
    refine.self_refine.template = "science"
    assert config_hash(refine) != before


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
    if method in ("autoregressive", "budget_forcing"):  # the paper's sampling for these
        assert (c.sampling.temperature, c.sampling.top_p) == (0.7, 0.8)
    if method == "budget_forcing":
        assert c.budget_forcing.mode == "paper" and c.budget_forcing.continuation_tokens == 2048
    c.model.path = "builtin:tiny-random"
    if method == "rc":
        with pytest.raises(ValueError, match="config.summarizer.model.path"):
            validate(c)  # the placeholder must be replaced by a real checkpoint
        c.summarizer.model.path = str(tmp_path)
    validate(c)
