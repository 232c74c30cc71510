"""Routing calibration (run inside air-build): measure acceptance per draft length and the
per-step costs on the compiled models, then fill the static routing table.

Acceptance: the target's greedy continuation of each calibration prompt is generated once,
and at every position the draft's greedy run is compared with it; replaying the speculative
loop over those run lengths gives, exactly for greedy decoding, the accepted tokens and the
tokens per target pass for every k, at the cost of one target pass per token.

Expected speed of a path for a request of P prompt tokens and G generated tokens:
  time = prefill time of the models it runs (P tokens) + G / decode tokens/s
  target alone:  1 / t_decode(target)
  draft alone:   1 / t_decode(draft)
  speculative k: tokens per target pass(k) / (k * t_decode(draft) + t_verify(target, k + 1))
(Leviathan et al. 2023).
  lookup k:      tokens / (rounds with n proposals * t_verify(target, n + 1) + rounds without * t_decode)
                 (lookup_replay.py; no draft model, so a bundle without one is routed too)

Lookup pays where the answer repeats the prompt, so it is calibrated per prompt class: "open"
prompts (questions, continuations: calibration.txt) and "transform" prompts (edit or summarise a
given text: calibration-transform.txt). A row takes the class of its prompt-length bucket: a
prompt of up to 64 tokens is taken for an open one, a longer one for a text given to transform.
"""

from __future__ import annotations

import statistics
import time
from importlib import resources
from pathlib import Path

import numpy as np

from air.runtime.routing import (GENERATION_BUCKETS, MEMORY_CLASSES, PROMPT_BUCKETS, TIERS, ModelCosts, StepCosts,
                                 bucket_names, row_key)

from . import lookup_replay

MAX_K = 8
# A representative length for each bucket, for the expected-time formula.
_PROMPT_REPRESENTATIVE = dict(zip(bucket_names(PROMPT_BUCKETS), (32, 256, 1024)))
_GENERATION_REPRESENTATIVE = dict(zip(bucket_names(GENERATION_BUCKETS), (16, 128, 512)))
PROMPT_CLASSES = ("open", "transform")
_BUCKET_CLASS = dict(zip(bucket_names(PROMPT_BUCKETS), ("open", "transform", "transform")))
_CLASS_WORDS = {"open": "an open question or continuation", "transform": "a transformation of given text"}


def default_prompts(name: str = "calibration.txt") -> list[str]:
    text = (resources.files("air.recipes") / name).read_text()
    return [p for p in text.split("\n\n") if p.strip()]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_costs(bundle, repeats: int = 7) -> StepCosts:
    """Per-call seconds of the compiled functions on this machine, at a modest context."""
    rng = np.random.default_rng(0)
    models = _models(bundle)
    room = min(model.max_context for model in models.values()) - MAX_K - 2
    context = rng.integers(2, bundle.target.vocab_size, size=min(64, room)).tolist()
    costs = {}
    for role, model in models.items():
        model.reset(len(context) + MAX_K + 2)
        model.prefill(context)  # warm up

        def prefill():
            model.reset(len(context) + MAX_K + 2)
            model.prefill(context)

        def decode():
            model.rollback(len(context))
            model.decode(7)

        per_token = _median_seconds(prefill, max(repeats // 2, 3)) / len(context)
        prefill()
        costs[role] = ModelCosts(per_token, _median_seconds(decode, repeats))
    verify = {}
    target = bundle.target
    for k in range(1, MAX_K + 1):
        def run():
            target.rollback(len(context))
            target.verify([7] * (k + 1))
        verify[k] = _median_seconds(run, repeats)
    return StepCosts(costs["target"], costs.get("draft"), verify)


def _models(bundle) -> dict:
    roles = [role for role in ("target", "draft") if role in bundle.manifest["models"]]
    return {role: getattr(bundle, role) for role in roles}


def target_continuation(target, prompt_ids: list[int], tokens: int) -> list[int]:
    """The target's greedy continuation of the prompt."""
    target.reset(len(prompt_ids) + tokens + 1)
    logits = target.prefill(prompt_ids)
    truth = []
    for _ in range(tokens):
        truth.append(int(np.argmax(logits)))
        logits = target.decode(truth[-1])
    return truth


def draft_run_lengths(bundle, prompt_ids: list[int], truth: list[int]) -> list[int]:
    """For each position of the target's greedy continuation `truth`, how many tokens (up to
    MAX_K) the draft's own greedy continuation from there gets right."""
    draft, tokens = bundle.draft, len(truth)
    draft.reset(len(prompt_ids) + tokens + MAX_K + 1)
    logits = draft.prefill(prompt_ids)
    base = draft.length
    runs = []
    for i in range(tokens):
        run, proposal_logits, next_logits = 0, logits, None
        while run < MAX_K and i + run < tokens and draft.token_id(int(np.argmax(proposal_logits))) == truth[i + run]:
            proposal_logits = draft.decode(truth[i + run])
            if run == 0:
                next_logits = proposal_logits
            run += 1
        runs.append(run)
        if next_logits is None:
            logits = draft.decode(truth[i])
        else:  # truth[i] is already in the cache from the first proposal step
            logits = next_logits
            draft.rollback(base + i + 1)
    return runs


def acceptance_by_k(runs: list[int]) -> dict:
    """The greedy speculative loop replayed over the run lengths, for every k: exact for greedy."""
    result = {}
    for k in range(1, MAX_K + 1):
        position = passes = accepted = 0
        while position < len(runs):
            kept = min(runs[position], k)
            accepted += kept
            passes += 1
            position += kept + 1
        result[str(k)] = {"acceptance_rate": round(accepted / (passes * k), 4),
                          "tokens_per_pass": round(position / passes, 4)}
    return result


def _calibration_ids(bundle, prompts: list[str], tokens: int):
    """(prompt ids, tokens to continue) per prompt, cut to leave room for the continuation."""
    limit = min(model.max_context for model in _models(bundle).values()) - MAX_K - 2
    for prompt in prompts:
        ids = bundle.encode(prompt)[: limit // 2]
        yield ids, min(tokens, limit - len(ids))


def _continued(bundle, prompts: list[str], tokens: int, seen: dict) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, the target's greedy continuation) per prompt; `seen` keeps the continuations
    one calibration has computed, so the draft's and lookup's measurements share them."""
    pairs = []
    for ids, count in _calibration_ids(bundle, prompts, tokens):
        key = (tuple(ids), count)
        if key not in seen:
            seen[key] = target_continuation(bundle.target, ids, count)
        pairs.append((ids, seen[key]))
    return pairs


def measure_acceptance(bundle, prompts: list[str], tokens: int = 48, seen: dict | None = None) -> dict:
    runs = []
    for ids, truth in _continued(bundle, prompts, tokens, {} if seen is None else seen):
        runs += draft_run_lengths(bundle, ids, truth)
    return acceptance_by_k(runs)


def measure_lookup(bundle, prompts_by_class: dict[str, list[str]], tokens: int = 48, seen: dict | None = None) -> dict:
    """Per prompt class and k, the replayed lookup loop's rounds (lookup_replay.summarise)."""
    result, seen = {}, {} if seen is None else seen
    for prompt_class, prompts in prompts_by_class.items():
        rounds = {k: [] for k in range(1, MAX_K + 1)}
        for ids, truth in _continued(bundle, prompts, tokens, seen):
            for k in rounds:
                rounds[k] += lookup_replay.replay(ids, truth, k)
        result[prompt_class] = {str(k): lookup_replay.summarise(r) for k, r in rounds.items()}
    return result


def _decode_rates(measurements: dict, prompt_class: str) -> dict[str, float]:
    """Tokens/s of every path the measurements cover, for prompts of this class."""
    costs = measurements["costs"]
    rates = {"target": 1 / costs.target.decode}
    if "acceptance" in measurements:
        rates["draft"] = 1 / costs.draft.decode
        for k in range(1, MAX_K + 1):
            round_seconds = k * costs.draft.decode + costs.target_verify[k]
            rates[f"speculative:{k}"] = measurements["acceptance"][str(k)]["tokens_per_pass"] / round_seconds
    for k, summary in measurements.get("lookup_acceptance", {}).get(prompt_class, {}).items():
        rates[f"lookup:{k}"] = lookup_replay.decode_rate(summary, costs)
    return rates


# The fast tier serves the draft alone while the target fits only if the draft picks the target's
# greedy token at least this often (a weak draft's own text is not worth its speed).
DRAFT_ALONE_AGREEMENT = 0.6


def draft_agreement(measurements: dict) -> float:
    """How often the draft's greedy token is the target's (accepted proposals per pass at k = 1)."""
    acceptance = measurements.get("acceptance")
    return acceptance["1"]["tokens_per_pass"] - 1.0 if acceptance else 0.0


def _allowed(candidate: str, tier: str, mem: str, agreement: float) -> bool:
    if candidate.startswith("speculative"):
        return mem == "both"
    if candidate == "target" or candidate.startswith("lookup"):  # lookup is exact and needs no draft
        return mem in ("both", "target")
    # draft alone: never for exact; when the target does not fit, for balanced and fast; else for
    # fast only, and only a draft that agrees with the target often enough
    if mem in ("none", "draft"):
        return mem == "draft" and tier != "exact"
    return tier == "fast" and agreement >= DRAFT_ALONE_AGREEMENT


def build_table(measurements: dict, kv: str) -> dict:
    """The routing table: a pure function of the measurements (deterministic; their costs are StepCosts)."""
    rates = {prompt_class: _decode_rates(measurements, prompt_class) for prompt_class in PROMPT_CLASSES}
    costs = measurements["costs"]
    agreement = draft_agreement(measurements)
    rows = {}
    for tier in TIERS:
        for prompt_bucket, prompt_tokens in _PROMPT_REPRESENTATIVE.items():
            for gen_bucket, gen_tokens in _GENERATION_REPRESENTATIVE.items():
                for mem in MEMORY_CLASSES:
                    key = f"{tier}|prompt{prompt_bucket}|gen{gen_bucket}|mem:{mem}"
                    assert key == row_key(tier, prompt_tokens, gen_tokens, mem)
                    rows[key] = _choose(rates[_BUCKET_CLASS[prompt_bucket]], costs, tier, mem, prompt_tokens,
                                        gen_tokens, kv, _BUCKET_CLASS[prompt_bucket], agreement)
    plain = {c: round(r, 3) for c, r in rates["open"].items() if not c.startswith("lookup")}
    lookups = {cls: {c: round(r, 3) for c, r in by.items() if c.startswith("lookup")} for cls, by in rates.items()}
    return {"version": 1, "kv": kv, "decode_tokens_per_second": plain, "lookup_decode_tokens_per_second": lookups,
            "measurements": {**measurements, "costs": costs.to_dict()}, "rows": rows}


def _choose(rates, costs, tier, mem, prompt_tokens, gen_tokens, kv, prompt_class, agreement) -> dict:
    expected = {}
    for candidate, rate in rates.items():
        if not _allowed(candidate, tier, mem, agreement):
            continue
        prefill = prompt_tokens * costs.of("draft" if candidate == "draft" else "target").prefill_per_token
        if candidate.startswith("speculative"):
            prefill += prompt_tokens * costs.draft.prefill_per_token
        expected[candidate] = gen_tokens / (prefill + gen_tokens / rate)
    if not expected:
        why = "nothing fits the memory budget" if mem == "none" else \
            f"the {tier} tier never serves draft-only output and the target does not fit the memory budget"
        return {"path": "refuse", "k": 0, "kv": kv, "expected_tokens_per_second": None, "reason": why}
    # highest expected speed; ties go to the simpler path (target, then smaller k)
    order = ["target", "draft"] + [f"{path}:{k}" for path in ("speculative", "lookup") for k in range(1, MAX_K + 1)]
    best = max(expected, key=lambda c: (round(expected[c], 6), -order.index(c)))
    runners = sorted(expected, key=lambda c: -expected[c])[:3]
    reason = "expected tokens/s " + ", ".join(f"{c} {expected[c]:.1f}" for c in runners) + \
             f" (prompt ~{prompt_tokens} tokens, taken for {_CLASS_WORDS[prompt_class]}; generation ~{gen_tokens} tokens)"
    path, _, k = best.partition(":")
    return {"path": path, "k": int(k or 0), "kv": kv, "expected_tokens_per_second": round(expected[best], 3),
            "reason": reason}


def calibrate(bundle_path: Path, prompts: list[str], progress, transform_prompts: list[str] = ()) -> dict:
    """Acceptance of the draft (when the bundle has one) and of lookup per prompt class, and the step costs."""
    from air.runtime import Bundle

    bundle = Bundle.load(bundle_path, verify=False, adaptive_threads=False)  # costs at the recipe's threads
    measurements, continuations = {}, {}
    if "draft" in bundle.manifest["models"]:
        progress.note(f"draft acceptance for k = 1..{MAX_K} on {len(prompts)} calibration prompts")
        measurements["acceptance"] = measure_acceptance(bundle, prompts, seen=continuations)
        measurements["acceptance_source"] = f"measured: {len(prompts)} prompts, greedy, on the compiled models"
    by_class = {"open": prompts, "transform": list(transform_prompts)}
    progress.note(f"lookup acceptance for k = 1..{MAX_K} on {len(prompts)} open and {len(transform_prompts)} "
                  "transformation prompts")
    measurements["lookup_acceptance"] = measure_lookup(bundle, {c: p for c, p in by_class.items() if p},
                                                       seen=continuations)
    measurements["lookup_source"] = "replayed: the greedy lookup loop over the target's continuations"
    progress.note("per-step costs of draft decode, target decode and target verify on this machine")
    measurements["costs"] = measure_costs(bundle)
    measurements["cost_source"] = "measured on the build host (the bundle's device)"
    return measurements
