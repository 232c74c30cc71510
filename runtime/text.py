"""Tokenizer access and streaming detokenization."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


class TextStream:
    """Turns a growing list of token ids into text deltas, holding back a partial UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self.emitted:]
        self.emitted = len(text)
        return delta

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta = text[self.emitted:]
        self.emitted = len(text)
        return delta


def load_tokenizer(root: Path) -> Tokenizer:
    return Tokenizer.from_file(str(root / "tokenizer.json"))
