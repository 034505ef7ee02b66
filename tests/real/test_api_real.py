"""Tier 3: the /multigpu API on a real ComfyUI master, with a token, against real workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_distributed.api.handlers import TOKEN_ENV
from tests.real.harness import ComfyInstance, requires_comfyui, start_comfyui, submit_prompt, wait_for_history
from tests.waiting import poll

ROOT = Path(__file__).resolve().parents[2]
TEST_NODES = ROOT / "tests" / "comfy_test_nodes"
TOKEN = "tier3-token-0123456789abcdef"

pytestmark = [requires_comfyui, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("api-cluster")
    instances: list[ComfyInstance] = []
    try:
        for name in ("w1", "w2"):
            instances.append(start_comfyui(name, base / name, custom_nodes={"comfy_test_nodes": TEST_NODES}))
        config_path = base / "gpu_config.json"
        config_path.write_text(json.dumps({"workers": [
            {"id": 1, "name": "GPU 1", "port": instances[0].port},
            {"id": 2, "name": "GPU 2", "port": instances[1].port},
        ]}))
        master = start_comfyui("master", base / "master",
                               custom_nodes={"ComfyUI-Distributed": ROOT, "comfy_test_nodes": TEST_NODES},
                               env={"COMFY_DISTRIBUTED_CONFIG": str(config_path), TOKEN_ENV: TOKEN})
        instances.append(master)
        yield master, instances[0], instances[1], config_path
    finally:
        for instance in instances:
            instance.stop()


def call(url: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_token_guards_changes(cluster):
    master, _, _, config_path = cluster
    before = config_path.read_text()
    status, body = call(master.url, "/multigpu/config/update_worker", {"worker_id": 2, "enabled": False})
    assert status == 401 and "token" in body["error"]
    assert config_path.read_text() == before
    status, body = call(master.url, "/api/multigpu/config/update_worker", {"worker_id": 2, "enabled": False},
                        token="not-the-token-at-all")
    assert status == 401
    status, body = call(master.url, "/api/multigpu/config/update_worker", {"worker_id": 2, "enabled": False},
                        token=TOKEN)
    assert status == 200 and body["worker"]["enabled"] is False
    assert json.loads(config_path.read_text())["workers"][1]["enabled"] is False
    status, body = call(master.url, "/multigpu/config/update_worker", {"worker_id": 2, "enabled": True}, token=TOKEN)
    assert status == 200
    status, body = call(master.url, "/multigpu/config")
    assert status == 200 and TOKEN not in json.dumps(body) and body["auth"]["token_configured"] is True


def test_bad_input_is_a_4xx_json(cluster):
    master = cluster[0]
    status, body = call(master.url, "/multigpu/config/update_worker", {"worker_id": 1, "port": "eighty"}, token=TOKEN)
    assert status == 400 and "workers[0].port" in body["error"]
    status, body = call(master.url, "/multigpu/config/update_setting", {"key": "nope", "value": 1}, token=TOKEN)
    assert status == 400 and "unknown setting" in body["error"]


def test_openapi_is_served(cluster):
    master = cluster[0]
    status, body = call(master.url, "/multigpu/openapi.json")
    assert status == 200
    assert body == json.loads((ROOT / "comfy_distributed" / "api" / "openapi.json").read_text())


def test_status_sees_real_workers(cluster):
    master = cluster[0]

    def statuses() -> list[tuple[int, str]]:
        status, body = call(master.url, "/multigpu/status")
        assert status == 200
        return [(w["id"], w["status"]) for w in body["workers"]]

    # the heartbeat (every 2 s by default) catches up with the re-enabled worker of the test before
    poll(lambda: statuses() == [(1, "idle"), (2, "idle")], 10, "both workers idle", interval=0.05)


def cached_nodes(url: str, prompt: dict) -> list[str]:
    """Run ``prompt`` and return the nodes ComfyUI served from its cache."""
    entry = wait_for_history(url, submit_prompt(url, prompt), timeout=120)
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_cached":
            return sorted(data["nodes"])
    return []


def test_clear_memory_reaches_the_real_workers_free(cluster):
    master, w1, w2, _ = cluster
    prompt = {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": 9, "batch_size": 1, "width": 8, "height": 8, "delay": 0.0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    for worker in (w1, w2):
        cached_nodes(worker.url, prompt)
        assert cached_nodes(worker.url, prompt) == ["1", "2"]  # a repeat comes from the cache
    status, body = call(master.url, "/multigpu/clear_memory", {}, token=TOKEN)
    assert status == 200
    assert [(w["worker_id"], w["ok"]) for w in body["workers"]] == [(1, True), (2, True)]
    assert body["master"]["ok"] is True
    for worker in (w1, w2):  # POST /free with free_memory resets the worker's execution cache
        assert cached_nodes(worker.url, prompt) == []
