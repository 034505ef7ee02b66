"""The smaller bounds on what a worker may make the master do: messages on its ``/ws`` (each capped, all of
them within a budget while a prompt runs), a ``job_complete`` body (read within a time limit, one per share),
and cookies (none kept: a worker cannot set one that another worker on the same host name receives)."""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from comfy_distributed.config import ConfigStore
from comfy_distributed.cluster.health import HealthMonitor
from comfy_distributed.worker_client import MIB, ComfyClient
from tests.component.cluster import Cluster, assert_unit_images, by_position, workflow
from tests.component.openapi_support import JOB_COMPLETE, PNG_B64, ApiUnderTest, trickle
from tests.standin import StandinComfy
from tests.waiting import until


class FloodingStandin(StandinComfy):
    """A hostile worker: as its first prompt starts, it sends that prompt's client ``messages`` first.

    ``cut`` is set once a send failed: the master hung up on it.
    """

    def __init__(self, *args: Any, messages: Iterable[str | bytes], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: Iterable[str | bytes] | None = messages
        self.sent = 0
        self.cut = False

    async def _send_now(self, event: Any, data: Any, sid: str | None) -> None:
        websocket = self._sockets.get(sid) if sid is not None else None
        if event == "execution_start" and websocket is not None and self.messages is not None:
            messages, self.messages = self.messages, None
            try:
                for message in messages:
                    await (websocket.send_str(message) if isinstance(message, str) else websocket.send_bytes(message))
                    self.sent += len(message)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                self.cut = True
        await super()._send_now(event, data, sid)


def noise(size: int) -> str:
    """A JSON event of about ``size`` characters, of a prompt the master does not follow."""
    return json.dumps({"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "someone-else",
                                                    "node": "1", "pad": "x" * size}})


def preview(size: int) -> bytes:
    """A type-1 preview frame (JPEG) of ``size`` bytes in all."""
    return struct.pack(">II", 1, 1) + b"\xff\xd8\xff" + bytes(size - 11)


class LoopWatch:
    """The longest the event loop went without running this task's next step, while it watches."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task | None = None

    async def _watch(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest, last = max(self.longest, now - last), now

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def run_with_hostile_second(tmp_path: Path, messages: Iterable[str | bytes]) -> tuple[Cluster, FloodingStandin]:
    """Run ``workflow()`` on a good GPU 1 and a GPU 2 that sends ``messages``; check that the result is whole and
    GPU 2's unit was re-run on GPU 1, and return the cluster and GPU 2."""
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, \
            FloodingStandin(tmp_path / "w2", name="w2", messages=messages) as w2:
        async with Cluster(tmp_path, [w1.port, w2.port], worker_timeout=60) as cluster, LoopWatch() as watch:
            started = time.monotonic()
            job = cluster.start(workflow(seed=42, batch=2))
            await until(lambda: job.settled.is_set(), timeout=30, what="the job settled")
            assert time.monotonic() - started < 20, "the master waited for the worker timeout"
            result = await cluster.collect(job)
            assert by_position(result)[2][0] == "GPU 1"
            assert_unit_images(result, 1, 43)
            assert_unit_images(result, 2, 44)
        assert watch.longest < 1.0, f"the event loop stalled for {watch.longest:.2f} s"
        return cluster, w2


def the_failure(cluster: Cluster) -> dict:
    (event,) = cluster.events_named("multigpu.worker_failed")
    assert event["worker"] == "GPU 2" and event["reason"] == "protocol_error" and event["rerun"] is True, event
    return event


async def test_a_text_message_past_its_cap_fails_the_worker_unparsed(tmp_path, standin_cluster):
    cluster, _ = await run_with_hostile_second(tmp_path, [noise(MIB)])
    message = the_failure(cluster)["message"]
    assert "GET /ws: a text message of 1.0 MiB, more than the cap of 256 KiB" in message, message


async def test_a_binary_message_past_the_preview_cap_is_refused_by_aiohttp(tmp_path, standin_cluster):
    cluster, _ = await run_with_hostile_second(tmp_path, [preview(3 * MIB)])
    message = the_failure(cluster)["message"]
    assert "GET /ws: a message larger than the cap of 2 MiB" in message, message


async def test_a_flood_of_small_messages_past_the_budget_fails_the_worker(tmp_path, standin_cluster):
    cluster, w2 = await run_with_hostile_second(tmp_path, itertools.repeat(noise(60_000)))
    message = the_failure(cluster)["message"]
    assert "while one prompt ran, past the budget of 64 MiB plus 4 MiB a second" in message, message
    await until(lambda: w2.cut, timeout=10, what="the master hung up on the flood")
    assert 64 * MIB < w2.sent < 256 * MIB


def progress_state(size: int, valid: bool = True) -> str:
    """A ``progress_state`` event as ComfyUI's ``send_json`` starts it, of about ``size`` characters; the master
    drops it unparsed (or, not ``valid``, cut off: it would not parse)."""
    text = json.dumps({"type": "progress_state", "data": {"prompt_id": "p", "nodes": {}, "pad": "x" * size}})
    return text if valid else text[:len(text) // 2]


async def test_a_flood_of_unparsed_progress_states_still_counts_against_the_budget(tmp_path, standin_cluster):
    cluster, _ = await run_with_hostile_second(tmp_path, itertools.repeat(progress_state(60_000)))
    message = the_failure(cluster)["message"]
    assert "while one prompt ran, past the budget of 64 MiB plus 4 MiB a second" in message, message


async def test_progress_states_are_dropped_unparsed_and_the_unit_still_counts(tmp_path, standin_cluster):
    """Broken ``progress_state`` text (never parsed) and one past the text cap (refused first) on the same worker."""
    messages = [progress_state(100, valid=False), progress_state(200), progress_state(100, valid=False)]
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, \
            FloodingStandin(tmp_path / "w2", name="w2", messages=messages) as w2:
        async with Cluster(tmp_path, [w1.port, w2.port], worker_timeout=60) as cluster:
            job = cluster.start(workflow(seed=42, batch=2))
            await until(lambda: job.settled.is_set(), timeout=30, what="the job settled")
            result = await cluster.collect(job)
            assert by_position(result)[2][0] == "GPU 2", "the worker that sent them ran its own unit"
            assert_unit_images(result, 2, 44)
            assert not cluster.events_named("multigpu.worker_failed")
    cluster, _ = await run_with_hostile_second(tmp_path / "big", [progress_state(MIB)])
    message = the_failure(cluster)["message"]
    assert "GET /ws: a text message of 1.0 MiB, more than the cap of 256 KiB" in message, message


# --- job_complete: a time limit on the body, one read per share ----------------------------------


class HeldBody:
    """A valid result body that sends its start and the rest only once released."""

    def __init__(self) -> None:
        self.released = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"outputs": {"3": ["'
        await self.released.wait()
        yield PNG_B64.encode() + b'"]}}'


async def test_a_trickled_result_gives_its_slot_back_with_a_408(tmp_path):
    async with ApiUnderTest(tmp_path, share=True, settings={"request_timeout": 1}) as api:
        await api.open_share()
        started = time.monotonic()
        reply = await api.call("POST", JOB_COMPLETE, raw=trickle(b'{"outputs": {"3": ["', 0.05),
                               headers={"Content-Type": "application/json", "Content-Length": "100000"},
                               describe="a trickled body")
        took = time.monotonic() - started
        assert reply.status == 408 and "did not arrive within 1.1 s" in reply.data["error"], str(reply)
        assert 1.0 <= took < 5, took
        reply = await api.call("POST", JOB_COMPLETE, {"outputs": {"3": [PNG_B64]}})
        assert reply.status == 200 and reply.data == {"accepted": 1}, str(reply)


async def test_a_share_is_read_once_at_a_time(tmp_path):
    async with ApiUnderTest(tmp_path, share=True) as api:
        await api.open_share()
        bodies = [HeldBody(), HeldBody()]
        posts = [asyncio.create_task(api.call("POST", JOB_COMPLETE, raw=body.__aiter__(), describe="a held body",
                                              headers={"Content-Type": "application/json"})) for body in bodies]
        try:
            done, _ = await asyncio.wait(posts, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1, "the second post of the share was not refused while the first one is read"
            refused = done.pop().result()
            assert refused.status == 409 and "another result of this share is being read" in refused.data["error"], \
                str(refused)
        finally:
            for body in bodies:
                body.released.set()
        replies = await asyncio.wait_for(asyncio.gather(*posts), timeout=10)
        assert sorted(reply.status for reply in replies) == [200, 409], [str(reply) for reply in replies]


# --- cookies: none kept, so none travels from one worker to another ------------------------------


class CookieWorker:
    """Answers ``GET /prompt`` and ``/system_stats`` like an idle ComfyUI; records the Cookie header of each
    request; with ``sets``, every answer sets a cookie."""

    def __init__(self, sets: bool) -> None:
        self.sets = sets
        self.cookies: list[str | None] = []
        app = web.Application()
        app.router.add_get("/prompt", self._answer)
        app.router.add_get("/system_stats", self._answer)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    async def _answer(self, request: web.Request) -> web.Response:
        self.cookies.append(request.headers.get("Cookie"))
        body = {"exec_info": {"queue_remaining": 0}} if request.path == "/prompt" else {"devices": []}
        response = web.json_response(body)
        if self.sets:
            response.set_cookie("worker_session", "of-the-first-worker")
        return response

    @property
    def url(self) -> str:
        return f"http://localhost:{self.server.port}"  # a name, not an address: aiohttp keeps no cookie of an IP


async def with_cookie_workers(check: Callable[[CookieWorker, CookieWorker], Any]) -> tuple[CookieWorker, ...]:
    first, second = CookieWorker(sets=True), CookieWorker(sets=False)
    await first.server.start_server()
    await second.server.start_server()
    try:
        await check(first, second)
    finally:
        await first.server.close()
        await second.server.close()
    return first, second


async def test_the_health_monitor_keeps_no_cookie_of_one_worker_for_another(tmp_path):
    async def beat_twice(first: CookieWorker, second: CookieWorker) -> None:
        path = tmp_path / "gpu_config.json"
        path.write_text(json.dumps({"workers": [{"id": 1, "host": "localhost", "port": first.server.port},
                                                {"id": 2, "host": "localhost", "port": second.server.port}]}))
        monitor = HealthMonitor(ConfigStore(path))
        try:
            await monitor.beat()
            await monitor.beat()
            assert monitor.status(1) == "idle" and monitor.status(2) == "idle"
        finally:
            await monitor.close()

    first, second = await with_cookie_workers(beat_twice)
    assert len(first.cookies) == len(second.cookies) == 4
    assert first.cookies == second.cookies == [None] * 4


async def test_a_clients_session_keeps_no_cookie(tmp_path):
    async def ask(first: CookieWorker, second: CookieWorker) -> None:
        async with ComfyClient(first.url) as client:
            await client.system_stats()
            await client.system_stats()
            await ComfyClient(second.url, session=client.session).system_stats()

    first, second = await with_cookie_workers(ask)
    assert first.cookies == [None, None] and second.cookies == [None]


async def test_a_plain_session_would_carry_the_cookie():
    """The check above can fail: aiohttp's own jar sends one worker's cookie to another on the same name."""
    async def ask(first: CookieWorker, second: CookieWorker) -> None:
        async with aiohttp.ClientSession() as session:
            for url in (first.url, second.url):
                async with session.get(url + "/system_stats") as response:
                    await response.read()

    _, second = await with_cookie_workers(ask)
    assert second.cookies == ["worker_session=of-the-first-worker"]
