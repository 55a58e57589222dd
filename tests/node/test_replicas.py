"""The replica RPCs between real nodes in one process: summaries refused when
malformed or not signed by the sender, drops refused unless announced and
unless another replica lives."""

from __future__ import annotations

import pytest
import trio

from node.client import Client
from overlay import KeyPair, RpcError
from replication import ReplicationPolicy, SummaryEntry, seal_summaries
from tests.conftest import make_grid
from tests.node.test_daemon import address
from tests.node.test_jobs import grid_of

# Rounds slow enough that the test's own calls are the only traffic.
QUIET = {"replication": {"interval": 3600.0}}


async def call(src, dst, method: str, args):
    host, port = dst.bound
    return await src.pool.call(host, port, method, args, expect_id=dst.key.id, timeout=10)


async def test_summaries_must_be_well_formed_and_signed_by_the_sender(short_tmp):
    dirs = make_grid(short_tmp, 2)
    async with trio.open_nursery() as nursery:
        a, b = await grid_of(nursery, dirs, **QUIET)
        rb = b.data.replicas
        counts = {"site-x": {rb.tp.bucket(1e9): 5}}
        good = seal_summaries(a.key, 1.0, 10**9, 0.5, [SummaryEntry("u:d", 1, False, counts)])
        forged = seal_summaries(KeyPair.generate(), 1.0, 10**9, 0.5,
                                [SummaryEntry("u:d", 1, False, counts)])
        tampered = good[0][:-70] + bytes(70)
        for bad in (b"garbage", forged[0], tampered, 7, None):
            with pytest.raises(RpcError) as err:
                await call(a, b, "replica.summary", {"summary": bad})
            assert err.value.code == "bad_request"
        assert rb.counters["summaries_refused"] == 5
        assert rb.book.datasets() == []  # nothing of them was kept
        assert await call(a, b, "replica.summary", {"summary": good[0]}) == "ok"
        assert rb.counters["summaries_received"] == 1
        assert rb.book.reports["u:d"][a.key.id] == counts
        assert rb.reported["u:d"][a.key.id][0] == 1
        assert rb.reporters[a.key.id] == (10**9, 0.5)
        # Sent twice, a summary still counts once.
        await call(a, b, "replica.summary", {"summary": good[0]})
        assert sum(rb.book.reports["u:d"][a.key.id]["site-x"].values()) == 5
        nursery.cancel_scope.cancel()


async def test_a_drop_needs_an_announcement_and_another_live_replica(short_tmp, tmp_path):
    dirs = make_grid(short_tmp, 2)
    async with trio.open_nursery() as nursery:
        a, b = await grid_of(nursery, dirs, **QUIET)
        (tmp_path / "f").write_bytes(b"x" * 1000)
        async with Client.connect(address(a)) as c:
            rec = await c.put("one", [tmp_path / "f"], policy=ReplicationPolicy(1, 2))
        name = str(rec.name)
        holder, other = (a, b) if name in a.data.holdings else (b, a)
        with pytest.raises(RpcError) as err:
            await call(other, holder, "replica.drop", {"name": name})
        assert err.value.code == "refused" and "two phases" in str(err.value)
        with pytest.raises(RpcError) as err:
            await call(holder, other, "replica.leave", {"name": name, "leaving": True})
        assert err.value.code == "not_found"
        assert await call(other, holder, "replica.leave",
                          {"name": name, "leaving": True}) == "leaving"
        assert name not in other.data.holdings  # the only replica (min 1): it stays
        with pytest.raises(RpcError) as err:
            await call(other, holder, "replica.drop", {"name": name})
        assert err.value.code == "refused" and "last replica" in str(err.value)
        assert name in holder.data.holdings
        assert name not in holder.data.replicas.leaving  # announced as held again
        with pytest.raises(RpcError) as err:
            await call(other, holder, "replica.leave", {"name": name, "leaving": "yes"})
        assert err.value.code == "bad_request"
        nursery.cancel_scope.cancel()
