"""The HTTP edge to an instance: no redirect followed, aiohttp's errors turned into ours in one place."""

from __future__ import annotations

import asyncio
import errno
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from ..errors import WorkerError, WorkerProtocolError, WorkerRefused, WorkerTimeout, WorkerUnreachable
from .answers import clip_text


if TYPE_CHECKING:  # aiohttp 3.12+ types a websocket by whether it decodes text; ComfyUI's older pin does not
    WebSocket = aiohttp.ClientWebSocketResponse[bool]


def status_text(status: int) -> str:
    """``HTTP 502 Bad Gateway``: the standard phrase, not the worker's own reason text."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def redirect_target(base_url: str, location: str | None) -> str:
    """Where a redirect pointed, without query or credentials (they may be anything the worker chose)."""
    if not location:
        return "no address"
    try:
        target = URL(base_url).join(URL(location))
        return clip_text(str(target.with_user(None).with_query(None).with_fragment(None)), 120)
    except (ValueError, TypeError):
        return "an address that is not a URL"


class Redirected(Exception):
    """Raised from the websocket session's trace hook: the handshake was answered with a redirect."""

    def __init__(self, location: str | None) -> None:
        super().__init__(location)
        self.location = location


def refuse_redirects() -> aiohttp.TraceConfig:
    """ws_connect has no allow_redirects: this hook stops a redirect before aiohttp follows it."""
    async def refuse(session: aiohttp.ClientSession, context: Any,
                     params: aiohttp.TraceRequestRedirectParams) -> None:
        location = params.response.headers.get("Location")
        params.response.close()
        raise Redirected(location)

    config = aiohttp.TraceConfig()
    config.on_request_redirect.append(refuse)
    return config


def client_error_text(exc: aiohttp.ClientError) -> str:
    """Our words for a failed exchange: a parse error's text may quote the worker's bytes."""
    if isinstance(exc, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        return clip_text(exc, 200)
    return type(exc).__name__


def convert(exc: BaseException, name: str, base_url: str, what: str) -> WorkerError:
    """The one place where aiohttp's errors, timeouts and odd answers become ours (raised ``from exc``)."""
    if isinstance(exc, asyncio.TimeoutError):
        return WorkerTimeout(name, f"{what}: no answer from {base_url} in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = isinstance(exc.os_error, ConnectionRefusedError) or exc.os_error.errno == errno.ECONNREFUSED
        return (WorkerRefused if refused else WorkerUnreachable)(
            name, f"{what}: cannot connect to {base_url} ({exc.os_error or exc})")
    if isinstance(exc, aiohttp.ClientResponseError):
        return WorkerProtocolError(name, f"{what}: {status_text(exc.status)}")
    if isinstance(exc, aiohttp.ClientError):
        return WorkerUnreachable(name, f"{what}: connection to {base_url} failed ({client_error_text(exc)})")
    return WorkerProtocolError(name, f"{what}: {clip_text(exc, 200)}")
