"""Node counters: exact totals whatever thread counts, gauges as last set."""

from __future__ import annotations

import threading

from actors.stats import Stats


def test_counts_from_many_threads_add_up_exactly_and_gauges_keep_their_last_value() -> None:
    stats = Stats()

    def work() -> None:
        for _ in range(10_000):
            stats.incr("put.ok")
            stats.incr("bytes", 3)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.set("handoff.pending", 7)
    stats.set("handoff.pending", 2)
    assert stats.snapshot() == {"bytes": 120_000, "handoff.pending": 2, "put.ok": 40_000}
    assert stats.get("put.ok") == 40_000 and stats.get("never") == 0
