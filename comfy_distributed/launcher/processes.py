"""Local processes: start detached, tell one from a reused pid, stop, read the log of the last start."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import LaunchError
from .model import LOG_MARK, LOG_TAIL_LINES, STOP_TIMEOUT, WINDOWS
from .state_files import append_private, open_private


_CHILDREN: dict[int, "subprocess.Popen[bytes]"] = {}
"""Processes this process started: polled (and so reaped) instead of signalled, never garbage-collected
while they run."""
_EXITED: dict[int, int] = {}
_HAS_PROC = Path("/proc/self/stat").exists()


def start_token(pid: int) -> str | None:
    """The process's start time on Linux (field 22 of /proc/PID/stat), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def is_process_id(value: object) -> bool:
    """A pid a stop may signal: 0 and -1 mean "my group" and "every process", and 1 is init."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 1


def process_alive(pid: int, token: str | None = None) -> bool:
    """Whether ``pid`` runs and is the process the token was taken from (zombies are dead).

    Where ``/proc`` exists (Linux), a pid without a token, or whose start time is not the token, is not
    the process a pid file meant (a reused pid, or a file naming another process): it is never taken
    for ours, so it is never signalled. Elsewhere (macOS, Windows) only the pid can be checked; there a
    pid file is trusted as far as the private state folder that holds it (:mod:`.state_files`).
    """
    if not is_process_id(pid):
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _EXITED[pid] = child.returncode
        _CHILDREN.pop(pid, None)
        return False
    if WINDOWS:
        return _windows_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive, but ours only if /proc says so below
    if not _HAS_PROC:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if fields[0] in ("Z", "X"):
        return False
    return token is not None and fields[19] == token


def _windows_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def exit_code(pid: int) -> int | None:
    """The exit code of a process this process started and saw exit."""
    child = _CHILDREN.get(pid)
    return _EXITED.get(pid) if child is None else child.poll()


def spawn_detached(command: list[str], env: dict[str, str], cwd: Path, log_path: Path, note: str) -> int:
    """Start ``command`` in its own session/process group, output appended to ``log_path``; returns the pid."""
    with append_private(log_path) as log:
        log.write(f"\n{LOG_MARK} {note} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  f"{LOG_MARK} command: {subprocess.list2cmdline(command) if WINDOWS else shlex.join(command)}\n"
                  .encode())
        log.flush()
        options: dict[str, Any] = {}
        if sys.platform == "win32":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            options["start_new_session"] = True
        try:
            child = subprocess.Popen(command, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, **options)
        except OSError as exc:
            raise LaunchError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    _CHILDREN[child.pid] = child
    return child.pid


def terminate(pid: int, token: str | None, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the process and its group: politely, then by force; returns once it is gone. A pid that is not
    the process of the token (see :func:`process_alive`) is left alone."""
    if not process_alive(pid, token):
        return
    if WINDOWS:
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False)
        _wait_gone(pid, token, timeout)
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:  # not a group leader (a pid file written by another tool)
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise LaunchError(f"not allowed to stop process {pid}: it belongs to another user") from None
        if _wait_gone(pid, token, wait):
            break
    try:
        os.killpg(pid, signal.SIGKILL)  # anything the instance itself started
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pid: int, token: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid, token):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()
    return True


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log written since the last start."""
    try:
        with os.fdopen(open_private(path, os.O_RDONLY), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except (OSError, LaunchError):
        return ""
    return since_last_start(text, lines)


def since_last_start(text: str, lines: int = LOG_TAIL_LINES) -> str:
    kept = text.splitlines()
    marks = [i for i, line in enumerate(kept) if line.startswith(LOG_MARK)]
    if marks:
        kept = [line for line in kept[marks[-1]:] if not line.startswith(LOG_MARK)]
    return "\n".join(kept[-lines:])
