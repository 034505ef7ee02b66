"""One start or stop of an instance at a time, across threads and processes (a lock file per instance)."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from ..errors import LaunchError
from .state_files import open_private, private_folder


LOCK_TIMEOUT = 10.0
"""Seconds a start or stop of an instance waits for another one in progress (a check and spawn take a few)."""
_THREAD_LOCKS: dict[str, threading.Lock] = {}
"""One lock per lock file (a real path): flock alone would not serialize threads on every platform."""
_HELD = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)})
"""What a lock held elsewhere raises: flock EWOULDBLOCK; msvcrt EACCES or EDEADLOCK (macOS has no EDEADLOCK)."""
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(os.path.realpath(path), threading.Lock())


@contextlib.contextmanager
def instance_lock(path: Path, label: str, timeout: float | None = None) -> Iterator[None]:
    """Hold ``path`` against this process's other threads and other processes; give up after ``timeout``."""
    wait = LOCK_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + wait
    lock = _thread_lock(path)
    if not lock.acquire(timeout=wait):
        raise LaunchError(_busy(path, label, wait))
    try:
        with _file_lock(path, deadline, label, wait):
            yield
    finally:
        lock.release()


def lock_held(path: Path) -> bool:
    """Whether another thread of this process, or another process, holds ``path`` now: a start or stop of its
    instance is under way. Asks without waiting and without creating the file (a missing lock file: no one)."""
    lock = _thread_lock(path)
    if not lock.acquire(blocking=False):
        return True
    try:
        try:
            fd = open_private(path, os.O_RDWR)
        except (OSError, LaunchError):
            return False  # missing, or not a file of ours: no launcher of ours can hold it
        try:
            if not _try_lock(fd, path):
                return True
            _unlock(fd)
            return False
        finally:
            os.close(fd)
    except LaunchError:
        return False
    finally:
        lock.release()


def _busy(path: Path, label: str, wait: float) -> str:
    return (f"another launcher is starting or stopping {label} (it holds {path}, still after {wait:g} s): "
            "wait for it to finish, then try again")


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float, label: str, wait: float) -> Iterator[None]:
    """An exclusive lock on ``path``, polled until ``deadline``; the file stays (deleting it would race)."""
    private_folder(path.parent)
    try:
        fd = open_private(path, os.O_RDWR | os.O_CREAT)  # not through a planted link: O_CREAT creates its target
    except OSError as exc:
        raise LaunchError(f"cannot open the lock file {path} ({exc.strerror or exc}): pass --state-dir with a "
                          "writable folder") from None
    try:
        while not _try_lock(fd, path):
            if time.monotonic() >= deadline:
                raise LaunchError(_busy(path, label, wait))
            time.sleep(0.05)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int, path: Path) -> bool:
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks bytes from the current position: always byte 0
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _HELD:
            return False
        raise LaunchError(f"cannot lock {path}: {exc.strerror or exc}") from None
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
