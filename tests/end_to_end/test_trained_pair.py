"""The committed trained pair (models/pair): intact, loadable, and as good as its model card says."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer  # noqa: E402
from helpers import REPO

PAIR = REPO / "models" / "pair"
FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((PAIR / "metrics.json").read_text())


@pytest.fixture(scope="module")
def models() -> dict:
    torch.set_num_threads(2)
    return {name: transformers.AutoModelForCausalLM.from_pretrained(PAIR / name, dtype=torch.float32).eval()
            for name in ("target", "draft")}


def slice_perplexity(model, ids: list[int], ctx: int) -> float:
    """Same definition as training/train_pair.py: independent windows of ctx tokens."""
    ids_t = torch.tensor(ids, dtype=torch.long)
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids_t), ctx):
            window = ids_t[s:s + ctx][None]
            if window.shape[1] < 2:
                break
            logits = model(input_ids=window).logits.float()
            nll += F.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum").item()
            count += window.shape[1] - 1
    return math.exp(nll / count)


@pytest.mark.parametrize("name", ["target", "draft"])
def test_files_exist_and_match_recorded_sha256(metrics, name):
    for file in FILES:
        path = PAIR / name / file
        assert path.is_file(), path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == metrics["sha256"][f"{name}/{file}"], path


def test_checkpoints_are_small_float16():
    total = sum((PAIR / n / "model.safetensors").stat().st_size for n in ("target", "draft"))
    assert total < 40e6
    for name in ("target", "draft"):
        assert json.loads((PAIR / name / "config.json").read_text())["dtype"] == "float16"


def test_tokenizers_identical_and_eos_configured():
    assert (PAIR / "target" / "tokenizer.json").read_bytes() == (PAIR / "draft" / "tokenizer.json").read_bytes()
    eos = Tokenizer.from_file(str(PAIR / "target" / "tokenizer.json")).token_to_id("<|endoftext|>")
    assert eos is not None
    for name in ("target", "draft"):
        assert json.loads((PAIR / name / "config.json").read_text())["eos_token_id"] == eos
        assert json.loads((PAIR / name / "generation_config.json").read_text())["eos_token_id"] == eos


def test_models_load_with_expected_sizes(models, metrics):
    for name, model in models.items():
        assert isinstance(model, transformers.LlamaForCausalLM)
        assert sum(p.numel() for p in model.parameters()) == metrics["params"][name]
        assert model.config.max_position_embeddings == 2048
    assert 10e6 <= metrics["params"]["target"] <= 20e6
    assert 1e6 <= metrics["params"]["draft"] <= 3e6


def test_heldout_slice_perplexity_reproduces(models, metrics):
    recorded = metrics["eval"]["slice"]
    text = (PAIR / recorded["file"]).read_text()
    ids = Tokenizer.from_file(str(PAIR / "target" / "tokenizer.json")).encode(text).ids
    assert len(ids) == recorded["tokens"]
    ppl = {name: slice_perplexity(model, ids, recorded["context"]) for name, model in models.items()}
    for name in ("target", "draft"):
        assert ppl[name] == pytest.approx(recorded[f"{name}_ppl"], rel=0.02), name
    assert ppl["target"] < ppl["draft"]


def test_recorded_quality_goals(metrics):
    ev = metrics["eval"]
    assert ev["target_ppl"] < ev["draft_ppl"]
    assert ev["acceptance"]["per_token_agreement"] >= 0.6
