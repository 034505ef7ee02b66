"""Real ComfyUI instances for the benchmarks, started side by side as a user's cluster starts.

``tests/real/cluster.Cluster`` starts its workers one after another and the master last, so every
worker already listens when the master's health monitor first looks. A user's cluster starts
together (the launcher, a script, a service manager): the master's first probe may reach a worker
that does not listen yet, and the first job after start has to cope with that. So the ports are
chosen first, ``gpu_config.json`` is written with them, and every instance starts at once. Each
has its own base directory (``tests/real/harness``); every process is stopped at the end.
"""

from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from comfy_distributed.config.models import ROLE_ENV
from harness.comfy_process import ROOT, TEST_NODES, ComfyInstance, free_port, http_json, start_comfyui

MASTER = "master"
WEBSOCKET_IMAGE_SAVE = Path(os.environ.get("COMFYUI_PATH") or ".") / "custom_nodes" / "websocket_image_save.py"
ONLINE = ("idle", "busy")


def unavailable() -> str | None:
    """Why the real suite cannot run here, or None."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        return ("COMFYUI_PATH is not set (a ComfyUI checkout; COMFYUI_PYTHON names its interpreter, "
                "default its venv/.venv)")
    if not (Path(path) / "main.py").is_file():
        return f"COMFYUI_PATH={path} has no main.py"
    return None


def together(calls: list[Callable[[], Any]]) -> None:
    """Run the calls at the same time and wait for all of them; the first error is raised after all ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = [pool.submit(call) for call in calls]
    errors = [future.exception() for future in futures if future.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


class BenchCluster:
    """A master and workers, each with this extension (passive on the workers) and the test node pack.

    ``with BenchCluster(tmp) as cluster: cluster.start()``; instances by name in ``instances``.
    """

    def __init__(self, base: Path, workers: tuple[str, ...] = ("w1", "w2"), frames: bool = True) -> None:
        self.base = base
        self.frames = frames
        self.config_path = base / "gpu_config.json"
        self.workers = workers
        self.ports = {name: free_port() for name in (MASTER, *workers)}
        self.instances: dict[str, ComfyInstance] = {}

    def __enter__(self) -> "BenchCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def master(self) -> ComfyInstance:
        return self.instances[MASTER]

    def write_config(self, data: dict[str, Any]) -> None:
        """The master's gpu_config.json (it reads the file again when it changes)."""
        data = {**data, "master": {**data.get("master", {}), "port": self.ports[MASTER]}}
        self.config_path.write_text(json.dumps(data))

    def start(self) -> float:
        """Start every instance at once; seconds until the last one answers ``/system_stats``."""
        started = time.monotonic()
        try:
            together([functools.partial(self._start, name) for name in self.ports])
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - started

    def restart(self, names: tuple[str, ...] | None = None, env: dict[str, str] | None = None) -> float:
        """Stop the instances, then start them again at once (same ports and folders).

        ``env`` is set for these instances from now on (``DISTRIBUTED_TEST_DELAY_SCALE``, say).
        Returns the seconds from the start until the last one answers.
        """
        chosen = [self.instances[name] for name in (names or tuple(self.instances))]
        for instance in chosen:
            instance.stop()
            instance.environment.update(env or {})
        started = time.monotonic()
        together([instance.restart for instance in chosen])
        return time.monotonic() - started

    def wait_online(self, names: tuple[str, ...], timeout: float = 60.0) -> None:
        """Until the master's health monitor counts these workers online (after a restart, say)."""
        deadline = time.monotonic() + timeout
        while True:
            workers = http_json("GET", f"{self.master.url}/multigpu/status", timeout=5)["workers"]
            online = {w["name"] for w in workers if w.get("status") in ONLINE}
            if set(names) <= online:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the master does not count {sorted(set(names) - online)} online: {workers}")
            time.sleep(0.2)

    def stop(self) -> None:
        for instance in self.instances.values():
            instance.stop()

    def _start(self, name: str) -> None:
        # every instance has the extension, as the README asks of a worker (the same custom nodes as the master):
        # passive on a worker (the launcher's role variable), where it only freezes the startup heap
        nodes: dict[str, Path] = {"ComfyUI-Distributed": ROOT, "comfy_test_nodes": TEST_NODES}
        env = {"COMFY_DISTRIBUTED_CONFIG": str(self.config_path)}
        if name != MASTER:
            env[ROLE_ENV] = "worker"
            # ComfyUI's own custom_nodes/websocket_image_save.py, which a standard install loads (a base directory
            # of its own does not): a unit's images then come as websocket frames
            if self.frames and WEBSOCKET_IMAGE_SAVE.is_file():
                nodes[WEBSOCKET_IMAGE_SAVE.name] = WEBSOCKET_IMAGE_SAVE
        self.instances[name] = start_comfyui(name, self.base / name, custom_nodes=nodes, env=env,
                                             port=self.ports[name])
