"""What the component tests of the orchestrator and the queue balancer share: an orchestrator over a
config of stand-in workers (``Cluster``), the same with stand-ins it starts and a leak check when it
stops (``standin_clusters``, the ``standin_cluster`` fixture), its test workflow, the images each unit
must give back, and a queue balancer over such a config."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from comfy_distributed.cluster import core
from comfy_distributed.events import log_notify
from comfy_distributed.config import ConfigStore
from comfy_distributed.cluster.health import HealthMonitor
from comfy_distributed.engine.jobs import CollectorResult, Job
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.queue_mode.balancer import QueueBalancer
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS, JOB_INPUT
from comfy_distributed.queue_mode.files import FolderSaver
from tests.comfy_test_nodes import seeded_images
from tests.component.leaks import SETTLE, LeakCheck, sockets_to, stash_kept
from tests.standin import StandinComfy
from tests.waiting import closed_port, until_empty

OUTPUT_CLASSES = {"SaveImage", "PreviewImage", "SaveLatent"}


def workflow(seed: int = 42, batch: int = 2, delay: float = 0.0) -> dict:
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": ["2", 0], "batch_size": batch, "width": 32, "height": 24, "delay": delay}},
        "2": {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": seed}},
        "3": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "out"}},
    }


class Cluster:
    """An orchestrator whose config lists the given worker ports, recording its UI events."""

    def __init__(self, tmp_path: Path, ports: list[int], health: HealthMonitor | None = None,
                 input_dir: Path | None = None, **settings) -> None:
        self.path = tmp_path / "gpu_config.json"
        workers = [{"id": i + 1, "name": f"GPU {i + 1}", "port": p, "enabled": True} for i, p in enumerate(ports)]
        self.path.write_text(json.dumps({"workers": workers, "settings": settings}))
        self.events: list[tuple[str, dict]] = []
        self.store = ConfigStore(self.path)
        self.orchestrator = Orchestrator(core.Cluster(self.store, lambda e, d: self.events.append((e, d)), health),
                                         input_dir=lambda: input_dir)

    async def __aenter__(self) -> "Cluster":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the cluster's kept sessions to the workers (the standin_cluster fixture does it itself)."""
        await self.orchestrator.close()
        await self.orchestrator.cluster.close()

    def start(self, prompt: dict) -> Job:
        marked, job = self.orchestrator.prepare(prompt)
        assert job is not None
        assert marked["3"]["inputs"][JOB_INPUT] == job.job_id
        self.orchestrator.start(job)
        return job

    async def collect(self, job: Job, collector: str = "3", interrupted=lambda: False) -> CollectorResult:
        """What the master's Collector does when it runs: free the master, wait, take the images."""
        return await asyncio.to_thread(self.orchestrator.collect, job.job_id, collector, interrupted)

    async def run(self, prompt: dict, **kwargs) -> CollectorResult:
        return await self.collect(self.start(prompt), **kwargs)

    def failure_messages(self) -> list[str]:
        return [d["message"] for d in self.events_named("multigpu.worker_failed")]

    def events_named(self, name: str) -> list[dict]:
        return [d for e, d in self.events if e == name]


class StandinCluster(Cluster):
    """A ``Cluster`` over stand-in workers of its own (``workers[i]`` is "GPU i+1"), then ``offline``
    workers whose port refuses connections."""

    def __init__(self, tmp_path: Path, workers: list[StandinComfy], offline: int = 0, **kwargs) -> None:
        self.workers = workers
        super().__init__(tmp_path, [w.port for w in workers] + [closed_port() for _ in range(offline)], **kwargs)


StartCluster = Callable[..., Awaitable[StandinCluster]]


@asynccontextmanager
async def standin_clusters(tmp_path: Path, settle: float = SETTLE) -> AsyncIterator[StartCluster]:
    """Yield ``start(workers=2, offline=0, health=None, input_dir=None, frames=False, **settings)``, which starts a
    ``StandinCluster`` (``frames``: stand-ins with ``SaveImageWebsocket``); at the end stop them all and fail if the
    block leaked anything (see ``leaks``).

    Sessions, sockets and stashes are looked at while the stand-ins still run (a stopped server would
    close the sockets for us), tasks once they are stopped (a stand-in's own tasks end with it).
    """
    clusters: list[StandinCluster] = []
    standins: list[StandinComfy] = []
    with LeakCheck.watching() as check:
        async def start(workers: int = 2, offline: int = 0, frames: bool = False, **kwargs) -> StandinCluster:
            folder = tmp_path / f"cluster{len(clusters) + 1}"
            folder.mkdir()
            new = [StandinComfy(folder / f"w{i + 1}", name=f"w{i + 1}", websocket_image_save=frames)
                   for i in range(workers)]
            standins.extend(new)  # stopped at the end even when a start fails
            for standin in new:
                await standin.start()
            clusters.append(StandinCluster(folder, new, offline, **kwargs))
            return clusters[-1]

        def look() -> list[str]:
            return (check.open_sessions() + sockets_to({w.port for w in standins})
                    + stash_kept(c.orchestrator for c in clusters))

        try:
            yield start
        finally:
            try:
                # Each job closes its websockets once settled; the workers' HTTP sessions are the
                # orchestrator's, kept across jobs, and closed with it (as when the master stops).
                problems = await until_empty(check.unreleased_jobs, settle)
                await check.close_runners()
                problems += await until_empty(look, settle)
            finally:
                for standin in standins:
                    await standin.stop()
            problems += await until_empty(check.tasks, settle)
            await check.release()
        assert not problems, "the test leaked:\n" + "\n".join(problems)


def by_position(result: CollectorResult) -> dict[int, tuple[str, list[bytes]]]:
    return {unit.position: (unit.name, blobs) for unit, blobs in result.images}


def pixels(blob: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(blob)).convert("RGB"))


def expected_pixels(seed: int, batch: int) -> list[np.ndarray]:
    images = seeded_images(seed, batch, 32, 24).numpy()
    return [np.clip(255.0 * image, 0, 255).astype(np.uint8) for image in images]


def assert_unit_images(result: CollectorResult, position: int, seed: int) -> None:
    _, blobs = by_position(result)[position]
    assert [pixels(b).tolist() for b in blobs] == [p.tolist() for p in expected_pixels(seed, 2)]


def plain(seed: int = 3) -> dict:
    """A queue-mode prompt without a Collector: one test image, saved."""
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": seed, "batch_size": 1, "width": 8, "height": 8, "delay": 0.0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "q"}},
    }


def balancer(tmp_path, ports, master_load=1, events: list | None = None, input_dir: Path | None = None,
             master_lacks=None, **settings) -> QueueBalancer:
    """A queue balancer over workers at ``ports`` (ids 1, 2...); the events it sends go to ``events``."""
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"workers": [{"id": i + 1, "name": f"GPU {i + 1}", "port": p}
                                            for i, p in enumerate(ports)], "settings": settings}))
    notify = (lambda event, data: events.append((event, data))) if events is not None else log_notify
    return QueueBalancer(core.Cluster(ConfigStore(path), notify), master_load=lambda: master_load,
                         is_output_node=lambda class_type: class_type in OUTPUT_CLASSES,
                         input_dir=lambda: input_dir, master_lacks=master_lacks,
                         saver=FolderSaver(tmp_path / "master-output", tmp_path / "master-temp"))
