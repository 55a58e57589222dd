"""Fixtures of the integration tests: grids of real node processes."""

from __future__ import annotations

import pytest

from tests.integration.grid import running_grid


@pytest.fixture
async def grid4(short_tmp):
    """Four nodes, every role on each, 2 cores each, short leases and rounds."""
    async with running_grid(short_tmp, 4) as g:
        yield g
