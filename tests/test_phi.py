"""Phi accrual failure detection: when a silent peer is convicted, and what the detector learns."""

from __future__ import annotations

from actors.phi import PhiDetector

THRESHOLD = 8.0


def beat(detector: PhiDetector, start: float, every: float, count: int) -> float:
    now = start
    for _ in range(count):
        now += every
        detector.heartbeat(now)
    return now


def silence_to_convict(detector: PhiDetector, last: float) -> float:
    """Seconds of silence after ``last`` until phi passes the threshold (to 0.01 s)."""
    gap = 0.0
    while detector.phi(last + gap) < THRESHOLD:
        gap += 0.01
    return round(gap, 2)


def test_a_peer_is_convicted_after_about_eighteen_mean_intervals_of_silence() -> None:
    detector = PhiDetector(prior_interval=0.1)
    last = beat(detector, 0.0, 0.1, 50)
    assert 1.8 <= silence_to_convict(detector, last) <= 1.9     # 8 / log10(e) = 18.4 intervals


def test_a_partition_does_not_slow_the_conviction_of_the_same_peer_next_time() -> None:
    # Heard every 0.1 s, then cut off for 5 s, then heard again: the 5 s gap is an outage, and
    # recorded as an arrival interval it made the next partition take seconds longer to see.
    detector = PhiDetector(prior_interval=0.1)
    last = beat(detector, 0.0, 0.1, 50)
    before = silence_to_convict(detector, last)
    for _ in range(3):
        last = beat(detector, last + 5.0, 0.1, 10)    # the heartbeat after the outage, then normal ones
    assert silence_to_convict(detector, last) == before


def test_gossip_that_slows_step_by_step_is_learnt_and_not_convicted() -> None:
    detector = PhiDetector(prior_interval=0.1)
    last = beat(detector, 0.0, 0.1, 50)
    for every in (0.2, 0.4, 0.8, 1.6):                # each step well inside the current silence budget
        last = beat(detector, last, every, 100)
        assert detector.phi(last + every) < THRESHOLD
    assert silence_to_convict(detector, last) > 18 * 1.5
