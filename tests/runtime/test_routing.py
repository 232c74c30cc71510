"""Static routing: calibration, the table, the lookup, --explain, and memory classes."""

import json
import re

import pytest

from air.compiler import lookup_replay
from air.compiler.routing import MAX_K, acceptance_by_k, build_table, draft_run_lengths, target_continuation
from air.runtime import Bundle
from helpers import air_run
from air.runtime.routing import TIERS, ModelCosts, StepCosts


def fake_measurements(acceptance_per_token: float, draft_cost: float = 0.1) -> dict:
    acceptance = {}
    for k in range(1, MAX_K + 1):
        tokens = sum(acceptance_per_token ** i for i in range(k + 1))  # Leviathan et al., expected per pass
        acceptance[str(k)] = {"acceptance_rate": acceptance_per_token, "tokens_per_pass": tokens}
    costs = StepCosts(target=ModelCosts(prefill_per_token=0.1, decode=1.0),
                      draft=ModelCosts(prefill_per_token=0.01, decode=draft_cost),
                      target_verify={k: 1.0 + 0.05 * k for k in range(1, MAX_K + 1)})
    return {"acceptance": acceptance, "costs": costs, "acceptance_source": "test", "cost_source": "test"}


def test_table_is_deterministic_and_follows_the_measurements():
    good = build_table(fake_measurements(0.8), "f32")
    assert json.dumps(good, sort_keys=True) == json.dumps(build_table(fake_measurements(0.8), "f32"), sort_keys=True)
    row = good["rows"]["exact|prompt<=64|gen>256|mem:both"]
    assert row["path"] == "speculative" and 2 <= row["k"] <= MAX_K
    never = build_table(fake_measurements(0.0), "f32")
    for tier in TIERS:
        assert never["rows"][f"{tier}|prompt<=64|gen>256|mem:both"]["path"] in (
            ("target",) if tier != "fast" else ("target", "draft"))
    assert never["rows"]["exact|prompt<=64|gen>256|mem:both"]["path"] == "target"


def test_the_fast_tier_serves_a_weak_draft_alone_only_when_the_target_does_not_fit():
    """Draft alone costs 0.01 of a target step: the fastest path whatever its quality."""
    for agreement, alone in ((0.8, True), (0.4, False)):
        rows = build_table(fake_measurements(agreement, draft_cost=0.01), "f32")["rows"]
        assert (rows["fast|prompt<=64|gen<=256|mem:both"]["path"] == "draft") == alone, agreement
        assert rows["fast|prompt<=64|gen<=256|mem:draft"]["path"] == "draft"  # nothing else fits
        assert rows["exact|prompt<=64|gen<=256|mem:both"]["path"] != "draft"


def lookup_measurements(verify_cost: float) -> dict:
    """No draft; lookup replayed over a continuation that copies its prompt ("transform") and
    one that never repeats ("open"); verify passes cost verify_cost decodes."""
    prompt = list(range(10, 40))
    copied = lookup_replay.replay(prompt + [1], prompt[:20], 4)  # [1] then the prompt again: the lookup finds it
    fresh = lookup_replay.replay(prompt, list(range(100, 120)), 4)
    assert sum(a for _, a in copied) > 10 and sum(n for n, _ in fresh) == 0
    costs = StepCosts(target=ModelCosts(prefill_per_token=0.01, decode=1.0), draft=None,
                      target_verify={k: verify_cost for k in range(1, MAX_K + 1)})
    by_class = {"open": fresh, "transform": copied}
    return {"lookup_acceptance": {c: {str(k): lookup_replay.summarise(r) for k in range(1, MAX_K + 1)}
                                  for c, r in by_class.items()},
            "costs": costs, "cost_source": "test"}


def test_lookup_rows_follow_the_prompt_class_and_the_costs():
    rows = build_table(lookup_measurements(verify_cost=1.2), "f32")["rows"]
    for tier in TIERS:  # exact too: lookup keeps the target's output
        transform = rows[f"{tier}|prompt<=512|gen<=256|mem:target"]
        assert transform["path"] == "lookup" and transform["k"] >= 1, transform
        assert "transformation of given text" in transform["reason"]
        assert rows[f"{tier}|prompt<=512|gen<=256|mem:both"]["path"] == "lookup"
        assert rows[f"{tier}|prompt<=64|gen<=256|mem:target"]["path"] == "target"  # nothing to look up
        assert rows[f"{tier}|prompt<=512|gen<=256|mem:draft"]["path"] == "refuse"  # lookup runs the target
    costly = build_table(lookup_measurements(verify_cost=30.0), "f32")["rows"]
    assert costly["balanced|prompt<=512|gen<=256|mem:target"]["path"] == "target"


def test_memory_classes_and_tiers():
    rows = build_table(fake_measurements(0.8), "f32")["rows"]
    key = "|prompt<=64|gen<=256|mem:"
    assert rows["exact" + key + "target"]["path"] == "target"  # speculation needs both models in memory
    assert rows["exact" + key + "draft"]["path"] == "refuse"
    assert rows["balanced" + key + "draft"]["path"] == "draft"
    assert rows["fast" + key + "draft"]["path"] == "draft"
    assert all(rows[f"{tier}{key}none"]["path"] == "refuse" for tier in TIERS)
    assert rows["balanced" + key + "both"]["path"] != "draft"  # balanced uses the draft alone only when forced


def test_replayed_acceptance_matches_the_runtime_loop(pair):
    bundle = Bundle.load(pair["bundle"])
    bundle.eos_token_ids = set()
    prompt = bundle.encode("def read_config(path):")
    replay = acceptance_by_k(draft_run_lengths(bundle, prompt, target_continuation(bundle.target, prompt, 40)))
    for k in (1, 3, 8):
        stats = bundle.generate(prompt_ids=prompt, max_tokens=40, speculate=k).stats
        assert replay[str(k)]["tokens_per_pass"] == pytest.approx(40 / stats["target_passes"], abs=1e-3)


def test_bundle_carries_a_table_and_a_random_draft_never_serves(pair):
    manifest = json.loads((pair["bundle"] / "manifest.json").read_text())
    assert manifest["routing"] == "routing.json" and "routing.json" in manifest["files"]
    table = json.loads((pair["bundle"] / "routing.json").read_text())
    assert set(table["measurements"]["acceptance"]) == {str(k) for k in range(1, MAX_K + 1)}
    for key, row in table["rows"].items():
        if key.startswith(("exact", "balanced")) and key.endswith("mem:both"):
            assert row["path"] in ("target", "lookup"), (key, row)  # never the random draft


def test_explain_names_the_row(pair):
    result = air_run(pair["bundle"], "--prompt", "import os", "--max-tokens", "8", "--explain", "--quality", "exact")
    assert result.returncode == 0, result.stderr
    assert re.search(r"route: row 'exact\|prompt<=64\|gen<=32\|mem:both' -> (target alone|lookup k=\d)", result.stderr)
    assert "why: expected tokens/s" in result.stderr


def test_budget_without_room_for_the_target(pair):
    bundle = Bundle.load(pair["bundle"])
    draft_needs = bundle.memory_needed(40, ("draft",))["total"]
    target_needs = bundle.memory_needed(40, ("target",))["total"]
    assert draft_needs < target_needs
    budget = f"{(draft_needs + target_needs) / 2 / 2**20:.4f}"
    args = ("--prompt", "import os", "--max-tokens", "8", "--memory-budget", budget, "--explain", "--json")
    for tier in ("balanced", "fast"):
        result = air_run(pair["bundle"], *args, "--quality", tier)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["route"]["path"] == "draft" and out["route"]["key"].endswith("mem:draft")
        assert len(out["tokens"]) == 8
    refused = air_run(pair["bundle"], *args, "--quality", "exact")
    assert refused.returncode == 2 and "request needs" in refused.stderr
    # the draft-only path never loads the target's weights
    in_process = Bundle.load(pair["bundle"], memory_budget_mb=float(budget))
    result = in_process.generate(prompt="import os", max_tokens=8, quality="fast")
    assert result.route.path == "draft" and "target" not in in_process._models
