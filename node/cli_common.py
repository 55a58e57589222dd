"""What the CLI's command modules share: the parser class, output, remote calls."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

from .client import Client
from .datadir import default_data_dir
from .errors import UsageError, UserError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def print_result(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


def remote(args: argparse.Namespace, work: Callable[[Client], Awaitable[Any]]) -> Any:
    """Run ``work`` on a Client connected as the flags say; errors become one line."""
    from overlay import BadMessage, RpcError

    data_dir = args.data_dir
    if data_dir is None and (args.via is None or default_data_dir().exists()):
        data_dir = default_data_dir()

    async def run() -> Any:
        async with Client.connect(args.via, data_dir=data_dir, user_dir=args.user_dir,
                                  grid=args.grid_select) as client:
            return await work(client)

    try:
        return trio.run(run)
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, UserError | RpcError | BadMessage):
            raise UserError(str(leaf)) from None
        raise
    except (RpcError, BadMessage) as exc:
        raise UserError(str(exc)) from None


def parse_node_id(text: str) -> bytes:
    try:
        node_id = bytes.fromhex(text)
    except ValueError:
        node_id = b""
    if len(node_id) != 20:
        raise UsageError(f"{text!r} is not a node id (40 hex digits)")
    return node_id
