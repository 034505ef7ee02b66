"""The scheduler as a pure state machine: events in, actions out, no sockets; its records are validated after
every step."""

from comfy_distributed.engine.scheduler import (
    MASTER,
    Dispatch,
    GiveUp,
    JobScheduler,
    MasterFree,
    MasterRan,
    RunOnMaster,
    Skip,
    Unit,
    UnitDone,
    UnitFailed,
    UnitRecord,
    UnitState,
    WorkerJoined,
)

import pytest


class Checked(JobScheduler):
    """A scheduler whose records are validated after every step."""

    def start(self):
        actions = super().start()
        self.validate()
        return actions

    def handle(self, event):
        actions = super().handle(event)
        self.validate()
        return actions


def scheduler(workers=("1", "2", "3"), **kwargs) -> Checked:
    return Checked.static(list(workers), **kwargs)


def dynamic(n: int, workers: list[str], **kwargs) -> Checked:
    return Checked(units=[Unit(p, p) for p in range(1, n + 1)], workers=workers, **kwargs)


def test_each_worker_gets_its_own_unit():
    s = scheduler()
    assert s.start() == [Dispatch(1, "1", 1), Dispatch(2, "2", 1), Dispatch(3, "3", 1)]
    assert not s.settled()
    for position, worker in ((1, "1"), (2, "2"), (3, "3")):
        assert s.handle(UnitDone(position, worker, 1)) == []
    assert s.settled() and s.positions(UnitState.DONE) == [1, 2, 3]


def test_failed_unit_goes_to_the_first_free_worker_then_the_master():
    s = scheduler(names={"1": "GPU 1", "2": "GPU 2"})
    s.start()
    assert s.handle(UnitFailed(2, "2", 1, "unreachable", "gone")) == []  # everybody else is busy
    assert s.handle(UnitDone(1, "1", 1)) == [Dispatch(2, "1", 2)]  # worker 1 is free first
    assert s.handle(UnitFailed(2, "1", 2, "timeout", "slow")) == []
    assert s.handle(MasterFree()) == [RunOnMaster((2,))]
    assert s.positions(UnitState.MASTER) == [2] and s.record(2).attempt == 3
    assert s.handle(UnitDone(3, "3", 1)) == []
    assert s.settled()
    assert s.record(2).causes == ["GPU 2: gone", "GPU 1: slow"], "causes name the worker by its name"


def test_failed_worker_takes_no_more_units():
    s = scheduler(workers=("1", "2"))
    s.start()
    s.handle(UnitFailed(1, "1", 1, "rejected", "missing node"))
    assert s.handle(UnitDone(2, "2", 1)) == [Dispatch(1, "2", 2)]
    s.handle(UnitFailed(1, "2", 2, "execution_error", "boom"))
    assert s.pending == [1] and s.excluded == {"1", "2"}
    assert s.handle(MasterFree()) == [RunOnMaster((1,))]


def test_retries_are_bounded():
    s = scheduler(workers=("1", "2", "3"), max_retries=1)
    s.start()
    s.handle(UnitDone(1, "1", 1))
    s.handle(UnitFailed(2, "2", 1, "timeout", "slow"))
    assert s.record(2).state == UnitState.RUNNING and s.record(2).worker == "1"  # retry 1 on worker 1
    assert s.handle(UnitFailed(2, "1", 2, "timeout", "slow too")) == [GiveUp(2)]
    assert s.record(2).causes == ["2: slow", "1: slow too"] and s.record(2).error == "2: slow; 1: slow too"
    s.handle(UnitDone(3, "3", 1))
    assert s.settled() and s.positions(UnitState.GIVEN_UP) == [2]


def test_no_retry_at_all():
    s = scheduler(workers=("1",), max_retries=0)
    s.start()
    assert s.handle(UnitFailed(1, "1", 1, "timeout", "t")) == [GiveUp(1)]


def test_unavailable_worker_is_never_tried():
    s = scheduler(workers=("1", "2"), unavailable={"2": "offline"})
    assert s.start() == [Dispatch(1, "1", 1)]
    assert s.pending == [2] and s.record(2).causes == ["2: offline"]
    assert s.handle(UnitDone(1, "1", 1)) == [Dispatch(2, "1", 1)]


def test_unavailable_worker_skipped_when_asked():
    s = scheduler(workers=("1", "2"), unavailable={"2": "offline"}, skip_unavailable=True, names={"2": "GPU 2"})
    assert s.start() == [Dispatch(1, "1", 1), Skip(2, "2", "offline")]
    s.handle(UnitDone(1, "1", 1))
    assert s.settled() and s.positions(UnitState.SKIPPED) == [2]
    assert s.record(2).causes == ["GPU 2: offline"] and s.record(2).worker == "2"


def test_master_free_before_any_failure_changes_nothing():
    s = scheduler(workers=("1",))
    s.start()
    assert s.handle(MasterFree()) == []
    assert s.handle(UnitFailed(1, "1", 1, "unreachable", "x")) == [RunOnMaster((1,))]


def test_stale_events_are_ignored_by_their_attempt():
    s = scheduler(workers=("1", "2"))
    s.start()
    s.handle(UnitFailed(2, "2", 1, "timeout", "t"))
    s.handle(UnitDone(1, "1", 1))  # unit 2 now runs on worker 1: its attempt 2
    assert s.handle(UnitFailed(2, "2", 1, "timeout", "late duplicate")) == []
    assert s.handle(UnitDone(2, "2", 1)) == []  # a late answer from the worker that was given up on
    assert s.handle(UnitDone(2, "1", 1)) == [], "even from the worker it runs on now: an earlier attempt"
    assert s.record(2).state == UnitState.RUNNING and s.record(2).worker == "1" and s.is_current(2, 2)
    assert not s.is_current(2, 1) and s.record(2).causes == ["2: t"]


def test_dynamic_units_go_to_whoever_is_free():
    s = dynamic(5, ["1", "2"])
    assert s.start() == [Dispatch(1, "1", 1), Dispatch(2, "2", 1)]
    assert s.handle(UnitDone(1, "1", 1)) == [Dispatch(3, "1", 1)]
    assert s.handle(MasterFree()) == [RunOnMaster((4,))]  # one unit at a time for the master
    assert s.handle(UnitDone(3, "1", 1)) == [Dispatch(5, "1", 1)]
    assert s.handle(MasterFree()) == []  # nothing left to take
    s.handle(UnitDone(2, "2", 1))
    s.handle(UnitDone(5, "1", 1))
    assert s.settled() and s.positions(UnitState.MASTER) == [4]


def test_weighted_plan_queues_then_failures_are_shared():
    s = Checked(units=[Unit(p, p) for p in range(1, 6)], workers=["1", "2"],
                first_runs={MASTER: [1], "1": [2, 3], "2": [4, 5]})
    assert s.start() == [Dispatch(2, "1", 1), Dispatch(4, "2", 1)]
    assert s.handle(UnitFailed(4, "2", 1, "timeout", "t")) == []  # its own queue (5) and 4 become shared
    assert s.shared == [4, 5]
    assert s.handle(UnitDone(2, "1", 1)) == [Dispatch(3, "1", 1)]  # its own queue first
    assert s.handle(MasterFree()) == [RunOnMaster((1,))]
    assert s.handle(MasterFree()) == [RunOnMaster((4,))]
    assert s.handle(UnitDone(3, "1", 1)) == [Dispatch(5, "1", 1)]


def test_with_unit_times_a_slow_worker_leaves_the_last_unit_to_a_faster_one():
    now = [100.0]
    s = dynamic(4, ["fast", "slow"], clock=lambda: now[0])
    assert s.start() == [Dispatch(1, "fast", 1), Dispatch(2, "slow", 1)]
    now[0] = 101.0
    s.unit_seconds.update({"fast": 1.0, "slow": 3.0})  # learnt in this job
    assert s.handle(UnitDone(1, "fast", 1)) == [Dispatch(3, "fast", 1)]
    now[0] = 102.0
    assert s.handle(UnitDone(3, "fast", 1)) == [Dispatch(4, "fast", 1)]
    now[0] = 103.0
    assert s.handle(UnitDone(2, "slow", 1)) == []
    s.handle(UnitDone(4, "fast", 1))
    assert s.settled()


def test_slow_worker_still_takes_work_that_would_otherwise_wait():
    now = [0.0]
    s = dynamic(7, ["fast", "slow"], clock=lambda: now[0])
    s.start()
    s.unit_seconds.update({"fast": 1.0, "slow": 2.0})
    now[0] = 2.0
    # 5 units wait: the fast worker alone would end them at 7, the slow one finishes one by 4
    assert s.handle(UnitDone(2, "slow", 1)) == [Dispatch(3, "slow", 1)]


def test_unit_times_are_learnt_from_the_events_in_dynamic_mode_only():
    s = dynamic(3, ["1"], learns_unit_times=True)
    s.start()
    s.handle(UnitDone(1, "1", 1, seconds=4.0))
    s.handle(UnitDone(2, "1", 1, seconds=2.0))
    assert s.unit_seconds == {"1": 3.0}, "a moving average of what a unit took worker 1 in this job"
    assert s.record(1).seconds == 4.0 and s.record(2).seconds == 2.0
    assert s.handle(MasterRan(5.0)) == [] and s.unit_seconds[MASTER] == 5.0
    s.handle(UnitDone(3, "1", 1))  # results the worker posted itself: no duration
    assert s.unit_seconds["1"] == 3.0 and s.record(3).seconds is None
    plain = Checked(units=[Unit(1, 1)], workers=["1"])
    plain.start()
    plain.handle(UnitDone(1, "1", 1, seconds=4.0))
    plain.handle(MasterRan(5.0))
    assert plain.unit_seconds == {}, "static and weighted jobs place nothing by unit time"


def test_the_scheduler_alone_says_where_each_unit_stands():
    s = scheduler(workers=("1", "2", "3"), unavailable={"3": "offline"}, skip_unavailable=True, max_retries=0)
    assert [s.state_of(p) for p in (1, 2, 3)] == [UnitState.PENDING] * 3  # before start
    s.start()
    assert [s.state_of(p) for p in (1, 2, 3)] == [UnitState.RUNNING, UnitState.RUNNING, UnitState.SKIPPED]
    assert s.running_on("1") == 1 and s.running_on("3") == 0
    s.handle(UnitDone(1, "1", 1))
    actions = s.handle(UnitFailed(2, "2", 1, "timeout", "slow"))
    assert not s.will_rerun(actions, 2) and s.state_of(2) == UnitState.GIVEN_UP
    assert s.state_of(1) == UnitState.DONE and s.state_of(1) == "done"


def test_a_failed_unit_says_whether_it_runs_again():
    s = scheduler(workers=("1", "2"), max_retries=1)
    s.start()
    actions = s.handle(UnitFailed(1, "1", 1, "timeout", "slow"))
    assert s.will_rerun(actions, 1) and s.state_of(1) == "pending"
    s.handle(MasterFree())
    assert s.state_of(1) == "master"


def test_without_the_master_a_unit_nobody_can_run_is_given_up():
    """A prompt forwarded whole: its candidates try it in their order, each once, then the job settles."""
    s = Checked(units=[Unit(1, 0)], workers=["b", "a"], max_retries=5, master_takes_units=False)
    assert s.start() == [Dispatch(1, "b", 1)]
    assert s.handle(UnitFailed(1, "b", 1, "unreachable", "gone")) == [Dispatch(1, "a", 2)]
    assert s.handle(UnitFailed(1, "a", 2, "timeout", "slow")) == [GiveUp(1)]
    assert s.settled() and s.state_of(1) == "given_up" and s.record(1).causes == ["b: gone", "a: slow"]
    assert s.handle(MasterFree()) == []  # the master is no participant here


def test_a_worker_that_lacks_what_the_unit_needs_costs_no_retry():
    """A candidate found lacking when the prompt reaches it: the unit never ran there, so the next candidate
    still gets its full ``max_retries``; a real failure after that counts."""
    s = Checked(units=[Unit(1, 0)], workers=["a", "b", "c"], max_retries=1, master_takes_units=False)
    assert s.start() == [Dispatch(1, "a", 1)]
    assert s.handle(UnitFailed(1, "a", 1, "preflight", "lacks node X")) == [Dispatch(1, "b", 2)]
    assert s.handle(UnitFailed(1, "b", 2, "timeout", "slow")) == [Dispatch(1, "c", 3)]
    assert s.record(1).uncounted == 1
    assert s.handle(UnitFailed(1, "c", 3, "timeout", "slow too")) == [GiveUp(1)]
    assert s.record(1).causes == ["a: lacks node X", "b: slow", "c: slow too"]


def test_a_unit_no_worker_was_there_to_try_says_so():
    s = Checked(units=[Unit(1, 0)], workers=["a"], unavailable={"a": "offline"}, master_takes_units=False)
    assert s.start() == [GiveUp(1)]
    assert s.record(1).causes == ["no worker is left to run it"]


def test_a_worker_absent_at_the_start_joins_and_takes_pending_units():
    s = scheduler(workers=("1", "2"), unavailable={"2": "offline"})
    assert s.start() == [Dispatch(1, "1", 1)] and s.absent == {"2"} and s.pending == [2]
    assert s.handle(WorkerJoined("2")) == [Dispatch(2, "2", 1)]
    assert s.absent == set() and s.state_of(2) == "running"


def test_a_worker_that_failed_a_unit_does_not_join_again():
    s = scheduler(workers=("1", "2"))
    s.start()
    s.handle(UnitFailed(2, "2", 1, "unreachable", "gone"))
    assert s.handle(WorkerJoined("2")) == [] and "2" in s.excluded


def test_a_skipped_unit_stays_skipped_when_its_worker_joins():
    s = scheduler(workers=("1", "2"), unavailable={"2": "offline"}, skip_unavailable=True)
    s.start()
    assert s.handle(WorkerJoined("2")) == [] and s.state_of(2) == "skipped"


def test_validate_catches_records_that_contradict_each_other():
    s = scheduler(workers=("1", "2"))
    s.start()
    s.validate()
    s.records[1].state = UnitState.DONE  # done, but its worker ... fine; now make 2 both pending and running
    s.shared.append(2)
    with pytest.raises(AssertionError, match="unit 2 is running but queued"):
        s.validate()
    s.shared.remove(2)
    s.records[2].worker = "1"
    s.records[1].state = UnitState.RUNNING
    with pytest.raises(AssertionError, match="its worker runs two"):
        s.validate()
    s.records[1].state = UnitState.GIVEN_UP
    with pytest.raises(AssertionError, match="left out with no cause"):
        s.validate()
    assert isinstance(s.record(1), UnitRecord)
