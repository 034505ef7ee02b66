"""Waiting with a deadline, and loopback ports: the one copy every tier of the suite uses.

``until`` is for async tests (the condition may be a plain function or a coroutine function);
``poll`` is for code that blocks (subprocesses, real ComfyUI instances). Both fail with an
``AssertionError`` that names what was awaited once ``timeout`` seconds have passed.
``until_empty`` is for checks that list what is wrong (the leak check): it returns the last list.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable

from harness.comfy_process import LOOPBACK, free_port

__all__ = ["LOOPBACK", "closed_port", "free_port", "poll", "until", "until_empty"]


async def until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
                interval: float = 0.02) -> Any:
    """Call ``condition()`` (awaiting what it returns when that is awaitable) every ``interval`` seconds
    until it is truthy, and return that value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met before the deadline")
        await asyncio.sleep(interval)


async def until_empty(look: Callable[[], list], timeout: float, interval: float = 0.02) -> list:
    """Call ``look()`` until it finds nothing or ``timeout`` seconds have passed; return what it found last,
    so that the caller can report every problem at once."""
    found: list = []

    def clean() -> bool:
        found[:] = look()
        return not found

    try:
        await until(clean, timeout, "nothing found", interval)
    except AssertionError:
        pass
    return found


def poll(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> float:
    """Call ``condition()`` every ``interval`` seconds until it is truthy; return the seconds that took.
    Fail, naming ``what``, after ``timeout`` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started >= timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started


def closed_port() -> int:
    """A loopback port that nothing listens on: a connection to it is refused."""
    return free_port()
