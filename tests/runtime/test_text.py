"""Streaming detokenization (runtime/text.py): the deltas add up to the full decode, for a
byte-level tokenizer and a sentencepiece-style one, and each push decodes a bounded window."""


import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from air.runtime.text import TextStream
from helpers import REPO

PAIR_TOKENIZER = REPO / "models" / "pair" / "target" / "tokenizer.json"
TEXT = ("def read_config(path):\n    \"\"\"Read a naïve café's settings: 日本語, emoji 🙂🚀.\"\"\"\n"
        "    with open(path) as f:\n        return {k: v for k, v in (line.split('=') for line in f)}\n")


def metaspace_tokenizer() -> Tokenizer:
    """A small BPE with sentencepiece's word-start marker (its decoder drops the first space)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    tokenizer.train_from_iterator([TEXT, "read the config and return the settings"] * 4, trainer)
    return tokenizer


def streamed(tokenizer, ids) -> str:
    stream = TextStream(tokenizer)
    return "".join(stream.push(token) for token in ids) + stream.flush()


@pytest.mark.parametrize("make, splits_characters",
                         [(lambda: Tokenizer.from_file(str(PAIR_TOKENIZER)), True), (metaspace_tokenizer, False)],
                         ids=["byte-level", "metaspace"])
def test_deltas_add_up_to_the_full_text(make, splits_characters):
    tokenizer = make()
    ids = tokenizer.encode(TEXT).ids
    assert streamed(tokenizer, ids) == tokenizer.decode(ids, skip_special_tokens=True)
    # Streams cut short give what a full decode of the same ids gives, also when they end inside
    # a multi-byte character (byte-level tokens split the emoji into its bytes).
    inside = [i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd")]
    assert bool(inside) == splits_characters
    for cut in inside[:3] + [len(ids) - 1]:
        assert streamed(tokenizer, ids[:cut]) == tokenizer.decode(ids[:cut], skip_special_tokens=True)


def test_partial_characters_are_held_back():
    tokenizer = Tokenizer.from_file(str(PAIR_TOKENIZER))
    stream = TextStream(tokenizer)
    deltas = [stream.push(token) for token in tokenizer.encode("🙂🚀").ids]
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) + stream.flush() == "🙂🚀"


def test_each_push_decodes_a_bounded_window():
    tokenizer = Tokenizer.from_file(str(PAIR_TOKENIZER))
    lengths = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            lengths.append(len(ids))
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = tokenizer.encode(TEXT * 40).ids
    assert len(ids) > 1500
    assert streamed(Counting(), ids) == tokenizer.decode(ids)
    assert max(lengths) <= 16
