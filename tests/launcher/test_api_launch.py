"""``POST /multigpu/workers/launch`` and ``/restart`` on a real aiohttp app, starting stand-in ComfyUI processes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from comfy_distributed.api.launch import LAUNCH_PATH, RESTART_PATH
from comfy_distributed.api.routes import LOGS_PATH
from tests.waiting import free_port, poll

from .helpers import answers, worker, write_config
from .launch_api import TOKEN, LaunchApi



@pytest.fixture
def ports() -> list[int]:
    return [free_port() for _ in range(4)]


@pytest.fixture
def config(tmp_path, ports) -> Path:
    return write_config(tmp_path / "gpu_config.json", ports[0], [
        worker(1, ports[1]), worker(2, ports[2]), worker(3, ports[3], enabled=False),
        worker("far", 8188, host="192.0.2.50"),
    ], api_token=TOKEN, launch_timeout=42)


async def test_launch_every_enabled_worker_then_restart_one(comfy_root, state_dir, config, ports):
    async with LaunchApi(comfy_root, state_dir, config) as api:
        status, answer = await api.post(LAUNCH_PATH)
        assert status == 200, answer
        by_id = {w["worker_id"]: w for w in answer["workers"]}
        assert set(by_id) == {1, 2, "far"}
        assert by_id[1]["action"] == by_id[2]["action"] == "started" and by_id[1]["ok"] and by_id[1]["pid"]
        assert not by_id["far"]["ok"] and "add an ssh block to workers[3]" in by_id["far"]["error"]
        assert sorted(api.health.launching, key=str) == [(1, 42.0), (2, 42.0)]
        poll(lambda: answers(ports[1]) and answers(ports[2]), 30, "both workers answer")
        assert not answers(ports[3]), "a disabled worker is not launched by default"

        status, again = await api.post(LAUNCH_PATH, {"worker_ids": [1, "2"]})
        assert status == 200 and [w["action"] for w in again["workers"]] == ["running", "running"]

        first_pid = by_id[1]["pid"]
        status, restarted = await api.post(RESTART_PATH, {"worker_id": 1})
        assert status == 200, restarted
        assert restarted["worker"]["action"] == "started" and restarted["worker"]["pid"] != first_pid
        assert api.health.launching[-1] == (1, 42.0)
        poll(lambda: answers(ports[1]), 30, "the restarted worker answers")

        status, disabled = await api.post(LAUNCH_PATH, {"worker_ids": [3]})
        assert status == 200 and disabled["workers"][0]["action"] == "started", "explicit ids may be disabled"
        poll(lambda: answers(ports[3]), 30, "the disabled worker, launched on request")


async def test_a_launched_workers_log_is_read_by_id_never_by_path(comfy_root, state_dir, config, ports):
    async with LaunchApi(comfy_root, state_dir, config) as api:
        status, answer = await api.post(LAUNCH_PATH, {"worker_ids": [1]})
        assert status == 200 and answer["workers"][0]["ok"], answer
        poll(lambda: answers(ports[1]), 30, "worker 1 answers")
        status, logs = await api.post(LOGS_PATH, {"worker_id": 1, "lines": 5})
        assert status == 200, logs
        assert logs["worker_id"] == 1 and logs["log"].endswith(".log") and str(state_dir) in logs["log"]
        assert any(f"http://127.0.0.1:{ports[1]}" in line for line in logs["lines"]), logs["lines"]
        assert len(logs["lines"]) <= 5
        status, missing = await api.post(LOGS_PATH, {"worker_id": 2})
        assert status == 409 and "was it started by the launcher" in missing["error"]
        status, far = await api.post(LOGS_PATH, {"worker_id": "far"})
        assert status == 409 and "192.0.2.50" in far["error"]
        status, unknown = await api.post(LOGS_PATH, {"worker_id": 9})
        assert status == 404
        status, bad = await api.post(LOGS_PATH, {"worker_id": 1, "lines": 100000})
        assert status == 400 and "lines" in bad["error"]
        status, path = await api.post(LOGS_PATH, {"worker_id": 1, "path": "/etc/passwd"})
        assert status == 400 and "path" in path["error"]  # no field names a file
        status, _ = await api.post(LOGS_PATH, {"worker_id": 1}, token=None)
        assert status == 401


async def test_failures_are_reported_with_the_launchers_message(comfy_root, state_dir, config, ports):
    holder = socket.socket()
    holder.bind(("127.0.0.1", ports[2]))
    holder.listen(1)
    try:
        async with LaunchApi(comfy_root, state_dir, config) as api:
            status, answer = await api.post(LAUNCH_PATH, {"worker_ids": [2]})
            assert status == 200
            assert not answer["workers"][0]["ok"] and "workers[1].port" in answer["workers"][0]["error"]
            assert api.health.launching == []
            status, answer = await api.post(RESTART_PATH, {"worker_id": 2})
            assert status == 409, answer
            assert "could not be restarted" in answer["error"] and "used by another program" in answer["error"]
            assert answer["worker"]["ok"] is False
            status, answer = await api.post(RESTART_PATH, {"worker_id": "far"})
            assert status == 409 and "192.0.2.50" in answer["error"]
    finally:
        holder.close()


@pytest.mark.parametrize("path, body, status, named", [
    (LAUNCH_PATH, {"worker_ids": "1"}, 400, "worker_ids"),
    (LAUNCH_PATH, {"worker_ids": None}, 400, "worker_ids"),
    (LAUNCH_PATH, {"worker_ids": [True]}, 400, "worker_ids"),
    (LAUNCH_PATH, {"worker_ids": [{"id": 1}]}, 400, "worker_ids"),
    (LAUNCH_PATH, {"workers": [1]}, 400, "workers"),
    (LAUNCH_PATH, {"worker_ids": [1, 99]}, 404, "99"),
    (LAUNCH_PATH, [1], 400, "JSON object"),
    (RESTART_PATH, {}, 400, "worker_id"),
    (RESTART_PATH, {"worker_id": None}, 400, "worker_id"),
    (RESTART_PATH, {"worker_id": 1, "force": True}, 400, "force"),
    (RESTART_PATH, {"worker_id": 99}, 404, "99"),
])
async def test_bad_input_is_refused_naming_it(comfy_root, state_dir, config, path, body, status, named):
    async with LaunchApi(comfy_root, state_dir, config) as api:
        got, answer = await api.post(path, body)
        assert got == status, answer
        assert named in answer["error"]
        assert not list(state_dir.glob("*.pid")), "nothing was started"


@pytest.mark.parametrize("path", [LAUNCH_PATH, RESTART_PATH])
async def test_token_malformed_json_and_invalid_config(comfy_root, state_dir, config, path):
    async with LaunchApi(comfy_root, state_dir, config) as api:
        status, answer = await api.post(path, {"worker_id": 1} if path == RESTART_PATH else {}, token=None)
        assert status == 401 and "token" in answer["error"]
        status, answer = await api.post(path, {"worker_id": 1} if path == RESTART_PATH else {}, token="wrong")
        assert status == 401
        status, answer = await api.post(path, raw=b'{"truncated": ')
        assert status == 400 and "not valid JSON" in answer["error"]
        config.write_text(json.dumps({"workers": [{"id": 1}]}))
        status, answer = await api.post(path, {"worker_id": 1} if path == RESTART_PATH else {}, token=None)
        assert status == 409 and "port" in answer["error"]
        assert not list(state_dir.glob("*.pid"))
