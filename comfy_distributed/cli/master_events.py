"""A client of the master registered for its ``multigpu.*`` events while it listens.

The master sends those events only to websocket clients registered with ``POST /multigpu/events``
(:mod:`comfy_distributed.api.audience`), for a limited time: :func:`registered` registers a client id,
renews it while the block runs and ends it after. ``comfy-distributed run`` follows its job this way;
so do the real-ComfyUI tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from ..api.routes import EVENTS_PATH
from ..api.audience import WATCH_RENEW
from ..errors import WorkerError
from ..worker_client import ComfyClient

REGISTER_TIMEOUT = 10.0


async def register(client: ComfyClient, client_id: str, on: bool = True, previews: bool = False) -> str | None:
    """Register (or end) ``client_id`` on the master; None when done, else why not (a master without this
    extension, a refusal, no answer), for the caller to say."""
    try:
        reply = await client.reply("POST", EVENTS_PATH, json_body={"client_id": client_id, "on": on,
                                                                   "previews": previews}, timeout=REGISTER_TIMEOUT)
    except WorkerError as exc:
        return exc.message
    if reply.status == 200:
        return None
    answer = reply.json()
    error = answer.get("error") if isinstance(answer, dict) else None
    return f"HTTP {reply.status} from POST {EVENTS_PATH}: {error if isinstance(error, str) else reply.text()[:200]}"


@contextlib.asynccontextmanager
async def registered(client: ComfyClient, client_id: str, previews: bool = False) -> AsyncIterator[str | None]:
    """``client_id`` registered for the master's events while the block runs; yields why not, or None."""
    refused = await register(client, client_id, previews=previews)

    async def renew() -> None:
        while True:
            await asyncio.sleep(WATCH_RENEW)
            await register(client, client_id, previews=previews)

    task = asyncio.create_task(renew()) if refused is None else None
    try:
        yield refused
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await asyncio.wait_for(register(client, client_id, on=False), REGISTER_TIMEOUT)
