"""A real ``redis-server`` on a free loopback port for the pool: started, restarted on the same port, stopped.

It keeps nothing on disk (``--save ""``, no append-only file), so a restart is what Redis without persistence does:
every key gone. :func:`redis_server_path` is None where Debian's ``redis-server`` is not installed (``.ci/run``
installs it); the tests skip then, saying so. The pool's tests and benchmarks both use it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from .comfy_process import LOOPBACK, free_port

START_TIMEOUT = 10.0


def redis_server_path() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return next((p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).is_file()), None)


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``, working in ``folder``."""

    def __init__(self, folder: Path, executable: str) -> None:
        self.folder, self.executable = folder, executable
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Start it (on the same port as before, after :meth:`stop`) and wait until it answers PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--protected-mode", "yes", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        process = self.process
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_ping(self.port) and process.poll() is None:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT:.0f} s")
            time.sleep(0.02)
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}: "
                               f"{(self.folder / 'redis.log').read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s): every key is lost."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        time.sleep(0.05)  # let the port be free again before a restart binds it

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisMissing(RuntimeError):
    """No ``redis-server`` on this machine."""


@contextlib.contextmanager
def running_redis(folder: Path) -> Iterator[RedisServer]:
    """A started ``redis-server`` working in ``folder``, stopped at the end; RedisMissing where none is installed."""
    executable = redis_server_path()
    if executable is None:
        raise RedisMissing("redis-server is not installed (apt install redis-server; .ci/run installs it)")
    server = RedisServer(folder, executable)
    server.start()
    try:
        yield server
    finally:
        server.stop()
