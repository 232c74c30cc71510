"""The compiled models against transformers (f32), for every supported family."""

import numpy as np
import pytest
import torch

from checkpoints import load_reference
from conftest import VARIANTS

from air.runtime import Bundle

PROMPT = [5, 17, 42, 99, 123, 7, 250, 31, 64, 2, 80]
TOL = 2e-4


def _reference_logits(checkpoint, ids):
    with torch.no_grad():
        return load_reference(checkpoint)(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_decode_verify_match_transformers(variant, checkpoints, bundles):
    expected = _reference_logits(checkpoints[variant], PROMPT)
    model = Bundle.load(bundles[variant]).target

    model.reset()
    np.testing.assert_allclose(model.prefill(PROMPT[:6]), expected[5], atol=TOL, rtol=0)
    for i in range(6, len(PROMPT)):
        np.testing.assert_allclose(model.decode(PROMPT[i]), expected[i], atol=TOL, rtol=0)

    model.reset()
    np.testing.assert_allclose(model.verify(PROMPT), expected, atol=TOL, rtol=0)

    # verify after a prefix and a rollback: only a length change, the result is the same
    model.reset()
    model.prefill(PROMPT[:4])
    model.verify([3, 3, 3])
    model.rollback(4)
    np.testing.assert_allclose(model.verify(PROMPT[4:]), expected[4:], atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_generation_is_token_identical(variant, checkpoints, bundles):
    reference = load_reference(checkpoints[variant])
    with torch.no_grad():
        expected = reference.generate(torch.tensor([PROMPT]), max_new_tokens=32, min_new_tokens=32,
                                      do_sample=False)[0, len(PROMPT):].tolist()
    result = Bundle.load(bundles[variant]).generate(prompt_ids=PROMPT, max_tokens=32)
    if result.finish_reason == "stop":  # the model chose its end-of-sequence token: compare up to it
        expected = expected[: len(result.tokens)]
    assert result.tokens == expected


def test_long_prompt_is_prefilled_in_chunks(checkpoints, bundles):
    ids = [int(x) for x in np.random.default_rng(0).integers(2, 300, size=150)]
    expected = _reference_logits(checkpoints["qwen3-qknorm"], ids)
    model = Bundle.load(bundles["qwen3-qknorm"]).target
    model.reset()
    np.testing.assert_allclose(model.prefill(ids, chunk=64), expected[-1], atol=TOL, rtol=0)
