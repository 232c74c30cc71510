"""A conversation: its messages, rendered with the bundle's chat template, answered on a session.

When the rendered conversation and room for an answer outgrow a dense cache, the oldest turns
(a user message and its answer) are dropped, the system message kept, and each answer says how
many were dropped; the room kept for an answer is max_tokens, at most half the context. A
windowed bundle (sinks plus a recent window) never drops: its cache runs past the window.
"""

from __future__ import annotations

import dataclasses

from .bundle import Bundle, GenerationResult
from .chat_template import ChatTemplate
from .contract import UNBOUNDED
from .session import Session


@dataclasses.dataclass
class Turn:
    result: GenerationResult
    dropped_turns: int  # oldest turns left out so that this one fits the context


def encode_chat(bundle: Bundle, template: ChatTemplate, messages: list[dict]) -> list[int]:
    """The prompt of the answer to `messages`: the template adds special tokens itself."""
    return bundle.tokenizer.encode(template.render(messages), add_special_tokens=False).ids


class Conversation:
    def __init__(self, bundle: Bundle, system: str | None = None, template: ChatTemplate | None = None,
                 session: Session | None = None):
        self.bundle = bundle
        self.template = template or ChatTemplate.from_bundle(bundle.root, bundle.manifest)
        self.session = session or Session(bundle)
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages: list[dict] = []  # user and assistant turns, oldest first

    def reset(self) -> None:
        self.messages = []

    def ask(self, text: str, max_tokens: int = 64, **options) -> Turn:
        """Answer a user message (options: Session.generate's); the answer joins the conversation."""
        self.messages.append({"role": "user", "content": text})
        try:
            ids, dropped = self._fit(max_tokens)
            result = self.session.generate(ids, max_tokens, stop=self.template.stop, **options)
        except BaseException:
            self.messages.pop()
            raise
        self.messages = self.messages[2 * dropped:] + [{"role": "assistant", "content": result.text}]
        return Turn(result, dropped)

    def _fit(self, max_tokens: int) -> tuple[list[int], int]:
        limit = self.bundle.max_context
        room = min(max_tokens, limit // 2)
        dropped = 0
        while True:
            ids = encode_chat(self.bundle, self.template, self.system + self.messages[2 * dropped:])
            if limit == UNBOUNDED or len(ids) + room <= limit or 2 * dropped + 1 >= len(self.messages):
                return ids, dropped
            dropped += 1
