"""A session: one conversation's hold on a bundle's KV caches, kept across requests.

Each request rolls the caches of the models it runs back to the longest common prefix of what
they hold and its prompt (a length change) and prefills only the rest. A cache another session
used since, or a windowed cache whose ring no longer holds the positions after that prefix,
starts again from zero.

    session = Session(bundle)
    first = session.generate(bundle.encode("..."), max_tokens=32)
    second = session.generate(first_prompt + first.tokens + more, max_tokens=32)  # reuses the prefix
"""

from __future__ import annotations

from typing import Callable

from air.errors import AirError
from .bundle import Bundle, GenerationResult
from .generation import Generator
from .model import CompiledModel
from .sampling import Sampler
from .text import StopText, TextStream


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Session:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.held: dict[int, list[int]] = {}  # id(model) -> the tokens its cache holds for this session

    def reusable(self, model: CompiledModel | None, ids: list[int]) -> int:
        """Positions of `ids` the model's cache holds already (the last id is always fed again)."""
        if model is None or model.holder is not self:
            return 0
        keep = common_prefix(self.held.get(id(model), [])[:model.length], ids[:-1])
        ring_wrapped = any(g.windowed and model.length > g.fixed_capacity for g in model.kv.groups)
        if ring_wrapped and model.length - keep > model.max_append:
            return 0  # the ring has overwritten positions that attention after `keep` would read
        return keep

    def generate(
        self,
        ids: list[int],
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        speculate: int | None = None,
        quality: str = "balanced",
        on_text: Callable[[str], None] | None = None,
        stop: tuple[str, ...] = (),
        should_stop: Callable[[], bool] | None = None,
        ignore_eos: bool = False,
        proposer: str = "draft",
    ) -> GenerationResult:
        """Generate up to max_tokens after `ids`, on this session's caches. speculate=k > 0: the
        proposer ("draft": the draft model; "lookup": n-gram lookup in the text so far, no draft
        needed) proposes up to k tokens per target pass; 0: the target alone; None: the routing
        table chooses for the quality tier. on_text receives the text as it grows; `stop` strings
        end the text (and the generation) where one appears; should_stop() ends it with finish
        "cancelled"; ignore_eos generates past end-of-sequence tokens (fixed-length benchmarks)."""
        if speculate is not None and speculate < 0:
            raise AirError(f"--speculate must be >= 0, got {speculate}")
        bundle = self.bundle
        bundle._check_prompt(ids)
        model, proposing, k, route = bundle._plan(ids, max_tokens, quality, speculate, proposer)
        draft = proposing.model if proposing is not None else None
        used = [m for m in (model, draft) if m is not None]
        kept = (self.reusable(model, ids), self.reusable(draft, ids))
        for m in used:
            m.holder = None  # until the run ends the cache matches nobody's record
        stream, stops = TextStream(bundle.tokenizer), StopText(stop)

        def emit(token: int) -> None:
            if on_text is None and not stop:
                return  # nobody reads the text before the end: decode it once, afterwards
            delta = stops.push(stream.push(token))
            if delta and on_text is not None:
                on_text(delta)

        def stopped() -> bool:
            return stops.stopped or (should_stop is not None and should_stop())

        eos = set() if ignore_eos else bundle.eos_token_ids
        generator = Generator(model, proposing, Sampler(temperature, top_p, seed), eos, bundle.governor)
        tokens, finish, stats = generator.run(ids, max_tokens, k, emit, kept, stopped)
        stats["verification"] = dict(bundle.verification)
        stats["threads"] = bundle.governor.chosen if bundle.governor is not None else bundle.threads
        for m in used:
            m.holder = self
            self.held[id(m)] = generator.sequence[:m.length]
        if stops.stopped:
            finish = "stop"
        tail = stops.push(stream.flush()) + stops.flush()
        if tail and on_text is not None:
            on_text(tail)
        text = stops.text if stop else bundle.tokenizer.decode(tokens, skip_special_tokens=True)
        return GenerationResult(tokens=tokens, text=text, finish_reason=finish, stats=stats, route=route)
