"""Writes ``openapi.json``, the OpenAPI 3.1 document of the /multigpu routes, from the code that serves them.

Run ``python -m comfy_distributed.api.openapi`` after changing a route, a request or answer model, or a
config model; ``--check`` only says whether the file is up to date (a test does the same). The
document is assembled from the route table (:mod:`.routes`: paths, who may call them, statuses),
the request models (:mod:`.schemas_in`), the answer models (:mod:`.schemas_out`) and the config
models (what the API shows of the config), so nothing in it is written by hand twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from .access import TOKEN_ENV, Access
from .schemas_out import SCHEMA_REF, Error
from .schemas_in import UNSET
from .routes import HOST_REFUSED, MAX_IDENTITY, NOT_JSON, ROUTES, USUAL_ERRORS, Route
from ..config.models import public_view_schemas

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
REGENERATE = "python -m comfy_distributed.api.openapi"
"""The command that rewrites the document (named by the test that finds it out of date)."""

INFO = {
    "title": "ComfyUI-Distributed /multigpu API",
    "version": "0.1.0",
    "description": (
        "Routes of a ComfyUI-Distributed master. ComfyUI also serves every route under /api (for example "
        "/api/multigpu/config). Who may call them: a private master (ComfyUI listening on loopback only, without "
        "--enable-cors-header) answers a request only when its Host header is localhost, a loopback address "
        "(127.0.0.0/8, ::1, with or without a port) or a name in settings.allowed_hosts, whatever its Origin (403 "
        "otherwise: protection against DNS rebinding); its reads (GET) need no token. Whatever the Host, every route "
        "refuses a cross-site request (403): an Origin that is present and not the master's own (null included) or "
        "Sec-Fetch-Site cross-site or same-site; and a POST whose body is not Content-Type application/json (415). A public master (one that "
        "listens beyond loopback or sends CORS headers) has no Host check, but every route except this document "
        "needs the token, reads included; without a token configured it refuses them (401). The control routes "
        "(every POST, job_complete included) need the token whenever one is configured (settings.api_token or "
        f"{TOKEN_ENV}). Each operation's x-token-required says when it needs the token: 'configured-or-public' "
        "(whenever one is configured, and always on a public master) or 'public' (on a public master only). Send "
        "it as 'Authorization: Bearer <token>' or in the X-MultiGPU-Token header. Request bodies are strict: no "
        "conversions (1 is not true, \"1\" is not a number) and no unknown fields."),
}
SECURITY_SCHEMES = {"bearerAuth": {"type": "http", "scheme": "bearer"},
                    "tokenHeader": {"type": "apiKey", "in": "header", "name": "X-MultiGPU-Token"}}
TOKEN_RULES = {Access.READ: "public", Access.CONTROL: "configured-or-public"}
"""``x-token-required`` of each access level (see :class:`~.access.Access`); OPEN routes need no token."""
TOKEN_REFUSALS = {Access.READ: "ReadTokenRefused", Access.CONTROL: "ControlTokenRefused"}
GUARD_RESPONSES = {
    "GuardRefused": HOST_REFUSED,
    "NotJson": NOT_JSON,
    "ControlTokenRefused": (
        "Missing or wrong token: every control route (POST) needs it whenever one is configured (settings.api_token "
        f"or {TOKEN_ENV}), and always on a public master, which without a token configured refuses them all and "
        "says how to create one (token_configured false)"),
    "ReadTokenRefused": (
        "Missing or wrong token: on a public master (listening beyond loopback, or sending CORS headers) the reads "
        "need the token too, and without a token configured are refused with a message saying how to create one "
        "(token_configured false); a private master serves them without a token, even when one is configured"),
}


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    error = _json(_ref(Error.__name__))
    return {
        "openapi": "3.1.0",
        "info": INFO,
        "paths": paths,
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "responses": {name: {"description": text, "content": error} for name, text in GUARD_RESPONSES.items()},
            "schemas": _schemas(),
        },
    }


def render() -> str:
    """The document as the file holds it."""
    return json.dumps(document(), indent=2) + "\n"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(model=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary}
    if route.description:
        operation["description"] = route.description
    if route.access is not Access.OPEN:
        operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
        operation["x-token-required"] = TOKEN_RULES[route.access]
    if route.headers:
        operation["parameters"] = [
            {"name": header.name, "in": "header", "required": True, "description": header.description,
             "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDENTITY}} for header in route.headers]
    if route.body is not None:
        operation["requestBody"] = {"required": route.body_required, "content": _json(_ref(route.body.__name__))}
    operation["responses"] = _responses(route)
    return operation


def _responses(route: Route) -> dict[str, Any]:
    answer = route.answer
    schema = _ref(answer.model.__name__) if answer.model is not None else {"type": "object"}
    content = _json(schema) if answer.media_type == "application/json" else {answer.media_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(answer.status): {"description": answer.description, "content": content}}
    guard = {403: "GuardRefused", **({415: "NotJson"} if route.method == "POST" else {})}
    if route.access in TOKEN_REFUSALS:
        guard[401] = TOKEN_REFUSALS[route.access]
    for status in sorted({*route.errors, *guard}):
        if status in guard and status not in route.notes:
            responses[str(status)] = {"$ref": f"#/components/responses/{guard[status]}"}
        else:
            description = route.notes.get(status) or USUAL_ERRORS[status]
            responses[str(status)] = {"description": description, "content": _json(_ref(Error.__name__))}
    return responses


class _Generator(GenerateJsonSchema):
    """pydantic's JSON schemas, without the default of a field that is only there when sent (``unset``)."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default") is UNSET:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def _schemas() -> dict[str, Any]:
    """Every model the routes name (requests, answers and what those refer to), and the config as shown."""
    models: list[type[BaseModel]] = [Error]
    for route in ROUTES:
        models += [model for model in (route.body, route.answer.model) if model is not None and model not in models]
    _refs, top = models_json_schema([(model, "validation") for model in models], ref_template=SCHEMA_REF,
                                     schema_generator=_Generator)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    shown = public_view_schemas()
    schemas.update(Master=shown["master"], Worker=shown["worker"], Settings=shown["settings"])
    return {name: _tidy(schemas[name]) for name in sorted(schemas)}


def _tidy(schema: Any) -> Any:
    """``schema`` without pydantic's generated titles (a property's title repeats its name), with a
    reference wrapped in a lone ``allOf`` (``api_answers.Component``) unwrapped, and without what pydantic
    versions write differently and JSON Schema does not need (``additionalProperties: true``, the default;
    a ``type`` beside a ``const``), so that the file does not depend on the pydantic version."""
    if isinstance(schema, list):
        return [_tidy(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if set(schema) - {"title"} == {"allOf"} and len(schema["allOf"]) == 1:
        return _tidy(schema["allOf"][0])
    cleaned = {}
    for key, value in schema.items():
        if key == "properties":  # names, not keywords
            cleaned[key] = {name: _tidy(sub) for name, sub in value.items()}
        elif not (key == "title" or (key == "additionalProperties" and value is True)
                  or (key == "type" and "const" in schema)):
            cleaned[key] = _tidy(value)
    return cleaned


def main(argv: list[str] | None = None) -> int:
    """Write the document (or with ``--check`` say whether the file is up to date); 1 when it is not."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only compare the file with what would be written")
    args = parser.parse_args(argv)
    text = render()
    current = OPENAPI_PATH.read_text(encoding="utf-8") if OPENAPI_PATH.exists() else ""
    if args.check:
        if current != text:
            print(f"{OPENAPI_PATH} is out of date: run {REGENERATE}", file=sys.stderr)
            return 1
        print(f"{OPENAPI_PATH} is up to date")
        return 0
    if current != text:
        OPENAPI_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {OPENAPI_PATH}" if current != text else f"{OPENAPI_PATH} was up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
