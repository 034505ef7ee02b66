"""The cluster line: prompts across the instances, units of running jobs, a job's estimated time left."""

from __future__ import annotations

from comfy_distributed.cluster.view import UnitView, cluster_line, cluster_summary, time_left


def test_time_left_comes_from_the_jobs_own_units():
    done = [UnitView("done", 1.0, None, 10.0), UnitView("done", 1.0, None, 12.0)]
    left = [UnitView("running", 0.5, 6.0, None), UnitView("running", 0.5, 5.0, None), UnitView("pending", 0, None, None)]
    # median unit 11 s; work left 0.5 + 0.5 + 1 = 2 units, shared by 2 running participants
    assert time_left(done + left) == 11.0
    # nothing finished yet: what the running ones took so far over their progress (6 / 0.5 = 12, 5 / 0.5 = 10)
    assert time_left(left) == 11.0


def test_time_left_is_unknown_until_something_moved_or_when_nothing_is_left():
    assert time_left([UnitView("running", 0.01, 3.0, None), UnitView("pending", 0, None, None)]) is None
    assert time_left([UnitView("done", 1.0, None, 4.0)]) is None
    assert time_left([]) is None


def test_the_cluster_in_one_line():
    workers = [{"status": "busy", "queue_remaining": 3}, {"status": "idle", "queue_remaining": 0},
               {"status": "offline", "queue_remaining": 9}]  # an offline worker's last answer does not count
    jobs = [{"settled": False, "eta_seconds": 95.0,
             "units": [{"state": "done"}, {"state": "running"}, {"state": "running"}, {"state": "pending"}]},
            {"settled": True, "eta_seconds": 500.0, "units": [{"state": "done"}]}]
    summary = cluster_summary(2, workers, jobs)
    assert summary == {"prompts_running": 2, "prompts_queued": 3,
                       "units": {"done": 1, "running": 2, "pending": 1}, "eta_seconds": 95.0}
    assert cluster_line(summary) == "5 prompts: 2 running, 3 queued · units: 1 done, 2 running, 1 pending · about 2 min left"
    assert cluster_line(cluster_summary(None, [], [])) == "no prompts queued"
    assert cluster_line({"prompts_running": 1, "prompts_queued": 0, "units": {}, "eta_seconds": 12.4}) == \
        "1 prompt: 1 running, 0 queued · about 12 s left"
