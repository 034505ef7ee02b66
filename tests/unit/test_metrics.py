"""GET /multigpu/metrics' text, read back by the Prometheus project's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from comfy_distributed.cluster.metrics import Metrics


def parsed(text: str) -> dict[str, dict[tuple, float]]:
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples
                                 if not s.name.endswith("_created")}
    return families


def test_counters_and_gauges_parse_as_prometheus_reads_them():
    metrics = Metrics()
    metrics.job_started("collector")
    metrics.job_started("tiles")
    metrics.job_ended("collector", "done")
    metrics.units_finished(["done", "done", "master"])
    metrics.rerun("offline")
    metrics.rerun("http")
    metrics.rerun("http")
    metrics.unit_done("1", 2.5, 4)
    metrics.unit_done("1", 1.5, 2)
    metrics.unit_done('odd "name"\\', 0.25, 1)
    text = metrics.render({"running": 2, "pending": 1},
                          [{"id": 1, "status": "idle", "last_seen": 0.4}, {"id": "box", "status": "offline",
                                                                            "last_seen": None}])
    families = parsed(text)
    assert families["comfy_distributed_jobs_started"] == {(("kind", "collector"),): 1.0, (("kind", "tiles"),): 1.0}
    assert families["comfy_distributed_jobs_ended"] == {(("kind", "collector"), ("outcome", "done")): 1.0}
    assert families["comfy_distributed_reruns"] == {(("reason", "http"),): 2.0, (("reason", "offline"),): 1.0}
    assert families["comfy_distributed_worker_busy_seconds"][(("worker", "1"),)] == 4.0
    assert families["comfy_distributed_worker_images"][(("worker", "1"),)] == 6.0
    assert families["comfy_distributed_worker_images"][(("worker", 'odd "name"\\'),)] == 1.0  # escaped and back
    assert families["comfy_distributed_units_ended"][(("state", "done"),)] == 2.0
    assert families["comfy_distributed_units"] == {(("state", "pending"),): 1.0, (("state", "running"),): 2.0}
    assert families["comfy_distributed_worker_up"] == {(("worker", "1"),): 1.0, (("worker", "box"),): 0.0}
    assert families["comfy_distributed_worker_heartbeat_age_seconds"] == {(("worker", "1"),): 0.4}
    assert text.endswith("\n") and "# TYPE comfy_distributed_reruns_total counter" in text


def test_an_empty_master_still_answers_every_family():
    families = parsed(Metrics().render({}, []))
    assert len(families) == 9 and all(samples == {} for samples in families.values())


def test_a_disabled_worker_is_not_reported_down():
    workers = [{"id": 1, "enabled": True, "status": "idle", "last_seen": 0.2},
               {"id": 2, "enabled": True, "status": "offline", "last_seen": 30.0},
               {"id": 3, "enabled": False, "status": "disabled", "last_seen": None}]
    text = Metrics().render({}, workers)
    assert parsed(text)["comfy_distributed_worker_up"] == {(("worker", "1"),): 1.0, (("worker", "2"),): 0.0}
    help_line = next(line for line in text.splitlines() if line.startswith("# HELP comfy_distributed_worker_up "))
    assert "disabled worker" in help_line and "left out" in help_line
