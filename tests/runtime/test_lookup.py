"""Draft-free speculation: the n-gram lookup's rules (no TVM), then the target verifying its
proposals: greedy output identical to the target alone, sampling keeping the target's
distribution (chi-square), counters, and the CLI and server interfaces."""

import json
import subprocess
import sys

import numpy as np
import pytest

from air.errors import AirError
from air.runtime.lookup import NgramLookup


def test_longest_match_wins():
    # the last 2 tokens [7, 8] occurred at 4..5 (then 9); the last token 8 alone last occurred at 2 (then 3)
    table = NgramLookup([1, 8, 3, 5, 7, 8, 9, 0, 4, 8, 3, 7, 8], max_ngram=3)
    assert table.propose(1) == [9]


def test_most_recent_occurrence():
    table = NgramLookup([5, 1, 2, 5, 3, 4, 5])
    assert table.propose(2) == [3, 4]


def test_no_match():
    assert NgramLookup([1, 2, 3, 4]).propose(4) == []
    assert NgramLookup([9]).propose(4) == []
    assert NgramLookup([]).propose(4) == []


def test_k_bounds():
    table = NgramLookup([1, 2, 3, 4, 5, 6, 1])
    assert table.propose(0) == []
    assert table.propose(3) == [2, 3, 4]
    assert table.propose(16) == [2, 3, 4, 5, 6, 1]


def test_the_context_end_cuts_proposals():
    # the match's continuation runs into the text's end: only what exists is proposed
    assert NgramLookup([4, 5, 6, 4, 5]).propose(8) == [6, 4, 5]
    assert NgramLookup([7, 7, 7]).propose(8) == [7]  # overlapping occurrence [7, 7] at 0..1


def test_extend_sees_new_text():
    table = NgramLookup([1, 2, 3])
    assert table.propose(2) == []
    table.extend([9, 1])
    assert table.propose(2) == [2, 3]
    table.extend([2, 8, 1, 2])
    assert table.propose(2) == [8, 1]  # [1, 2] most recently followed by 8


def test_max_ngram_must_be_positive():
    with pytest.raises(ValueError):
        NgramLookup([1, 2], max_ngram=0)


# --- the target verifying lookups (real TVM bundles) ---

from air.compiler import lookup_replay  # noqa: E402
from air.compiler.build import compile_bundle  # noqa: E402
from air.compiler.routing import MAX_K, build_table, target_continuation  # noqa: E402
from air.runtime import routing  # noqa: E402
from air.compiler.recipe import load_recipe  # noqa: E402
from air.runtime import Bundle  # noqa: E402
from air.runtime.routing import StepCosts, row_key  # noqa: E402
from air.runtime.sampling import probabilities  # noqa: E402

from helpers import cli_env, own_stderr  # noqa: E402
from test_speculative import _chi_square_z  # noqa: E402

REPEATING = [5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10, 5, 6, 7]
DISTINCT = [300, 200, 100, 50, 25, 12, 6]


@pytest.fixture(scope="module")
def alone(pair, tmp_path_factory):
    """The pair's target compiled without a draft: lookup is the only way it speculates."""
    folder = tmp_path_factory.mktemp("lookup") / "alone"
    compile_bundle(str(pair["target"]), None, load_recipe("host").with_overrides(max_context=128), folder, quiet=True)
    return folder


@pytest.fixture(scope="module")
def loaded(pair, alone):
    bundles = {"pair": Bundle.load(pair["bundle"]), "alone": Bundle.load(alone)}
    for bundle in bundles.values():
        bundle.eos_token_ids = set()  # run to max_tokens so every path (catch-up, end) is exercised
    return bundles


@pytest.mark.parametrize("which", ["pair", "alone"])
def test_greedy_is_token_identical_for_every_k(loaded, which):
    bundle = loaded[which]
    for prompt in (REPEATING, DISTINCT, [12, 12, 12, 12]):
        expected = bundle.generate(prompt_ids=prompt, max_tokens=40).tokens
        assert len(expected) == 40
        for k in (1, 2, 3, 5, 8):
            stats = bundle.generate(prompt_ids=prompt, max_tokens=40, speculate=k, proposer="lookup")
            assert stats.tokens == expected, (prompt, k)
            stats = stats.stats
            assert stats["proposer"] == "lookup" and stats["speculate"] == k
            assert 0 <= stats["lookup_accepted"] <= stats["lookup_proposed"]
            assert stats["tokens_per_target_pass"] == pytest.approx(40 / stats["target_passes"], rel=1e-3)
            assert stats["draft_seconds"] == 0.0


def test_lookups_that_hit_are_accepted(loaded):
    stats = loaded["alone"].generate(prompt_ids=REPEATING, max_tokens=40, speculate=4, proposer="lookup").stats
    assert stats["lookup_accepted"] > 0
    assert stats["target_passes"] < 40
    assert stats["tokens_per_target_pass"] > 1


def test_lookups_that_never_hit_are_plain_decodes(loaded):
    # distinct prompt tokens and 3 generated tokens that repeat none of them: nothing to look up
    bundle = loaded["alone"]
    tokens = bundle.generate(prompt_ids=DISTINCT, max_tokens=3).tokens
    assert len(set(DISTINCT + tokens)) == len(DISTINCT) + 3, "the prompt must not make the lookup hit"
    stats = bundle.generate(prompt_ids=DISTINCT, max_tokens=3, speculate=4, proposer="lookup").stats
    assert stats["lookup_proposed"] == 0 and stats["acceptance_rate"] is None
    assert stats["target_passes"] == 3  # one decode per token, no verify of zero proposals


def _looked_up_prompt(target, a: int = 5, c: int = 17, top_p: float = 0.9):
    """A prompt [a, b, c, a] (the lookup proposes b) where b is the target's likeliest next token,
    and a temperature at which it is neither sure nor rare: acceptance and rejection both occur."""
    for b in range(target.vocab_size):
        target.reset()
        logits = target.prefill([a, b, c, a])
        if int(logits.argmax()) != b:
            continue
        for temperature in (1.0, 0.5, 0.3, 0.2, 0.1):
            probs = probabilities(logits, temperature, top_p)
            if 0.2 < probs[b] < 0.8:
                return [a, b, c, a], temperature, probs
    raise AssertionError("no prompt whose looked-up token is plausible")


def test_sampling_keeps_the_target_distribution(loaded):
    bundle = loaded["alone"]
    top_p = 0.9
    prompt, temperature, first_probs = _looked_up_prompt(bundle.target, top_p=top_p)
    runs = 3000
    firsts = np.zeros(bundle.target.vocab_size)
    accepted = 0
    for seed in range(runs):
        result = bundle.generate(prompt_ids=prompt, max_tokens=2, temperature=temperature, top_p=top_p,
                                 seed=seed, speculate=1, proposer="lookup")
        assert result.stats["lookup_proposed"] >= 1
        firsts[result.tokens[0]] += 1
        accepted += result.stats["lookup_accepted"]
    assert 0 < accepted < runs, "both acceptance and rejection must occur"
    assert _chi_square_z(firsts, first_probs) < 4.0


def test_point_mass_rule_differs_from_always_accepting(loaded):
    """The chi-square above can fail: always keeping the looked-up token is far from p."""
    prompt, temperature, probs = _looked_up_prompt(loaded["alone"].target)
    always = np.zeros(len(probs))
    always[prompt[1]] = 3000
    assert _chi_square_z(always, probs) > 10.0


def test_a_routing_row_may_choose_lookup(loaded):
    bundle = loaded["alone"]
    key = row_key("balanced", len(REPEATING), 40, "target")
    row = {"path": "lookup", "k": 3, "kv": "float32", "expected_tokens_per_second": None, "reason": "test row"}
    saved = bundle.routing
    try:
        bundle.routing = {"rows": {key: row}}
        routed = bundle.generate(prompt_ids=REPEATING, max_tokens=40)
        assert routed.route.path == "lookup" and routed.stats["proposer"] == "lookup"
        assert routed.stats["speculate"] == 3 and routed.stats["lookup_accepted"] > 0
        assert routed.tokens == bundle.generate(prompt_ids=REPEATING, max_tokens=40, speculate=0).tokens
        bundle.routing = {"rows": {key: {**row, "path": "guess"}}}
        with pytest.raises(AirError, match="unknown path 'guess'"):
            bundle.generate(prompt_ids=REPEATING, max_tokens=40)
    finally:
        bundle.routing = saved


def test_unknown_proposer_is_one_error(loaded):
    with pytest.raises(AirError, match="unknown proposer 'oracle'"):
        loaded["alone"].generate(prompt_ids=REPEATING, speculate=2, proposer="oracle")
    with pytest.raises(AirError, match="no draft model"):
        loaded["alone"].generate(prompt_ids=REPEATING, speculate=2, proposer="draft")


def _air_run(*args):
    return subprocess.run([sys.executable, "-m", "air.runtime", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), timeout=300)


def test_cli_speculates_by_lookup_without_a_draft(alone):
    ids = ",".join(map(str, REPEATING))
    plain = _air_run(alone, "--prompt-ids", ids, "--max-tokens", 24, "--json")
    spec = _air_run(alone, "--prompt-ids", ids, "--max-tokens", 24, "--json", "--speculate", 4, "--proposer", "lookup",
                    "--explain")
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    plain, out = json.loads(plain.stdout), json.loads(spec.stdout)
    assert out["tokens"] == plain["tokens"]
    assert out["stats"]["proposer"] == "lookup" and out["stats"]["lookup_proposed"] > 0
    assert "forced by --speculate 4 --proposer lookup" in spec.stderr
    refused = _air_run(alone, "--prompt-ids", ids, "--speculate", 4, "--proposer", "draft")
    lines = own_stderr(refused.stderr)
    assert refused.returncode == 2 and len(lines) == 1 and lines[0].startswith("air-run: error: ") \
        and "no draft model" in lines[0], refused.stderr


def test_chat_speculates_by_lookup(alone):
    lines = "def fibonacci(n):\nand again: def fibonacci(n):\n"
    turns = {}
    for args in ((), ("--speculate", "3", "--proposer", "lookup")):
        result = subprocess.run([sys.executable, "-m", "air.runtime", "chat", str(alone), "--json", "--max-tokens", "16",
                                 *args], input=lines, capture_output=True, text=True, env=cli_env(), timeout=300)
        assert result.returncode == 0, result.stderr
        turns[args] = [json.loads(line) for line in result.stdout.splitlines()]
    plain, spec = turns.values()
    assert [t["tokens"] for t in spec] == [t["tokens"] for t in plain]
    assert all(t["stats"]["proposer"] == "lookup" for t in spec)
    assert spec[1]["stats"]["reused_tokens"] > 0  # the session's caches still carry over between turns


def test_server_takes_air_proposer(alone):
    import httpx
    import openai
    from test_server import serving

    with serving(alone) as base:
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        name = json.loads((alone / "manifest.json").read_text())["name"]
        request = dict(model=name, prompt=REPEATING, max_tokens=16, temperature=0)
        plain = api.completions.create(**request, extra_body={"air_speculate": 0})
        spec = api.completions.create(**request, extra_body={"air_speculate": 3, "air_proposer": "lookup"})
        assert spec.choices[0].text == plain.choices[0].text
        stats = spec.model_extra["air"]["stats"]
        assert stats["proposer"] == "lookup" and stats["lookup_accepted"] > 0
        bad = httpx.post(f"{base}/v1/completions", json={**request, "air_speculate": 3, "air_proposer": "oracle"}, timeout=30)
        assert bad.status_code == 400 and "'air_proposer'" in bad.json()["error"]["message"]
        missing = httpx.post(f"{base}/v1/completions", json={**request, "air_speculate": 3, "air_proposer": "draft"},
                             timeout=30)
        assert missing.status_code == 400 and "no draft model" in missing.json()["error"]["message"]


# A transformation of given text (more than 64 tokens: its row takes the "transform" class).
TRANSFORM = ("Rename items to entries.\nclass Stack:\n    def __init__(self):\n        self.items = []\n"
             "    def push(self, item):\n        self.items.append(item)\nRenamed:\n")


def test_replayed_lookup_matches_the_runtime_loop(loaded):
    bundle = loaded["alone"]
    for prompt in (REPEATING, bundle.encode(TRANSFORM)):
        truth = target_continuation(bundle.target, prompt, 32)
        for k in (1, 3, 8):
            replayed = lookup_replay.summarise(lookup_replay.replay(prompt, truth, k))
            result = bundle.generate(prompt_ids=prompt, max_tokens=32, speculate=k, proposer="lookup")
            assert result.tokens == truth
            assert replayed["rounds"] == result.stats["target_passes"]
            assert replayed["acceptance_rate"] == result.stats["acceptance_rate"]
            proposed = sum(int(n) * count for n, count in replayed["rounds_by_proposals"].items())
            assert proposed == result.stats["lookup_proposed"]


def test_a_bundle_without_a_draft_routes_a_transformation_to_lookup(alone, loaded):
    table = json.loads((alone / "routing.json").read_text())
    measured = table["measurements"]
    assert set(measured["lookup_acceptance"]) == {"open", "transform"}
    assert set(measured["lookup_acceptance"]["transform"]) == {str(k) for k in range(1, MAX_K + 1)}
    bundle = loaded["alone"]
    prompt = bundle.encode(TRANSFORM)
    assert 64 < len(prompt) <= 128 - 32 - MAX_K
    # the table's row follows its measurements: lookup exactly when its best k measured faster
    row = routing.lookup(table, "exact", len(prompt), 32, "target")
    rates = table["lookup_decode_tokens_per_second"]["transform"]
    assert (row.path == "lookup") == (max(rates.values()) > table["decode_tokens_per_second"]["target"]), row
    # the same lookup measurements with a verify pass costing 1.2 decode steps (as on a device
    # where decode reads the weights from memory) route the transformation to lookup
    costs = StepCosts.from_dict(measured["costs"])
    decode = costs.target.decode
    cheap_verify = StepCosts(costs.target, None, {k: 1.2 * decode for k in costs.target_verify})
    saved = bundle.routing
    try:
        bundle.routing = build_table({**measured, "costs": cheap_verify}, "float32")
        routed = bundle.generate(prompt_ids=prompt, max_tokens=32, quality="exact")
    finally:
        bundle.routing = saved
    assert routed.route.path == "lookup" and routed.route.key.endswith("mem:target")
    assert routed.stats["proposer"] == "lookup" and routed.stats["lookup_accepted"] > 0
    assert routed.tokens == bundle.generate(prompt_ids=prompt, max_tokens=32, speculate=0).tokens
    explained = _air_run(alone, "--prompt", TRANSFORM, "--max-tokens", 32, "--explain", "--quality", "exact")
    assert explained.returncode == 0, explained.stderr
    assert "route: row 'exact|prompt<=512|gen<=32|mem:target'" in explained.stderr
    assert "taken for a transformation of given text" in explained.stderr
