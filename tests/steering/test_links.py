"""Link classifiers from transfers: throughput lost against the link's best, and
failed attempts."""

from __future__ import annotations

from steering import HealthParams, LinkBook

PEER = b"\x01" * 20
OTHER = b"\x02" * 20
MB = 1 << 20


def run(book: LinkBook, rates: list[float], t0: float = 0.0, peer: bytes = PEER) -> list[str]:
    """One 8 MB transfer per interval at each rate (bytes/s); the state after each."""
    states = []
    for i, rate in enumerate(rates):
        now = t0 + 10 * i
        book.observe(now, peer, 8 * MB, 8 * MB / rate)
        book.sample(now)
        states.append(book.state(peer))
    return states


def test_a_link_at_a_tenth_of_its_best_is_congested_then_recovers():
    book = LinkBook()
    fast, slow = 100 * MB, 10 * MB
    states = run(book, [fast] * 6 + [slow] * 6 + [fast] * 8)
    assert states[:6] == ["ok"] * 6
    assert "congested" in states[6:12]
    first = states.index("congested")
    assert first <= 9  # within a few intervals of the drop
    assert states[-1] == "ok"
    link = book.view()[0]
    assert link["peer"] == PEER.hex() and link["best"] == fast and link["transfers"] == 20


def test_one_slow_interval_is_a_spike_not_congestion():
    book = LinkBook()
    states = run(book, [100 * MB] * 6 + [5 * MB] + [100 * MB] * 6)
    assert set(states) == {"ok"}


def test_hysteresis_holds_at_a_third_of_the_speed():
    """A third of the best (pressure 0.7) neither starts nor ends congestion."""
    book = LinkBook()
    states = run(book, [100 * MB] * 5 + [8 * MB] * 5 + [30 * MB] * 10)
    assert states[9] == "congested"
    assert states[-1] == "congested"  # between clear_below and congest_above: no change


def test_a_link_that_was_always_slow_is_not_congested():
    book = LinkBook()
    assert set(run(book, [2 * MB] * 12)) == {"ok"}


def test_small_transfers_count_as_outcomes_but_not_for_the_rate():
    book = LinkBook()
    book.observe(0.0, PEER, 1000, 10.0)  # 100 B/s: latency-bound, says nothing of the link
    book.sample(0.0)
    link = book.links[PEER]
    assert not link.rates and link.transfers == 1 and book.state(PEER) == "ok"


def test_failed_attempts_make_a_link_failing_and_successes_bring_it_back():
    p = HealthParams()
    book = LinkBook(p)
    for i in range(p.min_outcomes):
        book.observe(float(i), PEER, 0, 0.0, failures=1)
    assert book.state(PEER) == "failing"
    assert "failed" in book.links[PEER].classifier.reason
    for i in range(p.recover_after):
        book.observe(100.0 + i, PEER, 2 * MB, 0.1)
    assert book.state(PEER) == "ok"
    assert book.state(OTHER) == "ok"  # a link never used: no evidence against it


def test_idle_links_are_forgotten_and_changes_are_reported():
    book = LinkBook(forget_after=60.0)
    run(book, [100 * MB] * 5)
    changes = []
    for i in range(6):
        now = 100.0 + 10 * i
        book.observe(now, PEER, 8 * MB, 8.0)  # 1 MB/s: a hundredth
        changes += book.sample(now)
    assert (PEER, "ok", "congested") in changes
    book.sample(1000.0)
    assert PEER not in book.links
