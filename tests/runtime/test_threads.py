"""The thread governor: it sheds threads when one is faster, probes back, and never changes the output."""

import tvm

from air.runtime import Bundle
from air.runtime.threads import ThreadGovernor

pool_size = tvm.get_global_func("runtime.NumThreads")


def run_windows(governor: ThreadGovernor, clock: list[float], seconds_per_token: dict[int, float], windows: int):
    """Feed the governor `windows` windows of one-token rounds taking the given time per pool size."""
    for _ in range(windows * governor.WINDOW):
        clock[0] += seconds_per_token[governor.running]
        governor.round_done(1, clock[0])
        assert pool_size() == governor.running


def test_governor_sheds_to_one_thread_when_it_is_faster_and_probes_back():
    governor, clock = ThreadGovernor(2), [0.0]
    governor.start(clock[0])
    run_windows(governor, clock, {2: 0.010, 1: 0.002}, windows=4)  # a busy core: two threads 5x slower
    assert governor.chosen == 1 and governor.switches == 1
    run_windows(governor, clock, {2: 0.001, 1: 0.002}, windows=4)  # the load is gone
    assert governor.chosen == 2 and governor.switches == 2


def test_governor_keeps_the_faster_count_and_probes_less_often():
    governor, clock = ThreadGovernor(2), [0.0]
    governor.start(clock[0])
    for _ in range(200 * governor.WINDOW):
        clock[0] += 0.001 if governor.running == 2 else 0.0018
        governor.round_done(1, clock[0])
    assert governor.chosen == 2 and governor.switches == 0
    assert governor.gap == governor.MAX_GAP
    assert governor.probes <= 8  # gaps growing to 64 windows: one window in 64 on the slower count at the end


def test_load_arriving_is_noticed_within_a_window_and_probes_are_cut_short():
    """Two threads 16x slower under load (as measured with one core busy): the governor leaves
    them within the window the load arrives in, and its probes back cost at most a window's time."""
    governor, clock = ThreadGovernor(2), [0.0]
    governor.start(clock[0])
    run_windows(governor, clock, {2: 0.001, 1: 0.0018}, windows=8)  # quiet: two threads are faster
    assert governor.chosen == 2
    loaded_from, windows = clock[0], 100
    run_windows(governor, clock, {2: 0.016, 1: 0.0018}, windows=windows)
    assert governor.chosen == 1 and governor.probes >= 5
    one_thread_seconds = windows * governor.WINDOW * 0.0018
    assert clock[0] - loaded_from < 1.1 * one_thread_seconds


def test_a_generation_never_spans_windows():
    governor = ThreadGovernor(2)
    governor.start(0.0)
    for i in range(governor.WINDOW - 1):
        governor.round_done(1, 0.001 * (i + 1))
    governor.start(100.0)  # the next request, long after: its idle time is not a slow window
    assert governor.rounds == 0 and governor.rate is None


def test_switching_threads_mid_generation_keeps_the_tokens(pair):
    """A governor that probes every window switches the pool during the run; greedy and seeded
    sampling give the same tokens as a fixed pool."""
    fixed = Bundle.load(pair["bundle"], threads=2)
    expected = [fixed.generate(prompt="def parse(text):", max_tokens=48, speculate=k, temperature=t, seed=1).tokens
                for k, t in ((0, 0.0), (3, 0.0), (3, 0.9))]
    adaptive = Bundle.load(pair["bundle"])
    assert adaptive.governor is not None
    adaptive.governor = ThreadGovernor(2)
    adaptive.governor.WINDOW, adaptive.governor.FIRST_GAP, adaptive.governor.MAX_GAP = 1, 1, 1
    got = [adaptive.generate(prompt="def parse(text):", max_tokens=48, speculate=k, temperature=t, seed=1)
           for k, t in ((0, 0.0), (3, 0.0), (3, 0.9))]
    assert [r.tokens for r in got] == expected
    assert adaptive.governor.probes >= 3
    assert all(r.stats["threads"] in (1, 2) for r in got)


def test_an_explicit_thread_count_is_kept(pair):
    assert Bundle.load(pair["bundle"], threads=2).governor is None
    assert Bundle.load(pair["bundle"], threads=1).governor is None
