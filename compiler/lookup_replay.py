"""Draft-free speculation replayed at build time: the greedy lookup loop (runtime/lookup.py's
NgramLookup proposing, the target verifying) run over the target's own greedy continuation of a
calibration prompt. For greedy decoding this is exactly what air-run does, without a target
pass per round; what each round costs comes from the measured step costs (compiler/routing.py).
"""

from __future__ import annotations

from collections import Counter

from air.runtime.lookup import NgramLookup
from air.runtime.routing import StepCosts


def replay(prompt_ids: list[int], truth: list[int], k: int) -> list[tuple[int, int]]:
    """(proposed, accepted) for each round of the loop that generates `truth` with up to k lookups per round."""
    table = NgramLookup(prompt_ids)
    position, rounds = 0, []
    while position < len(truth):
        wanted = min(k, len(truth) - position - 1)  # as Generator.run: the last token needs no proposal
        proposals = table.propose(wanted) if wanted > 0 else []
        accepted = 0
        while accepted < len(proposals) and proposals[accepted] == truth[position + accepted]:
            accepted += 1
        committed = truth[position:position + accepted + 1]
        table.extend(committed)
        position += len(committed)
        rounds.append((len(proposals), accepted))
    return rounds


def summarise(rounds: list[tuple[int, int]]) -> dict:
    """What the table needs of a k's rounds: tokens, acceptance, and how many rounds verified n proposals."""
    proposed = sum(n for n, _ in rounds)
    accepted = sum(a for _, a in rounds)
    by_size = Counter(n for n, _ in rounds)
    return {"tokens": accepted + len(rounds), "rounds": len(rounds),
            "acceptance_rate": round(accepted / proposed, 4) if proposed else None,
            "tokens_per_pass": round((accepted + len(rounds)) / len(rounds), 4) if rounds else None,
            "rounds_by_proposals": {str(n): by_size[n] for n in sorted(by_size)}}


def decode_rate(summary: dict, costs: StepCosts) -> float:
    """Tokens per second: a round with n proposals is one verify of n + 1 tokens, one without a plain decode."""
    seconds = sum(count * (costs.target_verify[int(n)] if int(n) else costs.target.decode)
                  for n, count in summary["rounds_by_proposals"].items())
    return summary["tokens"] / seconds
