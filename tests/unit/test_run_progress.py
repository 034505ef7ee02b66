"""``run``'s progress: each node of the prompt counts once, and a job's units all count once it is over."""

from __future__ import annotations

import io

from comfy_distributed import cli

PROMPT = {"1": {"class_type": "KSampler"}, "2": {"class_type": "Distributor"}, "3": {"class_type": "Collector"},
          "4": {"class_type": "SaveImage"}}


def feed(progress: cli.Progress, *sequence: tuple[str, dict]) -> bool:
    display = cli.ProgressDisplay(io.StringIO())
    finished = False
    for kind, data in sequence:
        finished = cli.apply_event(kind, {"prompt_id": "p", **data} if not kind.startswith("multigpu.") else data,
                                   "p", "j", progress, display)
    return finished


def units(*states: str) -> tuple[str, dict]:
    return "multigpu.job_progress", {"job_id": "j", "progress": 0.5, "eta_seconds": None, "units": [
        {"position": i + 1, "state": s, "worker": None, "worker_id": None, "progress": 0.0}
        for i, s in enumerate(states)]}


def test_nodes_count_once_cached_ones_included_and_expanded_ones_not():
    progress = cli.Progress(PROMPT)
    feed(progress, ("execution_cached", {"nodes": ["2", "1"]}), ("executing", {"node": "1"}),
         ("executing", {"node": "3"}), ("executing", {"node": "3.multigpu.2.1", "display_node": "3"}),
         ("executing", {"node": "3.multigpu.2.part", "display_node": "3"}), ("executing", {"node": "3"}),
         ("executing", {"node": "4"}))
    assert progress.done == {"1", "2", "3"} and progress.cached == {"1", "2"}
    assert "master: 3/4 nodes, SaveImage" in progress.line()
    assert progress.prompt_node("3.multigpu.2.assemble") == "3" and progress.prompt_node("99") is None


def test_a_unit_the_master_reran_counts_as_done_at_the_job_end():
    progress = cli.Progress(PROMPT)
    feed(progress, units("done", "master"))
    assert progress.units == (1, 2) and "1/2 units done" in progress.line()
    feed(progress, ("multigpu.job_done", {"job_id": "j", "cancelled": False, "workers_done": ["GPU 1"],
                                          "master_units": [2], "units_missing": []}), units("done", "master"))
    assert progress.units == (2, 2) and progress.cluster == 1.0, "a late report moves nothing back"
    assert feed(progress, *[("executing", {"node": n}) for n in PROMPT], ("executing", {"node": None}))
    assert progress.line().startswith("[" + "#" * 30 + "] 100%") and "cluster: 2/2 units done" in progress.line()


def test_units_left_out_are_said():
    progress = cli.Progress(PROMPT)
    feed(progress, units("done", "skipped"),
         ("multigpu.job_done", {"job_id": "j", "cancelled": False, "workers_done": ["GPU 1"], "master_units": [],
                                "units_missing": [{"unit": 2, "worker": "GPU 2", "state": "skipped",
                                                   "message": "offline"}]}))
    assert "cluster: 1/2 units done, 1 left out" in progress.line() and progress.cluster == 1.0


def test_the_prompt_end_ends_the_job_when_its_outcome_came_late():
    progress = cli.Progress(PROMPT)
    assert feed(progress, units("done", "master"), *[("executing", {"node": n}) for n in PROMPT],
                ("executing", {"node": None}))
    assert progress.units == (2, 2) and " 100%" in progress.line()


def test_a_cancelled_job_does_not_claim_its_units():
    progress = cli.Progress(PROMPT)
    feed(progress, units("done", "running"),
         ("multigpu.job_done", {"job_id": "j", "cancelled": True, "workers_done": ["GPU 1"], "master_units": [],
                                "units_missing": []}))
    assert progress.units == (1, 2) and progress.cluster == 0.5
