"""Two starts of one instance at once (finding 8): one process runs, the other start sees it, stop leaves none.

Each start is made to wait at ``spawn`` for the other one (a barrier between threads, marker files
between processes) for a bounded time: without a lock both reach ``spawn``; with one the second
waits outside and sees the first one's process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from comfy_distributed import launcher
from comfy_distributed.config import load_config
from comfy_distributed.launcher import LaunchContext, Launcher, LocalProcesses, Outcome, Record
from tests.waiting import free_port, poll

from .helpers import REPO, answers, pid_alive, read_pid, write_config

RENDEZVOUS_S = 3.0
"""How long a start waits at spawn for the other one before it goes on alone."""


def make_launcher(root: Path, config: Path, state: Path) -> Launcher:
    return Launcher(load_config(config), LaunchContext(root, config, state))


@pytest.fixture
def site(comfy_root, state_dir, tmp_path) -> tuple[Path, Path, Path, int]:
    port = free_port()
    return comfy_root, write_config(tmp_path / "gpu_config.json", port, []), state_dir, port


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """Every pid a start spawned; killed at teardown even when a duplicate is missing from the pid file."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def assert_one_then_none(site: tuple[Path, Path, Path, int], spawned: list[int], outcomes: list[Outcome]) -> None:
    """Exactly one process was started, both starts name it, and stop leaves no process of either."""
    root, config, state, port = site
    assert len(spawned) == 1, f"two starts spawned {spawned}"
    assert [o.error for o in outcomes] == [None, None]
    assert {o.pid for o in outcomes} == {spawned[0]} == {read_pid(state, "master")}
    poll(lambda: answers(port), 60, "the master answers")
    stopper = make_launcher(root, config, state)
    stopped = stopper.stop(stopper.find("master"))
    assert stopped.action == "stopped", stopped
    assert not any(pid_alive(pid) for pid in spawned) and not answers(port), "stop leaves no process"


def test_two_threads_starting_one_instance_start_one_process(site, spawned, monkeypatch):
    root, config, state, _port = site
    barrier = threading.Barrier(2, timeout=RENDEZVOUS_S)
    original = LocalProcesses.spawn

    def spawn(self: LocalProcesses, instance: launcher.Instance) -> Record:
        try:
            barrier.wait()  # both here at once: a duplicate; a timeout: the other start waits outside
        except threading.BrokenBarrierError:
            pass
        record = original(self, instance)
        spawned.append(record.pid)
        return record

    monkeypatch.setattr(LocalProcesses, "spawn", spawn)
    outcomes: list[Outcome] = []

    def start() -> None:  # a launcher each, as each API request and CLI run makes its own
        one = make_launcher(root, config, state)
        outcomes.append(one.start(one.find("master"), wait=True))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert_one_then_none(site, spawned, outcomes)


STARTER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from comfy_distributed import launcher
from comfy_distributed.config import load_config

root, config, state, marks, name, wait = sys.argv[2:8]
original = launcher.LocalProcesses.spawn

def spawn(self, instance):
    Path(marks, name).touch()  # here at once with the other starter: a duplicate
    deadline = time.monotonic() + float(wait)
    while len(list(Path(marks).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    record = original(self, instance)
    print("SPAWNED", record.pid, flush=True)
    return record

launcher.LocalProcesses.spawn = spawn
one = launcher.Launcher(load_config(Path(config)), launcher.LaunchContext(Path(root), Path(config), Path(state)))
outcome = one.start(one.find("master"), wait=False)
print("OUTCOME", json.dumps({"pid": outcome.pid, "error": outcome.error, "detail": outcome.detail}), flush=True)
"""


def test_two_processes_starting_one_instance_start_one_process(site, spawned, tmp_path):
    root, config, state, _port = site
    marks = tmp_path / "marks"
    marks.mkdir()
    starters = [subprocess.Popen([sys.executable, "-c", STARTER, str(REPO), str(root), str(config), str(state),
                                  str(marks), name, str(RENDEZVOUS_S)], stdout=subprocess.PIPE, text=True)
                for name in ("a", "b")]
    lines = [line for starter in starters for line in starter.communicate(timeout=60)[0].splitlines()]
    spawned += [int(line.split()[1]) for line in lines if line.startswith("SPAWNED")]
    answered = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("OUTCOME")]
    outcomes = [Outcome(make_launcher(root, config, state).find("master"), "started", a["pid"], a["detail"],
                        a["error"]) for a in answered]
    assert_one_then_none(site, spawned, outcomes)
    assert "already starting" in [o.detail for o in outcomes], "the second start saw the first one's process"


@pytest.mark.skipif(sys.platform == "win32", reason="holds the lock with fcntl")
def test_a_start_behind_a_held_lock_fails_clearly_instead_of_hanging(site, monkeypatch):
    import fcntl

    root, config, state, port = site
    monkeypatch.setattr(launcher.locks, "LOCK_TIMEOUT", 0.5)
    one = make_launcher(root, config, state)
    master = one.find("master")
    with open(state / "master.lock", "a+b") as held:  # another process's launcher, mid-start
        fcntl.flock(held, fcntl.LOCK_EX)
        began = time.monotonic()
        outcome = one.start(master, wait=False)
        assert time.monotonic() - began < 5
    assert outcome.action == "failed" and "another launcher is starting or stopping master" in str(outcome.error)
    assert not (state / "master.pid").exists() and not answers(port), "nothing was started"
    again = one.start(master, wait=True)
    assert again.action == "started" and again.error is None, "the lock is free once its holder lets go"
    assert one.stop(master).action == "stopped"
