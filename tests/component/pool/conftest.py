"""Fixtures of the pool's component tests: a real ``redis-server`` (one per module, emptied before each test) and
stand-in ComfyUIs with in-process agents in front of them (``pool_support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.redis_server import RedisMissing, RedisServer, running_redis
from tests.waiting import LOOPBACK

if TYPE_CHECKING:
    from tests.component.pool.pool_support import PoolSite

pytest.register_assert_rewrite("tests.component.pool.pool_support")


@pytest.fixture(scope="module")
def redis_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        with running_redis(tmp_path_factory.mktemp("redis")) as server:
            yield server
    except RedisMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def redis_server(redis_module: RedisServer) -> Iterator[RedisServer]:
    """The module's Redis, running and empty; restarted first when an earlier test stopped it."""
    import socket

    if redis_module.process is None:
        redis_module.start()
    with socket.create_connection((LOOPBACK, redis_module.port), timeout=2) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(64).startswith(b"+OK")
    yield redis_module


@pytest.fixture
async def pool(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[PoolSite]:
    """Stand-ins, agents and brokers on the test's Redis, all stopped (and checked for leftovers) at the end."""
    from tests.component.pool.pool_support import PoolSite

    async with PoolSite(redis_server, tmp_path) as site:
        yield site

