"""Stage-by-stage progress with timings on stderr (a real model compiles for minutes)."""

from __future__ import annotations

import contextlib
import sys
import time


class Progress:
    def __init__(self, total_stages: int, stream=sys.stderr, quiet: bool = False):
        self.total = total_stages
        self.done = 0
        self.stream = stream
        self.quiet = quiet
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, title: str):
        self.done += 1
        self._print(f"[{self.done}/{self.total}] {title} ...")
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.timings[title] = round(elapsed, 3)
        self._print(f"[{self.done}/{self.total}] {title}: done in {elapsed:.1f}s")

    @contextlib.contextmanager
    def step(self, title: str):
        """A timed part of a stage, printed as a note when done."""
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.timings[title] = round(elapsed, 3)
        self.note(f"{title}: {elapsed:.1f}s")

    def note(self, text: str) -> None:
        self._print(f"      {text}")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)
