"""The transport seam held to its word: a second transport, in memory, runs a Collector job and a tile-free queue
of re-runs through the same scheduler, runner and job kind, with no socket, and the images land as with
ComfyUI's HTTP API (``cluster/transport``: a second implementation of a seam is the test of the seam)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from comfy_distributed.cluster import core
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.config import ConfigStore, Settings, WorkerConfig
from comfy_distributed.cluster.transport import UnitTransport
from comfy_distributed.errors import WorkerError, WorkerUnreachable
from comfy_distributed.graph.workflow import JOB_INPUT
from comfy_distributed.worker_client import Channel, OutputFile, PreviewSink, PromptResult
from tests.comfy_test_nodes import seeded_images
from tests.component.cluster import expected_pixels, pixels, workflow


class MemoryTransport:
    """A worker reached without HTTP: it makes the test pack's images itself (a broker's agent would ask its
    ComfyUI); ``fail`` makes every prompt fail, as a worker that went away."""

    def __init__(self, worker: WorkerConfig, ran: list[tuple[str, dict]], fail: bool = False) -> None:
        self._worker, self.ran, self.fail = worker, ran, fail
        self.files: dict[str, bytes] = {}

    @property
    def name(self) -> str:
        return self._worker.display_name

    @property
    def worker(self) -> WorkerConfig:
        return self._worker

    @property
    def max_file_bytes(self) -> int:
        return 64 * 1024 * 1024

    async def object_info(self) -> dict:
        return {"DistributedTestImage": {"input": {"required": {}}}, "PreviewImage": {"input": {"required": {}}}}

    async def upload_input(self, path: Path, name: str, subfolder: str = "") -> dict:
        return {"name": name, "subfolder": subfolder}

    async def upload_bytes(self, data: bytes, name: str, subfolder: str = "", folder: str = "input",
                           overwrite: bool = False) -> dict:
        return {"name": name, "subfolder": subfolder}

    async def run_prompt(self, prompt: dict, deadline: float, extra_data: dict | None = None,
                         on_progress: Callable[[float, float], None] | None = None,
                         wanted: frozenset[str] = frozenset(), channel: Channel | None = None,
                         previews: PreviewSink | None = None, unit: tuple[int, int] | None = None) -> PromptResult:
        self.ran.append((self.name, prompt))
        if self.fail:
            raise WorkerUnreachable(self.name, "gone (memory transport)")
        (source,) = [n for n in prompt.values() if n["class_type"] == "DistributedTestImage"]
        inputs = source["inputs"]
        images = seeded_images(int(inputs["seed"]), int(inputs["batch_size"]), int(inputs["width"]),
                               int(inputs["height"]))
        outputs = {}
        for node_id, node in prompt.items():
            if node["class_type"] != "PreviewImage":
                continue
            entries = []
            for index, image in enumerate(images.numpy()):
                buffer = io.BytesIO()
                Image.fromarray(np.clip(255.0 * image, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
                name = f"{node_id}-{index}.png"
                self.files[name] = buffer.getvalue()
                entries.append({"filename": name, "subfolder": "", "type": "temp"})
            outputs[node_id] = {"images": entries}
        if on_progress is not None:
            on_progress(1.0, 1.0)
        return PromptResult("memory", outputs, self.name)

    async def fetch_files(self, files: list[OutputFile], deadline: float, expected: int | None = None) -> list[bytes]:
        return [self.files[f.filename] for f in files]

    async def stream_view(self, output: OutputFile, receive: Callable[[bytes], None], limit: int,
                          too_large: Callable[[int], WorkerError], timeout: float | None = None) -> int:
        data = self.files[output.filename]
        receive(data)
        return len(data)


class MemoryCluster(core.Cluster):
    """A cluster whose workers are reached through :class:`MemoryTransport`."""

    def __init__(self, store: ConfigStore, failing: set[str] = frozenset()) -> None:
        super().__init__(store)
        self.ran: list[tuple[str, dict]] = []
        self.failing = failing

    def client(self, worker: WorkerConfig, settings: Settings, job_id: str = "") -> UnitTransport:
        return MemoryTransport(worker, self.ran, fail=worker.display_name in self.failing)


def config(tmp_path: Path) -> ConfigStore:
    path = tmp_path / "gpu_config.json"
    workers = [{"id": i, "name": f"GPU {i}", "port": 9 + i, "enabled": True} for i in (1, 2)]
    path.write_text(json.dumps({"workers": workers, "settings": {"worker_timeout": 30}}))
    return ConfigStore(path)


async def run(orchestrator: Orchestrator, seed: int):
    marked, job = orchestrator.prepare(workflow(seed=seed))
    assert job is not None and marked["3"]["inputs"][JOB_INPUT] == job.job_id
    orchestrator.start(job)
    return job, await asyncio.to_thread(orchestrator.collect, job.job_id, "3", lambda: False)


async def test_a_second_transport_runs_a_collector_job_through_the_same_engine(tmp_path: Path) -> None:
    cluster = MemoryCluster(config(tmp_path))
    orchestrator = Orchestrator(cluster)
    job, result = await run(orchestrator, seed=42)
    assert sorted(name for name, _ in cluster.ran) == ["GPU 1", "GPU 2"], "each worker ran its unit in memory"
    by_position = {unit.position: (unit.name, blobs) for unit, blobs in result.images}
    assert sorted(by_position) == [1, 2] and result.failures == [] and result.master_units == []
    for position, (name, blobs) in by_position.items():
        assert name == f"GPU {position}"
        assert [pixels(b).tolist() for b in blobs] == [p.tolist() for p in expected_pixels(42 + position, 2)]
    assert [job.record(p).attempt for p in (1, 2)] == [1, 1]
    await orchestrator.close()
    await cluster.close()


async def test_a_failing_transport_has_its_unit_rerun_elsewhere_with_the_same_seed(tmp_path: Path) -> None:
    cluster = MemoryCluster(config(tmp_path), failing={"GPU 2"})
    orchestrator = Orchestrator(cluster)
    job, result = await run(orchestrator, seed=7)
    ran = [unit.position for unit, _ in result.images] + [unit.position for unit in result.master_units]
    assert sorted(ran) == [1, 2], "unit 2 ran on worker 1 or on the master"
    assert job.record(2).causes == ["GPU 2: gone (memory transport)"]
    images = {unit.position: blobs for unit, blobs in result.images}
    if 2 in images:  # re-run on worker 1: the same seed, so the same pixels
        assert [pixels(b).tolist() for b in images[2]] == [p.tolist() for p in expected_pixels(9, 2)]
    await orchestrator.close()
    await cluster.close()
