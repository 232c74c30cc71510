"""Draft-free proposals (prompt lookup): the tokens that followed the most recent earlier
occurrence of the text's last n tokens, n from `max_ngram` down to 1, longest match first.

    table = NgramLookup(prompt)
    proposals = table.propose(4)  # [] when no suffix of the text occurred before
    table.extend(committed)
"""

from __future__ import annotations

MAX_NGRAM = 3


class NgramLookup:
    def __init__(self, tokens: list[int], max_ngram: int = MAX_NGRAM):
        if max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {max_ngram}")
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        # n -> n-gram -> position of the token after its most recent occurrence that has one
        self.follows: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram + 1)]
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending just before `token` now have a follower
            for n in range(1, min(self.max_ngram, end) + 1):
                self.follows[n][tuple(self.tokens[end - n:end])] = end
            self.tokens.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens; fewer where the text ends first, none without a match."""
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, len(self.tokens)), 0, -1):
            start = self.follows[n].get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start:start + k]
        return []
