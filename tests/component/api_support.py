"""What the /multigpu API tests share: a master's API on a test client over a config file, its token and
workflow, and the first prompt a stand-in worker receives."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.api.handlers import MultiGPUApi
from comfy_distributed.config import ConfigStore
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS
from tests.standin import StandinComfy

TOKEN = "correct-horse-battery-staple"


def workflow(seed: int = 5) -> dict:
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": ["2", 0], "batch_size": 2, "width": 16, "height": 16, "delay": 0.0}},
        "2": {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": seed}},
        "3": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }


class Master:
    def __init__(self, path: Path, public: bool = False) -> None:
        self.path = path
        self.store = ConfigStore(path)
        self.events: list[tuple[str, dict]] = []
        self.orchestrator = Orchestrator(Cluster(self.store, lambda e, d: self.events.append((e, d))))
        self.freed = 0
        self.api = MultiGPUApi(self.store, self.orchestrator, public=public, free_master=self._free)
        self.client = TestClient(TestServer(self.api.make_app()))

    def _free(self) -> None:
        self.freed += 1

    async def call(self, method: str, path: str, body=None, token: str | None = None, raw: bytes | None = None,
                   headers: dict | None = None):
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}),
                   **({"Content-Type": "application/json"} if method == "POST" else {}), **(headers or {})}
        kwargs = {"data": io.BytesIO(raw)} if raw is not None else ({"data": json.dumps(body)} if body is not None else {})
        response = await self.client.request(method, path, headers=headers, **kwargs)
        return response.status, await response.json()


class Started:
    """The masters (anything with an aiohttp ``client``) a test starts, each closed when :meth:`close` runs."""

    def __init__(self) -> None:
        self.made: list = []

    def config_path(self, folder: Path) -> Path:
        return folder / f"gpu_config-{len(self.made)}.json"

    async def start(self, master):
        await master.client.start_server()
        self.made.append(master)
        return master

    async def close(self) -> None:
        for master in self.made:
            await master.client.close()


def write_config(path: Path, workers: list[dict], **settings) -> Path:
    path.write_text(json.dumps({"master": {"port": 8188}, "workers": workers, "settings": settings}))
    return path


async def first_prompt(standin: StandinComfy, timeout: float = 10) -> dict:
    """The first prompt a stand-in worker received, waited for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not standin.received:
        assert time.monotonic() < deadline, f"{standin.name} received no prompt within {timeout} s"
        await asyncio.sleep(0.02)
    return standin.received[0]


def png_bytes() -> bytes:
    """A small real PNG (16 x 16, one colour), as a worker would send it."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()
