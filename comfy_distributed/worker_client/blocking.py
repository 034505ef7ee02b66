"""The one ComfyUI client for synchronous code: the launcher's probe, the CLI's status, test harnesses."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Mapping, TypeVar

from .comfy import ComfyClient, Limits

T = TypeVar("T")


def run_blocking(base_url: str, call: Callable[[ComfyClient], Awaitable[T]], *,
                 headers: Mapping[str, str] | None = None, limits: Limits | None = None) -> T:
    """``call(client)`` on a :class:`ComfyClient` of ``base_url``, on an event loop of its own, until it returns.

    Not a second client: the same requests, caps and errors (:class:`~comfy_distributed.errors.WorkerError`)
    as async code gets. Synchronous code may run on a thread whose loop is running (a route or a
    test calling the launcher): it blocks that loop as any blocking call would, and the client
    runs on a thread of its own, since a loop cannot be run inside a running one.
    """
    async def run() -> T:
        async with ComfyClient(base_url, headers=headers, limits=limits) as client:
            return await call(client)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with ThreadPoolExecutor(1, thread_name_prefix="comfy-client") as thread:
        return thread.submit(lambda: asyncio.run(run())).result()
