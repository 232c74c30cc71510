"""Choosing tokens from logits: greedy, temperature and nucleus (top-p) sampling, and the
acceptance rule of speculative sampling."""

from __future__ import annotations

import dataclasses

import numpy as np


def probabilities(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The distribution sampling draws from (float64), after temperature and top-p."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p) + 1)]
        filtered = np.zeros_like(probs)
        filtered[keep] = probs[keep]
        probs = filtered / filtered.sum()
    return probs


def point_mass(token: int, size: int) -> np.ndarray:
    """The distribution of a proposal made without probabilities (a lookup's): all on `token`."""
    probs = np.zeros(size)
    probs[token] = 1.0
    return probs


def scatter(probs: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """A trimmed head's distribution over the whole vocabulary: no mass outside its rows' tokens."""
    full = np.zeros(size)
    full[rows] = probs
    return full


@dataclasses.dataclass
class Sampler:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def distribution(self, logits: np.ndarray) -> np.ndarray:
        return probabilities(logits, self.temperature, self.top_p)

    def pick(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(logits.argmax())
        return self.draw(self.distribution(logits))

    def draw(self, probs: np.ndarray) -> int:
        # inverse CDF: one uniform per token keeps the stream reproducible and cheap
        index = int(np.searchsorted(np.cumsum(probs), self.rng.random() * probs.sum(), side="right"))
        return min(index, len(probs) - 1)

    def accepts(self, target_prob: float, draft_prob: float) -> bool:
        """Speculative sampling: keep a draft token with probability min(1, p/q)."""
        return self.rng.random() * draft_prob < target_prob

    def residual(self, target_probs: np.ndarray, draft_probs: np.ndarray) -> int:
        """After a rejection, draw from norm(max(0, p - q)): together exact for p (for a point
        mass q on x: p without x, renormalised)."""
        rest = np.maximum(target_probs - draft_probs, 0.0)
        total = rest.sum()
        return self.draw(rest if total > 0 else target_probs)
