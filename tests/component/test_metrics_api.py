"""GET /multigpu/metrics on a master that ran a job over a stand-in worker, read by Prometheus' own parser."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.component.api_support import Master, write_config
from tests.component.cluster import workflow
from tests.standin import StandinComfy
from tests.waiting import until

TOKEN = "metrics-token-0123456789abcdef"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_count_a_job_and_its_worker(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        write_config(tmp_path / "gpu_config.json", [{"id": 1, "name": "GPU 1", "port": w1.port}])
        made = Master(tmp_path / "gpu_config.json")
        await made.client.start_server()
        try:
            _, job = made.orchestrator.prepare(workflow(seed=3, batch=2))
            made.orchestrator.start(job)
            await asyncio.to_thread(made.orchestrator.collect, job.job_id, "3", lambda: False)
            await until(lambda: job.ended, what="the job's end reported on the loop")
            response = await made.client.get("/multigpu/metrics")
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            got = samples(await response.text())
        finally:
            await made.client.close()
    assert got[("comfy_distributed_jobs_started_total", (("kind", "collector"),))] == 1
    assert got[("comfy_distributed_jobs_ended_total", (("kind", "collector"), ("outcome", "done")))] == 1
    assert got[("comfy_distributed_worker_images_total", (("worker", "1"),))] == 2
    assert got[("comfy_distributed_worker_busy_seconds_total", (("worker", "1"),))] > 0
    assert got[("comfy_distributed_units_ended_total", (("state", "done"),))] == 1


async def test_a_public_master_wants_its_token_for_metrics(tmp_path):
    write_config(tmp_path / "gpu_config.json", [], api_token=TOKEN)
    made = Master(tmp_path / "gpu_config.json", public=True)
    await made.client.start_server()
    try:
        refused = await made.client.get("/multigpu/metrics")
        assert refused.status == 401 and "token" in (await refused.json())["error"]
        allowed = await made.client.get("/multigpu/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status == 200 and "# TYPE comfy_distributed_jobs_started_total counter" in await allowed.text()
    finally:
        await made.client.close()
