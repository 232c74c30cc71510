"""The decoding loop: target alone, or speculative with a proposer suggesting up to k tokens:
a draft model (DraftProposer) or a lookup in the text so far (LookupProposer, no second model).

Invariant between rounds: the target's cache holds every committed token except the newest
one, `last`, which the next round feeds first (the draft's cache may lag by one more token
after a fully accepted round; `DraftProposer.behind` lists what it still has to read). A round:
  1. the proposer suggests up to k tokens (none: the round is a plain decode);
  2. the target reads [last, proposals] in one verify pass: one more row of logits than proposals;
  3. the longest agreeing prefix is kept plus one target token (the correction, or the bonus
     after a fully accepted run); the caches roll back by a length change.
Greedy output is token-identical to the target alone; with sampling, rejection sampling
(Leviathan et al. 2023; Chen et al. 2023) keeps the target's distribution exactly; a lookup's
proposal is a point mass (q(x) = 1). A draft whose LM head covers only some tokens
(CompiledModel.head_tokens) proposes through them: its q is zero outside them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from .lookup import NgramLookup
from .model import CompiledModel
from .sampling import Sampler, point_mass, scatter
from .threads import ThreadGovernor


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


def fill(model: CompiledModel, prompt: list[int], keep: int, context: int, counters: Counters, which: str) -> None:
    """Bring the cache to prompt[:-1]: keep its first `keep` positions, prefill the rest."""
    if keep:
        model.rollback(keep)
        model.reserve(context)
    else:
        model.reset(context)
    if len(prompt) - 1 > keep:
        counters.timed(which, model.prefill, prompt[keep:-1])


class DraftProposer:
    """A draft model proposes: it decodes ahead of the target and rolls back what was rejected."""

    name = "draft"

    def __init__(self, model: CompiledModel):
        self.model = model
        self.behind: list[int] = []  # committed tokens its cache has not read yet

    def start(self, prompt: list[int], keep: int, context: int, counters: Counters) -> None:
        fill(self.model, prompt, keep, context, counters, "draft")
        self.behind = [prompt[-1]]

    def room(self) -> int:
        return self.model.max_context - self.model.length - len(self.behind) + 1

    def propose(self, n: int, sampler: Sampler, counters: Counters) -> tuple[list[int], list[np.ndarray] | None]:
        """n tokens and, when sampling, the distribution each was drawn from."""
        draft = self.model
        self.base = draft.length
        feed = draft.decode if len(self.behind) == 1 else draft.prefill
        logits = counters.timed("draft", feed, self.behind[0] if len(self.behind) == 1 else self.behind)
        proposals, probs = [], None if sampler.greedy else []
        for i in range(n):
            if sampler.greedy:
                token = draft.token_id(int(logits.argmax()))  # the method: np.argmax's dispatch costs 0.7 us more
            else:
                probs.append(self._distribution(sampler, logits))
                token = sampler.draw(probs[-1])
            proposals.append(token)
            if i < n - 1:
                logits = counters.timed("draft", draft.decode, token)
        return proposals, probs

    def _distribution(self, sampler: Sampler, logits: np.ndarray) -> np.ndarray:
        """q over the whole vocabulary (what the target's verdict compares with p)."""
        probs = sampler.distribution(logits)
        heads = self.model.head_tokens
        return probs if heads is None else scatter(probs, heads, self.model.vocab_size)

    def commit(self, proposals: list[int], committed: list[int]) -> None:
        if not proposals:
            self.behind = self.behind + committed
            return
        accepted = len(committed) - 1
        in_draft = min(accepted, len(proposals) - 1)  # the last proposal was never fed to the draft
        self.model.rollback(self.base + len(self.behind) + in_draft)
        self.behind = proposals[in_draft:accepted] + committed[-1:]


class LookupProposer:
    """The text so far proposes (NgramLookup): no second model, no cache of its own."""

    name = "lookup"
    model = None  # the model a proposer runs, as DraftProposer.model

    def start(self, prompt: list[int], keep: int, context: int, counters: Counters) -> None:
        self.table = NgramLookup(prompt)

    def room(self) -> int:
        return 1 << 30

    def propose(self, n: int, sampler: Sampler, counters: Counters) -> tuple[list[int], None]:
        return self.table.propose(n), None  # None: each proposal is a point mass

    def commit(self, proposals: list[int], committed: list[int]) -> None:
        self.table.extend(committed)


class Generator:
    def __init__(self, target: CompiledModel, proposer: DraftProposer | LookupProposer | None, sampler: Sampler,
                 eos_ids: set[int], governor: ThreadGovernor | None = None):
        self.target = target
        self.proposer = proposer
        self.sampler = sampler
        self.eos_ids = eos_ids
        self.governor = governor
        self.counters = Counters()

    def run(self, prompt: list[int], max_tokens: int, k: int, on_token: Callable[[int], None],
            kept: tuple[int, int] = (0, 0), should_stop: Callable[[], bool] | None = None) -> tuple[list[int], str, dict]:
        """kept: positions of the prompt already in the target's and the draft's caches (a
        session's earlier turns); should_stop: asked once per round, ends with "cancelled".
        Afterwards `sequence` is the prompt and every committed token: each cache holds its first
        `length` tokens."""
        counters = self.counters = Counters()
        proposer = self.proposer if k > 0 else None
        started = time.perf_counter()
        context = len(prompt) + max_tokens + k + 1
        self.sequence = list(prompt)
        fill(self.target, prompt, kept[0], context, counters, "target")
        if proposer is not None:
            proposer.start(prompt, kept[1], context, counters)
        prefill_done = time.perf_counter()
        counters.draft_seconds = counters.target_seconds = 0.0
        governor = self.governor
        if governor is not None:
            governor.start(prefill_done)

        out: list[int] = []
        last = prompt[-1]
        first_token_at = None
        finish = None
        while finish is None:
            if should_stop is not None and should_stop():
                finish = "cancelled"
                break
            room = self.target.max_context - self.target.length - 1  # slots after `last`
            if proposer is not None:
                room = min(room, proposer.room())
            if room < 0:
                finish = "context"
                break
            wanted = min(k, room, max_tokens - len(out) - 1) if proposer is not None else 0
            proposals, probs = proposer.propose(wanted, self.sampler, counters) if wanted > 0 else ([], None)
            if proposals:
                committed = self._verify(last, proposals, probs)
            else:
                logits = counters.timed("target", self.target.decode, last)
                counters.target_passes += 1
                committed = [self.target.token_id(self.sampler.pick(logits))]  # the draft serving alone may trim
            if proposer is not None:
                proposer.commit(proposals, committed)
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
            if governor is not None:
                governor.round_done(len(committed), time.perf_counter())
        ended = time.perf_counter()
        return out, finish, self._stats(prompt, out, started, prefill_done, first_token_at or ended, ended,
                                        k if proposer is not None else 0, kept[0])

    def _verify(self, last: int, proposals: list[int], probs: list[np.ndarray] | None) -> list[int]:
        """The target's verdict on the proposals (probs: the proposer's distributions; None
        for point masses): the accepted prefix plus one target token."""
        counters, sampler = self.counters, self.sampler
        target_base = self.target.length
        rows = counters.timed("target", self.target.verify, [last, *proposals])
        counters.target_passes += 1
        counters.proposed += len(proposals)

        accepted, correction = 0, None
        best = rows.argmax(axis=1).tolist() if sampler.greedy else None  # one call for every row
        for i, token in enumerate(proposals):
            if sampler.greedy:
                if best[i] != token:
                    correction = best[i]
                    break
            else:
                target_probs = sampler.distribution(rows[i])
                q = probs[i] if probs is not None else None
                if not sampler.accepts(target_probs[token], 1.0 if q is None else q[token]):
                    q = point_mass(token, len(target_probs)) if q is None else q
                    correction = sampler.residual(target_probs, q)
                    break
            accepted += 1
        if correction is None:
            correction = sampler.pick(rows[len(proposals)])  # the bonus token
        counters.accepted += accepted
        self.target.rollback(target_base + 1 + accepted)
        return proposals[:accepted] + [correction]

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
            name = self.proposer.name
            stats.update({
                "proposer": name,
                f"{name}_proposed": c.proposed,
                f"{name}_accepted": c.accepted,
                "acceptance_rate": round(c.accepted / c.proposed, 4) if c.proposed else None,
            })
        return stats
