"""The decoding loop: target alone, or speculative with a draft proposing k tokens.

Invariant between rounds: both caches hold every committed token except the newest one,
`last`, which the next round feeds first (the draft may lag by one more token after a fully
accepted round; `draft_behind` lists what it still has to read). A round:
  1. the draft reads `draft_behind` and proposes k tokens (k - 1 more decode steps);
  2. the target reads [last, proposals] in one verify pass: k + 1 rows of logits;
  3. the longest agreeing prefix is kept plus one target token (the correction, or the bonus
     after a fully accepted run); both caches roll back by a length change.
Greedy output is token-identical to the target alone; with sampling, rejection sampling
(Leviathan et al. 2023; Chen et al. 2023) keeps the target's distribution exactly.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from .model import CompiledModel
from .sampling import Sampler


@dataclasses.dataclass
class Counters:
    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    draft_seconds: float = 0.0
    target_seconds: float = 0.0

    def timed(self, which: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        elapsed = time.perf_counter() - start
        if which == "draft":
            self.draft_seconds += elapsed
        else:
            self.target_seconds += elapsed
        return result


class Generator:
    def __init__(self, target: CompiledModel, draft: CompiledModel | None, sampler: Sampler, eos_ids: set[int]):
        self.target = target
        self.draft = draft
        self.sampler = sampler
        self.eos_ids = eos_ids
        self.counters = Counters()

    def run(self, prompt: list[int], max_tokens: int, k: int, on_token: Callable[[int], None],
            kept: tuple[int, int] = (0, 0), should_stop: Callable[[], bool] | None = None) -> tuple[list[int], str, dict]:
        """kept: positions of the prompt already in the target's and the draft's caches (a
        session's earlier turns); should_stop: asked once per round, ends with "cancelled".
        Afterwards `sequence` is the prompt and every committed token: each cache holds its first
        `length` tokens."""
        counters = self.counters = Counters()
        speculate = k > 0 and self.draft is not None
        started = time.perf_counter()
        context = len(prompt) + max_tokens + k + 1
        self.sequence = list(prompt)
        self._fill("target", self.target, prompt, kept[0], context)
        if speculate:
            self._fill("draft", self.draft, prompt, kept[1], context)
        prefill_done = time.perf_counter()
        counters.draft_seconds = counters.target_seconds = 0.0

        out: list[int] = []
        last, draft_behind = prompt[-1], [prompt[-1]]
        first_token_at = None
        finish = None
        while finish is None:
            if should_stop is not None and should_stop():
                finish = "cancelled"
                break
            room = self.target.max_context - self.target.length - 1  # slots after `last`
            if speculate:
                room = min(room, self.draft.max_context - self.draft.length - len(draft_behind) + 1)
            if room < 0:
                finish = "context"
                break
            draft_len = min(k, room, max_tokens - len(out) - 1) if speculate else 0
            if draft_len > 0:
                committed, draft_behind = self._speculative_round(last, draft_behind, draft_len)
            else:
                logits = counters.timed("target", self.target.decode, last)
                counters.target_passes += 1
                committed = [self.sampler.pick(logits)]
                draft_behind = draft_behind + committed
            self.sequence += committed
            for token in committed:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if token in self.eos_ids:
                    finish = "stop"
                    break
                out.append(token)
                on_token(token)
                if len(out) >= max_tokens:
                    finish = "length"
                    break
            last = committed[-1]
        ended = time.perf_counter()
        return out, finish, self._stats(prompt, out, started, prefill_done, first_token_at or ended, ended,
                                        k if speculate else 0, kept[0])

    def _fill(self, which: str, model: CompiledModel, prompt: list[int], keep: int, context: int) -> None:
        """Bring the cache to prompt[:-1]: keep its first `keep` positions, prefill the rest."""
        if keep:
            model.rollback(keep)
            model.reserve(context)
        else:
            model.reset(context)
        if len(prompt) - 1 > keep:
            self.counters.timed(which, model.prefill, prompt[keep:-1])

    def _speculative_round(self, last: int, draft_behind: list[int], draft_len: int):
        counters, sampler, draft = self.counters, self.sampler, self.draft
        draft_base = draft.length
        feed = draft.decode if len(draft_behind) == 1 else draft.prefill
        logits = counters.timed("draft", feed, draft_behind[0] if len(draft_behind) == 1 else draft_behind)
        proposals, draft_probs = [], []
        for i in range(draft_len):
            if sampler.greedy:
                token = int(logits.argmax())  # the method: np.argmax's dispatch costs 0.7 us more
            else:
                probs = sampler.distribution(logits)
                token = sampler.draw(probs)
                draft_probs.append(probs)
            proposals.append(token)
            if i < draft_len - 1:
                logits = counters.timed("draft", draft.decode, token)

        target_base = self.target.length
        rows = counters.timed("target", self.target.verify, [last, *proposals])
        counters.target_passes += 1
        counters.proposed += draft_len

        accepted, correction = 0, None
        best = rows.argmax(axis=1).tolist() if sampler.greedy else None  # one call for every row
        for i, token in enumerate(proposals):
            if sampler.greedy:
                if best[i] != token:
                    correction = best[i]
                    break
            else:
                probs = sampler.distribution(rows[i])
                if not sampler.accepts(probs[token], draft_probs[i][token]):
                    correction = sampler.residual(probs, draft_probs[i])
                    break
            accepted += 1
        if correction is None:
            correction = sampler.pick(rows[draft_len])  # the bonus token
        counters.accepted += accepted

        self.target.rollback(target_base + 1 + accepted)
        in_draft = min(accepted, draft_len - 1)
        draft.rollback(draft_base + len(draft_behind) + in_draft)
        return proposals[:accepted] + [correction], proposals[in_draft:accepted] + [correction]

    def _stats(self, prompt, out, started, prefill_done, first_token_at, ended, k, reused) -> dict:
        c = self.counters
        fed = len(prompt) - 1 - reused  # tokens the prefill read (the last one is the first decode's)
        generation = ended - prefill_done
        prefill = prefill_done - started
        stats = {
            "prompt_tokens": len(prompt),
            "generated_tokens": len(out),
            "reused_tokens": reused,
            "prefilled_tokens": len(prompt) - reused,
            "prefill_seconds": round(prefill, 6),
            "prefill_tokens_per_second": round(fed / prefill, 3) if fed > 0 and prefill > 0 else None,
            "decode_seconds": round(generation, 6),
            "decode_tokens_per_second": round(len(out) / generation, 3) if out and generation > 0 else None,
            "time_to_first_token_seconds": round(first_token_at - started, 6),
            "speculate": k,
            "target_passes": c.target_passes,
            "tokens_per_target_pass": round(len(out) / c.target_passes, 4) if c.target_passes else None,
            "target_seconds": round(c.target_seconds, 6),
            "draft_seconds": round(c.draft_seconds, 6),
            "host_seconds": round(max(generation - c.target_seconds - c.draft_seconds, 0.0), 6),
        }
        if k:
            stats.update({
                "draft_proposed": c.proposed,
                "draft_accepted": c.accepted,
                "acceptance_rate": round(c.accepted / c.proposed, 4) if c.proposed else None,
            })
        return stats
