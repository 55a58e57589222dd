"""What a queue primary learns of its tasks, and the matcher's longest first and scouts
(brokerage rule a on a node)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from steering.matching import PER_TASK, USER_WINDOW, Entry, MatchQueue
from steering.record import Event
from steering.tasks import TaskBook, held_for
from tests.overlay.common import SETTINGS
from tests.steering.test_matching import ALICE, BOB, entry, offer

SHORT, LONG = "a" * 40, "b" * 40


def job(n: int, task: str, user: bytes = ALICE, **spec) -> Entry:
    return replace(entry(n, user, **spec), task=task)


def test_held_for_is_last_lease_to_finished():
    ev = [Event(0.0, "activated", "submitted", b""), Event(10.0, "running", "a1", b""),
          Event(20.0, "activated", "requeued", b""), Event(30.0, "running", "a2", b""),
          Event(95.5, "finished", "ok", b"")]
    assert held_for(ev) == 65.5
    assert held_for(ev[:4]) is None                                    # not finished
    assert held_for([ev[0], Event(5.0, "finished", "?", b"")]) is None  # never leased
    assert held_for([]) is None


def test_the_book_learns_means_counts_scouts_and_forgets_the_oldest_tasks():
    book = TaskBook(max_tasks=2)
    assert book.scouts_left(SHORT, 2) == 2 and book.scouts_left("", 2) == 0  # no task: none
    book.started(SHORT)
    assert book.scouts_left(SHORT, 2) == 1
    book.started(SHORT)
    assert book.scouts_left(SHORT, 2) == 0 and book.expected(SHORT) is None
    book.finished(SHORT, 10.0)
    book.finished(SHORT, 30.0)
    assert book.expected(SHORT) == 20.0 and book.scouts_left(SHORT, 5) == 0
    book.finished("", 99.0)                                   # teaches nothing
    assert book.expected("") is None and len(book) == 1
    book.started(LONG)
    book.started("c" * 40)                                    # SHORT was used last: gone
    assert len(book) == 2 and book.expected(SHORT) is None


def test_a_task_not_known_yet_counts_as_long_as_its_job_held_longest():
    book = TaskBook()
    book.holding(LONG, b"1", 100.0)
    book.holding(LONG, b"2", 400.0)
    book.holding(LONG, b"1", 300.0)             # the same job again: since its first lease
    assert book.running_for(LONG, 1000.0) == 900.0
    book.holding(LONG, b"3", 50.0)              # older than the first (loaded late)
    assert book.running_for(LONG, 1000.0) == 950.0
    book.released(LONG, b"3")
    book.released(LONG, b"1")
    assert book.running_for(LONG, 1000.0) == 600.0
    book.released(LONG, b"2")
    assert book.running_for(LONG, 1000.0) == 0.0 and book.running_for("", 5.0) == 0.0
    q = MatchQueue(book, scouts=0)
    for n in range(4):
        q.add(job(n, SHORT))
    q.add(job(9, LONG))
    book.finished(SHORT, 60.0)
    book.holding(LONG, b"scout", 0.0)
    assert q.pick(offer(max_jobs=1), {}, now=30.0)[0].task == SHORT    # held 30 s < 60
    assert q.pick(offer(max_jobs=1), {}, now=90.0)[0].task == LONG     # held 90 s > 60
    assert q.pick(offer(max_jobs=1), {})[0].task == SHORT              # no clock: the mean


def test_scouts_first_then_the_longest_expected_then_the_oldest():
    book = TaskBook()
    q = MatchQueue(book, scouts=1)
    for n in range(20):
        q.add(job(n, SHORT))
    for n in range(20, 24):
        q.add(job(n, LONG))
    # Nothing known: each task's first job is a scout, the oldest first.
    assert [e.submitted for e in q.pick(offer(max_jobs=3), {})] == [0, 20, 1]
    for t in (SHORT, LONG):
        book.started(t)
    book.finished(SHORT, 60.0)
    assert [e.submitted for e in q.pick(offer(max_jobs=2), {})] == [0, 1]  # LONG unknown
    book.finished(LONG, 3600.0)
    assert [e.submitted for e in q.pick(offer(max_jobs=5), {})] == [20, 21, 22, 23, 0]
    # A task not known counts as the mean of the known ones in the window.
    q.add(job(30, "d" * 40))
    book.started("d" * 40)
    assert [e.submitted for e in q.pick(offer(max_jobs=5), {})][4] == 30
    # Without a book: the oldest, as before.
    fifo = MatchQueue()
    for e in (job(1, SHORT), job(2, LONG)):
        fifo.add(e)
    assert [e.submitted for e in fifo.pick(offer(max_jobs=2), {})] == [1, 2]


def test_a_long_task_behind_a_big_one_is_seen_and_fair_share_still_comes_first():
    book = TaskBook()
    q = MatchQueue(book)
    for n in range(1000):                       # Alice's big short task, then a long one
        q.add(job(n, SHORT))
    q.add(job(5000, LONG))
    q.add(job(6000, "", BOB))                   # Bob: one job, no task
    for t, took in ((SHORT, 60.0), (LONG, 7200.0)):
        book.started(t)
        book.finished(t, took)
    picked = q.pick(offer(max_jobs=3), {ALICE: 0, BOB: 0})
    assert [e.submitted for e in picked] == [5000, 6000, 0]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([ALICE, BOB]), st.integers(0, 30),
                          st.integers(1, 3)), max_size=80),
       st.dictionaries(st.integers(0, 30), st.floats(0.0, 1e5), max_size=10),
       st.integers(1, 12), st.integers(1, 12))
def test_picks_fit_and_come_from_each_users_window(jobs, learnt, cores, max_jobs):
    book = TaskBook()
    q = MatchQueue(book)
    entries = [job(n, f"{t:040x}", u, cores=c) for n, (u, t, c) in enumerate(jobs)]
    for e in entries:
        q.add(e)
    for t, took in learnt.items():
        book.started(f"{t:040x}")
        book.finished(f"{t:040x}", took)
    picked = q.pick(offer(cores, max_jobs=max_jobs), {})
    assert len({e.job_id for e in picked}) == len(picked) <= max_jobs
    assert sum(e.spec.cores for e in picked) <= cores
    for e in picked:                             # never past the first PER_TASK of its task
        same = sorted(x.submitted for x in entries if x.task == e.task and x.user == e.user)
        assert same.index(e.submitted) < PER_TASK + len(picked)
    assert USER_WINDOW >= PER_TASK
