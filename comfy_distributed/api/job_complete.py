"""``POST /multigpu/job_complete``: results a worker that runs this extension posts itself.

The master normally pulls results; this route feeds the same job tracker. Because a body can be
large, who is posting is checked *before* the body is read: the job id, worker id and the share's
own token come in headers, and a request that does not match a running unit is refused without
reading a byte of it. The body is then capped by what that unit may carry, read within a time
limit, parsed and decoded off the event loop; only a few are read at once, and one per share, so
nobody can stall or bloat the master.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json

from aiohttp import web

from .access import ApiError
from .schemas_in import JOB_HEADER, MAX_IDENTITY, SHARE_HEADER, WORKER_HEADER, JobCompleteRequest, parse_body
from ..config import Settings
from ..errors import ConfigError, JobError, ResultRejected, UnknownJob
from .http_json import parse_json_object, read_body
from ..collector.orchestrator import Orchestrator

__all__ = ["JOB_HEADER", "MAX_IMAGE_BODY", "MAX_RESULT_BODY", "SHARE_HEADER", "WORKER_HEADER", "ResultIntake",
           "parse_results"]
MAX_RESULT_BODY = 100 * 1024 * 1024
"""ComfyUI's own default upload limit: no share is read past it."""
MAX_IMAGE_BODY = 48 * 1024 * 1024
"""Base64 bytes one image of a share may take (a 4096x4096 PNG of noise fits)."""
RESULTS_AT_ONCE = 2
"""Bodies read at once; a share takes at most one of these slots."""
SLOWEST_UPLOAD = 1024 * 1024
"""Bytes a second (about 8 Mbit/s, a slow LAN): a body must arrive within ``settings.request_timeout`` plus its
size (declared, else the share's cap) at this speed, or its slot is given back with a 408."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ResultIntake:
    """The route's handler; holds the bound on concurrent reads."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self._reading: asyncio.Semaphore | None = None
        self._posting: set[tuple[str, str]] = set()
        """The shares (job id, worker id) whose post is being read or waits for a slot."""

    async def job_complete(self, request: web.Request) -> web.Response:
        job_id, worker_id, token = _identity(request)
        try:
            limits = self.orchestrator.check_share(job_id, worker_id, token)
        except (UnknownJob, ResultRejected) as exc:
            raise _refusal(exc) from None
        limit = min(MAX_RESULT_BODY, 64 * 1024 + limits.images * limits.collectors * MAX_IMAGE_BODY)
        share = (job_id, worker_id)
        if share in self._posting:
            raise ApiError(409, "another result of this share is being read; its answer decides whether one "
                                "is still wanted")
        self._posting.add(share)
        try:
            decoded = await self._read(request, limit, (job_id, worker_id, token), limits.collectors)
        finally:
            self._posting.discard(share)
        if decoded is None:
            seconds = self._seconds(request, limit)
            response = web.json_response({"error": f"the body did not arrive within {seconds:g} s "
                                                   "(settings.request_timeout plus its size at 1 MiB/s); refused, "
                                                   "send it again"}, status=408)
            response.force_close()  # the rest of the body is not waited for
            return response
        try:
            self.orchestrator.accept_results(job_id, worker_id, token, decoded)
        except (UnknownJob, ResultRejected, JobError) as exc:
            raise _refusal(exc) from None
        return web.json_response({"accepted": sum(len(v) for v in decoded.values())})

    async def _read(self, request: web.Request, limit: int, identity: tuple[str, str, str],
                    collectors: int) -> dict[str, list[bytes]] | None:
        """The body decoded, read in one of the slots within :meth:`_seconds`; None when it took longer."""
        if self._reading is None:
            self._reading = asyncio.Semaphore(RESULTS_AT_ONCE)
        async with self._reading:
            try:
                body = await asyncio.wait_for(read_body(request, limit), self._seconds(request, limit))
            except asyncio.TimeoutError:
                return None
            return await asyncio.to_thread(parse_results, body, identity, collectors)

    def _seconds(self, request: web.Request, limit: int) -> float:
        """How long the body may take: a slow LAN's time for its declared size (else the cap), plus the
        request timeout of the settings."""
        try:
            base = self.orchestrator.cluster.store.get().settings.request_timeout
        except ConfigError:
            base = Settings().request_timeout
        size = request.content_length if request.content_length is not None else limit
        return round(base + min(size, limit) / SLOWEST_UPLOAD, 1)


def _identity(request: web.Request) -> tuple[str, str, str]:
    values = [request.headers.get(name, "").strip() for name in (JOB_HEADER, WORKER_HEADER, SHARE_HEADER)]
    if not all(values):
        raise ApiError(400, f"the {JOB_HEADER}, {WORKER_HEADER} and {SHARE_HEADER} headers are required: who "
                            "posts is checked before the body is read")
    if any(len(value) > MAX_IDENTITY for value in values):
        raise ApiError(400, f"an identity header is longer than {MAX_IDENTITY} characters")
    return values[0], values[1], values[2]


def _refusal(exc: Exception) -> ApiError:
    if isinstance(exc, UnknownJob):
        return ApiError(404, str(exc))
    if isinstance(exc, ResultRejected):
        return ApiError(exc.status, str(exc))
    return ApiError(409, str(exc))


def parse_results(body: bytes, identity: tuple[str, str, str], collectors: int) -> dict[str, list[bytes]]:
    """The body's ``outputs`` as PNG bytes per Collector (runs in a thread: it can be large).

    Base64 has no brackets, so a body of the expected shape has few of them: counting them first
    refuses a body of millions of tiny objects before ``json.loads`` builds them.
    """
    if body.count(b"{") + body.count(b"[") > 2 + 2 * collectors:
        raise ApiError(400, "'outputs' must map each Collector's node id to a list of base64 PNG images")
    sent = parse_body(JobCompleteRequest, parse_json_object(body))
    for key, header in zip(("job_id", "worker_id", "share_token"), identity):
        if key in sent.model_fields_set and str(getattr(sent, key)) != header:
            raise ApiError(400, f"'{key}' in the body differs from its header")
    return {collector: [_png(collector, index, image) for index, image in enumerate(images)]
            for collector, images in sent.outputs.items()}


def _png(collector: str, index: int, image: str) -> bytes:
    where = f"outputs[{json.dumps(collector)[:80]}][{index}]"
    try:
        blob = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None
    if not blob.startswith(PNG_SIGNATURE):
        raise ApiError(400, f"{where} is not a PNG image")
    return blob
