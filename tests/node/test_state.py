"""The state file: real SQLite files, WAL, migrations, transactions, crash safety."""

from __future__ import annotations

import random
import signal
import sqlite3
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest
import trio
import trio_asyncio

import node.state as state_mod
from node.state import MIGRATIONS, SLOTS_PER_STATEMENT, PeerRow, StateError, open_state


def peer(i: int, *, site: str | None = None, last_seen: float | None = None,
         record: bytes | None = None) -> PeerRow:
    return PeerRow(node_id=i.to_bytes(32, "big"), site=site or f"site-{i:04d}",
                   addresses=(f"10.0.{i // 256}.{i % 256}:7000", f"[::1]:{7000 + i % 1000}"),
                   roles=("compute", "storage") if i % 2 else ("compute",),
                   last_seen=1_000.0 + i if last_seen is None else last_seen, record=record)


def sqlite_pragma(path: Path, name: str) -> object:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


async def test_fresh_file_is_wal_and_fully_migrated(tmp_path):
    path = tmp_path / "state.sqlite"
    async with trio_asyncio.open_loop():
        async with open_state(path) as st:
            assert st.path == path
            assert await st.schema_version() == len(MIGRATIONS)
            assert (await st._fetchall("PRAGMA journal_mode"))[0][0] == "wal"
            assert await st.peers() == []
            assert await st.get_meta("anything") is None
    # WAL is persistent in the file header: a plain sqlite3 sees it after close.
    assert sqlite_pragma(path, "journal_mode") == "wal"
    assert sqlite_pragma(path, "user_version") == len(MIGRATIONS)
    with closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"peers", "meta"} <= tables


async def test_peers_round_trip_and_order(tmp_path):
    rows = [peer(1, last_seen=50.0), peer(2, last_seen=300.0, record=b"rec-2"),
            peer(3, last_seen=100.0)]
    async with trio_asyncio.open_loop():
        async with open_state(tmp_path / "state.sqlite") as st:
            await st.upsert_peers(rows)
            got = await st.peers()
    assert [p.node_id for p in got] == [rows[1].node_id, rows[2].node_id, rows[0].node_id]
    assert got == [rows[1], rows[2], rows[0]]  # every field, including the record
    for p in got:
        assert isinstance(p.addresses, tuple) and isinstance(p.roles, tuple)
    assert got[0].record == b"rec-2" and got[1].record is None


async def test_upsert_updates_fields_keeps_max_last_seen_and_old_record(tmp_path):
    first = PeerRow(b"\x01" * 32, "old-site", ("1.1.1.1:1",), ("compute",), 500.0, b"signed")
    async with trio_asyncio.open_loop():
        async with open_state(tmp_path / "state.sqlite") as st:
            await st.upsert_peers([first])
            # Older last_seen, no record: fields change, last_seen and record stay.
            await st.upsert_peers([PeerRow(first.node_id, "new-site", ("2.2.2.2:2", "3.3.3.3:3"),
                                           ("storage",), 100.0, None)])
            (p,) = await st.peers()
            assert p == PeerRow(first.node_id, "new-site", ("2.2.2.2:2", "3.3.3.3:3"),
                                ("storage",), 500.0, b"signed")
            # Newer last_seen and a new record: both taken.
            await st.upsert_peers([PeerRow(first.node_id, "newer", (), (), 900.0, b"signed-2")])
            (p,) = await st.peers()
            assert p == PeerRow(first.node_id, "newer", (), (), 900.0, b"signed-2")
            await st.upsert_peers([])  # a no-op, not an error
            assert await st.peers() == [p]


async def test_remove_peers(tmp_path):
    rows = [peer(i) for i in range(5)]
    async with trio_asyncio.open_loop():
        async with open_state(tmp_path / "state.sqlite") as st:
            await st.upsert_peers(rows)
            await st.remove_peers([rows[1].node_id, rows[3].node_id, b"\xff" * 32])
            assert {p.node_id for p in await st.peers()} == {rows[i].node_id for i in (0, 2, 4)}
            await st.remove_peers([])
            assert len(await st.peers()) == 3


async def test_meta_round_trip_and_overwrite(tmp_path):
    async with trio_asyncio.open_loop():
        async with open_state(tmp_path / "state.sqlite") as st:
            await st.set_meta("revocations", b"\x00one")
            await st.set_meta("other", b"two")
            assert await st.get_meta("revocations") == b"\x00one"
            await st.set_meta("revocations", b"three")
            assert await st.get_meta("revocations") == b"three"
            assert await st.get_meta("other") == b"two"
            assert await st.get_meta("missing") is None


async def test_data_survives_restart(tmp_path):
    path = tmp_path / "state.sqlite"
    rows = [peer(i) for i in range(10)]
    async with trio_asyncio.open_loop():
        async with open_state(path) as st:
            await st.upsert_peers(rows)
            await st.set_meta("k", b"v")
    async with trio_asyncio.open_loop():
        async with open_state(path) as st:
            assert sorted(await st.peers(), key=lambda p: p.node_id) == rows
            assert await st.get_meta("k") == b"v"
            assert await st.schema_version() == len(MIGRATIONS)


async def test_large_batch_is_one_transaction(tmp_path):
    path = tmp_path / "state.sqlite"
    good = [peer(i) for i in range(1000)]
    async with trio_asyncio.open_loop():
        async with open_state(path) as st:
            await st.upsert_peers(good)
            assert {p.node_id for p in await st.peers()} == {p.node_id for p in good}
            # Row 700 violates NOT NULL (site): nothing of this batch may land,
            # neither the rows before it nor the updates to existing peers.
            bad = ([peer(i, site="changed") for i in range(500)]
                   + [peer(i) for i in range(1000, 1700)])
            bad[700] = PeerRow(bad[700].node_id, None, (), (), 1.0)  # type: ignore[arg-type]
            with pytest.raises(sqlite3.IntegrityError):
                await st.upsert_peers(bad)
            after = await st.peers()
            assert len(after) == 1000
            assert {p.site for p in after} == {p.site for p in good}
            # The connection is usable after the rollback.
            await st.set_meta("after", b"ok")
            assert await st.get_meta("after") == b"ok"
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM peers").fetchone()[0] == 1000
        assert db.execute("SELECT count(*) FROM peers WHERE site = 'changed'").fetchone()[0] == 0


async def test_reopen_does_not_rerun_migrations(tmp_path, monkeypatch):
    path = tmp_path / "state.sqlite"
    async with trio_asyncio.open_loop():
        async with open_state(path) as st:
            await st.upsert_peers([peer(1)])
        async with open_state(path) as st:  # would fail if migration 1 ran again
            assert await st.schema_version() == len(MIGRATIONS)
            assert await st.peers() == [peer(1)]
        assert sqlite_pragma(path, "user_version") == len(MIGRATIONS)

        # A new migration runs exactly once, on the next open only.
        extra = "CREATE TABLE extra (x INTEGER); INSERT INTO extra VALUES (1)"
        monkeypatch.setattr(state_mod, "MIGRATIONS", [*MIGRATIONS, extra])
        for _ in range(2):
            async with open_state(path) as st:
                assert await st.schema_version() == len(MIGRATIONS) + 1
                assert await st._fetchall("SELECT count(*) FROM extra") == [(1,)]
                assert await st.peers() == [peer(1)]


async def test_failed_migration_leaves_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "state.sqlite"
    async with trio_asyncio.open_loop():
        async with open_state(path) as st:
            await st.set_meta("k", b"v")
        broken = "CREATE TABLE half (x INTEGER); INSERT INTO no_such_table VALUES (1)"
        monkeypatch.setattr(state_mod, "MIGRATIONS", [*MIGRATIONS, broken])
        with pytest.raises(StateError):
            async with open_state(path):
                pass
        monkeypatch.undo()
        async with open_state(path) as st:
            assert await st.schema_version() == len(MIGRATIONS)
            assert await st.get_meta("k") == b"v"
            assert await st._fetchall(
                "SELECT count(*) FROM sqlite_master WHERE name = 'half'") == [(0,)]


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
async def test_newer_schema_is_refused_untouched(tmp_path, journal_mode):
    path = tmp_path / "state.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA journal_mode = {journal_mode}")
        db.execute("CREATE TABLE future (x)")
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
        db.commit()
    before = path.read_bytes()
    async with trio_asyncio.open_loop():
        with pytest.raises(StateError, match="upgrade gridnode") as info:
            async with open_state(path):
                pytest.fail("a newer state file was opened")
    assert str(len(MIGRATIONS) + 5) in str(info.value)
    assert path.read_bytes() == before
    assert sqlite_pragma(path, "user_version") == len(MIGRATIONS) + 5


async def test_non_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(random.Random(7).randbytes(8192))
    before = path.read_bytes()
    async with trio_asyncio.open_loop():
        with pytest.raises(StateError, match=str(path)):
            async with open_state(path):
                pytest.fail("a random file was opened as state")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.sqlite"]


CRASHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import trio, trio_asyncio
    from node.state import PeerRow, open_state

    async def main():
        async with trio_asyncio.open_loop():
            async with open_state(Path(sys.argv[1])) as st:
                await st.upsert_peers([PeerRow(b"\\x07" * 32, "crash-site", ("9.9.9.9:9",),
                                               ("compute",), 123.5, b"rec")])
                await st.set_meta("last-words", b"durable")
                print("committed", flush=True)
                time.sleep(60)

    trio.run(main)
""")


async def test_sigkill_after_commit_loses_nothing(tmp_path):
    path = tmp_path / "state.sqlite"
    proc = await trio.lowlevel.open_process([sys.executable, "-c", CRASHER, str(path)],
                                            stdout=-1)
    try:
        out = b""
        with trio.fail_after(20):
            while b"committed\n" not in out:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"child exited early ({await proc.wait()}): {out!r}"
                out += chunk
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            code = await proc.wait()
        await proc.stdout.aclose()
    assert code == -signal.SIGKILL
    async with trio_asyncio.open_loop():
        async with open_state(path) as st:
            assert await st.peers() == [PeerRow(b"\x07" * 32, "crash-site", ("9.9.9.9:9",),
                                                ("compute",), 123.5, b"rec")]
            assert await st.get_meta("last-words") == b"durable"


async def test_job_slots_group_commit_and_reload(tmp_path):
    async with trio_asyncio.open_loop():
        async with open_state(tmp_path / "s.sqlite") as state:
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(state.save_slots,
                                       [(bytes([i]) * 20, i, i, "activated", b"r%d" % i)])
            await state.save_slots([(bytes([1]) * 20, 7, 7, "finished", b"new")])
        async with open_state(tmp_path / "s.sqlite") as state:
            rows = {r[0]: r for r in await state.load_slots()}
    assert len(rows) == 50
    assert rows[bytes([1]) * 20] == (bytes([1]) * 20, 7, 7, b"new")
    assert rows[bytes([9]) * 20][3] == b"r9"


async def test_a_cancelled_group_commit_leader_does_not_break_later_commits(tmp_path):
    async with trio_asyncio.open_loop():
        async with open_state(tmp_path / "s.sqlite") as state:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as scope:
                    scope.cancel()  # the leader is cancelled before it even starts
                    with pytest.raises(trio.Cancelled):
                        await state.save_slots([(b"a" * 20, 1, 1, "activated", b"x")])
                for i in range(5):
                    nursery.start_soon(state.save_slots, [(bytes([i]) * 20, 2, 2, None, None)])
            await state.save_slots([(b"b" * 20, 3, 3, "finished", b"y")])
            rows = {r[0]: r for r in await state.load_slots()}
    assert rows[b"a" * 20][1] == 1  # what the cancelled leader started still landed
    assert rows[b"b" * 20][1] == 3 and len(rows) == 7


async def test_job_slots_in_one_statement_and_in_a_long_transaction(tmp_path):
    many = SLOTS_PER_STATEMENT + 7
    async with trio_asyncio.open_loop():
        async with open_state(tmp_path / "s.sqlite") as state:
            # The same job twice in one commit: the later row wins, in both forms.
            await state.save_slots([(b"a" * 20, 1, 1, "activated", b"x"),
                                    (b"a" * 20, 2, 2, "running", b"y")])
            await state.save_slots([(i.to_bytes(20, "big"), 1, 1, "activated", b"r")
                                    for i in range(many)]
                                   + [(b"b" * 20, 1, 1, None, None),
                                      (b"b" * 20, 5, 4, "finished", b"z")])
        async with open_state(tmp_path / "s.sqlite") as state:
            rows = {r[0]: r for r in await state.load_slots()}
    assert rows[b"a" * 20] == (b"a" * 20, 2, 2, b"y")
    assert rows[b"b" * 20] == (b"b" * 20, 5, 4, b"z")
    assert len(rows) == many + 2


async def test_datasets_and_holdings_survive_a_reopen(tmp_path):
    async with trio_asyncio.open_loop():
        async with open_state(tmp_path / "s.sqlite") as state:
            await state.save_dataset("alice:raw", 1, b"v1")
            await state.save_dataset("alice:raw", 2, b"v2")
            await state.save_dataset("bob:mc", 1, b"b1")
            await state.save_holding("alice:raw", 2, b"v2", 10.0)
            await state.save_holding("bob:mc", 1, b"b1", 11.0)
            await state.remove_holding("bob:mc")
        async with open_state(tmp_path / "s.sqlite") as state:
            assert sorted(await state.load_datasets()) == [b"b1", b"v2"]
            assert await state.load_holdings() == [("alice:raw", 2, b"v2", 10.0)]
