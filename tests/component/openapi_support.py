"""What the tests of the /multigpu API share, with the OpenAPI document as the reference.

``ApiUnderTest`` (the real aiohttp app on port 0 over a temporary gpu_config.json whose workers
point at loopback ports that nothing listens on, plus, on request, a local stub worker), the
document and its operations, a JSON Schema checker for the subset the document uses,
``needs_token`` (what an operation's ``x-token-required`` says), and ``check_reply`` (the
invariants every answer keeps).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.api.handlers import MAX_BODY, MAX_PROMPT_BODY, MAX_RESULT_BODY, OPENAPI_PATH, MultiGPUApi
from comfy_distributed.api.launch import add_launch_routes
from comfy_distributed.api.job_complete import JOB_HEADER, MAX_IMAGE_BODY, SHARE_HEADER, WORKER_HEADER
from comfy_distributed.config import ConfigStore, GpuConfig, load_config
from comfy_distributed.engine.jobs import EXTRA_DATA_KEY, Job
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS
from tests.launcher.helpers import RecordingLauncher

OPENAPI: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
CONFIG_NAME = "gpu_config.json"
TOKEN = "test-token-0123456789abcdef"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
JOB_COMPLETE = "/multigpu/job_complete"
BODY_LIMITS = {"/multigpu/prepare_job": MAX_PROMPT_BODY}
"""Body limits other than MAX_BODY; job_complete's depends on the share (``result_body_limit``)."""
IDENTITY_HEADERS = {"job_id": JOB_HEADER, "worker_id": WORKER_HEADER, "share_token": SHARE_HEADER}
"""job_complete: who posts, as the worker's prompt names it (extra_data.multigpu) -> the header it comes in."""
FOREIGN_HOST = "attacker.example"
"""A name that, in a DNS rebinding attack, resolves to 127.0.0.1: Host and Origin both carry it."""
ALLOWED_HOST = "gpu-box.lan"
"""A name a master may be told to accept in Host (``allowed_hosts``)."""
TOKEN_RULES = ("configured-or-public", "public")
CONFIG_PATHS = frozenset({"/multigpu/config/update_worker", "/multigpu/config/add_worker",
                          "/multigpu/config/remove_worker", "/multigpu/config/update_setting"})
"""The only routes allowed to change gpu_config.json."""
STUB_NODE_CLASSES = ("DistributedTestImage", "PreviewImage", "SaveImage", "PrimitiveInt")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
PNG_B64 = base64.b64encode(PNG).decode()


# --- the document --------------------------------------------------------------------------


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) for every documented operation."""
    return [(method.upper(), path, item[method]) for path, item in OPENAPI["paths"].items()
            for method in HTTP_METHODS if method in item]


def operation(method: str, path: str) -> dict[str, Any]:
    return OPENAPI["paths"][path][method.lower()]


def resolve(ref: str, root: dict[str, Any] = OPENAPI) -> Any:
    assert ref.startswith("#/"), f"only local $refs are expected, got {ref!r}"
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"$ref {ref!r} does not resolve (at {part!r})"
        node = node[part]
    return node


def request_schema(method: str, path: str) -> dict[str, Any] | None:
    body = operation(method, path).get("requestBody")
    if body is None:
        return None
    schema = body["content"]["application/json"]["schema"]
    return resolve(schema["$ref"]) if "$ref" in schema else schema


def response_of(method: str, path: str, status: int | str) -> dict[str, Any]:
    """The documented response, a ``$ref`` to components/responses followed."""
    documented = operation(method, path)["responses"][str(status)]
    return resolve(documented["$ref"]) if "$ref" in documented else documented


def body_limit(path: str, api: "ApiUnderTest | None" = None) -> int:
    if path == JOB_COMPLETE:
        assert api is not None, "job_complete's limit is its share's: give the API with an open share"
        return result_body_limit(api)
    return BODY_LIMITS.get(path, MAX_BODY)


def result_body_limit(api: "ApiUnderTest") -> int:
    """What the document says job_complete reads of the open share: min(100 MiB, 64 KiB + 48 MiB per image
    of the unit per Collector)."""
    assert api.share is not None, "no open share"
    limits = api.orchestrator.check_share(api.share["job_id"], api.share["worker_id"], api.share["share_token"])
    return min(MAX_RESULT_BODY, 64 * 1024 + limits.images * limits.collectors * MAX_IMAGE_BODY)


def token_rule(method: str, path: str) -> str | None:
    """The operation's ``x-token-required``: when it needs the token (None: never)."""
    return operation(method, path).get("x-token-required")


def needs_token(method: str, path: str, *, public: bool, configured: bool) -> bool:
    """Whether the document says the operation refuses a request without the token (401) on a master that
    is public or not, with a token configured or not."""
    rule = token_rule(method, path)
    if rule is None:
        return False
    assert rule in TOKEN_RULES, f"{method} {path}: unknown x-token-required {rule!r}"
    return public or (configured and rule == "configured-or-public")


def header_parameters(method: str, path: str) -> list[dict[str, Any]]:
    return [p for p in operation(method, path).get("parameters", []) if p["in"] == "header"]


# --- a checker for the JSON Schema subset the document uses ----------------------------------

SCHEMA_KEYWORDS = frozenset({
    "$ref", "type", "enum", "const", "properties", "required", "additionalProperties", "items", "oneOf", "anyOf",
    "allOf", "pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "minItems", "maxItems",
    # annotations, no effect on validation
    "description", "format", "default", "title", "examples",
})


def _json_type(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number", "integer"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    if isinstance(value, dict):
        return {"object"}
    return {"unknown"}


def schema_errors(value: Any, schema: dict[str, Any] | bool, where: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema`` (empty when it does)."""
    if schema is True:
        return []
    if schema is False:
        return [f"{where}: no value is allowed here"]
    if "$ref" in schema:
        return schema_errors(value, resolve(schema["$ref"]), where)
    errors: list[str] = []
    if "type" in schema:
        allowed = {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
        if not allowed & _json_type(value):
            return [f"{where}: {value!r:.80} is not of type {sorted(allowed)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r:.80} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r:.80} is not {schema['const']!r}")
    if "oneOf" in schema:
        matches = sum(not schema_errors(value, sub, where) for sub in schema["oneOf"])
        if matches != 1:
            errors.append(f"{where}: {value!r:.80} matches {matches} of the oneOf alternatives, not exactly one")
    if "anyOf" in schema and not any(not schema_errors(value, sub, where) for sub in schema["anyOf"]):
        errors.append(f"{where}: {value!r:.80} matches none of the anyOf alternatives")
    for sub in schema.get("allOf", []):
        errors += schema_errors(value, sub, where)
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r:.80} does not match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, list):
        if "items" in schema:
            for index, item in enumerate(value):
                errors += schema_errors(item, schema["items"], f"{where}[{index}]")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors += schema_errors(item, properties[name], f"{where}.{name}")
            else:
                errors += schema_errors(item, extra, f"{where}.{name}")
    return errors


def walk(node: Any, where: str = "#") -> list[tuple[str, Any]]:
    """Every (JSON pointer, node) in a document."""
    found = [(where, node)]
    if isinstance(node, dict):
        for key, child in node.items():
            found += walk(child, f"{where}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += walk(child, f"{where}/{index}")
    return found


def schemas_in_document() -> list[tuple[str, dict[str, Any]]]:
    """Every JSON Schema object in the document, with its location."""
    found: list[tuple[str, dict[str, Any]]] = []

    def visit(schema: Any, where: str) -> None:
        if not isinstance(schema, dict):
            return
        found.append((where, schema))
        for key in ("properties",):
            for name, sub in schema.get(key, {}).items():
                visit(sub, f"{where}/{key}/{name}")
        for key in ("items", "additionalProperties"):
            visit(schema.get(key), f"{where}/{key}")
        for key in ("oneOf", "anyOf", "allOf"):
            for index, sub in enumerate(schema.get(key, [])):
                visit(sub, f"{where}/{key}/{index}")

    for name, schema in OPENAPI.get("components", {}).get("schemas", {}).items():
        visit(schema, f"#/components/schemas/{name}")
    for name, response in OPENAPI.get("components", {}).get("responses", {}).items():
        for media, content in response.get("content", {}).items():
            visit(content.get("schema"), f"#/components/responses/{name}/{media}")
    for method, path, op in operations():
        where = f"#/paths/{path}/{method.lower()}"
        for index, parameter in enumerate(op.get("parameters", [])):
            visit(parameter.get("schema"), f"{where}/parameters/{index}")
        for media, content in op.get("requestBody", {}).get("content", {}).items():
            visit(content.get("schema"), f"{where}/requestBody/{media}")
        for status, response in op["responses"].items():
            for media, content in response.get("content", {}).items():
                visit(content.get("schema"), f"{where}/responses/{status}/{media}")
    return found


# --- the API under test ----------------------------------------------------------------------


def workflow(seed: Any = 42, batch: int = 2) -> dict[str, Any]:
    """An API-format prompt with one Distributor and one Collector (node "3")."""
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": ["2", 0], "batch_size": batch, "width": 32, "height": 24, "delay": 0.0}},
        "2": {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": seed}},
        "3": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "out"}},
    }


@dataclass
class Reply:
    method: str
    path: str
    status: int
    headers: Any
    body: bytes
    request: str  # a short description of what was sent, for failure messages

    @property
    def data(self) -> Any:
        return json.loads(self.body, parse_constant=_no_constants)

    @property
    def error(self) -> str:
        data = self.data
        return data.get("error", "") if isinstance(data, dict) else ""

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.request} -> {self.status} {self.body[:600]!r}"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: bytes | str) -> Any:
    """``json.loads`` without the NaN/Infinity extensions: what any JSON parser accepts."""
    return json.loads(text, parse_constant=_no_constants)


class ApiUnderTest:
    """The real /multigpu app on 127.0.0.1:0 over ``directory/gpu_config.json``.

    Its workers point at loopback ports held by bound sockets that never listen, so a
    connection to them is refused at once and nothing else is ever contacted. With
    ``stub=True`` one more worker ("stub") points at a tiny local aiohttp server that
    answers like an idle ComfyUI whose prompts never finish; with ``share=True`` it is the
    only enabled worker, so that ``open_share`` can start a job whose unit waits there for
    its results (as a worker running this extension would post them to job_complete).
    ``config_text`` replaces the baseline file verbatim; ``settings`` are added to its settings.
    ``call`` sends the token, and to job_complete the open share's identity headers, unless told not to.
    """

    def __init__(self, directory: Path, *, token: str | None = None, public: bool = False,
                 workers: int = 3, stub: bool = False, share: bool = False, config_text: str | None = None,
                 settings: dict[str, Any] | None = None, free_master: Callable[[], None] | None = None,
                 **client_kwargs: Any) -> None:
        self.directory = directory
        self.path = directory / CONFIG_NAME
        self.token = token
        self.public = public
        self.settings = settings or {}
        self.share: dict[str, Any] | None = None
        self.worker_count = workers
        self.want_stub = stub or share
        self.share_mode = share
        self.config_text = config_text
        self.free_master = free_master
        self.client_kwargs = client_kwargs
        self.sockets: list[socket.socket] = []
        self.ports: list[int] = []
        self.stub: TestServer | None = None
        self.stub_prompts: list[dict[str, Any]] = []
        self.stub_requests: list[tuple[str, str]] = []
        self.events: list[tuple[str, dict]] = []
        self.launches: list[tuple[str, str]] = []
        self.started_jobs: list[Job] = []
        self.client: TestClient | None = None
        self.original = b""

    # setup

    def baseline(self) -> dict[str, Any]:
        workers: list[dict[str, Any]] = []
        for index, port in enumerate(self.ports):
            worker: dict[str, Any] = {"id": index + 1, "name": f"GPU {index + 1}", "port": port,
                                      "enabled": not self.share_mode}
            if index == 1:
                worker.update(enabled=False, cuda_device=1, extra_args="--lowvram")
            if index == 2:
                worker.update(id="gpu-c", name="Remote GPU", host="127.0.0.1",
                              headers={"Authorization": "Bearer worker-secret"})
            workers.append(worker)
        if self.stub is not None:
            workers.append({"id": "stub", "name": "Stub", "host": f"http://127.0.0.1:{self.stub.port}",
                            "port": self.stub.port, "enabled": True})
        settings: dict[str, Any] = {"worker_timeout": 60, "connect_timeout": 2, "request_timeout": 5, **self.settings}
        if self.token:
            settings["api_token"] = self.token
        return {"master": {"port": 8188, "cuda_device": 0, "extra_args": ""}, "workers": workers,
                "settings": settings}

    async def __aenter__(self) -> "ApiUnderTest":
        try:
            for _ in range(self.worker_count):
                sock = socket.socket()
                self.sockets.append(sock)
                sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
                self.ports.append(sock.getsockname()[1])
            if self.want_stub:
                self.stub = TestServer(self._stub_app(), port=0)
                await self.stub.start_server()
            text = self.config_text if self.config_text is not None else json.dumps(self.baseline(), indent=2)
            self.path.write_text(text, encoding="utf-8")
            self.original = self.path.read_bytes()
            self.store = ConfigStore(self.path)
            self.orchestrator = Orchestrator(Cluster(self.store, lambda event, data: self.events.append((event, data))))
            self.api = MultiGPUApi(self.store, self.orchestrator, public=self.public, free_master=self.free_master)
            app = self.api.make_app()
            launch_routes = web.RouteTableDef()
            add_launch_routes(launch_routes, self.store, None,
                              lambda: RecordingLauncher(self.store.get(), self.launches), self.api.authorize)
            app.add_routes(launch_routes)
            self.client = TestClient(TestServer(app, port=0), **self.client_kwargs)
            await self.client.start_server()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._end_jobs()
        if self.client is not None:
            await self.client.close()
        if self.stub is not None:
            await self.stub.close()
        for sock in self.sockets:
            sock.close()

    def _stub_app(self) -> web.Application:
        """A worker that takes every prompt and never finishes it (no /ws: the master polls /history)."""

        async def post_prompt(request: web.Request) -> web.Response:
            body = await request.json()
            self.stub_prompts.append(body)
            return web.json_response({"prompt_id": body.get("prompt_id") or "p", "number": 1, "node_errors": {}})

        async def other(request: web.Request) -> web.Response:
            self.stub_requests.append((request.method, request.path))
            if request.path == "/ws":
                return web.Response(status=404)
            if request.path.startswith("/history"):
                return web.json_response({})
            if request.path == "/object_info":  # the node classes a worker share of workflow() uses
                node = {"input": {"required": {}, "optional": {}}, "output": [], "output_node": False}
                return web.json_response({name: node for name in STUB_NODE_CLASSES})
            return web.json_response({"exec_info": {"queue_remaining": 0}})

        app = web.Application()
        app.router.add_post("/prompt", post_prompt)
        app.router.add_route("*", "/{tail:.*}", other)
        return app

    # jobs

    async def open_share(self, timeout: float = 10.0) -> dict[str, Any]:
        """Start a job; return what the stub worker received in ``extra_data.multigpu``
        (job_id, worker_id, share_token), once it has. It is then the share ``call`` names."""
        assert self.share_mode, "open_share needs ApiUnderTest(share=True)"
        seen = len(self.stub_prompts)
        _prompt, job = self.orchestrator.prepare(workflow())
        assert job is not None and not job.error, job
        self.orchestrator.start(job)
        self.started_jobs.append(job)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.stub_prompts) == seen:
            failed = [data for event, data in self.events
                      if event == "multigpu.worker_failed" and data.get("job_id") == job.job_id]
            assert not failed, f"the stub worker was left out of the job: {failed}"
            assert asyncio.get_running_loop().time() < deadline, f"the stub worker got no prompt: {self.events}"
            await asyncio.sleep(0.01)
        share = self.stub_prompts[seen].get("extra_data", {}).get(EXTRA_DATA_KEY)
        assert isinstance(share, dict) and share.get("job_id") == job.job_id, self.stub_prompts[seen]
        self.share = dict(share)
        return dict(share)

    async def _end_jobs(self, timeout: float = 10.0) -> None:
        """Cancel the jobs started here and wait until their units and connections are closed."""
        for job in self.started_jobs:
            self.orchestrator.cancel(job)
        deadline = asyncio.get_running_loop().time() + timeout
        for job in self.started_jobs:
            while True:
                tasks = [unit.task for unit in job.units.values() if unit.task is not None]
                session = getattr(job, "session", None)
                if all(task.done() for task in tasks) and (session is None or session.closed):
                    break
                assert asyncio.get_running_loop().time() < deadline, f"job {job.job_id} did not wind down"
                await asyncio.sleep(0.01)
        self.started_jobs.clear()

    # requests

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def identity_headers(self) -> dict[str, str]:
        """job_complete's headers for the open share."""
        assert self.share is not None, "no open share"
        return {header: str(self.share[key]) for key, header in IDENTITY_HEADERS.items()}

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | str | Any = None,
                   headers: dict[str, str] | None = None, auth: bool = True, identity: bool = True,
                   params: Any = None, describe: str | None = None) -> Reply:
        """Send ``body`` as JSON, or ``raw`` as the body itself; ``auth`` adds the token, ``identity`` the
        open share's headers to a job_complete (``headers`` may replace either)."""
        assert self.client is not None
        sent = dict(self.auth_headers() if auth else {})
        if identity and path == JOB_COMPLETE and self.share is not None:
            sent.update(self.identity_headers())
        sent.update(headers or {})
        if raw is None and body is not None:
            raw = json.dumps(body)
        if method == "POST":  # as every client of ours sends it; a test of another type says so in headers
            sent.setdefault("Content-Type", "application/json")
        if describe is None:
            shown = raw if isinstance(raw, (bytes, str)) else "<stream>"
            describe = f"headers={sent!r:.300} body={shown!r:.600}"
        async with self.client.request(method, path, data=raw, headers=sent, params=params) as response:
            payload = await response.read()
            return Reply(method, path, response.status, response.headers, payload, describe)

    # state

    def config(self) -> GpuConfig:
        return load_config(self.path)

    def leftovers(self) -> list[str]:
        return sorted(name for name in os.listdir(self.directory) if name != CONFIG_NAME)


def check_reply(reply: Reply, api: ApiUnderTest, before: bytes | None) -> None:
    """What every answer of the API keeps, whatever was sent.

    Never a 5xx; only documented statuses; a JSON body (or the documented text of a text answer), with a non-empty ``error``
    string on a refusal; a success matches its documented schema; the config file is still
    valid JSON and a valid config, unchanged by a refusal or by a route that does not edit
    it (``before`` is its content before the request; None when other requests ran
    meanwhile), and no temporary file is left beside it.
    """
    assert reply.status < 500, f"server error: {reply}"
    op = operation(reply.method, reply.path)
    assert str(reply.status) in op["responses"], (
        f"status {reply.status} is not documented for {reply.method} {reply.path}: {reply}")
    documented = op["responses"][str(reply.status)].get("content", {})
    text_kind = next((kind for kind in documented if kind != "application/json"), None)
    if reply.status < 400 and text_kind is not None:  # a documented text answer (the metrics)
        assert reply.headers.get("Content-Type", "").startswith(text_kind), f"not {text_kind}: {reply}"
        data = None
    else:
        assert reply.headers.get("Content-Type", "").startswith("application/json"), f"not JSON: {reply}"
        try:
            data = reply.data
        except ValueError as exc:
            raise AssertionError(f"the body is not strict JSON ({exc}): {reply}") from None
    if text_kind is not None and reply.status < 400:
        pass
    elif reply.status >= 400:
        assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"].strip(), (
            f"a refusal without an 'error' string: {reply}")
        problems = schema_errors(data, response_of(reply.method, reply.path, reply.status)
                                 ["content"]["application/json"]["schema"])
        assert not problems, f"the refusal does not match its documented schema: {problems[:5]}: {reply}"
    else:
        schema = op["responses"][str(reply.status)]["content"]["application/json"]["schema"]
        problems = schema_errors(data, schema)
        assert not problems, f"the answer does not match its documented schema: {problems[:5]}: {reply}"
    after = api.path.read_bytes()
    if before is not None and after != before:
        assert reply.status < 400, f"a refused request changed the config file: {reply}"
        assert reply.path in CONFIG_PATHS, f"{reply.path} changed the config file: {reply}"
        strict_json(after)
        load_config(api.path)  # raises ConfigError when the saved file is not a valid config
    if api.config_text is None:
        strict_json(after)
        load_config(api.path)
    assert api.leftovers() == [], f"files left beside the config: {api.leftovers()} after {reply}"


async def oversize_body(size: int, chunk: int = 1 << 20, head: bytes = b'{"name": "',
                        tail: bytes = b'"}') -> AsyncIterator[bytes]:
    """``size`` bytes of a JSON object that is only too large (a long string)."""
    yield head
    remaining = size - len(head) - len(tail)
    while remaining > 0:
        piece = min(chunk, remaining)
        yield b"a" * piece
        remaining -= piece
    yield tail


async def trickle(head: bytes, gap: float) -> AsyncIterator[bytes]:
    """A body that sends ``head``, then one byte every ``gap`` seconds, never ending: a slow-loris."""
    yield head
    while True:
        await asyncio.sleep(gap)
        yield b" "
