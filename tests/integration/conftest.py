"""Fixtures of the integration tests: grids of real node processes."""

from __future__ import annotations

import pytest

from tests.integration.grid import Grid


@pytest.fixture
async def grid4(short_tmp):
    """Four nodes, every role on each, 2 cores each, short leases and rounds."""
    g = Grid(short_tmp, 4)
    g.prepare()
    for i in range(4):
        g.start(i)
    try:
        await g.converge()
        yield g
    finally:
        g.stop()
        print(g.logs(full=True))  # pytest shows it when the test failed
    # Whatever happened, no node hit a bug (an internal error is logged with a traceback).
    assert "Traceback" not in g.logs(full=True)
