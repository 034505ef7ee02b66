"""A real ComfyUI cluster for tier-3 tests: a master with this extension and plain workers."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from comfy_distributed.cli.master_events import registered
from comfy_distributed.errors import WorkerError
from comfy_distributed.worker_client import ComfyClient
from harness.comfy_process import ROOT, TEST_NODES, history_entry  # noqa: F401  (re-exported)
from tests.real.harness import ComfyInstance, http_json, start_comfyui


class Cluster:
    """Workers with the test node pack (``workers``), workers without it (``plain``), then the master.

    Instances are attributes by name (``cluster.w1``); the master reads ``config_path``; the workers get
    ``worker_args`` on their command line (``--preview-method latent2rgb``, say).
    """

    def __init__(self, base: Path, workers: tuple[str, ...] = ("w1", "w2"), plain: tuple[str, ...] = (),
                 master_env: dict[str, str] | None = None, worker_args: tuple[str, ...] = (),
                 worker_nodes: dict[str, Path] | None = None) -> None:
        self.config_path = base / "gpu_config.json"
        self.config_path.write_text("{}")
        self.instances: list[ComfyInstance] = []
        with_nodes = {"comfy_test_nodes": TEST_NODES, **(worker_nodes or {})}
        try:
            args = {"extra_args": list(worker_args)} if worker_args else {}
            for name in workers:
                setattr(self, name.split("-")[0], self._start(name, base, custom_nodes=with_nodes, **args))
            for name in plain:
                setattr(self, name.split("-")[0], self._start(name, base, **args))
            self.master = self._start(
                "master", base,
                custom_nodes={"ComfyUI-Distributed": ROOT, **with_nodes},
                env={"COMFY_DISTRIBUTED_CONFIG": str(self.config_path), **(master_env or {})},
            )
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, base: Path, **kwargs) -> ComfyInstance:
        instance = start_comfyui(name, base / name, **kwargs)
        self.instances.append(instance)
        return instance

    def run(self, prompt: dict, path: str = "/prompt", previews: bool = False) -> tuple[dict, list[dict], float]:
        """The master's history entry, the websocket events a UI saw (the live previews too with ``previews``),
        and the seconds it took."""
        return asyncio.run(run_on_master(self.master, prompt, path=path, previews=previews))

    def stop(self) -> None:
        for instance in self.instances:
            instance.stop()

    def use_workers(self, *workers: ComfyInstance, **settings: float) -> None:
        config = {
            "master": {"port": self.master.port},
            "workers": [{"id": i + 1, "name": f"GPU {i + 1} ({w.name})", "port": w.port, "enabled": True}
                        for i, w in enumerate(workers)],
            "settings": {"worker_timeout": 300, **settings},
        }
        self.config_path.write_text(json.dumps(config))

    def status(self) -> dict:
        return http_json("GET", f"{self.master.url}/multigpu/status")


async def run_on_master(master: ComfyInstance, prompt: dict, timeout: float = 600, path: str = "/prompt",
                        previews: bool = False) -> tuple[dict, list[dict], float]:
    """Queue with a plain POST /prompt while listening on the master's websocket like the UI does (registered for
    the master's events as the panel is)."""
    try:
        async with ComfyClient(master.url, name=master.name) as client:
            client_id = uuid.uuid4().hex
            async with registered(client, client_id, previews=previews):
                followed = await client.queue_and_follow(prompt, time.monotonic() + timeout, path=path,
                                                         client_id=client_id)
    except WorkerError as exc:
        raise AssertionError(f"{master.name}: {exc.message} (did it crash?)\n{master.log_tail()}") from exc
    entry = history_entry(master.url, followed.prompt_id)
    return entry, [event for _, event in followed.events], followed.seconds


def decoded(blobs: list[bytes]) -> list[np.ndarray]:
    return [np.array(Image.open(io.BytesIO(blob)).convert("RGB")) for blob in blobs]


def image_workflow(seed: int, delay: float = 1.0, batch: int = 2) -> dict:
    """Test image -> Distributor -> Collector -> SaveImage."""
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": ["2", 0], "batch_size": batch, "width": 64, "height": 48, "delay": delay}},
        "2": {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": seed}},
        "3": {"class_type": "MultiGPUCollector", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "dist"}},
    }


def plain_image(seed: int, delay: float = 2.0) -> dict:
    """A prompt without our nodes (queue mode's kind): a 40x32 test image after ``delay`` s, saved."""
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": seed, "batch_size": 1, "width": 40, "height": 32, "delay": delay}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"queued{seed}"}},
    }


def plain_image_pixels(seed: int) -> np.ndarray:
    """The pixels :func:`plain_image` saves for ``seed``."""
    from tests.comfy_test_nodes import seeded_images

    return np.clip(255.0 * seeded_images(seed, 1, 40, 32)[0].numpy(), 0, 255).astype(np.uint8)


def worker_failures(events: list[dict]) -> list[str]:
    return [e["data"]["message"] for e in events if e["type"] == "multigpu.worker_failed"]


def queue_empty(instance: ComfyInstance) -> bool:
    queue = http_json("GET", f"{instance.url}/queue", timeout=5)
    return not queue["queue_running"] and not queue["queue_pending"]
