"""SentencePiece GGUF vocabularies (tokenizer.ggml.model "llama"): tiny models trained with the
sentencepiece library, written into GGUF files, encode and decode as sentencepiece does; broken
vocabularies are refused with one line.

A "llama" vocabulary is SentencePiece BPE: llama.cpp encodes it by merging the best-scoring
adjacent pair, which is sentencepiece's BPE encoding (a unigram model goes into a GGUF as "t5").
"""

import io

import pytest
import sentencepiece
from click.testing import CliRunner
from tokenizers import Tokenizer

from checkpoints import _CORPUS, make_checkpoint
from gguf_files import sentencepiece_vocab, write_gguf

from air.compiler.checkpoint import load_checkpoint
from air.compiler.cli import main

USER_DEFINED = ("<tool>",)
TEXTS = ["", "hello world", "The quick brown fox jumps over the lazy dog.", " one leading space",
         "   three leading", "trailing   ", "runs  of   spaces\t\ttabs", "a\n\nb\r\nc\n", "\n", "   ",
         "digits 1234567890 and 3.14159", "héllo wörld ∑ 🙂🚀", "日本語 Привет ελληνικά",  # outside the corpus
         "def f(x):\n    return x  +  1\n", "\x00\x7f zero and delete", "ﬁ ligature ① circled"]
_EXTRA_CORPUS = ["Hello world, hello there. Numbers like 42 and 1234 appear.",
                 "    indented code\n\twith tabs\n", "Ünïcödé text with accents: café, naïve, résumé."]


def _train(add_dummy_prefix: bool) -> sentencepiece.SentencePieceProcessor:
    model = io.BytesIO()
    # no normalization and whitespace kept: what a GGUF vocabulary can describe
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter((_CORPUS + _EXTRA_CORPUS) * 4), model_writer=model, vocab_size=420,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=list(USER_DEFINED), hard_vocab_limit=False, minloglevel=2)
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())


FAMILIES = {"llama": {}, "gemma3": dict(head_dim=16, tied=True, sliding_window=8)}


@pytest.fixture(scope="module", params=[(True, "llama"), (False, "llama"), (False, "gemma3")],
                ids=["space-prefix", "no-space-prefix", "gemma3"])
def sentencepiece_gguf(request, tmp_path_factory):
    """(sentencepiece processor, GGUF checkpoint path with its vocabulary, the vocabulary);
    no-space-prefix is Gemma's kind, also in a gemma3 file."""
    space_prefix, family = request.param
    root = tmp_path_factory.mktemp("spm")
    processor = _train(space_prefix)
    vocab = sentencepiece_vocab(processor, add_space_prefix=space_prefix, user_defined=USER_DEFINED)
    folder = make_checkpoint(root / "source", family, layers=1, vocab=processor.get_piece_size(), **FAMILIES[family])
    return processor, write_gguf(folder, root / "spm.gguf", vocab=vocab), vocab


def _tokenizer(path) -> Tokenizer:
    return Tokenizer.from_str(load_checkpoint(path).tokenizer_files["tokenizer.json"].decode())


def test_encodes_and_decodes_like_sentencepiece(sentencepiece_gguf):
    processor, path, _ = sentencepiece_gguf
    ours = _tokenizer(path)
    assert ours.get_vocab_size(with_added_tokens=True) == processor.get_piece_size()
    for text in TEXTS:
        expected = processor.encode(text)
        assert ours.encode(text, add_special_tokens=False).ids == expected, text
        assert ours.encode(text).ids == [processor.bos_id()] + expected, text  # add_bos_token
        assert ours.decode(expected) == processor.decode(expected), text
    fallback = processor.encode("🙂")
    assert all(processor.is_byte(i) for i in fallback if processor.id_to_piece(i) != "▁"), fallback


def test_special_tokens_split_the_text_as_llama_cpp_does(sentencepiece_gguf):
    """Control and user-defined tokens are matched whole; each run of text between them is encoded
    on its own (with its own space prefix, as llama.cpp's SentencePiece tokenizer does)."""
    processor, path, _ = sentencepiece_gguf
    ours = _tokenizer(path)
    bos, eos, tool = processor.bos_id(), processor.eos_id(), processor.piece_to_id("<tool>")
    text = "<s>ask <tool>call(1) </s>\n reply<tool>"
    expected = [bos, *processor.encode("ask "), tool, *processor.encode("call(1) "), eos,
                *processor.encode("\n reply"), tool]
    assert ours.encode(text, add_special_tokens=False).ids == expected
    assert ours.decode(expected, skip_special_tokens=True) == ours.decode(
        [i for i in expected if i not in (bos, eos)], skip_special_tokens=False)


def _broken(vocab: dict, kind: str) -> dict:
    vocab = dict(vocab)
    types = list(vocab["tokenizer.ggml.token_type"])
    if kind == "scores-count":
        vocab["tokenizer.ggml.scores"] = vocab["tokenizer.ggml.scores"][:-3]
    elif kind == "missing-unk":
        del vocab["tokenizer.ggml.unknown_token_id"]
        vocab["tokenizer.ggml.token_type"] = [1 if t == 2 else t for t in types]
    elif kind == "unk-not-unknown":
        vocab["tokenizer.ggml.unknown_token_id"] = types.index(1)
    elif kind == "bad-type":
        vocab["tokenizer.ggml.token_type"] = types[:-1] + [9]
    elif kind == "missing-byte":  # only the first byte piece still typed as one
        first = types.index(6)
        vocab["tokenizer.ggml.token_type"] = [1 if t == 6 and i != first else t for i, t in enumerate(types)]
    elif kind == "types-count":
        vocab["tokenizer.ggml.token_type"] = types[:-1]
    elif kind == "tokenizer-model":
        vocab["tokenizer.ggml.model"] = "t5"
    else:
        raise ValueError(kind)
    return vocab


BROKEN = {
    "scores-count": "'tokenizer.ggml.scores' must be one finite number per token",
    "missing-unk": "has no unknown token",
    "unk-not-unknown": "must have exactly one unknown token (type 2)",
    "bad-type": "'tokenizer.ggml.token_type' holds a value outside 1..6",
    "missing-byte": "has 1 byte tokens (type 6), not the 256 pieces",
    "types-count": "a token_type list of another length",
    "tokenizer-model": "GGUF tokenizer model 't5' is not supported",
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_vocabulary_is_refused_with_one_line(kind, sentencepiece_gguf, tmp_path):
    processor, path, vocab = sentencepiece_gguf
    folder = make_checkpoint(tmp_path / "source", "llama", layers=1, vocab=processor.get_piece_size())
    bad = write_gguf(folder, tmp_path / f"{kind}.gguf", vocab=_broken(vocab, kind))
    result = CliRunner().invoke(main, ["compile", "--target-model", str(bad), "--output", str(tmp_path / "out"),
                                       "--quiet"])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"air-build: error: {bad}: "), result.stderr
    assert BROKEN[kind] in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
