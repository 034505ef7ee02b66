"""Tier 3: the shared pool with real parts: a real ComfyUI master with this extension and no configured worker, a
real ``redis-server``, and two agents (``python -m comfy_distributed agent``, real processes) each beside a plain
real ComfyUI that the master has no address for. The images are those of single-instance runs, in the same order;
an agent killed with SIGKILL while it runs a unit changes nothing in them."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from comfy_distributed.pool.settings import POOL_ENV
from tests.real.cluster import ROOT, TEST_NODES, decoded, image_workflow, run_on_master, worker_failures
from tests.real.harness import (ComfyInstance, comfyui_python, http_json, output_images, requires_comfyui,
                                start_comfyui)
from harness.agent_process import kill_agent, start_agent, stop_agent
from harness.redis_server import RedisServer, redis_server_path
from tests.waiting import poll

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]


def _comfyui_has_redis() -> bool:
    try:
        return subprocess.run([comfyui_python(), "-c", "import redis"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class PoolSite:
    """Redis, two plain ComfyUIs with an agent each, and the master in the pool."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.instances: list[ComfyInstance] = []
        self.agents: dict[str, subprocess.Popen] = {}
        self.redis = RedisServer(base / "redis", redis_server_path() or "redis-server")
        (base / "redis").mkdir()
        self.redis.start()
        for name in ("gpu1", "gpu2"):
            instance = start_comfyui(name, base / name, custom_nodes={"comfy_test_nodes": TEST_NODES})
            self.instances.append(instance)
            self.agent(name, instance)
        config = base / "gpu_config.json"
        config.write_text(json.dumps({"settings": {"worker_timeout": 300}}))
        self.master = start_comfyui("master", base / "master",
                                    custom_nodes={"ComfyUI-Distributed": ROOT, "comfy_test_nodes": TEST_NODES},
                                    env={"COMFY_DISTRIBUTED_CONFIG": str(config), POOL_ENV: self.redis.url})
        self.instances.append(self.master)

    def agent(self, name: str, instance: ComfyInstance) -> None:
        self.agents[name] = start_agent(self.redis.url, instance.url, name, self.base / f"agent-{name}.log")

    def agent_log(self, name: str) -> str:
        return (self.base / f"agent-{name}.log").read_text(errors="replace")[-4000:]

    def kill_agent(self, name: str) -> None:
        kill_agent(self.agents[name])

    def stop(self) -> None:
        for process in self.agents.values():
            stop_agent(process)
        for instance in self.instances:
            instance.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def pool_site(tmp_path_factory) -> Iterator[PoolSite]:
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (apt install redis-server; .ci/run installs it)")
    if not _comfyui_has_redis():
        pytest.skip("ComfyUI's Python lacks redis-py, which a master in a pool needs: "
                    f"{comfyui_python()} -m pip install 'redis>=5'")
    site = PoolSite(tmp_path_factory.mktemp("pool"))
    try:
        poll(lambda: _ready_agents(site) == 2, 90, "the master in the pool with its two agents ready")
        yield site
    finally:
        site.stop()


def _ready_agents(site: PoolSite) -> int:
    """How many agents whose ComfyUI answers the master's ``GET /multigpu/status`` shows in its pool."""
    pool = http_json("GET", f"{site.master.url}/multigpu/status").get("pool") or {}
    return sum(1 for agent in pool.get("agents", []) if agent["comfyui"]) if pool.get("joined") else 0


def single_images(seed: int, batch: int) -> list[np.ndarray]:
    from tests.comfy_test_nodes import seeded_images

    images = seeded_images(seed, batch, 64, 48).numpy()
    return [np.clip(255.0 * image, 0, 255).astype(np.uint8) for image in images]


def test_a_collector_job_over_the_pool_gives_the_images_of_single_runs_in_order(pool_site):
    import asyncio

    entry, events, _ = asyncio.run(run_on_master(pool_site.master, image_workflow(seed=500, delay=0.5)))
    images = decoded(output_images(pool_site.master.url, entry))
    assert worker_failures(events) == []
    expected = single_images(500, 2) + single_images(501, 2) + single_images(502, 2)  # master, pool 1, pool 2
    assert len(images) == 6
    for index, (got, want) in enumerate(zip(images, expected)):
        assert np.array_equal(got, want), f"image {index} differs from the single-instance run"
    ran = sum(len(http_json("GET", f"{instance.url}/history")) for instance in pool_site.instances[:2])
    assert ran == 2, f"the plain ComfyUIs behind the agents ran {ran} prompt(s), not the job's 2 units"


def test_an_agent_killed_mid_unit_changes_nothing_in_the_images(pool_site):
    import asyncio
    import threading

    result: dict = {}

    def run() -> None:
        result["run"] = asyncio.run(run_on_master(pool_site.master, image_workflow(seed=900, delay=6.0)))

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(3.0)  # both agents have taken a unit and run it (6 s of work each)
    pool_site.kill_agent("gpu1")
    thread.join(600)
    entry, events, _ = result["run"]
    images = decoded(output_images(pool_site.master.url, entry))
    expected = single_images(900, 2) + single_images(901, 2) + single_images(902, 2)
    assert len(images) == 6
    for index, (got, want) in enumerate(zip(images, expected)):
        assert np.array_equal(got, want), f"image {index} differs from the single-instance run"
    assert any("stopped heartbeating" in m for m in worker_failures(events)), worker_failures(events)
