"""The one module that touches ComfyUI's internals; imported only inside a running ComfyUI."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import runtime
from .api import MultiGPUApi, listens_beyond_loopback
from .api_launch import add_launch_routes
from .config import ConfigStore
from .errors import ConfigError
from .orchestrator import Orchestrator
from .health import HealthMonitor
from .launcher import master_launcher_factory
from .prompt_hook import make_prompt_handler, make_prompt_middleware, reap_finished_prompts
from .queue_balancer import QueueBalancer
from .worker_client import OutputFile

log = logging.getLogger("comfy_distributed")


def install() -> bool:
    """Hook into the running PromptServer; returns False when there is none (not in ComfyUI)."""
    try:
        import comfy.cli_args as cli_args
        import comfy.model_management as model_management
        import folder_paths
        import nodes as comfy_nodes
        from server import PromptServer
    except ImportError:
        return False

    def save_output(file: OutputFile, data: bytes, worker_tag: str) -> dict[str, str]:
        """Save a worker's file under the master's output (or temp) folder, in a subfolder per worker."""
        root = os.path.abspath(folder_paths.get_temp_directory() if file.type == "temp"
                               else folder_paths.get_output_directory())
        subfolder = os.path.join(worker_tag, file.subfolder) if file.subfolder else worker_tag
        folder = os.path.abspath(os.path.join(root, subfolder))
        if os.path.commonpath((root, folder)) != root:
            raise RuntimeError(f"Multi-GPU: refused a worker's file outside the output folder: {file.subfolder!r}")
        os.makedirs(folder, exist_ok=True)
        name = os.path.basename(file.filename)
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
        return {"filename": name, "subfolder": os.path.relpath(folder, root), "type": file.type}

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

    queue = server.prompt_queue

    def running_prompts() -> set[str]:
        running, _ = queue.get_current_queue_volatile()
        return {str(item[1]) for item in running}

    def pending_prompts() -> set[str]:
        _, pending = queue.get_current_queue_volatile()
        return {str(item[1]) for item in pending}

    def finished_prompts(prompt_ids: set[str]) -> set[str]:
        return {p for p in prompt_ids if queue.get_history(prompt_id=p)}

    def free_master() -> None:  # what ComfyUI's own POST /free does
        queue.set_flag("unload_models", True)
        queue.set_flag("free_memory", True)

    def master_load() -> int:
        running, pending = queue.get_current_queue_volatile()
        return len(running) + len(pending)

    def is_output_node(class_type: str) -> bool:
        return bool(getattr(comfy_nodes.NODE_CLASS_MAPPINGS.get(class_type), "OUTPUT_NODE", False))

    health = HealthMonitor(store, notify)
    orchestrator = Orchestrator(store, notify, health, input_dir=lambda: Path(folder_paths.get_input_directory()))
    balancer = QueueBalancer(store, health, notify, master_load, is_output_node)
    runtime.orchestrator = orchestrator
    runtime.balancer = balancer
    runtime.save_output = save_output
    runtime.interrupted = model_management.processing_interrupted
    runtime.raise_if_interrupted = model_management.throw_exception_if_processing_interrupted
    runtime.notify = notify
    server.add_on_prompt_handler(make_prompt_handler(orchestrator, balancer))
    server.app.middlewares.append(make_prompt_middleware(orchestrator, running_prompts, pending_prompts))
    public = listens_beyond_loopback(getattr(cli_args.args, "listen", None))
    api = MultiGPUApi(store, orchestrator, public=public, free_master=free_master, health=health)
    api.add_routes(server.routes)
    comfyui_root = Path(sys.modules[PromptServer.__module__].__file__).resolve().parent  # main.py's folder
    add_launch_routes(server.routes, store, health, master_launcher_factory(store, comfyui_root), api.authorize)

    def start_background() -> None:
        health.start()
        server.loop.create_task(reap_finished_prompts(orchestrator, finished_prompts), name="multigpu-reaper")

    server.loop.call_soon_threadsafe(start_background)  # runs once ComfyUI's loop runs
    return True
