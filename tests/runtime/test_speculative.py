"""Speculative decoding: greedy output identical to the target alone; sampling keeps the
target's distribution (chi-square); counters; every draft length; a draft whose LM head covers
only some tokens (head_tokens.json)."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from checkpoints import load_reference, make_checkpoint, trim_head
from helpers import run_module

from air.compiler.build import compile_bundle
from air.compiler.recipe import load_recipe
from air.runtime import Bundle
from air.runtime.generation import DraftProposer, Generator
from air.runtime.sampling import Sampler, probabilities


# The trimmed draft's head: half the vocabulary, in a shuffled order (row i is token HEAD[i]).
HEAD = np.random.default_rng(5).permutation(320)[:160]


@pytest.fixture(scope="module")
def close_pair(tmp_path_factory):
    """A draft that is the target with noise added: it agrees often, but not always ("trimmed":
    the far draft with an LM head over HEAD only)."""
    root = tmp_path_factory.mktemp("close")
    target = make_checkpoint(root / "target", "llama", seed=21)
    recipe = load_recipe("host").with_overrides(max_context=160)
    bundles = {}
    for name, noise in (("bundle", 0.004), ("far", 0.02), ("trimmed", 0.02)):
        draft = make_checkpoint(root / f"draft-{name}", "llama", seed=21)
        tensors = load_file(draft / "model.safetensors")
        rng = np.random.default_rng(0)
        noisy = {key: (t + rng.normal(0, noise, t.shape)).astype(t.dtype) for key, t in tensors.items()}
        save_file(noisy, draft / "model.safetensors", metadata={"format": "pt"})
        if name == "trimmed":
            bundles["trimmed-draft"] = trim_head(draft, HEAD)  # its checkpoint folder
        compile_bundle(str(target), str(draft), recipe, root / name, quiet=True)
        bundles[name] = Bundle.load(root / name)
    compile_bundle(str(target), str(target), recipe, root / "self", quiet=True)
    bundles["self"] = Bundle.load(root / "self")
    return bundles


PROMPTS = [[5, 17, 42], [100, 3, 7, 9, 250, 11], [64], [12, 12, 12, 12], [300, 200, 100, 50, 25, 12, 6]]


@pytest.mark.parametrize("which", ["bundle", "self", "trimmed"])
def test_greedy_is_token_identical_for_every_k(close_pair, which):
    bundle = close_pair[which]
    bundle.eos_token_ids = set()  # run to max_tokens so every path (catch-up, end) is exercised
    for prompt in PROMPTS:
        expected = bundle.generate(prompt_ids=prompt, max_tokens=40).tokens
        assert len(expected) == 40
        for k in range(1, 9):
            result = bundle.generate(prompt_ids=prompt, max_tokens=40, speculate=k)
            assert result.tokens == expected, (prompt, k)
            stats = result.stats
            assert stats["draft_proposed"] > 0
            assert 0 <= stats["draft_accepted"] <= stats["draft_proposed"]
            assert stats["tokens_per_target_pass"] == pytest.approx(40 / stats["target_passes"], rel=1e-3)


def test_self_draft_accepts_everything(close_pair):
    bundle = close_pair["self"]
    bundle.eos_token_ids = set()
    stats = bundle.generate(prompt_ids=[5, 6, 7], max_tokens=41, speculate=4).stats
    assert stats["acceptance_rate"] == 1.0
    assert stats["target_passes"] == 9  # 8 rounds of 4 accepted + 1 bonus, then 1 last token
    assert stats["tokens_per_target_pass"] > 4


def test_noisy_draft_is_partly_accepted(close_pair):
    bundle = close_pair["bundle"]
    bundle.eos_token_ids = set()
    stats = bundle.generate(prompt_ids=[5, 6, 7], max_tokens=64, speculate=4).stats
    assert 0.2 < stats["acceptance_rate"] < 1.0


def test_runs_into_the_context_limit(close_pair):
    bundle = close_pair["bundle"]
    bundle.eos_token_ids = set()
    plain = bundle.generate(prompt_ids=[7] * 100, max_tokens=200)
    spec = bundle.generate(prompt_ids=[7] * 100, max_tokens=200, speculate=8)
    assert plain.finish_reason == spec.finish_reason == "context"
    assert spec.tokens == plain.tokens


def _chi_square_z(counts: np.ndarray, expected_probs: np.ndarray) -> float:
    """Chi-square statistic turned into an approximate z score (Wilson-Hilferty), with
    categories of small expectation pooled."""
    total = counts.sum()
    expected = expected_probs * total
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    keep = expected > 0
    stat = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    df = int(keep.sum()) - 1
    return ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / np.sqrt(2 / (9 * df))


@pytest.mark.parametrize("which", ["far", "trimmed"])
def test_sampling_keeps_the_target_distribution(close_pair, which):
    bundle = close_pair[which]  # far enough from the target that a wrong rule shows
    bundle.eos_token_ids = set()
    prompt, temperature, top_p = [5, 17, 42], 0.8, 0.9
    target = bundle.target
    target.reset()
    first_probs = probabilities(target.prefill(prompt), temperature, top_p)

    runs = 3000
    firsts, seconds = np.zeros(target.vocab_size), {}
    draft_agreed = 0
    for seed in range(runs):
        result = bundle.generate(prompt_ids=prompt, max_tokens=2, temperature=temperature, top_p=top_p,
                                 seed=seed, speculate=3)
        a, b = result.tokens
        firsts[a] += 1
        seconds.setdefault(a, []).append(b)
        draft_agreed += result.stats["draft_accepted"]
    assert 0 < draft_agreed < runs * 2, "both acceptance and rejection must occur"
    assert _chi_square_z(firsts, first_probs) < 4.0

    # the second token's marginal: sum over first tokens a of p(a) p(b | a)
    second_probs = np.zeros(target.vocab_size)
    for a in np.nonzero(first_probs)[0]:
        target.reset()
        second_probs += first_probs[a] * probabilities(target.prefill(prompt + [int(a)]), temperature, top_p)
    counts = np.bincount([b for bs in seconds.values() for b in bs], minlength=target.vocab_size).astype(float)
    assert _chi_square_z(counts, second_probs) < 4.0


def test_chi_square_check_detects_a_wrong_distribution():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(50))
    right = np.bincount(rng.choice(50, size=3000, p=probs), minlength=50).astype(float)
    wrong = np.bincount(rng.choice(50, size=3000, p=rng.dirichlet(np.ones(50))), minlength=50).astype(float)
    assert _chi_square_z(right, probs) < 4.0
    assert _chi_square_z(wrong, probs) > 10.0


def test_trimmed_draft_logits_are_transformers_at_the_kept_rows(close_pair):
    ids = [5, 17, 42, 99, 123, 7, 250, 31]
    with torch.no_grad():
        expected = load_reference(close_pair["trimmed-draft"])(torch.tensor([ids])).logits[0].numpy()[:, HEAD]
    draft = close_pair["trimmed"].draft
    assert draft.head_tokens.tolist() == HEAD.tolist()
    draft.reset()
    np.testing.assert_allclose(draft.prefill(ids[:4]), expected[3], atol=2e-4, rtol=0)
    np.testing.assert_allclose(draft.decode(ids[4]), expected[4], atol=2e-4, rtol=0)
    draft.reset()
    np.testing.assert_allclose(draft.verify(ids), expected, atol=2e-4, rtol=0)


def test_inspect_shows_the_trimmed_head(close_pair):
    root = close_pair["trimmed"].root
    text = run_module("air.compiler", "inspect", str(root)).stdout
    assert "lm head: 160 rows of the vocabulary's 320 (50.0%, trimmed: draft/head_tokens.json)" in text, text
    assert "lm head: 320 rows (the whole vocabulary)" in text
    draft = json.loads(run_module("air.compiler", "inspect", str(root), "--json").stdout)["models"]["draft"]
    assert (draft["architecture"]["head_rows"], draft["vocab_size"]) == (160, 320)
    assert draft["head_tokens"] in json.loads((root / "manifest.json").read_text())["files"]


class _MissingMassIgnored(Sampler):
    """The wrong correction: after a rejection, draw only among the draft head's tokens."""

    def residual(self, target_probs, draft_probs):
        inside = np.zeros_like(target_probs)
        inside[HEAD] = target_probs[HEAD]
        return super().residual(inside, draft_probs)


def test_chi_square_check_detects_a_correction_that_ignores_the_missing_mass(close_pair):
    bundle = close_pair["trimmed"]
    prompt, temperature, top_p = [5, 17, 42], 0.8, 0.9
    bundle.target.reset()
    first_probs = probabilities(bundle.target.prefill(prompt), temperature, top_p)
    assert first_probs[np.setdiff1d(np.arange(320), HEAD)].sum() > 0.2  # the head misses much of p
    firsts = np.zeros(320)
    for seed in range(1000):
        generator = Generator(bundle.target, DraftProposer(bundle.draft),
                              _MissingMassIgnored(temperature, top_p, seed), set())
        tokens, _, _ = generator.run(prompt, 2, 3, on_token=lambda token: None)  # one proposal
        firsts[tokens[0]] += 1
    assert _chi_square_z(firsts, first_probs) > 10.0
