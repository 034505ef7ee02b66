"""The OpenAPI document against the real /multigpu routes.

The document must be what ``python -m comfy_distributed.api.openapi`` generates from the code (the route
table, the request and answer models, the config models), structurally valid OpenAPI 3.1, list exactly
the routes that ``MultiGPUApi.add_routes`` registers, be served unchanged at ``GET /multigpu/openapi.json``,
and describe what the handlers really do: who may call them (the Host check of a private
master, the token), the request headers and properties they accept, the ones they require,
the types they enforce, and every error status they answer.

What the API tests share (``ApiUnderTest``, the JSON Schema checker, ``needs_token``,
``check_reply``) is in tests/component/openapi_support.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.api.access import FORBIDDEN_FLAGS
from comfy_distributed.api.launch import add_launch_routes
from comfy_distributed.api.handlers import MAX_RESULT_BODY, OPENAPI_PATH, MultiGPUApi
from comfy_distributed.api.job_complete import JOB_HEADER, MAX_IMAGE_BODY, SHARE_HEADER, WORKER_HEADER
from comfy_distributed.config import (
    SECRET_SETTINGS, ConfigStore, MasterConfig, Settings, WorkerConfig, public_view,
)
from comfy_distributed.api.openapi import REGENERATE, render
from comfy_distributed.collector.orchestrator import Orchestrator
from tests.component.openapi_support import (
    trickle,
    ALLOWED_HOST,
    FOREIGN_HOST,
    HTTP_METHODS,
    IDENTITY_HEADERS,
    JOB_COMPLETE,
    OPENAPI,
    PNG_B64,
    SCHEMA_KEYWORDS,
    TOKEN,
    ApiUnderTest,
    Reply,
    body_limit,
    check_reply,
    header_parameters,
    operation,
    operations,
    oversize_body,
    request_schema,
    resolve,
    result_body_limit,
    schema_errors,
    schemas_in_document,
    token_rule,
    walk,
    workflow,
)



# --- the document is generated, and valid OpenAPI 3.1 -----------------------------------------


def test_the_committed_document_is_what_the_generator_writes():
    """Routes, models and the config are the one source; the file is their generated copy."""
    assert OPENAPI_PATH.read_text(encoding="utf-8") == render(), (
        f"{OPENAPI_PATH.name} is out of date: run `{REGENERATE}` and commit the result")


def test_document_is_structurally_valid_openapi_3_1():
    assert re.fullmatch(r"3\.1\.\d+", OPENAPI["openapi"])
    assert isinstance(OPENAPI["info"]["title"], str) and OPENAPI["info"]["title"]
    assert isinstance(OPENAPI["info"]["version"], str) and OPENAPI["info"]["version"]
    assert set(OPENAPI) <= {"openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks", "components",
                            "security", "tags", "externalDocs"}
    assert OPENAPI["paths"], "no paths"
    schemes = OPENAPI.get("components", {}).get("securitySchemes", {})
    for scheme in schemes.values():
        assert scheme["type"] in {"apiKey", "http", "mutualTLS", "oauth2", "openIdConnect"}
        if scheme["type"] == "http":
            assert isinstance(scheme["scheme"], str)
        if scheme["type"] == "apiKey":
            assert scheme["in"] in {"query", "header", "cookie"} and isinstance(scheme["name"], str)
    operation_ids = []
    for path, item in OPENAPI["paths"].items():
        assert path.startswith("/"), path
        assert "{" not in path, f"{path}: path parameters are not expected here"
        assert set(item) <= set(HTTP_METHODS) | {"summary", "description", "servers", "parameters", "$ref"}, path
        methods = [m for m in HTTP_METHODS if m in item]
        assert methods, f"{path} has no operation"
        for method in methods:
            op = item[method]
            where = f"{method.upper()} {path}"
            fields = {key for key in op if not key.startswith("x-")}
            assert fields <= OPERATION_FIELDS, f"{where}: unknown fields {sorted(fields - OPERATION_FIELDS)}"
            operation_ids.append(op.get("operationId"))
            named = set()
            for parameter in op.get("parameters", []):
                assert isinstance(parameter.get("name"), str) and parameter["name"], where
                assert parameter.get("in") in {"query", "header", "path", "cookie"}, f"{where}: {parameter}"
                assert isinstance(parameter.get("required", False), bool), f"{where}: {parameter}"
                assert parameter["in"] != "path", f"{where}: path parameters are not expected here"
                assert "schema" in parameter, f"{where}: parameter {parameter['name']} without a schema"
                key = (parameter["in"], parameter["name"].lower() if parameter["in"] == "header" else parameter["name"])
                assert key not in named, f"{where}: parameter {parameter['name']} twice"
                named.add(key)
            assert isinstance(op.get("operationId"), str), f"{where}: no operationId"
            assert op.get("responses"), f"{where}: no responses"
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5](\d\d|XX)|default", status), f"{where}: bad status key {status}"
                if "$ref" in response:
                    response = resolve(response["$ref"])
                assert isinstance(response.get("description"), str), f"{where} {status}: no description"
                for media, content in response.get("content", {}).items():
                    assert "/" in media and "schema" in content, f"{where} {status} {media}"
            if "requestBody" in op:
                body = op["requestBody"]
                assert isinstance(body.get("required", False), bool)
                assert body["content"], f"{where}: a requestBody without content"
                assert "application/json" in body["content"], f"{where}: the body is JSON"
                assert method not in ("get", "head"), f"{where}: a body on a GET"
            for requirement in op.get("security", []):
                for name, scopes in requirement.items():
                    assert name in schemes, f"{where}: unknown security scheme {name}"
                    assert scopes == []
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def test_the_generator_checks_and_rewrites_the_file(tmp_path, monkeypatch, capsys):
    import comfy_distributed.api.openapi as generator

    target = tmp_path / "openapi.json"
    monkeypatch.setattr(generator, "OPENAPI_PATH", target)
    assert generator.main(["--check"]) == 1 and REGENERATE in capsys.readouterr().err
    assert generator.main([]) == 0 and target.read_text(encoding="utf-8") == render()
    assert generator.main(["--check"]) == 0


OPERATION_FIELDS = frozenset({"tags", "summary", "description", "externalDocs", "operationId", "parameters",
                              "requestBody", "responses", "callbacks", "deprecated", "security", "servers"})


def test_every_ref_resolves():
    refs = [(where, node["$ref"]) for where, node in walk(OPENAPI) if isinstance(node, dict) and "$ref" in node]
    assert refs, "the document is expected to use components"
    for where, ref in refs:
        assert isinstance(ref, str), where
        target = resolve(ref)
        assert isinstance(target, dict), f"{where}: $ref {ref} resolves to {type(target).__name__}"
    referenced = {ref for _where, ref in refs}
    for kind in ("schemas", "responses"):
        for name in OPENAPI.get("components", {}).get(kind, {}):
            assert f"#/components/{kind}/{name}" in referenced, f"components/{kind}/{name} is never used"


def test_every_schema_uses_only_understood_keywords_and_valid_types():
    """So that the checks of these tests (and their schema checker) cover the whole document."""
    types = {"object", "array", "string", "integer", "number", "boolean", "null"}
    for where, schema in schemas_in_document():
        unknown = set(schema) - SCHEMA_KEYWORDS
        assert not unknown, f"{where}: keywords {sorted(unknown)} are not checked by these tests"
        if "type" in schema:
            declared = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
            assert declared and set(declared) <= types, f"{where}: bad type {schema['type']!r}"
        for name in schema.get("required", []):
            assert name in schema.get("properties", {}), f"{where}: required {name!r} is not a property"
        if "pattern" in schema:
            re.compile(schema["pattern"])
        if "enum" in schema:
            assert isinstance(schema["enum"], list) and schema["enum"], where


def test_openapi_spec_validator_agrees_when_installed():
    """openapi-spec-validator is not a test dependency (the checks above stand in for it); when it
    happens to be installed, it must agree."""
    validator = pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator is not installed")
    validator.validate(OPENAPI)


# --- the document matches the routes ------------------------------------------------------------


def registered_routes() -> set[tuple[str, str]]:
    store = ConfigStore(Path("unused-never-read.json"))
    routes = web.RouteTableDef()
    MultiGPUApi(store, Orchestrator(Cluster(store))).add_routes(routes)
    add_launch_routes(routes, store, None, lambda: None, lambda request: None)
    found = set()
    for route in routes:
        assert isinstance(route, web.RouteDef), route
        found.add((route.method.upper(), route.path))
    return found


def test_documented_operations_are_exactly_the_registered_routes():
    documented = {(method, path) for method, path, _op in operations()}
    registered = registered_routes()
    assert documented - registered == set(), "documented but not served"
    assert registered - documented == set(), "served but not documented"
    assert all(path.startswith("/multigpu/") for _method, path in registered)


async def test_served_document_is_the_file(tmp_path):
    async with ApiUnderTest(tmp_path) as api:
        reply = await api.call("GET", "/multigpu/openapi.json")
        assert reply.status == 200, str(reply)
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.data == OPENAPI
        assert reply.data == json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))


# --- request bodies: what the document says the handlers accept --------------------------------


def post_operations() -> list[tuple[str, str]]:
    return [(method, path) for method, path, op in operations() if "requestBody" in op]


def op_id(value: Any) -> str:
    if isinstance(value, tuple):
        return "-".join(str(v).rsplit("/", 1)[-1] for v in value)
    return str(value)


async def valid_body(api: ApiUnderTest, path: str) -> dict[str, Any]:
    """A body using every documented property with a valid value."""
    free_port = api.ports[1]  # worker 2's port is reused by nobody else once worker 2 moves or goes
    if path == "/multigpu/config/update_worker":
        return {"worker_id": 2, "name": "Renamed", "enabled": True, "host": "localhost", "port": free_port,
                "cuda_device": 3, "extra_args": "--lowvram --preview-method auto",
                "headers": {"Authorization": "Bearer x", "X-Extra": "1"}, "pool_agent": True, "pool_tags": ["gpu48"]}
    if path == "/multigpu/config/add_worker":
        return {"id": "new-worker", "name": "New", "enabled": False, "host": "10.0.0.7", "port": 8190,
                "cuda_device": None, "extra_args": "", "headers": {"X-A": "b"}, "pool_agent": False, "pool_tags": []}
    if path == "/multigpu/config/remove_worker":
        return {"worker_id": 2}
    if path == "/multigpu/config/update_setting":
        return {"key": "worker_timeout", "value": 120}
    if path == "/multigpu/prepare_job":
        return {"prompt": workflow()}
    if path == "/multigpu/clear_memory":
        return {"worker_ids": [2, "gpu-c"], "master": True}
    if path == "/multigpu/workers/launch":
        return {"worker_ids": [1, "gpu-c"]}
    if path == "/multigpu/workers/restart":
        return {"worker_id": 2}
    if path == "/multigpu/workers/logs":
        return {"worker_id": 2, "lines": 10}
    if path == "/multigpu/events":
        return {"client_id": "panel-1", "on": True, "previews": True}
    if path == "/multigpu/job_complete":
        share = await api.open_share()
        return {"job_id": share["job_id"], "worker_id": share["worker_id"], "share_token": share["share_token"],
                "outputs": {"3": [PNG_B64]}}
    raise AssertionError(f"no valid body known for {path}: add one to valid_body()")


def harness(directory: Path, path: str, **kwargs: Any) -> ApiUnderTest:
    """The API for a test of ``path``: job_complete needs a share waiting for its results."""
    return ApiUnderTest(directory, share=path == "/multigpu/job_complete", **kwargs)


def success_status(method: str, path: str) -> int:
    codes = [int(code) for code in operation(method, path)["responses"] if code.startswith("2")]
    assert len(codes) == 1, codes
    return codes[0]


@pytest.mark.parametrize("endpoint", post_operations(), ids=op_id)
async def test_every_documented_property_is_accepted(tmp_path, endpoint):
    method, path = endpoint
    async with harness(tmp_path, path, token=TOKEN) as api:
        body = await valid_body(api, path)
        assert set(body) == set(request_schema(method, path)["properties"]), "valid_body() must use them all"
        assert not schema_errors(body, request_schema(method, path))
        before = api.path.read_bytes()
        reply = await api.call(method, path, body)
        check_reply(reply, api, before)
        assert reply.status == success_status(method, path), str(reply)
        if path in ("/multigpu/config/update_worker", "/multigpu/config/add_worker"):
            stored = public_view(api.config())["workers"]
            assert reply.data["worker"] in stored
            worker = next(w for w in api.config().workers if str(w.id) == str(body.get("worker_id", body.get("id"))))
            for name, value in body.items():
                if name not in ("worker_id", "id"):
                    assert getattr(worker, name) == value, name


@pytest.mark.parametrize("endpoint", post_operations(), ids=op_id)
async def test_unknown_field_is_refused_naming_it(tmp_path, endpoint):
    method, path = endpoint
    schema = request_schema(method, path)
    assert schema.get("additionalProperties") is False, f"{path}: the document should forbid unknown fields"
    async with harness(tmp_path, path, token=TOKEN) as api:
        for extra in ("zz_unknown_field", "workerId", "ID", "__proto__", "../../etc/passwd"):
            body = {**await valid_body(api, path), extra: 1}
            before = api.path.read_bytes()
            reply = await api.call(method, path, body)
            check_reply(reply, api, before)
            assert reply.status == 400, str(reply)
            assert extra in reply.error, f"the error does not name {extra!r}: {reply}"


def required_cases() -> list[tuple[str, str, str]]:
    return [(method, path, name) for method, path in post_operations()
            for name in request_schema(method, path).get("required", [])]


@pytest.mark.parametrize("case", required_cases(), ids=op_id)
async def test_missing_required_property_is_refused_naming_it(tmp_path, case):
    method, path, name = case
    async with harness(tmp_path, path, token=TOKEN) as api:
        body = await valid_body(api, path)
        del body[name]
        before = api.path.read_bytes()
        reply = await api.call(method, path, body)
        check_reply(reply, api, before)
        assert reply.status == 400, str(reply)
        assert name in reply.error, f"the error does not name {name!r}: {reply}"


@pytest.mark.parametrize("endpoint", [e for e in post_operations()
                                      if not operation(*e)["requestBody"].get("required", False)], ids=op_id)
async def test_optional_request_body_may_be_omitted(tmp_path, endpoint):
    """``requestBody.required: false`` promises that a POST without a body is served."""
    method, path = endpoint
    async with harness(tmp_path, path, token=TOKEN) as api:
        for raw in (None, b""):
            before = api.path.read_bytes()
            reply = await api.call(method, path, raw=raw)
            check_reply(reply, api, before)
            assert reply.status == success_status(method, path), str(reply)


def wrong_values(schema: dict[str, Any]) -> list[Any]:
    """Values of a JSON type that ``schema`` does not allow, the coercible ones first."""
    if "$ref" in schema:
        schema = resolve(schema["$ref"])
    candidates = ["1", "true", "false", "", True, False, 0, 1, 1.5, None, [], [1], {}, {"a": 1}, "x" * 200]
    return [value for value in candidates if schema_errors(value, schema)]


def typed_property_cases() -> list[tuple[str, str, str]]:
    return [(method, path, name) for method, path in post_operations()
            for name, schema in request_schema(method, path)["properties"].items()
            if {"type", "oneOf", "anyOf", "$ref"} & set(schema)]


@pytest.mark.parametrize("case", typed_property_cases(), ids=op_id)
async def test_documented_property_types_are_enforced(tmp_path, case):
    """A value the documented schema forbids is refused: a 4xx, and a 400 names the property.

    Catches lax coercion: ``"false"``, ``0`` or ``1`` taken for a boolean, ``true`` or
    ``"1"`` for an integer port, which the schema says are bad input.
    """
    method, path, name = case
    prop = request_schema(method, path)["properties"][name]
    accepted = []
    for index, value in enumerate(wrong_values(prop)):
        directory = tmp_path / f"value-{index}"
        directory.mkdir()
        async with harness(directory, path, token=TOKEN) as api:
            body = {**await valid_body(api, path), name: value}
            before = api.path.read_bytes()
            reply = await api.call(method, path, body)
            check_reply(reply, api, before)
            if reply.status < 400:
                accepted.append(f"{name}={value!r:.40} -> {reply.status} {reply.body[:160]!r}")
            elif reply.status == 400 and ERROR_NAMES.get(name, name) not in reply.error:
                accepted.append(f"{name}={value!r:.40} -> 400 without naming {name!r}: {reply.body[:160]!r}")
    assert not accepted, f"{method} {path}: values the document forbids were not refused:\n" + "\n".join(accepted)


ERROR_NAMES = {"key": "setting"}
"""How an error names a property when not by its own name ("unknown setting 'x'")."""


@pytest.mark.parametrize("key", sorted(request_schema("POST", "/multigpu/config/update_setting")
                                       ["properties"]["key"]["enum"]))
async def test_setting_values_follow_the_settings_schema(tmp_path, key):
    settings = resolve("#/components/schemas/Settings")["properties"]
    if key == "api_token":  # secret: never in an answer, so not in the Settings schema
        schema = {"type": ["string", "null"]}
    else:
        assert key in settings, f"settings.{key} can be set but components/schemas/Settings does not describe it"
        schema = settings[key]
    accepted = []
    for index, value in enumerate(wrong_values(schema)):
        directory = tmp_path / f"value-{index}"
        directory.mkdir()
        async with ApiUnderTest(directory, token=TOKEN) as api:
            before = api.path.read_bytes()
            reply = await api.call("POST", "/multigpu/config/update_setting", {"key": key, "value": value})
            check_reply(reply, api, before)
            if reply.status != 400:
                accepted.append(f"{value!r:.40} -> {reply.status} {reply.body[:160]!r}")
    assert not accepted, f"settings.{key}: values of the wrong type were not refused:\n" + "\n".join(accepted)


async def test_setting_keys_are_the_documented_enum(tmp_path):
    documented = request_schema("POST", "/multigpu/config/update_setting")["properties"]["key"]["enum"]
    async with ApiUnderTest(tmp_path) as api:
        reply = await api.call("POST", "/multigpu/config/update_setting", {"key": "no_such_setting", "value": 1})
        assert reply.status == 400, str(reply)
        assert "no_such_setting" in reply.error
        assert sorted(reply.data["known"]) == sorted(documented)
        for key in documented:
            reply = await api.call("POST", "/multigpu/config/update_setting", {"key": key, "value": None})
            assert "unknown setting" not in reply.error, str(reply)


# --- every documented error status is answered ------------------------------------------------

INVALID_CONFIG = json.dumps({"workers": [{"id": 1, "name": "no port"}]})


async def trigger(tmp_path: Path, method: str, path: str, status: int) -> Reply:
    """Make ``method path`` answer ``status`` the way a client would."""
    op = operation(method, path)
    if status == 409 and path != JOB_COMPLETE:
        async with ApiUnderTest(tmp_path, config_text=INVALID_CONFIG) as api:
            body = await valid_body(api, path) if "requestBody" in op else None
            reply = await api.call(method, path, body)
            check_reply(reply, api, api.original)
            assert "gpu_config.json" in reply.error and "port" in reply.error, str(reply)
            return reply
    public = status == 401 and token_rule(method, path) == "public"  # a private master serves reads without it
    settings = {"request_timeout": 1} if status == 408 else {}
    async with harness(tmp_path, path, token=TOKEN, public=public, settings=settings) as api:
        body = await valid_body(api, path) if "requestBody" in op else None
        before = api.path.read_bytes()
        if status == 400:
            reply = await api.call(method, path, raw=b'{"truncated": ', headers={"Content-Type": "application/json"})
        elif status == 401:
            reply = await api.call(method, path, body, auth=False)
            assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer"), str(reply)
        elif status == 403:
            reply = await api.call(method, path, body, headers=foreign(FOREIGN_HOST))
            assert reply.data.get("host") == FOREIGN_HOST and "allowed_hosts" in reply.error, str(reply)
        elif status == 404:
            headers = None
            if path == JOB_COMPLETE:
                headers = {JOB_HEADER: "0" * 32}
                del body["job_id"]
            elif path in ("/multigpu/clear_memory", "/multigpu/workers/launch"):
                body["worker_ids"] = [1, 404]
            else:
                body["worker_id"] = 404
            reply = await api.call(method, path, body, headers=headers)
            assert "404" in reply.error or "0" * 32 in reply.error, str(reply)
        elif status == 408:  # job_complete: a body that trickles in (a slow-loris holding a slot)
            reply = await api.call(method, path, raw=trickle(b'{"outputs": {"3": ["', 0.05), describe="a trickled body",
                                   headers={"Content-Type": "application/json", "Content-Length": "100000"})
            assert "did not arrive within" in reply.error, str(reply)
        elif status == 415:  # a simple request a page of another site can send without a preflight
            reply = await api.call(method, path, raw=json.dumps(body or {}), headers={"Content-Type": "text/plain"})
            assert reply.data.get("content_type") == "text/plain" and "application/json" in reply.error, str(reply)
        elif status == 409:  # job_complete: the share has already ended
            first = await api.call(method, path, body)
            assert first.status == 200, str(first)
            reply = await api.call(method, path, body)
        elif status == 413:
            limit = body_limit(path, api)
            headers = {"Content-Type": "application/json", "Content-Length": str(limit + 1)}
            reply = await api.call(method, path, raw=oversize_body(limit + 1), headers=headers,
                                   describe=f"{limit + 1} bytes")
            assert str(limit) in reply.error, str(reply)
        else:
            raise AssertionError(f"{method} {path} documents {status}: teach trigger() how to cause it")
        check_reply(reply, api, before)
        assert api.launches == [], f"a refused request started something: {api.launches}"
        return reply


def foreign(host: str) -> dict[str, str]:
    """The headers of a page that a DNS rebinding attack serves from ``host``: Host and Origin agree."""
    return {"Host": host, "Origin": f"http://{host}"}


def error_status_cases() -> list[tuple[str, str, int]]:
    return [(method, path, int(code)) for method, path, op in operations()
            for code in op["responses"] if code[0] in "45"]


@pytest.mark.parametrize("case", error_status_cases(), ids=op_id)
async def test_every_documented_error_status_occurs(tmp_path, case):
    method, path, status = case
    reply = await trigger(tmp_path, method, path, status)
    assert reply.status == status, str(reply)


@pytest.mark.parametrize("endpoint", [(m, p) for m, p, _op in operations()], ids=op_id)
async def test_documented_success_status_occurs(tmp_path, endpoint):
    method, path = endpoint
    async with harness(tmp_path, path, token=TOKEN) as api:
        body = await valid_body(api, path) if "requestBody" in operation(method, path) else None
        before = api.path.read_bytes()
        reply = await api.call(method, path, body)
        check_reply(reply, api, before)
        assert reply.status == success_status(method, path), str(reply)


def test_every_operation_documents_who_may_call_it():
    """The Host check of a private master refuses every route (403); every route but this document needs
    the token on a public master, the control routes (every POST but a registration for the events, which only
    asks for what a read shows) whenever one is configured."""
    reads = {("POST", "/multigpu/events")}
    for method, path, op in operations():
        assert "403" in op["responses"], f"{method} {path}: the Host check's 403 is not documented"
        if path == "/multigpu/openapi.json":
            assert "security" not in op and token_rule(method, path) is None and "401" not in op["responses"]
            continue
        assert op.get("security") == [{"bearerAuth": []}, {"tokenHeader": []}], f"{method} {path}"
        read = method == "GET" or (method, path) in reads
        assert token_rule(method, path) == ("public" if read else "configured-or-public"), path
        assert "401" in op["responses"], f"{method} {path} needs the token but documents no 401"


# --- the Host check of a private master ------------------------------------------------------

FOREIGN_HOSTS = [FOREIGN_HOST, f"{FOREIGN_HOST}:8188", "127.0.0.1.attacker.example", "localhost.attacker.example",
                 "10.0.0.7:8188", "0.0.0.0:8188", "[fd00::1]:8188", "gpu-box.lan.attacker.example", ""]
LOOPBACK_HOSTS = ["localhost", "localhost:8188", "LOCALHOST:1", "localhost.", "127.0.0.1", "127.9.8.7:80",
                  "[::1]:8188", "[::1]", "::1"]


@pytest.mark.parametrize("endpoint", [(m, p) for m, p, _op in operations()], ids=op_id)
async def test_a_foreign_host_is_refused_on_every_operation(tmp_path, endpoint):
    """DNS rebinding: a page from a name that resolves to 127.0.0.1 sends Host and Origin with that name,
    and the right token would not help it; nothing is read, changed or started."""
    method, path = endpoint
    async with harness(tmp_path, path, token=TOKEN, settings={"allowed_hosts": [ALLOWED_HOST]}) as api:
        body = await valid_body(api, path) if "requestBody" in operation(method, path) else None
        for host in FOREIGN_HOSTS:
            before = api.path.read_bytes()
            reply = await api.call(method, path, body, headers=foreign(host))
            check_reply(reply, api, before)
            assert reply.status == 403, str(reply)
            assert reply.data["host"] == (host or "(none)") and "allowed_hosts" in reply.error, str(reply)
        assert api.launches == [] and api.path.read_bytes() == api.original
        reply = await api.call(method, path, body)  # the share, the worker ids: all still there
        check_reply(reply, api, api.original)
        assert reply.status == success_status(method, path), str(reply)


@pytest.mark.parametrize("endpoint", [(m, p) for m, p, _op in operations()], ids=op_id)
async def test_loopback_names_and_allowed_hosts_pass_the_host_check(tmp_path, endpoint):
    method, path = endpoint
    async with harness(tmp_path, path, token=TOKEN, settings={"allowed_hosts": [ALLOWED_HOST]}) as api:
        body = await valid_body(api, path) if "requestBody" in operation(method, path) else None
        before = api.path.read_bytes()
        reply = await api.call(method, path, body, headers=foreign(f"{ALLOWED_HOST}:8188"))
        check_reply(reply, api, before)
        assert reply.status == success_status(method, path), str(reply)
        for host in [*LOOPBACK_HOSTS, ALLOWED_HOST.upper()]:  # the same body again: maybe refused, never for Host
            before = api.path.read_bytes()
            reply = await api.call(method, path, body, headers=foreign(host))
            check_reply(reply, api, before)
            assert reply.status != 401 and (reply.status < 400 or "host" not in reply.data), str(reply)


async def test_allowed_hosts_set_through_the_api_apply_at_once(tmp_path):
    async with ApiUnderTest(tmp_path) as api:
        refused = await api.call("GET", "/multigpu/config", headers=foreign(ALLOWED_HOST))
        check_reply(refused, api, api.original)
        assert refused.status == 403, str(refused)
        reply = await api.call("POST", "/multigpu/config/update_setting",
                               {"key": "allowed_hosts", "value": ["GPU-Box.lan", "10.0.0.7"]})
        check_reply(reply, api, api.original)
        assert reply.status == 200 and reply.data["settings"]["allowed_hosts"] == [ALLOWED_HOST, "10.0.0.7"], str(reply)
        for host in (ALLOWED_HOST, f"{ALLOWED_HOST}:8188", "10.0.0.7:8188"):
            served = await api.call("GET", "/multigpu/config", headers=foreign(host))
            assert served.status == 200 and served.data["settings"]["allowed_hosts"] == [ALLOWED_HOST, "10.0.0.7"]
        for value in (["gpu-box.lan:8188"], ["http://gpu-box.lan"], [""], ["a b"], ["x"] * 33):
            before = api.path.read_bytes()
            reply = await api.call("POST", "/multigpu/config/update_setting", {"key": "allowed_hosts", "value": value})
            check_reply(reply, api, before)
            assert reply.status == 400 and "allowed_hosts" in reply.error, str(reply)


@pytest.mark.parametrize("endpoint", [(m, p) for m, p, _op in operations()], ids=op_id)
async def test_a_public_master_has_no_host_check(tmp_path, endpoint):
    """It is reached under any name; the token guards it instead."""
    method, path = endpoint
    async with harness(tmp_path, path, token=TOKEN, public=True) as api:
        body = await valid_body(api, path) if "requestBody" in operation(method, path) else None
        before = api.path.read_bytes()
        reply = await api.call(method, path, body, headers=foreign(FOREIGN_HOST))
        check_reply(reply, api, before)
        assert reply.status == success_status(method, path), str(reply)


# --- job_complete: who posts comes in headers, checked before the body is read -----------------


def header_cases() -> list[tuple[str, str, str]]:
    return [(method, path, parameter["name"]) for method, path, _op in operations()
            for parameter in header_parameters(method, path)]


def test_job_complete_documents_its_identity_headers():
    documented = {p["name"]: p for p in header_parameters("POST", JOB_COMPLETE)}
    assert sorted(documented) == sorted(IDENTITY_HEADERS.values())
    assert all(p["required"] is True and p["schema"]["maxLength"] == 256 for p in documented.values())
    body = request_schema("POST", JOB_COMPLETE)
    assert body["required"] == ["outputs"], "the identity is in the headers: the body's copy is optional"
    assert set(IDENTITY_HEADERS) < set(body["properties"])


class StalledBody:
    """A request body that sends its first bytes and then nothing until released: a route that answers
    while it is stalled has not read it."""

    def __init__(self, head: bytes = b'{"outputs": ') -> None:
        self.head = head
        self.released = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        await self.released.wait()
        yield b"{}}"


async def stalled_call(api: ApiUnderTest, headers: dict[str, str], **kwargs: Any) -> Reply:
    body = StalledBody()
    try:
        return await asyncio.wait_for(api.call("POST", JOB_COMPLETE, raw=body.__aiter__(), headers=headers,
                                               describe="a stalled body", **kwargs), timeout=10)
    finally:
        body.released.set()


@pytest.mark.parametrize("case", header_cases(), ids=op_id)
async def test_header_parameters_are_required_and_bounded(tmp_path, case):
    method, path, name = case
    assert path == JOB_COMPLETE, f"{method} {path}: teach this test the header {name}"
    async with harness(tmp_path, path, token=TOKEN) as api:
        body = await valid_body(api, path)
        for value in (None, "", "   "):
            headers = {**api.auth_headers(), **api.identity_headers()}
            if value is None:
                del headers[name]
            else:
                headers[name] = value
            reply = await stalled_call(api, headers, auth=False, identity=False)
            check_reply(reply, api, api.original)
            assert reply.status == 400 and name in reply.error, f"{name}={value!r}: {reply}"
        reply = await api.call(method, path, body, headers={name: "a" * 257})
        check_reply(reply, api, api.original)
        assert reply.status == 400 and "256" in reply.error, str(reply)
        reply = await api.call(method, path, body, headers={name: "a" * 256})  # long enough: judged, not matched
        check_reply(reply, api, api.original)
        assert reply.status in (403, 404) and "host" not in reply.data, str(reply)
        reply = await api.call(method, path, body)
        assert reply.status == 200, f"a refusal used up the share: {reply}"


async def test_job_complete_checks_who_posts_before_reading_the_body(tmp_path):
    """Guard (403 Host, 401 token), identity headers (400), the share (404, 403, 409), size (413), body (400),
    in that order; every refusal before the body's size comes while the body is stalled, unread."""
    async with harness(tmp_path, JOB_COMPLETE, token=TOKEN) as api:
        await valid_body(api, JOB_COMPLETE)
        good = {**api.auth_headers(), **api.identity_headers(), "Content-Type": "application/json"}
        oversize = {"Content-Length": str(result_body_limit(api) + 1)}
        without = {name: value for name, value in good.items() if name != WORKER_HEADER}
        cases = [
            ("host", {**good, **foreign(FOREIGN_HOST)}, 403),
            ("token", {**good, "Authorization": "Bearer wrong-token-0123456789"}, 401),
            ("host before token", {**good, **foreign(FOREIGN_HOST), "Authorization": "Bearer x"}, 403),
            ("no worker header", without, 400),
            ("token before headers", {**without, "Authorization": "Bearer wrong-token-0123456789"}, 401),
            ("unknown job", {**good, JOB_HEADER: "0" * 32}, 404),
            ("guessed share token", {**good, SHARE_HEADER: "guess"}, 403),
            ("another worker", {**good, WORKER_HEADER: "1"}, 403),
        ]
        for label, headers, status in cases:
            for extra in ({}, oversize):
                reply = await stalled_call(api, {**headers, **extra}, auth=False, identity=False)
                check_reply(reply, api, api.original)
                assert reply.status == status, f"{label} {extra}: {reply}"
                assert ("host" in reply.data) == (label.startswith("host")), f"{label}: {reply}"
        reply = await stalled_call(api, {**good, **oversize}, auth=False, identity=False)
        assert reply.status == 413, str(reply)
        reply = await api.call("POST", JOB_COMPLETE, {"outputs": {"3": [PNG_B64]}})
        assert reply.status == 200 and reply.data == {"accepted": 1}, str(reply)
        for extra in ({}, oversize):  # the unit has ended: its token is worth nothing now
            reply = await stalled_call(api, {**good, **extra}, auth=False, identity=False)
            check_reply(reply, api, api.original)
            assert reply.status == 409, str(reply)


async def test_job_complete_needs_the_configured_token_like_every_control_route(tmp_path):
    async with harness(tmp_path, JOB_COMPLETE, token=TOKEN) as api:
        body = await valid_body(api, JOB_COMPLETE)
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"X-MultiGPU-Token": "x"}):
            reply = await api.call("POST", JOB_COMPLETE, body, auth=False, headers=headers)
            check_reply(reply, api, api.original)
            assert reply.status == 401 and "token" in reply.error.lower(), str(reply)
        reply = await api.call("POST", JOB_COMPLETE, body, auth=False, headers={"X-MultiGPU-Token": TOKEN})
        assert reply.status == 200, str(reply)


async def test_job_complete_reads_what_the_share_may_carry_and_no_more(tmp_path):
    async with harness(tmp_path, JOB_COMPLETE) as api:
        share = await api.open_share()
        job = api.started_jobs[-1]
        unit = next(u for u in job.units.values() if job.record(u.position).worker == str(share["worker_id"]))
        images = unit.batch or job.batch  # static mode: every share is the workflow's own batch
        assert images == 2, (unit.batch, job.batch)
        limit = result_body_limit(api)
        assert limit == 64 * 1024 + images * len(job.collectors) * MAX_IMAGE_BODY < MAX_RESULT_BODY, limit
        for declared in (True, False):
            headers = {"Content-Type": "application/json"}
            if declared:
                headers["Content-Length"] = str(limit + 1)
            reply = await api.call("POST", JOB_COMPLETE, raw=oversize_body(limit + 1), headers=headers,
                                   describe=f"{limit + 1} bytes, declared={declared}")
            check_reply(reply, api, api.original)
            assert reply.status == 413 and str(limit) in reply.error, str(reply)
            # read to the end and judged: brackets beyond 2 + 2 per Collector (the cheapest refusal to reach)
            reply = await api.call("POST", JOB_COMPLETE, raw=oversize_body(limit, head=b"[" * 5, tail=b"]" * 5),
                                   headers={**headers, **({"Content-Length": str(limit)} if declared else {})},
                                   describe=f"{limit} bytes")
            check_reply(reply, api, api.original)
            assert reply.status == 400 and "outputs" in reply.error and "larger than" not in reply.error, str(reply)
        reply = await api.call("POST", JOB_COMPLETE, {"outputs": {"3": [PNG_B64] * (images + 1)}})
        check_reply(reply, api, api.original)
        assert reply.status == 400 and f"{images} image" in reply.error, str(reply)
        reply = await api.call("POST", JOB_COMPLETE, {"outputs": {"3": [PNG_B64] * images}})
        assert reply.status == 200 and reply.data == {"accepted": images}, str(reply)


async def test_job_complete_body_identity_must_match_its_headers(tmp_path):
    async with harness(tmp_path, JOB_COMPLETE) as api:
        share = await api.open_share()
        for key in IDENTITY_HEADERS:
            for wrong in (str(share[key]) + "x", "", None, 1):
                reply = await api.call("POST", JOB_COMPLETE, {"outputs": {"3": [PNG_B64]}, key: wrong})
                check_reply(reply, api, api.original)
                assert reply.status == 400 and key in reply.error and "header" in reply.error, str(reply)
        reply = await api.call("POST", JOB_COMPLETE, {"outputs": {"3": [PNG_B64]}})  # the body's copy is optional
        assert reply.status == 200, str(reply)


async def test_job_complete_counts_brackets_before_parsing(tmp_path):
    """Base64 has no brackets: a body of one Collector may have 2 + 2 of them, and one more is refused
    before json.loads builds anything (the unknown field is then not even seen)."""
    async with harness(tmp_path, JOB_COMPLETE) as api:
        await api.open_share()
        reply = await api.call("POST", JOB_COMPLETE, {"outputs": {"3": [PNG_B64]}, "zz_field": []})  # 4
        assert reply.status == 400 and "zz_field" in reply.error, str(reply)
        for raw in (json.dumps({"outputs": {"3": [PNG_B64]}, "zz_field": [[]]}).encode(),  # 5
                    b"[" * 100_000, b'{"outputs": {"3": [' + b"{}," * 50_000 + b"{}]}}"):
            reply = await api.call("POST", JOB_COMPLETE, raw=raw, headers={"Content-Type": "application/json"},
                                   describe=f"{raw[:60]!r}...")
            check_reply(reply, api, api.original)
            assert reply.status == 400 and "outputs" in reply.error and "zz_field" not in reply.error, str(reply)
        reply = await api.call("POST", JOB_COMPLETE, {"outputs": {"3": [PNG_B64]}})
        assert reply.status == 200, str(reply)


# --- what the API may write, and what it shows --------------------------------------------------

FLAG_CASES = [*(f"{flag} /srv/x" for flag in FORBIDDEN_FLAGS), "--models-directory /srv/x", "--base-dir /srv/x",
              "--output-directory=/srv/x", "--lowvram --temp-directory /tmp/x", "--FRONT-END-ROOT /srv/x",
              "--front-end /srv/x", "--extra-model-paths /srv/x.yaml"]


@pytest.mark.parametrize("path", ["/multigpu/config/update_worker", "/multigpu/config/add_worker"])
async def test_extra_args_that_move_comfyui_folders_are_refused(tmp_path, path):
    documented = request_schema("POST", path)["properties"]["extra_args"]["description"]
    assert all(flag in documented for flag in FORBIDDEN_FLAGS), "the document must name every refused flag"
    async with ApiUnderTest(tmp_path, token=TOKEN) as api:
        base = {"worker_id": 1} if path.endswith("update_worker") else {"id": "new", "port": 8190}
        for extra_args in FLAG_CASES:
            reply = await api.call("POST", path, {**base, "extra_args": extra_args})
            check_reply(reply, api, api.original)
            flag = next(word for word in extra_args.split() if word.lower().split("=")[0] not in ("--lowvram",))
            flag = flag.split("=")[0].lower()
            assert reply.status == 400 and flag in reply.error and reply.data["flags"] == [flag], str(reply)
        reply = await api.call("POST", path, {**base, "extra_args": 'a "b'})
        check_reply(reply, api, api.original)
        assert reply.status == 400 and "extra_args" in reply.error, str(reply)
        reply = await api.call("POST", path, {**base, "extra_args": "--lowvram --preview-method auto -- --x"})
        check_reply(reply, api, api.original)
        assert reply.status == success_status("POST", path), str(reply)


async def test_stored_headers_never_follow_a_worker_to_a_new_address(tmp_path):
    """gpu-c keeps a bearer token for its proxy: sent back masked, it is kept; moved, it is dropped unless
    sent again, and a masked value with a new address is refused."""
    path = "/multigpu/config/update_worker"
    async with ApiUnderTest(tmp_path) as api:
        for move in ({"port": 1}, {"host": "localhost"}, {"host": "127.0.0.1", "port": 2}):
            reply = await api.call("POST", path, {"worker_id": "gpu-c", **move, "headers": {"Authorization": "***"}})
            check_reply(reply, api, api.original)
            assert reply.status == 400 and "***" in reply.error, str(reply)
        same = {"host": "127.0.0.1", "port": api.ports[2]}  # no move: the masked value keeps the secret
        reply = await api.call("POST", path, {"worker_id": "gpu-c", "name": "x", **same,
                                              "headers": {"Authorization": "***", "X-New": "1"}})
        check_reply(reply, api, api.original)
        assert reply.status == 200 and reply.data["worker"]["headers"] == {"Authorization": "***", "X-New": "***"}
        assert api.config().find_worker("gpu-c").headers == {"Authorization": "Bearer worker-secret", "X-New": "1"}
        before = api.path.read_bytes()
        reply = await api.call("POST", path, {"worker_id": "gpu-c", "port": 1})
        check_reply(reply, api, before)
        assert reply.status == 200 and reply.data["worker"]["headers"] == {}, str(reply)
        assert api.config().find_worker("gpu-c").headers == {}
        reply = await api.call("POST", path, {"worker_id": "gpu-c", "port": 2, "headers": {"Authorization": "Bearer n"}})
        assert reply.status == 200 and api.config().find_worker("gpu-c").headers == {"Authorization": "Bearer n"}


async def test_the_config_shows_only_known_fields_and_the_ssh_host(tmp_path):
    notes = {"note": "private-note-1", "password": "private-note-2"}
    text = json.dumps({
        "master": {"port": 8188, **notes},
        "workers": [{"id": 1, "port": 20_001, **notes, "ssh": {"host": "gpu-box.lan", "user": "privateuser", "port": 2222,
                                                             "key_file": "/home/me/.ssh/private-key-path",
                                                             "comfyui_path": "/opt/private-comfy", **notes}}],
        "settings": {"api_token": TOKEN, **notes},
    })
    async with ApiUnderTest(tmp_path, config_text=text, token=TOKEN) as api:
        for reply in (await api.call("GET", "/multigpu/config"),
                      await api.call("POST", "/multigpu/config/update_worker", {"worker_id": 1, "name": "renamed"}),
                      await api.call("POST", "/multigpu/config/update_setting", {"key": "max_file_mb", "value": 64})):
            check_reply(reply, api, None)  # the schema has additionalProperties: false throughout
            assert reply.status == 200, str(reply)
            shown = reply.body.decode()
            assert not any(word in shown for word in ("private", '"note"', '"password"', "2222", TOKEN)), str(reply)
        assert reply.data["settings"]["max_file_mb"] == 64
        view = (await api.call("GET", "/multigpu/config")).data
        assert view["workers"][0]["ssh"] == {"host": "gpu-box.lan"} and view["workers"][0]["name"] == "renamed"
        assert set(view["master"]) == set(MasterConfig.model_fields)
        stored = json.loads(api.path.read_text())  # what the user wrote is kept in the file
        assert stored["master"]["note"] == stored["settings"]["note"] == stored["workers"][0]["note"] == notes["note"]
        assert stored["workers"][0]["ssh"]["key_file"] == "/home/me/.ssh/private-key-path"


def test_the_shown_fields_are_the_models_fields():
    """The document's Settings, Worker and master are the config models' fields (generated copies drift)."""
    schemas = OPENAPI["components"]["schemas"]
    master = resolve(schemas["PublicConfig"]["properties"]["master"]["$ref"])
    assert set(master["properties"]) == set(master["required"]) == set(MasterConfig.model_fields)
    assert set(schemas["Worker"]["properties"]) == set(schemas["Worker"]["required"]) == set(WorkerConfig.model_fields)
    shown = set(Settings.model_fields) - SECRET_SETTINGS
    assert set(schemas["Settings"]["properties"]) == set(schemas["Settings"]["required"]) == shown
    generated = Settings.model_json_schema()["properties"]
    keywords = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxItems", "items")
    for name in sorted(shown):
        model = {key: generated[name][key] for key in keywords if key in generated[name]}
        documented = {key: schemas["Settings"]["properties"][name][key] for key in keywords
                      if key in schemas["Settings"]["properties"][name]}
        assert documented == model, f"settings.{name}: the document says {documented}, the model {model}"
