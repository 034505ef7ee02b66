"""Requests a page of another site can make are refused on every /multigpu route, whatever the Host; the events go
only to the clients registered through the guard (issue "Safe next to a browser, for real").

A page the user visits can send "simple" requests to a loopback master without a CORS preflight: a POST with a
``text/plain`` body or a form, from a sandboxed iframe with ``Origin: null`` (which ComfyUI 0.3.64's own origin
check lets through). Each case here was accepted before the guard looked at Origin, Sec-Fetch-Site and the body's
type.
"""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from comfy_distributed.cluster.core import Cluster
from comfy_distributed import events
from comfy_distributed.api.handlers import MultiGPUApi
from comfy_distributed.api.audience import Audience
from comfy_distributed.config import ConfigStore
from comfy_distributed.collector.orchestrator import Orchestrator
from tests.component.api_support import TOKEN, Started, write_config
from tests.waiting import closed_port

ROUTES = [("GET", "/multigpu/config"), ("GET", "/multigpu/status"), ("GET", "/multigpu/metrics"),
          ("GET", "/multigpu/openapi.json"), ("POST", "/multigpu/config/update_worker"),
          ("POST", "/multigpu/config/add_worker"), ("POST", "/multigpu/config/remove_worker"),
          ("POST", "/multigpu/config/update_setting"), ("POST", "/multigpu/prepare_job"),
          ("POST", "/multigpu/clear_memory"), ("POST", "/multigpu/job_complete"), ("POST", "/multigpu/events")]
BODIES = {
    "/multigpu/config/update_worker": {"worker_id": 1, "extra_args": "--listen 0.0.0.0 --enable-cors-header *"},
    "/multigpu/config/add_worker": {"name": "evil", "host": "attacker.example", "port": 80},
    "/multigpu/config/remove_worker": {"worker_id": 1},
    "/multigpu/config/update_setting": {"key": "queue_mode", "value": "all"},
    "/multigpu/clear_memory": {},
    "/multigpu/events": {"client_id": "attacker", "on": True, "previews": True},
}
"""What an attacking page would send: each would change the config, free memory or subscribe to the events."""
CROSS_SITE = {
    "sandboxed iframe": {"Origin": "null"},
    "another site": {"Origin": "http://attacker.example"},
    "another port of the master's host": {"Origin": "http://127.0.0.1:9999"},
    "another scheme": {"Origin": "https://127.0.0.1:{port}"},
    "Sec-Fetch-Site cross-site only": {"Sec-Fetch-Site": "cross-site"},
    "Sec-Fetch-Site same-site only": {"Sec-Fetch-Site": "same-site"},
}


class Master:
    """A master's API on a test server (loopback, private unless ``public``), recording what it sends whom."""

    def __init__(self, path, public: bool = False, cors_origin: str | None = None) -> None:
        self.path = path
        self.sent: list[tuple[str, dict, str]] = []
        self.audience = Audience(lambda event, data, client_id: self.sent.append((event, data, client_id)))
        store = ConfigStore(path)
        self.orchestrator = Orchestrator(Cluster(store, self.audience.notify))
        self.api = MultiGPUApi(store, self.orchestrator, public=public, audience=self.audience,
                               cors_origin=cors_origin)
        self.client = TestClient(TestServer(self.api.make_app()))

    @property
    def own_origin(self) -> str:
        return f"http://127.0.0.1:{self.client.port}"

    async def call(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        sent = {**({"Content-Type": "application/json"} if method == "POST" else {}), **(headers or {})}
        sent = {name: value.replace("{port}", str(self.client.port)) for name, value in sent.items()}
        response = await self.client.request(method, path, data=data, headers=sent)
        return response.status, await response.json()


@pytest.fixture
async def make_master(tmp_path):
    started = Started()

    async def factory(public: bool = False, cors_origin: str | None = None, **settings) -> Master:
        workers = [{"id": 1, "name": "GPU 1", "port": closed_port()}]
        path = write_config(started.config_path(tmp_path), workers, **settings)
        return await started.start(Master(path, public, cors_origin))

    yield factory
    await started.close()


@pytest.mark.parametrize("attack", CROSS_SITE)
@pytest.mark.parametrize("method,path", ROUTES)
async def test_a_cross_site_request_is_refused_on_every_route(make_master, method, path, attack):
    master = await make_master()
    before = master.path.read_bytes()
    status, answer = await master.call(method, path, BODIES.get(path, {}) if method == "POST" else None,
                                       headers=CROSS_SITE[attack])
    assert status == 403, answer
    assert "cross-site" in answer["error"]
    assert master.path.read_bytes() == before
    assert master.audience.listeners() == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("path", [path for method, path in ROUTES if method == "POST"])
async def test_a_post_that_is_not_json_is_refused_without_any_origin(make_master, path, content_type):
    """What a no-cors fetch or a form sends (no preflight); also what a local process could send by mistake."""
    master = await make_master()
    before = master.path.read_bytes()
    raw = json.dumps(BODIES.get(path, {})).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    response = await master.client.post(path, data=raw, headers=headers)
    answer = await response.json()
    assert response.status == 415, answer
    assert "application/json" in answer["error"] and answer["content_type"] == (content_type or "application/octet-stream")
    assert master.path.read_bytes() == before and master.audience.listeners() == []


async def test_the_master_s_own_page_and_tools_without_origin_keep_working(make_master):
    master = await make_master()
    own = {"Origin": master.own_origin, "Sec-Fetch-Site": "same-origin"}
    status, _ = await master.call("POST", "/multigpu/config/update_setting", {"key": "max_retries", "value": 3},
                                  headers=own)
    assert status == 200
    status, _ = await master.call("GET", "/multigpu/status", headers={"Sec-Fetch-Site": "none"})  # typed URL
    assert status == 200
    status, _ = await master.call("POST", "/multigpu/clear_memory", {"master": False})  # the CLI, curl
    assert status == 200
    status, _ = await master.call("POST", "/multigpu/clear_memory", {"master": False},
                                  headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200
    status, _ = await master.call("GET", "/multigpu/config", headers={"Origin": master.own_origin + "/",
                                                                      "X-Forwarded-Proto": "http"})
    assert status == 200


async def test_behind_a_tls_proxy_the_page_s_https_origin_is_its_own(make_master):
    master = await make_master(allowed_hosts=["comfy.example"])
    headers = {"Host": "comfy.example", "Origin": "https://comfy.example", "X-Forwarded-Proto": "https"}
    status, answer = await master.call("GET", "/multigpu/config", headers=headers)
    assert status == 200, answer
    status, answer = await master.call("GET", "/multigpu/config", headers={**headers, "X-Forwarded-Proto": "http"})
    assert status == 403 and "cross-site" in answer["error"]


async def test_the_cors_origin_may_call_a_public_master_with_the_token(make_master):
    master = await make_master(public=True, cors_origin="https://studio.example", api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, _ = await master.call("GET", "/multigpu/config", headers={**auth, "Origin": "https://studio.example",
                                                                      "Sec-Fetch-Site": "cross-site"})
    assert status == 200
    status, answer = await master.call("GET", "/multigpu/config", headers={**auth, "Origin": "https://other.example"})
    assert status == 403 and answer["origin"] == "https://other.example"
    status, _ = await master.call("GET", "/multigpu/config", headers={"Origin": "https://studio.example"})
    assert status == 401  # the CORS origin still needs the token


async def test_events_reach_only_the_registered_clients(make_master):
    master = await make_master()
    status, answer = await master.call("POST", "/multigpu/events", {"client_id": "panel-1", "on": True})
    assert status == 200 and answer == {"on": True, "previews": False, "expires_in": 30.0}
    status, _ = await master.call("POST", "/multigpu/events", {"client_id": "panel-2", "on": True, "previews": True},
                                  headers={"Origin": master.own_origin})
    assert status == 200
    master.audience.notify(*events.notice("hello"))
    master.audience.notify(*events.preview("job", 1, 1, "GPU 1", "image/jpeg", "AAAA"))
    assert [(event, client) for event, _, client in master.sent] == [
        (events.NOTICE, "panel-1"), (events.NOTICE, "panel-2"), (events.PREVIEW, "panel-2")]
    status, answer = await master.call("POST", "/multigpu/events", {"client_id": "panel-2", "on": False})
    assert status == 200 and answer["on"] is False and answer["expires_in"] == 0
    assert master.audience.listeners() == ["panel-1"]


async def test_registering_for_the_events_needs_the_token_on_a_public_master(make_master):
    master = await make_master(public=True, api_token=TOKEN)
    status, answer = await master.call("POST", "/multigpu/events", {"client_id": "lan-client", "on": True})
    assert status == 401, answer
    status, _ = await master.call("POST", "/multigpu/events", {"client_id": "panel", "on": True},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    master.audience.notify(*events.notice("for the panel only"))
    assert [client for _, _, client in master.sent] == ["panel"]
