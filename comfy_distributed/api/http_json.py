"""JSON over HTTP at the edge of our routes: bounded body reads, bodies read as their request models,
and every refusal answered as JSON."""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from .access import ApiError
from .schemas_in import Body, parse_body
from ..config.json_limits import loads_bounded

log = logging.getLogger("comfy_distributed")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, read up to ``limit`` bytes: a larger one is refused before it is held, with 413."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    body = bytearray()
    while chunk := await request.content.read(65536):
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
    return bytes(body)


def parse_json_object(body: bytes, empty_ok: bool = False) -> dict[str, Any]:
    """``body`` as a JSON object; 400 naming the problem otherwise."""
    if empty_ok and not body:
        return {}
    try:
        data = loads_bounded(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


async def read_json_object(request: web.Request, limit: int, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object, read up to ``limit`` bytes; an empty body is ``{}`` when ``empty_ok``."""
    return parse_json_object(await read_body(request, limit), empty_ok)


async def read_model(request: web.Request, model: type[Body], limit: int, empty_ok: bool = False) -> Body:
    """The body read as ``model`` (bounded like :func:`read_json_object`); a 400 naming each bad field otherwise."""
    return parse_body(model, await read_json_object(request, limit, empty_ok))


def json_errors(handler: Handler, authorize: Callable[[web.Request], None] | None = None) -> Handler:
    """The handler, after ``authorize``, with every refusal answered as JSON (and a bug as a JSON 500)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            if authorize is not None:
                authorize(request)
            return await handler(request)
        except ApiError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return web.json_response({"error": exc.message, **exc.extra}, status=exc.status, headers=headers)
        except Exception:  # a bug of ours: answer JSON, keep the details in the log
            log.exception("Multi-GPU API: %s %s failed", request.method, request.path)
            return web.json_response({"error": "internal error; see the master's log"}, status=500)

    return wrapped
