"""The per-worker session pool: one kept session per worker, renewed when its address changes."""

from __future__ import annotations

from comfy_distributed.worker_client import SessionPool


async def test_a_worker_keeps_its_session_until_the_pool_closes() -> None:
    pool = SessionPool()
    first = pool.get("1", "http://127.0.0.1:8189")
    assert pool.get("1", "http://127.0.0.1:8189") is first
    other = pool.get("2", "http://127.0.0.1:8190")
    assert other is not first and len(pool) == 2
    await pool.close()
    assert first.closed and other.closed and len(pool) == 0


async def test_a_new_address_gets_a_new_session_and_the_old_one_stays_open_for_running_units() -> None:
    pool = SessionPool()
    old = pool.get("1", "http://127.0.0.1:8189")
    new = pool.get("1", "http://127.0.0.1:9000")
    assert new is not old and not old.closed and not new.closed
    assert pool.get("1", "http://127.0.0.1:9000") is new
    await pool.close()
    assert old.closed and new.closed


async def test_a_closed_session_is_replaced() -> None:
    pool = SessionPool()
    first = pool.get("1", "http://127.0.0.1:8189")
    await first.close()
    second = pool.get("1", "http://127.0.0.1:8189")
    assert second is not first and not second.closed
    await pool.close()
