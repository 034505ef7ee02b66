"""The OpenAPI description of the launch routes (in ``comfy_distributed/api/openapi.json``, generated from
``api_routes.LAUNCH_ROUTES`` and their models) against what they do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.api.handlers import MAX_BODY, OPENAPI_PATH, MultiGPUApi
from comfy_distributed.api.launch import LAUNCH_PATH, RESTART_PATH, add_launch_routes
from comfy_distributed.api.routes import LOGS_PATH
from comfy_distributed.config import ConfigStore
from comfy_distributed.collector.orchestrator import Orchestrator

from .helpers import RecordingLauncher, write_config

OPENAPI: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
PATHS: dict[str, Any] = {path: OPENAPI["paths"][path] for path in (LAUNCH_PATH, RESTART_PATH, LOGS_PATH)}
TOKEN = "openapi-launch-token-0123"
VALID = {LAUNCH_PATH: {"worker_ids": [1, "gpu-b"]}, RESTART_PATH: {"worker_id": "gpu-b"},
         LOGS_PATH: {"worker_id": "gpu-b", "lines": 5}}



def operation(path: str) -> dict[str, Any]:
    return PATHS[path]["post"]


def resolved(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or what its ``$ref`` names in the document's components."""
    ref = schema.get("$ref")
    return OPENAPI["components"]["schemas"][ref.removeprefix("#/components/schemas/")] if ref else schema


def body_schema(path: str) -> dict[str, Any]:
    return resolved(operation(path)["requestBody"]["content"]["application/json"]["schema"])


def answer_schema(path: str) -> dict[str, Any]:
    return resolved(operation(path)["responses"]["200"]["content"]["application/json"]["schema"])


def registered() -> set[tuple[str, str]]:
    routes = web.RouteTableDef()
    store = ConfigStore(Path("unused.json"))
    add_launch_routes(routes, store, None, lambda: None, lambda request: None)  # type: ignore[arg-type, return-value]
    return {(route.method, route.path) for route in routes}  # type: ignore[union-attr]


def test_documented_paths_are_the_registered_routes():
    assert {("POST", path) for path in PATHS} == registered()


def test_the_document_uses_its_style_and_resolvable_refs():
    """The launch routes are control routes: the same guard (Host check, token) as clear_memory."""
    control = OPENAPI["paths"]["/multigpu/clear_memory"]["post"]
    for path, item in PATHS.items():
        op = item["post"]
        assert op["security"] == control["security"], path
        assert op["x-token-required"] == control["x-token-required"], path
        for status in ("401", "403"):
            assert op["responses"][status] == control["responses"][status], f"{path} {status}"
        assert body_schema(path)["additionalProperties"] is False
        for response in op["responses"].values():
            if "$ref" in response:
                assert response["$ref"].removeprefix("#/components/responses/") in OPENAPI["components"]["responses"]
                continue
            ref = response["content"]["application/json"]["schema"].get("$ref")
            if ref:
                assert ref.removeprefix("#/components/schemas/") in OPENAPI["components"]["schemas"], ref


class DocApi:
    def __init__(self, tmp_path: Path, config_text: str | None = None) -> None:
        self.config = write_config(tmp_path / "gpu_config.json", 9100, [
            {"id": 1, "port": 9101}, {"id": "gpu-b", "port": 9102, "enabled": False}], api_token=TOKEN)
        if config_text is not None:
            self.config.write_text(config_text)
        store = ConfigStore(self.config)
        self.calls: list[tuple[str, str]] = []
        api = MultiGPUApi(store, Orchestrator(Cluster(store)))
        routes = web.RouteTableDef()
        add_launch_routes(routes, store, None, lambda: RecordingLauncher(store.get(), self.calls), api.authorize)
        app = web.Application()
        app.add_routes(routes)
        self.client = TestClient(TestServer(app))

    async def post(self, path: str, body: Any = None, raw: bytes | None = None, auth: bool = True,
                   headers: dict[str, str] | None = None):
        headers = {**({"Authorization": f"Bearer {TOKEN}"} if auth else {}), **(headers or {})}
        kwargs = {"data": raw, "headers": {"Content-Type": "application/json", **headers}} if raw is not None \
            else {"json": body, "headers": headers}
        async with self.client:
            response = await self.client.post(path, **kwargs)
            return response.status, await response.json()


async def trigger(tmp_path: Path, path: str, status: int) -> tuple[int, Any]:
    if status == 409:
        return await DocApi(tmp_path, json.dumps({"workers": [{"id": 1}]})).post(path, VALID[path])
    api = DocApi(tmp_path)
    if status == 400:
        return await api.post(path, raw=b'{"truncated": ')
    if status == 401:
        return await api.post(path, VALID[path], auth=False)
    if status == 403:  # DNS rebinding: Host and Origin name the attacker's page; the token does not help it
        got, answer = await api.post(path, VALID[path], headers={"Host": "attacker.example",
                                                                 "Origin": "http://attacker.example"})
        assert answer.get("host") == "attacker.example" and api.calls == [], answer
        return got, answer
    if status == 404:
        return await api.post(path, {LAUNCH_PATH: {"worker_ids": [404]}, RESTART_PATH: {"worker_id": 404},
                                     LOGS_PATH: {"worker_id": 404}}[path])
    if status == 413:
        return await api.post(path, raw=b" " * (MAX_BODY + 1))
    if status == 415:  # a "simple" request a page may send without a preflight: refused before it is read
        got, answer = await api.post(path, raw=json.dumps(VALID[path]).encode(), headers={"Content-Type": "text/plain"})
        assert api.calls == [], answer
        return got, answer
    raise AssertionError(f"{path} documents {status}: teach trigger() how to cause it")


@pytest.mark.parametrize("case", [(path, int(code)) for path in sorted(PATHS)
                                  for code in operation(path)["responses"] if code[0] == "4"],
                         ids=lambda case: f"{case[0].rsplit('/', 1)[-1]}-{case[1]}")
async def test_every_documented_error_status_occurs(tmp_path, case):
    path, status = case
    got, answer = await trigger(tmp_path, path, status)
    assert got == status, answer
    assert isinstance(answer.get("error"), str) and answer["error"]


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_documented_success_with_every_property(tmp_path, path):
    api = DocApi(tmp_path)
    body = VALID[path]
    assert set(body) == set(body_schema(path)["properties"])
    status, answer = await api.post(path, body)
    assert status == 200, answer
    documented = answer_schema(path)["properties"]
    assert set(answer) == set(documented)
    if path == LOGS_PATH:
        assert len(answer["lines"]) == 2 and answer["lines"][1] == "To see the GUI go to: ..."
        assert api.calls == [("logs", "worker-gpu-b")]
        return
    outcomes = answer["workers"] if path == LAUNCH_PATH else [answer["worker"]]
    keys = set(resolved(documented["workers"]["items"] if path == LAUNCH_PATH else documented["worker"])["properties"])
    assert all(set(outcome) == keys for outcome in outcomes)
    assert api.calls == ([("start", "worker-1"), ("start", "worker-gpu-b")] if path == LAUNCH_PATH
                         else [("restart", "worker-gpu-b")])


async def test_launch_body_may_be_omitted(tmp_path):
    api = DocApi(tmp_path)
    assert operation(LAUNCH_PATH)["requestBody"]["required"] is False
    status, answer = await api.post(LAUNCH_PATH, raw=b"")
    assert status == 200 and [w["worker_id"] for w in answer["workers"]] == [1], "every enabled worker"
