"""TVM's thread pool: its size, and a governor that sheds threads while another process holds a core.

Every compiled kernel ends at a barrier for all of the pool's workers, so a worker the OS has
descheduled stalls every step: with one of two cores busy elsewhere, two threads decoded 5-9x
slower than one. The governor times windows of generation rounds on the pool's size, now and
then one window on a single thread, and keeps whichever produced tokens faster. The kernels
split their work the same way at any thread count, so the output does not change.
"""

from __future__ import annotations

import math
import os

import tvm

from air.cpu_features import usable_cores

_BIG_CORES = 1  # TVM's thread affinity mode: the fastest cores (every core of a homogeneous CPU)


def configure_threads(threads: int) -> int:
    """Size TVM's thread pool and return its size: threads > 0 that many; 0 TVM_NUM_THREADS if
    set, else one per physical core (usable_cores).

    TVM sizes its pool once, from TVM_NUM_THREADS (unset: half the CPUs on x86, one thread on
    a 2-core machine), and silently caps later requests at that size; so the variable is set
    before the pool exists. (Affinity mode 0, used here before, ran every kernel on one thread.)"""
    if threads <= 0:
        threads = int(os.environ.get("TVM_NUM_THREADS") or 0) or usable_cores()
    os.environ["TVM_NUM_THREADS"] = str(threads)
    _resize(threads)
    return threads


def _resize(threads: int) -> None:
    tvm.get_global_func("runtime.config_threadpool")(_BIG_CORES, threads)


class ThreadGovernor:
    """Chooses, window by window, between `threads` workers and one.

    A window is WINDOW rounds of one generation (a round: one target pass and what proposed
    it). After `gap` windows on the chosen count, one window runs on the other; if it made
    tokens PROBE_MARGIN faster, it becomes the choice. A probe that loses doubles the gap, or
    more where the probe took long enough that PROBE_SHARE of the time would be spent probing
    (up to MAX_GAP), so a quiet machine spends about one window in MAX_GAP on the slower count.

    Both kinds of window are also bounded in time, because under load the slow count can be
    16x slower (two threads with one core busy: 2.2 against 34.6 tokens/s), and a whole
    window of it cost more than the shedding won: a probe ends, lost, once it has run as long
    as the chosen count's last window took; and a chosen window that has run SLOWDOWN times
    as long as its predecessor (load arrived) ends at once and the other count is probed."""

    WINDOW = 8
    FIRST_GAP = 2
    MAX_GAP = 64
    PROBE_MARGIN = 1.1
    SLOWDOWN = 2.0
    PROBE_SHARE = 0.05  # after a lost probe, the gap makes probing at most this share of the time

    def __init__(self, threads: int):
        self.threads = threads
        self.chosen = threads
        self.gap = self.FIRST_GAP
        self.since_probe = self.FIRST_GAP - 1  # the first probe follows the first window: a process may start under load
        self.probing = False
        self.rate: float | None = None  # tokens/s of the chosen count's latest window
        self.window_seconds: float | None = None  # how long that window took
        self.switches = 0
        self.probes = 0
        self._reset_window(0.0)

    @property
    def running(self) -> int:
        """The pool's size now."""
        return self._other() if self.probing else self.chosen

    def start(self, now: float) -> None:
        """A generation starts on the chosen count (another bundle in this process may have resized
        the pool since); a window never spans two generations (the time between is not decoding)."""
        self.probing = False
        _resize(self.chosen)
        self._reset_window(now)

    def round_done(self, tokens: int, now: float) -> None:
        self.tokens += tokens
        self.rounds += 1
        elapsed = now - self.started
        full = self.rounds >= self.WINDOW
        if self.probing:
            if full or self._over(elapsed, 1.0):
                rate = self.tokens / max(elapsed, 1e-9)
                self._reset_window(now)
                self._end_probe(rate, elapsed)
            return
        slowed = not full and self._over(elapsed, self.SLOWDOWN)
        if not (full or slowed):
            return
        self.rate = self.tokens / max(elapsed, 1e-9)
        self._reset_window(now)
        if full:
            self.window_seconds = elapsed
        self.since_probe = self.gap if slowed else self.since_probe + 1
        if self.since_probe >= self.gap:
            self.probing = True
            self.probes += 1
            _resize(self._other())

    def _over(self, elapsed: float, factor: float) -> bool:
        """Whether the window so far has run `factor` times as long as the chosen count's last window."""
        return self.window_seconds is not None and elapsed > factor * self.window_seconds

    def _end_probe(self, rate: float, elapsed: float) -> None:
        self.probing = False
        self.since_probe = 0
        if self.rate is not None and rate > self.rate * self.PROBE_MARGIN:
            self.chosen = self._other()
            self.rate = rate
            self.window_seconds = None  # no time bounds until a full window on the new count
            self.gap = self.FIRST_GAP
            self.switches += 1
        else:
            # A probe lasts at least one round, which on the slow count can be many windows' worth.
            affordable = elapsed / (self.PROBE_SHARE * self.window_seconds) if self.window_seconds else 0
            self.gap = min(max(self.gap * 2, math.ceil(affordable)), self.MAX_GAP)
        _resize(self.chosen)

    def _other(self) -> int:
        return 1 if self.chosen == self.threads else self.threads

    def _reset_window(self, now: float) -> None:
        self.started = now
        self.tokens = 0
        self.rounds = 0
