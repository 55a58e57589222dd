"""The node's local state: one SQLite file (WAL), one connection.

All access goes through :class:`State`, so transactions and batching live in
one place.  Each call (a whole transaction, or a query) runs in a worker
thread, one at a time, and the event loop awaits it: one thread woken per
call, nothing else in between (the asyncio bridge that aiosqlite needs cost
more than the commit itself).

Schema versions are ``PRAGMA user_version``; :data:`MIGRATIONS` is applied
in order, each in its own transaction, so a crash mid-migration leaves the
previous version intact.  Writes use ``synchronous=FULL``: what the node
acknowledges has reached the disk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import trio

MIGRATIONS: list[str] = [
    # 1: peers and a small key-value table for node-wide facts.
    """
    CREATE TABLE peers (
        node_id   BLOB PRIMARY KEY,
        site      TEXT NOT NULL,
        addresses BLOB NOT NULL,   -- msgpack list of "host:port"
        roles     BLOB NOT NULL,   -- msgpack list of role names
        last_seen REAL NOT NULL,   -- wall-clock seconds
        record    BLOB             -- the signed node record, as received
    );
    CREATE INDEX peers_last_seen ON peers (last_seen);
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
    # 2: the job slots of the home sets this node belongs to (steering.homeset.Slot).
    """
    CREATE TABLE job_slots (
        job_id   BLOB PRIMARY KEY,
        promised INTEGER NOT NULL,  -- highest ballot promised
        ballot   INTEGER NOT NULL,  -- ballot the record was accepted under
        state    TEXT,              -- the record's state, for listings
        record   BLOB               -- msgpack of the record, or NULL
    );
    CREATE INDEX job_slots_state ON job_slots (state);
    """,
    # 3: datasets: catalog records this node keeps as a catalog node, and the
    # replicas it holds (replication.catalog, node.data).
    """
    CREATE TABLE datasets (
        name    TEXT PRIMARY KEY,     -- scope:name
        version INTEGER NOT NULL,
        record  BLOB NOT NULL         -- the signed dataset record, as received
    );
    CREATE TABLE holdings (
        name     TEXT PRIMARY KEY,    -- scope:name of a dataset this node holds
        version  INTEGER NOT NULL,    -- the record version whose files are all here
        record   BLOB NOT NULL,       -- that signed record
        since    REAL NOT NULL        -- wall-clock seconds
    );
    """,
    # 4: reads of datasets per requesting site and time bucket (replication.trends).
    """
    CREATE TABLE access (
        name   TEXT NOT NULL,         -- scope:name
        site   TEXT NOT NULL,         -- the site that read it
        bucket INTEGER NOT NULL,      -- time bucket (seconds // bucket_seconds)
        reads  INTEGER NOT NULL,
        PRIMARY KEY (name, site, bucket)
    );
    -- chunks of job outputs collected here: a dropped replica never takes them along
    CREATE TABLE output_chunks (
        chunk BLOB PRIMARY KEY
    );
    """,
    # 5: the monitor's down-sampled history (node.monitor).
    """
    CREATE TABLE metrics (
        t     REAL NOT NULL,          -- wall-clock seconds
        name  TEXT NOT NULL,
        value REAL NOT NULL
    );
    CREATE INDEX metrics_t ON metrics (t);
    """,
]


class StateError(Exception):
    """The state file cannot be opened or is not ours."""


def _refuse_newer(path: Path, version: int) -> None:
    if version > len(MIGRATIONS):
        raise StateError(
            f"{path} has schema version {version}, newer than this gridnode "
            f"({len(MIGRATIONS)}); upgrade gridnode")


@dataclass(frozen=True)
class PeerRow:
    node_id: bytes
    site: str
    addresses: tuple[str, ...]
    roles: tuple[str, ...]
    last_seen: float
    record: bytes | None = None


def _pack(x: Any) -> bytes:
    return msgpack.packb(x, use_bin_type=True)


def _peer_from_row(row: tuple[Any, ...]) -> PeerRow:
    return PeerRow(row[0], row[1], tuple(msgpack.unpackb(row[2])),
                   tuple(msgpack.unpackb(row[3])), row[4], row[5])


@dataclass
class _Batch:
    """Rows waiting for the next group commit, and when it landed."""

    rows: list[tuple[Any, ...]]
    done: trio.Event
    error: BaseException | None = None
    led: bool = False


# job_slots rows per multi-row statement (5 parameters each; SQLite allows 32766).
SLOTS_PER_STATEMENT = 1000
_UPSERT_SLOTS = ("INSERT INTO job_slots (job_id, promised, ballot, state, record) "
                 "VALUES {} ON CONFLICT (job_id) DO UPDATE SET "
                 "promised = excluded.promised, ballot = excluded.ballot, "
                 "state = excluded.state, record = excluded.record")


def _transaction(db: sqlite3.Connection, body: Callable[[], None]) -> None:
    """Run ``body`` in one write transaction (rolled back if it raises)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        body()
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise


class State:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._write_lock = trio.Lock()
        # One call on the connection at a time (it may run in any worker thread).
        self._calls = trio.CapacityLimiter(1)
        self._slots = _Batch([], trio.Event())

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread. Not cancellable: a transaction that began
        ends (commits or rolls back) before its caller hears of a cancellation."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._calls)

    async def _write(self, statements: list[tuple[str, Iterable[Any]]]) -> None:
        """Run write statements in one transaction.

        Each statement's parameters are one tuple (run once) or a list of
        tuples (run for each, with ``executemany``).
        """
        db = self._db

        def body() -> None:
            for sql, params in statements:
                if isinstance(params, list) and params and isinstance(params[0], tuple):
                    db.executemany(sql, params)
                else:
                    db.execute(sql, tuple(params))

        async with self._write_lock:  # one transaction at a time on this connection
            await self._run(_transaction, db, body)

    async def _fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        def go() -> list[Any]:
            return self._db.execute(sql, params).fetchall()

        return await self._run(go)

    # -- schema ------------------------------------------------------------

    async def schema_version(self) -> int:
        return (await self._fetchall("PRAGMA user_version"))[0][0]

    async def _migrate(self) -> None:
        version = await self.schema_version()
        _refuse_newer(self.path, version)
        for number in range(version + 1, len(MIGRATIONS) + 1):
            script = (f"BEGIN IMMEDIATE;\n{MIGRATIONS[number - 1]};\n"
                      f"PRAGMA user_version = {number};\nCOMMIT;")

            def go(script: str = script) -> None:
                try:
                    self._db.executescript(script)
                except BaseException:
                    if self._db.in_transaction:
                        self._db.rollback()
                    raise

            await self._run(go)

    # -- peers -------------------------------------------------------------

    async def upsert_peers(self, peers: Iterable[PeerRow]) -> None:
        rows = [(p.node_id, p.site, _pack(list(p.addresses)), _pack(list(p.roles)),
                 p.last_seen, p.record) for p in peers]
        if not rows:
            return
        await self._write([(
            "INSERT INTO peers (node_id, site, addresses, roles, last_seen, record) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
            "site = excluded.site, addresses = excluded.addresses, roles = excluded.roles, "
            "last_seen = max(last_seen, excluded.last_seen), "
            "record = coalesce(excluded.record, record)",
            rows)])

    async def remove_peers(self, node_ids: Iterable[bytes]) -> None:
        ids = [(i,) for i in node_ids]
        if ids:
            await self._write([("DELETE FROM peers WHERE node_id = ?", ids)])

    async def peers(self) -> list[PeerRow]:
        rows = await self._fetchall(
            "SELECT node_id, site, addresses, roles, last_seen, record FROM peers "
            "ORDER BY last_seen DESC")
        return [_peer_from_row(r) for r in rows]

    # -- job slots -----------------------------------------------------------

    async def save_slots(self, rows: Iterable[tuple[bytes, int, int, str | None, bytes | None]]
                         ) -> None:
        """Store (job id, promised, ballot, state, record) rows; returns once on disk.

        Group commit: callers that arrive while a commit is running share the
        next one, so many concurrent writers cost one fsync per round."""
        batch = self._slots
        leader, batch.led = not batch.led, True
        batch.rows.extend(rows)
        if not leader:
            await batch.done.wait()
            if batch.error is not None:
                raise StateError(f"cannot store job slots: {batch.error}")
            return
        # Others wait on this commit: the leader's own cancellation must not abort it.
        with trio.CancelScope(shield=True):
            try:
                async with self._write_lock:
                    self._slots = _Batch([], trio.Event())  # later arrivals: the next commit
                    # _write takes the lock itself: run the statements directly.
                    await self._run(self._slot_tx(batch.rows))
            except BaseException as exc:
                batch.error = exc
                raise
            finally:
                batch.done.set()
        await trio.lowlevel.checkpoint()  # the leader's cancellation, if any, lands here

    def _slot_tx(self, rows: list[tuple[Any, ...]]) -> Callable[[], Any]:
        """Store the rows in one transaction. Up to SLOTS_PER_STATEMENT rows go in one
        multi-row upsert (one statement is its own transaction); more rows take an
        explicit transaction."""
        db = self._db
        if len(rows) <= SLOTS_PER_STATEMENT:
            sql = _UPSERT_SLOTS.format(", ".join(["(?, ?, ?, ?, ?)"] * len(rows)))
            params = [x for row in rows for x in row]

            def one() -> None:
                db.execute(sql, params)
            return one

        def body() -> None:
            db.executemany(_UPSERT_SLOTS.format("(?, ?, ?, ?, ?)"), rows)
        return lambda: _transaction(db, body)

    # -- datasets ------------------------------------------------------------

    async def save_dataset(self, name: str, version: int, record: bytes) -> None:
        """Keep a catalog record (a newer version replaces the stored one)."""
        await self._write([(
            "INSERT INTO datasets (name, version, record) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version, "
            "record = excluded.record", (name, version, record))])

    async def load_datasets(self) -> list[bytes]:
        return [r[0] for r in await self._fetchall("SELECT record FROM datasets")]

    async def save_holding(self, name: str, version: int, record: bytes, since: float
                           ) -> None:
        """Note that every file of this version of a dataset is in the chunk store."""
        await self._write([(
            "INSERT INTO holdings (name, version, record, since) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version, "
            "record = excluded.record, since = excluded.since",
            (name, version, record, since))])

    async def remove_holding(self, name: str) -> None:
        await self._write([("DELETE FROM holdings WHERE name = ?", (name,))])

    async def load_holdings(self) -> list[tuple[str, int, bytes, float]]:
        rows = await self._fetchall("SELECT name, version, record, since FROM holdings")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def add_access(self, rows: Iterable[tuple[str, str, int, int]]) -> None:
        """Add reads (name, site, bucket, reads) to the access counts."""
        await self._write([(
            "INSERT INTO access (name, site, bucket, reads) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name, site, bucket) DO UPDATE SET reads = reads + excluded.reads",
            list(rows))])

    async def load_access(self, first_bucket: int) -> list[tuple[str, str, int, int]]:
        """Access counts from ``first_bucket`` on; older ones are deleted."""
        await self.prune_access(first_bucket)
        rows = await self._fetchall("SELECT name, site, bucket, reads FROM access")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def prune_access(self, first_bucket: int) -> None:
        await self._write([("DELETE FROM access WHERE bucket < ?", (first_bucket,))])

    async def add_metrics(self, rows: list[tuple[float, str, float]], before: float) -> None:
        """Append history rows and delete those older than ``before``."""
        await self._write([("INSERT INTO metrics (t, name, value) VALUES (?, ?, ?)", rows),
                           ("DELETE FROM metrics WHERE t < ?", (before,))])

    async def metrics(self, since: float) -> list[tuple[float, str, float]]:
        rows = await self._fetchall("SELECT t, name, value FROM metrics WHERE t >= ? "
                                    "ORDER BY t", (since,))
        return [(r[0], r[1], r[2]) for r in rows]

    async def pin_output_chunks(self, hashes: set[bytes]) -> None:
        if hashes:
            await self._write([("INSERT OR IGNORE INTO output_chunks (chunk) VALUES (?)",
                                [(h,) for h in hashes])])

    async def output_chunks(self) -> set[bytes]:
        return {r[0] for r in await self._fetchall("SELECT chunk FROM output_chunks")}

    async def load_slots(self) -> list[tuple[bytes, int, int, bytes | None]]:
        rows = await self._fetchall("SELECT job_id, promised, ballot, record FROM job_slots")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # -- meta --------------------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        rows = await self._fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: bytes) -> None:
        await self._write([(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))])


@asynccontextmanager
async def open_state(path: Path) -> AsyncIterator[State]:
    """Open (creating and migrating as needed) the state file at ``path``."""

    def connect() -> sqlite3.Connection:
        # Used from worker threads, one call at a time (State._run).
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            # Refuse a newer file before any pragma that writes (journal_mode
            # rewrites the header): a refused file is left exactly as it was.
            row = db.execute("PRAGMA user_version").fetchone()
            _refuse_newer(path, row[0] if row else 0)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA busy_timeout = 5000")
        except BaseException:
            db.close()
            raise
        return db

    try:
        db = await trio.to_thread.run_sync(connect)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"cannot open state file {path}: {exc}") from None
    state = State(db, path)
    try:
        try:
            await state._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {path} is not a gridnode database: {exc}") from None
        yield state
    finally:
        # Close even when shutting down on a signal: the last commit must land.
        with trio.CancelScope(shield=True):
            await state._run(db.close)
