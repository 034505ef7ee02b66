"""Test-only ComfyUI custom node pack: records the requests a worker receives.

The browser test gives it to the plain workers so that it can tell that clicking "Clear VRAM"
made the master send the worker ``POST /free``. Each non-GET request is appended as
``METHOD /path`` to the file named by ``MULTIGPU_REQUEST_LOG``. It adds no nodes.
"""

from __future__ import annotations

import os

NODE_CLASS_MAPPINGS: dict = {}
LOG_ENV = "MULTIGPU_REQUEST_LOG"


def _install() -> None:
    log_path = os.environ.get(LOG_ENV)
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:  # imported outside ComfyUI
        return
    if not log_path or PromptServer.instance is None:
        return

    @web.middleware
    async def record(request, handler):
        if request.method != "GET":
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{request.method} {request.path}\n")
        return await handler(request)

    PromptServer.instance.app.middlewares.append(record)


_install()
