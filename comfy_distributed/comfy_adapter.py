"""The one module that touches ComfyUI's internals; imported only inside a running ComfyUI."""

from __future__ import annotations

import heapq
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import runtime
from .access import TOKEN_ENV, is_public
from .api import MultiGPUApi
from .api_launch import add_launch_routes
from .config import ConfigStore, GpuConfig
from .errors import ConfigError
from .orchestrator import Orchestrator
from .health import HealthMonitor
from .host import Host
from .launcher import master_launcher_factory
from .prompt_hook import make_prompt_handler, make_prompt_middleware, reap_finished_prompts
from .queue_balancer import QueueBalancer, comfy_master_lacks
from .role import decide_role, passive_line
from .worker_client import OutputFile

log = logging.getLogger("comfy_distributed")

MAX_NAME_TRIES = 10000
"""New names tried for a worker's file before giving up (``name (1).png``, ``name (2).png``...)."""


def _plain_component(part: str, what: str) -> str:
    """``part`` when it names one entry of a folder: not empty, ``.``, ``..``, a drive or a path.

    ``:`` is refused too: on Windows ``C:x`` is a path of its own and ``x:y`` a hidden stream.
    """
    if part in ("", ".", "..") or len(part) > 255 or any(c in part for c in "/\\:\0"):
        raise ValueError(f"{what} {part[:100]!r} is not a plain name")
    return part


def confined_output_path(worker_tag: str, subfolder: str, filename: str) -> tuple[str, str]:
    """(subfolder under the output root, file name) for a worker's file: always inside ``worker_tag``.

    A worker names its files, so every part is checked: an absolute path, ``..``, ``.`` or an
    empty part would leave (or blur) the worker's own folder and is refused with ValueError.
    """
    parts = [_plain_component(worker_tag, "worker folder")]
    if subfolder:
        parts += [_plain_component(part, "subfolder part") for part in subfolder.replace("\\", "/").split("/")]
    return "/".join(parts), _plain_component(filename, "file name")


def write_new_file(root: str, worker_tag: str, subfolder: str, name: str, data: bytes) -> str:
    """Write ``data`` as a new file in ``root/subfolder``, never over another; returns the name used.

    The folder is checked again once it exists (a link inside the worker's folder must not lead
    out of it); ``xb`` refuses any existing entry, a link included, so a taken name gets a counter.
    """
    own = os.path.realpath(os.path.join(root, worker_tag))
    folder = os.path.join(root, *subfolder.split("/"))
    os.makedirs(folder, exist_ok=True)
    if os.path.commonpath((own, os.path.realpath(folder))) != own:
        raise ValueError(f"the folder {subfolder!r} leads out of the worker's own folder")
    stem, ext = os.path.splitext(name)
    for counter in range(MAX_NAME_TRIES):
        candidate = name if counter == 0 else f"{stem} ({counter}){ext}"
        try:
            with open(os.path.join(folder, candidate), "xb") as handle:
                handle.write(data)
            return candidate
        except FileExistsError:
            continue
    raise ValueError(f"no free name for {name!r} after {MAX_NAME_TRIES} tries")


def startup_warnings(config: GpuConfig, public: bool, env_token: str | None = None) -> list[str]:
    """What a master says at start that a newcomer would otherwise find out from a 401."""
    if public and not (env_token or config.settings.api_token):
        return ["this master listens beyond loopback (--listen) or sends CORS headers (--enable-cors-header), "
                "and no API token is configured: every /multigpu route (the sidebar panel's too) answers 401 "
                "until one is. Create one with 'launch_distributed.sh token' (or 'python -m comfy_distributed "
                "token'), or drop --listen if no browser on another machine needs this master"]
    return []


class ComfyHost:
    """The :class:`~.host.Host` of a running ComfyUI: its server, queue, folders and interrupt flag."""

    def __init__(self, server: Any) -> None:
        import comfy.model_management as model_management
        import folder_paths
        import nodes as comfy_nodes

        self._server, self._queue = server, server.prompt_queue
        self._management, self._folders, self._nodes = model_management, folder_paths, comfy_nodes

    def notify(self, event: str, data: dict[str, Any]) -> None:
        self._server.send_sync(event, data)

    def interrupted(self) -> bool:
        return bool(self._management.processing_interrupted())

    def raise_if_interrupted(self) -> None:
        self._management.throw_exception_if_processing_interrupted()

    def save_output(self, file: OutputFile, data: bytes, worker_tag: str) -> dict[str, str]:
        """Save a worker's file under the master's output (or temp) folder, in the worker's own folder."""
        kind = "temp" if file.type == "temp" else "output"  # it is saved in one of these two, whatever it says
        root = os.path.realpath(self._folders.get_temp_directory() if kind == "temp"
                                else self._folders.get_output_directory())
        try:
            subfolder, name = confined_output_path(worker_tag, file.subfolder, file.filename)
            name = write_new_file(root, worker_tag, subfolder, name, data)
        except ValueError as exc:
            raise RuntimeError(f"Multi-GPU: refused a file of {worker_tag}: {exc}") from None
        return {"filename": name, "subfolder": subfolder, "type": kind}

    def running_prompts(self) -> set[str]:
        running, _ = self._queue.get_current_queue_volatile()
        return {str(item[1]) for item in running}

    def pending_prompts(self) -> set[str]:
        _, pending = self._queue.get_current_queue_volatile()
        return {str(item[1]) for item in pending}

    def finished_prompts(self, prompt_ids: set[str]) -> set[str]:
        return {p for p in prompt_ids if self._queue.get_history(prompt_id=p)}

    def free_memory(self) -> None:  # what ComfyUI's own POST /free does
        self._queue.set_flag("unload_models", True)
        self._queue.set_flag("free_memory", True)

    def queue_load(self) -> int:
        running, pending = self._queue.get_current_queue_volatile()
        return len(running) + len(pending)

    def is_output_node(self, class_type: str) -> bool:
        return bool(getattr(self._nodes.NODE_CLASS_MAPPINGS.get(class_type), "OUTPUT_NODE", False))

    def input_dir(self) -> Path | None:
        return Path(self._folders.get_input_directory())

    def next_number(self) -> float | None:
        number = getattr(self._server, "number", None)
        return float(number) if isinstance(number, (int, float)) else None

    def promote(self, prompt_id: str, number: float) -> bool:
        """ComfyUI's queue is a heap of ``(number, prompt_id, ...)`` under its mutex (``execution.PromptQueue``):
        the item is replaced with its new number and the heap restored, as ``put`` would leave it."""
        queue = self._queue
        with queue.mutex:
            for index, item in enumerate(queue.queue):
                if str(item[1]) == prompt_id:
                    queue.queue[index] = (number, *item[1:])
                    heapq.heapify(queue.queue)
                    break
            else:
                return False
        self._server.queue_updated()
        return True


def install() -> bool:
    """Hook into the running PromptServer; returns False when there is none (not in ComfyUI)."""
    try:
        import comfy.cli_args as cli_args
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False
    store = ConfigStore()
    port = getattr(cli_args.args, "port", None)
    try:
        config = store.get()
    except ConfigError as exc:
        config = None
        log.error("Multi-GPU: %s", exc)  # reported now; jobs report it again until it is fixed
    role = decide_role(config, port, os.environ)
    if not role.is_master:
        log.info("%s", passive_line(role, store.path, port))
        return False
    public = is_public(getattr(cli_args.args, "listen", None), getattr(cli_args.args, "enable_cors_header", None))
    env_token = os.environ.get(TOKEN_ENV) or None  # the process's environment does not change after start
    if config is not None:
        log.info("Multi-GPU: %s: %d worker(s), %d enabled", store.path, len(config.workers),
                 len(config.enabled_workers()))
        for warning in startup_warnings(config, public, env_token):
            log.warning("Multi-GPU: %s", warning)
    comfyui_root = Path(sys.modules[PromptServer.__module__].__file__ or ".").resolve().parent  # main.py's folder
    _wire(server, ComfyHost(server), store, public, env_token, comfyui_root)
    return True


def _wire(server: Any, host: Host, store: ConfigStore, public: bool, env_token: str | None,
          comfyui_root: Path) -> None:
    """The extension's parts on ComfyUI's server: the prompt hook, the routes, the background tasks."""
    health = HealthMonitor(store, host.notify)
    orchestrator = Orchestrator(store, host.notify, health, input_dir=host.input_dir, loop=server.loop)
    balancer = QueueBalancer(store, health, host.notify, host.queue_load, host.is_output_node,
                             metrics=orchestrator.metrics, object_info=orchestrator.object_info,
                             input_dir=host.input_dir, speeds=orchestrator.speeds, models=orchestrator.models,
                             master_lacks=comfy_master_lacks, host=host)
    runtime.current = runtime.Extension(host, orchestrator, balancer)
    server.add_on_prompt_handler(make_prompt_handler(orchestrator, balancer))
    server.app.middlewares.append(make_prompt_middleware(orchestrator, host.running_prompts, host.pending_prompts))
    api = MultiGPUApi(store, orchestrator, public=public, free_master=host.free_memory, health=health,
                      master_queue=host.queue_load, env_token=env_token,
                      previews=(orchestrator.runner.previews, balancer.runner.previews))
    api.add_routes(server.routes)
    add_launch_routes(server.routes, store, health, master_launcher_factory(store, comfyui_root), api.authorize)

    def start_background() -> None:
        health.start()
        server.loop.create_task(reap_finished_prompts(orchestrator, host.finished_prompts), name="multigpu-reaper")

    server.loop.call_soon_threadsafe(start_background)  # runs once ComfyUI's loop runs

    async def close_connections(_app: Any) -> None:
        for part in (orchestrator, balancer, health, api):
            await part.close()

    server.app.on_cleanup.append(close_connections)
