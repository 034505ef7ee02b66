"""What a test left behind: asyncio tasks still pending, aiohttp sessions not closed, connections still
open to the stand-in workers, Collector results still stashed.

Why: a master runs for weeks, so a task, a session or a socket kept per job adds up; a test that
passes while the orchestrator keeps one hides that (dask's ``gen_cluster`` checks the same after each
test). Each look returns what it found as sentences instead of failing, so one report can name every
leak, and a test can prove the check does find them.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from comfy_distributed.engine.runner import Runner

SETTLE = 5.0
"""Seconds a job gets, after the test's last step, to close what it is closing (a session is released
after the Collector took its result, a cancelled unit interrupts its worker first)."""


class Stash(Protocol):
    def stashed(self) -> int: ...


class LeakCheck:
    """Watches one test: the tasks there were before it, and every aiohttp session opened during it."""

    def __init__(self) -> None:
        self.tasks_before = set(asyncio.all_tasks())
        self.sessions: list[aiohttp.ClientSession] = []
        """Held until the check ends, so that a session dropped unclosed is still found (not collected)."""
        self.runners: list[Runner] = []
        """Every job runner made in the block (orchestrators, queue balancers): their jobs must release
        their websockets; their workers' sessions, kept across jobs, are closed by :meth:`close_runners`."""

    @classmethod
    @contextmanager
    def watching(cls) -> Iterator["LeakCheck"]:
        """Record each ``aiohttp.ClientSession`` created inside the block (the class's ``__init__`` is wrapped)."""
        check = cls()
        original = aiohttp.ClientSession.__init__
        original_runner = Runner.__init__

        @functools.wraps(original)
        def recording_init(session: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
            check.sessions.append(session)
            original(session, *args, **kwargs)

        @functools.wraps(original_runner)
        def recording_runner(runner: Runner, *args: Any, **kwargs: Any) -> None:
            check.runners.append(runner)
            original_runner(runner, *args, **kwargs)

        setattr(aiohttp.ClientSession, "__init__", recording_init)
        setattr(Runner, "__init__", recording_runner)
        try:
            yield check
        finally:
            setattr(aiohttp.ClientSession, "__init__", original)
            setattr(Runner, "__init__", original_runner)

    def unreleased_jobs(self) -> list[str]:
        """Jobs that settled long ago but still hold a websocket (or never settled)."""
        return [f"job {getattr(job, 'job_id', None) or getattr(job, 'forward_id', '?')} did not release "
                "its websockets" for runner in self.runners for job in runner.unreleased.values()]

    async def close_runners(self) -> None:
        """Close the workers' sessions each runner's cluster keeps across jobs, as a master does when it stops."""
        for cluster in {id(runner.cluster): runner.cluster for runner in self.runners}.values():
            await cluster.close()

    def pending_tasks(self) -> list[asyncio.Task]:
        """Tasks created since the check began that have not finished (the caller's own task excepted)."""
        current = asyncio.current_task()
        return [t for t in asyncio.all_tasks() if t not in self.tasks_before and t is not current and not t.done()]

    def tasks(self) -> list[str]:
        return [f"task {t.get_name()!r} still pending: {t.get_coro()!r}" for t in self.pending_tasks()]

    def open_sessions(self) -> list[str]:
        return [f"aiohttp.ClientSession not closed: {s!r}" for s in self.sessions if not s.closed]

    async def release(self) -> None:
        """Cancel the pending tasks and close the sessions found, so one leak does not spill into the next test."""
        tasks = self.pending_tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in self.sessions:
            await session.close()
        self.sessions.clear()


def stash_kept(orchestrators: Iterable[Stash]) -> list[str]:
    """A Collector's stash left behind is held until the master restarts."""
    return [f"{count} Collector result(s) stashed" for count in (o.stashed() for o in orchestrators) if count]


def sockets_to(ports: Collection[int]) -> list[str]:
    """This process's open TCP connections to any of ``ports`` (the stand-ins' own ends excepted).

    Read from ``/proc`` (Linux); where there is none this finds nothing and the session check is left.
    """
    mine = _socket_inodes()
    found: list[str] = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
            if remote in ports and local not in ports and fields[9] in mine:
                found.append(f"connection from port {local} to port {remote} still open")
    return found


def _socket_inodes() -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes
