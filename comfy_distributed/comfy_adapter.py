"""The one module that touches ComfyUI's internals; imported only inside a running ComfyUI."""

from __future__ import annotations

import logging
from typing import Any

from . import runtime
from .api import MultiGPUApi, listens_beyond_loopback
from .config import ConfigStore
from .errors import ConfigError
from .orchestrator import Orchestrator
from .prompt_hook import make_prompt_handler, make_prompt_middleware

log = logging.getLogger("comfy_distributed")


def install() -> bool:
    """Hook into the running PromptServer; returns False when there is none (not in ComfyUI)."""
    try:
        import comfy.cli_args as cli_args
        import comfy.model_management as model_management
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False

    store = ConfigStore()
    try:
        config = store.get()
        log.info("Multi-GPU: %s: %d worker(s), %d enabled", store.path, len(config.workers),
                 len(config.enabled_workers()))
    except ConfigError as exc:
        log.error("Multi-GPU: %s", exc)  # reported now; jobs report it again until it is fixed

    def notify(event: str, data: dict[str, Any]) -> None:
        server.send_sync(event, data)

    orchestrator = Orchestrator(store, notify)
    runtime.orchestrator = orchestrator
    runtime.interrupted = model_management.processing_interrupted
    runtime.raise_if_interrupted = model_management.throw_exception_if_processing_interrupted
    runtime.notify = notify
    server.add_on_prompt_handler(make_prompt_handler(orchestrator))
    server.app.middlewares.append(make_prompt_middleware(orchestrator))

    def free_master() -> None:  # what ComfyUI's own POST /free does
        server.prompt_queue.set_flag("unload_models", True)
        server.prompt_queue.set_flag("free_memory", True)

    public = listens_beyond_loopback(getattr(cli_args.args, "listen", None))
    MultiGPUApi(store, orchestrator, public=public, free_master=free_master).add_routes(server.routes)
    return True
