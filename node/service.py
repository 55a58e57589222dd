"""The node's RPC table: what members, users and admins may ask a node.

The table is closed and greppable (``METHODS``); each entry names who may
call it.  Reading (status, peers, ping, whoami) is open to every member of
the grid, node or user; the issues that follow add acting calls (submit,
cancel, put) that need a user certificate and admin calls that need the
admin role.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from overlay import (
    ACCESS,
    CallContext,
    Method,
    NodeRecord,
    RpcError,
    allowed,
    bad_request,
    node_record_key,
)

from .config import parse_hostport
from .errors import UserError
from .logs import log

if TYPE_CHECKING:
    from .daemon import Node

logger = logging.getLogger("gridnode.service")

PING_TIMEOUT = 10.0


def methods(node: Node) -> dict[str, Method]:
    async def ping(ctx: CallContext, args: Any) -> dict[str, Any]:
        if args is None or args == {}:
            return {"id": node.key.id, "site": node.cert.name, "time": time.time()}
        if not (isinstance(args, dict) and set(args) == {"target"}
                and isinstance(args["target"], bytes) and len(args["target"]) == 20):
            raise bad_request("ping takes nothing, or {target: 20-byte node id}")
        return await forward_ping(node, args["target"])

    async def whoami(ctx: CallContext, args: Any) -> dict[str, Any]:
        cert = ctx.peer
        return {"id": cert.subject_id, "kind": cert.kind, "name": cert.name,
                "roles": list(cert.roles), "grid": cert.grid_id, "not_after": cert.not_after,
                "access": [a for a in ACCESS if allowed(a, cert)], "address": ctx.address,
                "node": node.key.id, "site": node.cert.name}

    async def status(ctx: CallContext, args: Any) -> dict[str, Any]:
        return await node._op_status()

    async def peers(ctx: CallContext, args: Any) -> list[dict[str, Any]]:
        return await node._op_peers()

    async def health(ctx: CallContext, args: Any) -> dict[str, Any]:
        return await node._op_health()

    async def own_health(ctx: CallContext, args: Any) -> dict[str, Any]:
        return node.own_health()

    return {
        "ping": Method(ping),
        "whoami": Method(whoami, inline=True),
        "status": Method(status, inline=True),
        "peers": Method(peers, inline=True),
        "health": Method(health),
        "health.self": Method(own_health, inline=True),
    }


async def peer_addresses(node: Node, node_id: bytes) -> list[tuple[str, int]]:
    """Where a node can be reached: its stored record, else the DHT."""
    texts: list[str] = []
    peer = node.peers.get(node_id)
    if peer is not None:
        texts += peer.addresses
    if not texts:
        found = [r for r in await node.dht.get(node_record_key(node_id))
                 if r.signer == node_id and r.kind == "node"]
        if found:
            texts += NodeRecord.from_signed(max(found, key=lambda r: r.seq)).addresses
    addresses = []
    for text in texts:
        try:
            addresses.append(parse_hostport(text, "address"))
        except UserError:
            continue
    return addresses


async def forward_ping(node: Node, target: bytes) -> dict[str, Any]:
    if target == node.key.id:
        return {"id": node.key.id, "site": node.cert.name, "time": time.time(), "rtt_ms": 0.0}
    addresses = await peer_addresses(node, target)
    if not addresses:
        raise RpcError("not_found", f"node {target.hex()} is not known here nor in the DHT")
    last: RpcError | None = None
    for host, port in addresses:
        start = time.monotonic()
        try:
            answer = await node.pool.call(host, port, "ping", None, expect_id=target,
                                          timeout=PING_TIMEOUT)
        except RpcError as exc:
            last = exc
            continue
        rtt = (time.monotonic() - start) * 1000
        log(logger, "ping.forwarded", logging.DEBUG, target=target, rtt_ms=f"{rtt:.2f}",
            reason="asked by a member")
        return {**answer, "rtt_ms": rtt, "address": f"{host}:{port}"}
    assert last is not None
    raise RpcError("unavailable", f"node {target.hex()} did not answer: {last}")
