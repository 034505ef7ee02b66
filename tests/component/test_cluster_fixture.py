"""The ``standin_cluster`` fixture, and its leak check: a clean job passes, and each kind of leak is found."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.component.cluster import Cluster, assert_unit_images, standin_clusters, workflow
from tests.component.leaks import SETTLE, LeakCheck, sockets_to, stash_kept
from tests.standin import StandinComfy
from tests.waiting import LOOPBACK, until, until_empty

HAS_PROC_NET = Path("/proc/self/net/tcp").exists()


async def test_a_job_over_two_workers_leaves_nothing_behind(standin_cluster):
    cluster = await standin_cluster(workers=2)
    result = await cluster.run(workflow(seed=42))
    assert [unit.name for unit, _ in result.images] == ["GPU 1", "GPU 2"]
    assert_unit_images(result, 2, 44)
    assert [len(w.received) for w in cluster.workers] == [1, 1]
    (done,) = await until(lambda: cluster.events_named("multigpu.job_done"))
    assert done["workers_done"] == ["GPU 1", "GPU 2"] and done["cancelled"] is False


async def test_offline_workers_follow_the_standins(standin_cluster):
    cluster = await standin_cluster(workers=1, offline=1, connect_timeout=1)
    ports = [w.port for w in cluster.store.get().workers]
    assert len(ports) == 2 and ports[0] == cluster.workers[0].port
    result = await cluster.run(workflow(seed=42))
    ran = [unit.position for unit, _ in result.images] + [unit.position for unit in result.master_units]
    assert sorted(ran) == [1, 2]  # the offline worker's unit ran on worker 1 or on the master
    (message,) = cluster.failure_messages()
    assert "cannot connect" in message


async def test_a_task_left_pending_is_found_and_one_finishing_is_waited_for():
    async def finishing() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    with LeakCheck.watching() as check:
        left = asyncio.create_task(asyncio.Event().wait(), name="left behind")
        asyncio.create_task(finishing(), name="finishing")
        (problem,) = await until_empty(check.tasks, 0.2)
        assert "'left behind' still pending" in problem
        await check.release()
        assert left.cancelled() and check.tasks() == []


async def test_a_session_left_open_is_found_until_it_is_closed():
    original = aiohttp.ClientSession.__init__
    before = aiohttp.ClientSession()  # opened before the check began: not the test's
    try:
        with LeakCheck.watching() as check:
            session = aiohttp.ClientSession()
            (problem,) = check.open_sessions()
            assert "ClientSession not closed" in problem
            await session.close()
            assert check.open_sessions() == []
    finally:
        await before.close()
    assert aiohttp.ClientSession.__init__ is original  # sessions are recorded inside the block only


@pytest.mark.skipif(not HAS_PROC_NET, reason="sockets are read from /proc (Linux)")
async def test_a_connection_left_open_to_a_standin_is_found_until_it_is_closed(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        _, writer = await asyncio.open_connection(LOOPBACK, w1.port)
        try:
            (problem,) = sockets_to({w1.port, w2.port})  # the stand-in's own end is not counted
            assert problem.endswith(f"to port {w1.port} still open")
            assert sockets_to({w2.port}) == []
        finally:
            writer.close()
            await writer.wait_closed()
        assert await until_empty(lambda: sockets_to({w1.port}), SETTLE) == []


async def test_a_stash_kept_is_found(tmp_path):
    orchestrator = Cluster(tmp_path, []).orchestrator
    orchestrator.stash("job", "3", ["parts"])
    assert stash_kept([orchestrator]) == ["1 Collector result(s) stashed"]
    orchestrator.take_stash("job", "3")
    assert stash_kept([orchestrator]) == []


async def test_the_fixture_fails_a_test_that_leaves_a_session_open(tmp_path):
    """The session and its pooled connection to the worker are both reported, then closed."""
    with pytest.raises(AssertionError, match="the test leaked") as caught:
        async with standin_clusters(tmp_path, settle=0.2) as start:
            cluster = await start(workers=1)
            session = aiohttp.ClientSession()
            async with session.get(f"{cluster.workers[0].url}/queue") as response:
                assert response.status == 200
    assert "ClientSession not closed" in str(caught.value)
    if HAS_PROC_NET:
        assert f"to port {cluster.workers[0].port} still open" in str(caught.value)
    assert session.closed


async def test_the_fixture_fails_a_test_that_leaves_a_task_pending(tmp_path):
    with pytest.raises(AssertionError, match="'forgotten' still pending"):
        async with standin_clusters(tmp_path, settle=0.1) as start:
            await start(workers=1)
            task = asyncio.create_task(asyncio.Event().wait(), name="forgotten")
    assert task.cancelled()  # released, so it does not outlive the test
