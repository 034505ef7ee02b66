"""The one module that imports ComfyUI's own modules (its server, queue, folders, node classes and samplers);
imported only inside a running ComfyUI. Everything else reaches ComfyUI through the :class:`~..host.interface.Host` it
implements here (:class:`ComfyHost`), or :class:`~..host.interface.DetachedHost` outside it."""

from __future__ import annotations

import heapq
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ..host import runtime
from ..api.access import TOKEN_ENV, is_public
from ..api.handlers import MultiGPUApi
from ..api.launch import add_launch_routes
from ..api.audience import Audience
from ..config import ConfigStore, GpuConfig, pool_agent_warnings, unknown_key_warnings
from ..errors import ConfigError, PoolError
from ..cluster.core import Cluster
from ..collector.orchestrator import Orchestrator
from ..cluster.health import HealthMonitor
from ..launcher import master_launcher_factory
from .gc_freeze import freeze_startup_heap
from .prompt_hook import make_prompt_handler, make_prompt_middleware, reap_finished_prompts
from ..queue_mode.balancer import QueueBalancer
from ..cluster.preflight import preflight_problems
from ..pool.member import member_for
from .role import decide_role, passive_line
from ..worker_client import OutputFile
from ..queue_mode.files import FolderSaver, NewFile, confined_output_path, write_new_file

__all__ = ["ComfyHost", "confined_output_path", "install", "startup_warnings", "write_new_file"]

log = logging.getLogger("comfy_distributed")


def startup_warnings(config: GpuConfig, public: bool, env_token: str | None = None,
                     source: str = "gpu_config.json") -> list[str]:
    """What a master says at start that a newcomer would otherwise find out from a 401 or from a setting that
    does nothing: a public master without a token, and every unknown (misspelled?) key of ``source``."""
    warnings = [f"{source}: {warning}" for warning in unknown_key_warnings(config)]
    if public and not (env_token or config.settings.api_token):
        warnings.append("this master listens beyond loopback (--listen) or sends CORS headers (--enable-cors-header), "
                        "and no API token is configured: every /multigpu route (the sidebar panel's too) answers 401 "
                        "until one is. Create one with 'launch_distributed.sh token' (or 'python -m comfy_distributed "
                        "token'), or drop --listen if no browser on another machine needs this master")
    return warnings


def log_config_warnings(source: str) -> Callable[[list[str]], None]:
    """What the master does when a changed config file brings other unknown keys (``ConfigStore.report_warnings``)."""

    def report(warnings: list[str]) -> None:
        for warning in warnings:
            log.warning("Multi-GPU: %s changed: %s", source, warning)

    return report


class ComfyHost:
    """The :class:`~..host.interface.Host` of a running ComfyUI: its server, queue, folders and interrupt flag."""

    def __init__(self, server: Any) -> None:
        import comfy.model_management as model_management
        import folder_paths
        import nodes as comfy_nodes

        self._server, self._queue = server, server.prompt_queue
        self._management, self._folders, self._nodes = model_management, folder_paths, comfy_nodes
        self.audience = Audience(server.send_sync)

    def notify(self, event: str, data: dict[str, Any]) -> None:
        """To the clients registered for the events only (:mod:`..api.audience`), never to every socket."""
        self.audience.notify(event, data)

    def interrupted(self) -> bool:
        return bool(self._management.processing_interrupted())

    def raise_if_interrupted(self) -> None:
        self._management.throw_exception_if_processing_interrupted()

    def save_output(self, file: OutputFile, worker_tag: str) -> NewFile:
        """A new file for a worker's file under ComfyUI's output (or temp) folder, in the worker's own folder."""
        saver = FolderSaver(self._folders.get_output_directory(), self._folders.get_temp_directory())
        return saver.save_output(file, worker_tag)

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

    def node_class(self, class_type: Any) -> Any:
        return self._nodes.NODE_CLASS_MAPPINGS.get(class_type) if isinstance(class_type, str) else None

    def describe(self, class_type: str) -> Mapping[str, Any] | None:
        node_class = self.node_class(class_type)
        if node_class is None:
            return None
        try:
            described = node_class.INPUT_TYPES()
        except Exception:  # a node pack's class that cannot say: its values stay text
            return None
        return described if isinstance(described, dict) else None

    def sampler_choices(self) -> tuple[list[str], list[str]]:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)

    def master_lacks(self, prompt: dict[str, Any], synced: set[str]) -> list[str]:
        """What the master's own ComfyUI lacks to run ``prompt`` (its node classes and their choices, as a worker's
        ``/object_info`` would list them): the queue mode keeps a prompt only where it can run."""
        info: dict[str, Any] = {}
        for node in prompt.values():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if isinstance(class_type, str) and self.node_class(class_type) is not None:
                info[class_type] = {"input": self.describe(class_type) or {}}  # one that cannot say: taken as able
        return preflight_problems(prompt, info, synced)

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
    host = runtime.installed = ComfyHost(server)  # the nodes ask it for node classes and samplers (a worker's too)
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
        # a worker collects after its prompts too, and the master waits for its files meanwhile: its heap as well
        server.loop.call_soon_threadsafe(freeze_startup_heap)
        return False
    cors_origin = getattr(cli_args.args, "enable_cors_header", None)
    public = is_public(getattr(cli_args.args, "listen", None), cors_origin)
    env_token = os.environ.get(TOKEN_ENV) or None  # the process's environment does not change after start
    if config is not None:
        log.info("Multi-GPU: %s: %d worker(s), %d enabled", store.path, len(config.workers),
                 len(config.enabled_workers()))
        for warning in startup_warnings(config, public, env_token, str(store.path)):
            log.warning("Multi-GPU: %s", warning)
    store.report_warnings(log_config_warnings(str(store.path)))
    comfyui_root = Path(sys.modules[PromptServer.__module__].__file__ or ".").resolve().parent  # main.py's folder
    cluster = Cluster(store, host.notify, HealthMonitor(store, host.notify))
    try:
        pool = member_for(config.settings if config is not None else None)
    except PoolError as exc:  # a malformed COMFY_DISTRIBUTED_POOL: the master runs without the pool, saying why
        pool = None
        log.error("Multi-GPU pool: %s", exc)
    for warning in pool_agent_warnings(config, pool is not None) if config is not None else ():
        log.warning("Multi-GPU: %s: %s", store.path, warning)  # with the pool known: the env's counts too
    cluster.pool = pool
    _wire(server, host, cluster, public, env_token, comfyui_root, cors_origin)
    if pool is not None:
        server.loop.call_soon_threadsafe(pool.start)  # joins in the background, holding up nothing

    return True


def _wire(server: Any, host: ComfyHost, cluster: Cluster, public: bool, env_token: str | None,
          comfyui_root: Path, cors_origin: str | None) -> None:
    """The extension's parts on ComfyUI's server: the prompt hook, the routes, the background tasks."""
    store, health = cluster.store, cluster.health
    assert health is not None
    orchestrator = Orchestrator(cluster, input_dir=host.input_dir, loop=server.loop, describe=host.describe)
    balancer = QueueBalancer(cluster, host.queue_load, host.is_output_node, input_dir=host.input_dir,
                             master_lacks=host.master_lacks, host=host, saver=host)
    runtime.current = runtime.Extension(host, orchestrator, balancer)
    server.add_on_prompt_handler(make_prompt_handler(orchestrator, balancer))
    server.app.middlewares.append(make_prompt_middleware(orchestrator, host.running_prompts, host.pending_prompts,
                                                         host.is_output_node))
    api = MultiGPUApi(store, orchestrator, public=public, free_master=host.free_memory, health=health,
                      master_queue=host.queue_load, env_token=env_token,
                      audience=host.audience,
                      cors_origin=cors_origin)
    api.add_routes(server.routes)
    add_launch_routes(server.routes, store, health, master_launcher_factory(store, comfyui_root), api.authorize)

    def start_background() -> None:
        freeze_startup_heap()  # every custom node is loaded by now
        health.start()
        server.loop.create_task(reap_finished_prompts(orchestrator, host.finished_prompts), name="multigpu-reaper")

    server.loop.call_soon_threadsafe(start_background)  # runs once ComfyUI's loop runs

    async def close_connections(_app: Any) -> None:
        for part in (orchestrator, balancer, health, api, cluster):
            await part.close()

    server.app.on_cleanup.append(close_connections)
