"""Concurrent config changes through the real API: none is lost, the file is never half written.

Hundreds of requests are in flight at once (over 100 connections), in a shuffled order;
afterwards gpu_config.json is strict JSON, a valid config, reflects every change, and no
temporary file is left in its folder. Another process reads the file over and over while
the writes go on. Results posted for one share at the same time: the first one wins.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sys
from pathlib import Path
from typing import Any

import aiohttp

from comfy_distributed.config import load_config, public_view
from tests.component.openapi_support import JOB_COMPLETE, PNG, TOKEN, ApiUnderTest, Reply, check_reply, strict_json

ROOT = Path(__file__).resolve().parents[2]
UPDATE_WORKER = "/multigpu/config/update_worker"
ADD_WORKER = "/multigpu/config/add_worker"
REMOVE_WORKER = "/multigpu/config/remove_worker"
UPDATE_SETTING = "/multigpu/config/update_setting"



def cluster(count: int, first_port: int = 20_000) -> str:
    """A config of ``count`` workers (ids 1..count) that nothing in these tests contacts."""
    workers = [{"id": i + 1, "name": f"w{i + 1}", "port": first_port + i, "enabled": True} for i in range(count)]
    return json.dumps({"master": {"port": 8188}, "workers": workers, "settings": {}}, indent=2)


CONNECTIONS = 100
"""Connections the client opens at once. Every request is in flight from the start (asyncio.gather);
staying below the server's listen backlog (128) keeps the kernel from dropping connection attempts,
which a client would only retry after a one-second SYN timeout."""


def many_clients(directory: Path, config_text: str) -> ApiUnderTest:
    return ApiUnderTest(directory, workers=0, config_text=config_text,
                        connector=aiohttp.TCPConnector(limit=CONNECTIONS))


WATCHER = r"""
import json, os, select, sys
from pathlib import Path
from comfy_distributed.config import load_config

def constant(name):
    raise ValueError(f"{name} is not JSON")

os.nice(19)  # take only the CPU the server leaves
path, reads, problems = Path(sys.argv[1]), 0, []
while True:
    try:
        json.loads(path.read_bytes(), parse_constant=constant)
        load_config(path)
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}"[:300])
    reads += 1
    if reads == 1:
        print("ready", flush=True)
    if select.select([sys.stdin], [], [], 0)[0]:  # stdin closed: the writers are done
        break
print(json.dumps({"reads": reads, "problems": problems[:20]}), flush=True)
"""


class FileWatcher:
    """Another process that reads the config file in a loop while the writes go on, and reports
    every read that was not strict JSON and a valid config (another process, so that it does
    not compete with the server for this interpreter's GIL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.problems: list[str] = []
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "FileWatcher":
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WATCHER, str(self.path), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        ready = await asyncio.wait_for(self._process.stdout.readline(), timeout=60)
        assert ready == b"ready\n", ready
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._process is not None
        self._process.stdin.close()
        output, _ = await asyncio.wait_for(self._process.communicate(), timeout=60)
        assert self._process.returncode == 0, output
        report = json.loads(output)
        self.reads, self.problems = report["reads"], report["problems"]


async def run_all(api: ApiUnderTest, calls: list[tuple[str, dict[str, Any]]], seed: int) -> list[Reply]:
    """Send every (path, body) at once, in a shuffled order; answers come back in the given order."""
    order = list(range(len(calls)))
    random.Random(seed).shuffle(order)
    headers = {"Authorization": f"Bearer {TOKEN}"}  # harmless until a call sets this token, needed after

    async def one(index: int) -> tuple[int, Reply]:
        path, body = calls[index]
        return index, await api.call("POST", path, body, headers=headers, auth=False)

    done = dict(await asyncio.gather(*(one(index) for index in order)))
    return [done[index] for index in range(len(calls))]


def assert_clean(api: ApiUnderTest) -> dict[str, Any]:
    """The file is strict JSON and a valid config, with nothing left beside it; returns its public view."""
    strict_json(api.path.read_bytes())
    config = load_config(api.path)
    assert api.leftovers() == [], f"temporary files left: {api.leftovers()}"
    return public_view(config)


async def test_200_concurrent_updates_all_land(tmp_path):
    count = 200
    async with many_clients(tmp_path, cluster(count)) as api:
        calls: list[tuple[str, dict[str, Any]]] = []
        names = {i: f"worker-{i}-\u00e9-{random.Random(i).getrandbits(32):08x}" for i in range(1, count + 1)}
        calls += [(UPDATE_WORKER, {"worker_id": i, "name": names[i]}) for i in range(1, count + 1)]
        disabled = set(range(1, count + 1, 4))
        calls += [(UPDATE_WORKER, {"worker_id": i, "enabled": False}) for i in sorted(disabled)]
        tuned = set(range(3, count + 1, 10))
        calls += [(UPDATE_WORKER, {"worker_id": str(i), "cuda_device": i % 8, "extra_args": f"--arg {i}"})
                  for i in sorted(tuned)]
        settings = {"worker_timeout": 123.5, "connect_timeout": 7.0, "request_timeout": 45.0, "api_token": TOKEN}
        calls += [(UPDATE_SETTING, {"key": key, "value": value}) for key, value in settings.items()]
        contested = [f"--contested {n}" for n in range(10)]  # ten writers on one field: one of them wins
        calls += [(UPDATE_WORKER, {"worker_id": count, "extra_args": value}) for value in contested]

        async with FileWatcher(api.path) as watcher:
            replies = await run_all(api, calls, seed=1)

        for (path, body), reply in zip(calls, replies):
            check_reply(reply, api, None)
            assert reply.status == 200, str(reply)
            if path == UPDATE_WORKER:  # each answer shows its own change
                worker = reply.data["worker"]
                for field, value in body.items():
                    if field != "worker_id":
                        assert worker[field] == value, str(reply)
        assert watcher.problems == [], f"{len(watcher.problems)} of {watcher.reads} reads: {watcher.problems[:3]}"
        assert watcher.reads > 1

        view = assert_clean(api)
        workers = {w["id"]: w for w in view["workers"]}
        assert sorted(workers) == list(range(1, count + 1)), "workers added, lost or reordered"
        assert [w["id"] for w in view["workers"]] == list(range(1, count + 1))
        lost = []
        for i, worker in workers.items():
            expected = {"name": names[i], "enabled": i not in disabled, "port": 20_000 + i - 1}
            if i in tuned:
                expected.update(cuda_device=i % 8, extra_args=f"--arg {i}")
            lost += [f"worker {i}.{field}: {worker[field]!r} != {value!r}"
                     for field, value in expected.items() if worker[field] != value]
        assert lost == [], f"{len(lost)} lost updates: {lost[:10]}"
        assert workers[count]["extra_args"] in contested
        config = load_config(api.path)
        assert config.settings.worker_timeout == 123.5
        assert config.settings.connect_timeout == 7.0
        assert config.settings.request_timeout == 45.0
        assert config.settings.api_token == TOKEN

        served = await api.call("GET", "/multigpu/config")
        assert served.status == 200
        assert served.data["workers"] == view["workers"]
        assert served.data["auth"]["token_configured"] is True


async def test_50_concurrent_add_worker_calls_get_50_distinct_ids(tmp_path):
    async with many_clients(tmp_path, cluster(3)) as api:
        calls = [(ADD_WORKER, {"name": f"new {n}", "port": 30_000 + n}) for n in range(50)]
        async with FileWatcher(api.path) as watcher:
            replies = await run_all(api, calls, seed=2)
        for reply in replies:
            check_reply(reply, api, None)
            assert reply.status == 201, str(reply)
        assert watcher.problems == [], watcher.problems[:3]

        ids = [reply.data["worker"]["id"] for reply in replies]
        assert len(set(ids)) == 50, f"ids handed out twice: {sorted(ids)}"
        assert all(isinstance(i, int) and i > 3 for i in ids), ids
        view = assert_clean(api)
        stored = {w["id"]: w for w in view["workers"]}
        assert set(stored) == {1, 2, 3} | set(ids)
        for (_path, body), reply in zip(calls, replies):
            worker = stored[reply.data["worker"]["id"]]
            assert (worker["name"], worker["port"]) == (body["name"], body["port"])


async def test_concurrent_adds_removes_updates_and_settings_compose(tmp_path):
    count = 60
    async with many_clients(tmp_path, cluster(count)) as api:
        removed = set(range(1, count + 1, 3))
        renamed = set(range(1, count + 1)) - removed
        calls: list[tuple[str, dict[str, Any]]] = []
        calls += [(REMOVE_WORKER, {"worker_id": i}) for i in sorted(removed)]
        calls += [(UPDATE_WORKER, {"worker_id": i, "name": f"renamed {i}"}) for i in sorted(renamed)]
        calls += [(ADD_WORKER, {"id": f"added-{n}", "port": 40_000 + n, "enabled": n % 2 == 0}) for n in range(40)]
        calls += [(UPDATE_SETTING, {"key": "worker_timeout", "value": 900})]
        replies = await run_all(api, calls, seed=3)
        for reply in replies:
            check_reply(reply, api, None)
            assert reply.status in (200, 201), str(reply)

        view = assert_clean(api)
        stored = {w["id"]: w for w in view["workers"]}
        assert set(stored) == renamed | {f"added-{n}" for n in range(40)}
        assert all(stored[i]["name"] == f"renamed {i}" for i in renamed)
        assert all(stored[f"added-{n}"]["enabled"] == (n % 2 == 0) for n in range(40))
        assert view["settings"]["worker_timeout"] == 900


async def test_readers_never_see_a_partial_config_while_writers_run(tmp_path):
    count = 40
    async with many_clients(tmp_path, cluster(count)) as api:
        writes = [api.call("POST", UPDATE_WORKER, {"worker_id": 1 + n % count, "extra_args": "x" * (n * 37 % 1500)})
                  for n in range(120)]
        reads = [api.call("GET", "/multigpu/config") for _ in range(120)]
        mixed = writes + reads
        random.Random(4).shuffle(mixed)
        async with FileWatcher(api.path) as watcher:
            replies = await asyncio.gather(*mixed)
        for reply in replies:
            check_reply(reply, api, None)
            assert reply.status == 200, str(reply)
            if reply.method == "GET":
                assert len(reply.data["workers"]) == count
        assert watcher.problems == [], watcher.problems[:3]
        assert_clean(api)


async def test_concurrent_results_for_one_share_the_first_wins(tmp_path):
    """Forty posts of one share's results at once (a worker retrying, or someone who read its token):
    exactly one is taken, every other is told the unit has ended, and the unit holds the winner's images."""
    async with ApiUnderTest(tmp_path, share=True, connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as api:
        await api.open_share()
        job = api.started_jobs[-1]
        bodies = [{"outputs": {"3": [base64.b64encode(PNG + bytes([n])).decode()]}} for n in range(40)]
        replies = await asyncio.gather(*(api.call("POST", JOB_COMPLETE, body) for body in bodies))
        for reply in replies:
            check_reply(reply, api, api.original)
        statuses = sorted(reply.status for reply in replies)
        assert statuses == [200] + [409] * 39, statuses
        winner = next(n for n, reply in enumerate(replies) if reply.status == 200)
        unit = next(u for u in job.units.values() if job.record(u.position).worker == "stub")
        assert job.state_of(unit.position) == "done" and unit.images == {"3": [PNG + bytes([winner])]}
        assert api.path.read_bytes() == api.original
