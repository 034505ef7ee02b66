"""``run``'s progress line over a job whose unit the master re-ran: the cluster events are those the orchestrator
really sent for such a job (stand-in workers, one failing), the master's own are ComfyUI's for that prompt,
node ids of the graph its Collector expands into included (made by the Collector's own code)."""

from __future__ import annotations

import asyncio
import io
import re

from comfy_distributed import cli, events
from comfy_distributed.collector.nodes import run_on_master
from tests.component.cluster import workflow
from tests.waiting import until


class _Book:
    """What ``run_on_master`` asks of the orchestrator: a place for the Collector's partial output."""

    def stash(self, job_id: str, collector_id: str, parts: object) -> None:
        pass


def master_events(prompt: dict, prompt_id: str, expanded: list[str], job_events: list[tuple[str, dict]]) -> list:
    """ComfyUI's events for the master's prompt (as ComfyUI 0.3.64 sends them: see tests/standin), with the
    job's events where they arrive: while its Collector waits, and ``job_done`` before the nodes after it."""
    def executing(node: str | None, display: str | None = None) -> tuple[str, dict]:
        return "executing", {"node": node, "display_node": display or node, "prompt_id": prompt_id}

    def steps(node: str) -> list[tuple[str, dict]]:
        return [("progress", {"value": v, "max": 10, "prompt_id": prompt_id, "node": node}) for v in range(1, 11)]

    running = [e for e in job_events if e[0] != events.JOB_DONE]
    done = [e for e in job_events if e[0] == events.JOB_DONE]
    sequence = [("execution_start", {"prompt_id": prompt_id}),
                ("execution_cached", {"nodes": ["2"], "prompt_id": prompt_id}),
                executing("1"), *steps("1"), executing("3"), *running]
    for node in expanded:  # the unit re-run on the master: its copy of node 1 reports steps (for its display
        # node, as ComfyUI's progress hook does), the Collector's internal nodes none
        sequence += [executing(node, "3"), *(steps("3") if node.endswith(".1") else [])]
    sequence += [executing("3"), *done, executing("4"), ("execution_success", {"prompt_id": prompt_id}),
                 executing(None)]
    assert set(prompt) == {"1", "2", "3", "4"}
    return sequence


async def test_a_rerun_job_ends_at_every_node_and_every_unit(tmp_path, standin_cluster):
    cluster = await standin_cluster(workers=2)
    w1, w2 = cluster.workers
    w1.gate = asyncio.Event()  # worker 1 stays busy while worker 2 fails: the master re-runs unit 2
    w2.execution_error = "boom"
    prompt = workflow()
    job = cluster.start(prompt)
    await until(lambda: job.state_of(2) == "pending")
    collecting = asyncio.ensure_future(cluster.collect(job))
    await until(lambda: job.state_of(2) == "master")
    w1.gate.set()
    result = await collecting
    await until(lambda: cluster.events_named(events.JOB_DONE))
    (done,) = cluster.events_named(events.JOB_DONE)
    assert done["master_units"] == [2] and [u.position for u in result.master_units] == [2]
    progress_reports = cluster.events_named(events.JOB_PROGRESS)
    assert progress_reports and progress_reports[-1]["units"][1]["state"] == "master", \
        "the last report before the end still shows the re-run unit running on the master"

    expansion = run_on_master(prompt, job.job_id, "3", {1: {}}, result.master_units, _Book())["expand"]
    recorded = [(name, data) for name, data in cluster.events if name.startswith("multigpu.")]
    stream = io.StringIO()
    display = cli.ProgressDisplay(stream)
    progress = cli.Progress(prompt)
    finished = False
    for kind, data in master_events(prompt, "p", list(expansion), recorded):
        finished = cli.apply_event(kind, data, "p", job.job_id, progress, display)
        display.show(progress)
        assert len(progress.done) <= len(prompt), f"{kind} {data}: {progress.line()}"
    assert finished
    lines = stream.getvalue().splitlines()
    counts = [tuple(map(int, m.groups())) for m in (re.search(r"master: (\d+)/(\d+) nodes", line) for line in lines)
              if m]
    assert counts and all(done_nodes <= total for done_nodes, total in counts), lines
    assert "100%" in lines[-1] and "master: 4/4 nodes" in lines[-1] and "cluster: 2/2 units done" in lines[-1], lines
