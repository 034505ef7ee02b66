"""Start and stop real ComfyUI processes: for tier-3 tests and the real benchmarks alike.

Why a harness: tier-3 tests and the benchmarks run ComfyUI-Distributed inside unmodified ComfyUI servers (one
master, several workers) on loopback ports, and must be able to kill, restart and inspect
them. Every instance gets its own base directory (custom_nodes, models, output, input, temp,
user, SQLite database, log) so instances never share state, and runs in its own session so a
kill takes its whole process group with it.

Configuration comes from the environment:

* ``COMFYUI_PATH``: ComfyUI root (the folder with ``main.py``). Unset: tier-3 tests skip.
* ``COMFYUI_PYTHON``: its interpreter. Default: ``COMFYUI_PATH/venv/bin/python`` or
  ``COMFYUI_PATH/.venv/bin/python`` when present, else the running interpreter.

Besides the standard library, only the package's own ComfyUI client is used here (to ask whether an
instance is ready), so the harness imports wherever the package does, pytest or not: without
``COMFYUI_PATH`` it raises :class:`ComfyUIMissing` (the tests' layer, ``tests/real/harness.py``, turns
that into a skip that says why).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_distributed.errors import WorkerError
from comfy_distributed.worker_client import Limits, run_blocking

COMFYUI_PATH: str | None = os.environ.get("COMFYUI_PATH") or None
SKIP_REASON = "COMFYUI_PATH is not set: tier-3 tests need a real ComfyUI checkout (see README, Testing)"
ROOT = Path(__file__).resolve().parent.parent
TEST_NODES = ROOT / "tests" / "comfy_test_nodes"
"""The test node pack (seeded images with a configurable delay) that the real tier and the benchmarks install."""

LOOPBACK = "127.0.0.1"
POLL_INTERVAL = 0.2


class ComfyUIMissing(RuntimeError):
    """No ComfyUI to start: ``COMFYUI_PATH`` is not set."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def comfyui_python() -> str:
    """Interpreter for ComfyUI: ``COMFYUI_PYTHON``, else a venv inside the checkout, else ours."""
    explicit = os.environ.get("COMFYUI_PYTHON")
    if explicit:
        return explicit
    if COMFYUI_PATH:
        for candidate in ("venv/bin/python", ".venv/bin/python"):
            path = Path(COMFYUI_PATH) / candidate
            if path.exists():
                return str(path)
    return sys.executable


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _is_ready(url: str) -> bool:
    """Whether ``GET /system_stats`` answers, asked with the package's one ComfyUI client."""
    try:
        run_blocking(url, lambda client: client.system_stats(), limits=Limits(2.0, 2.0))
    except WorkerError:
        return False
    return True


def wait_ready(url: str, timeout: float, *, process: subprocess.Popen | None = None) -> None:
    """Poll ``GET /system_stats`` until it answers 200.

    Raises RuntimeError when ``timeout`` seconds pass first, or when ``process`` (if given)
    exits meanwhile, so a crashed server fails fast instead of at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"ComfyUI at {url} exited with code {process.returncode} before it was ready")
        if _is_ready(url):
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"ComfyUI at {url} not ready after {timeout:.0f}s")
        time.sleep(POLL_INTERVAL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group the process leads (it was started in its own session)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class ComfyInstance:
    """One running ComfyUI server and the files that belong to it."""

    name: str
    port: int
    url: str
    base_dir: Path
    log_path: Path
    process: subprocess.Popen
    command: list[str] = field(default_factory=list, repr=False)
    environment: dict[str, str] = field(default_factory=dict, repr=False)
    ready_timeout: float = 180.0

    def log_tail(self, lines: int = 60) -> str:
        """Last ``lines`` lines of the server log, for assertion messages."""
        return _tail(self.log_path, lines)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL if it has not exited within ``timeout``."""
        if self.running:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
        self.process.wait()

    def kill(self) -> None:
        """SIGKILL the process group now (like ``kill -9``): simulates a crashed worker."""
        _signal_group(self.process, signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        """Stop if running, then start again on the same port with the same dirs; wait until ready."""
        self.stop()
        self.process = _launch(self.command, self.environment, self.log_path, note=f"restart of {self.name}")
        _await_instance(self, self.ready_timeout)


def _launch(command: list[str], environment: dict[str, str], log_path: Path, note: str) -> subprocess.Popen:
    """Start ComfyUI in its own session, appending stdout+stderr to ``log_path``."""
    if not COMFYUI_PATH:
        raise ComfyUIMissing(SKIP_REASON)
    with open(log_path, "ab") as log:
        log.write(f"\n===== harness: {note} at {time.strftime('%H:%M:%S')} =====\n".encode())
        log.flush()
        return subprocess.Popen(
            command,
            cwd=COMFYUI_PATH,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _await_instance(instance: ComfyInstance, timeout: float) -> None:
    """Wait for readiness; on failure kill the process and raise RuntimeError with the log tail."""
    try:
        wait_ready(instance.url, timeout, process=instance.process)
    except RuntimeError as exc:
        instance.kill()
        raise RuntimeError(f"{exc} [{instance.name}]\n--- {instance.log_path} (tail) ---\n{instance.log_tail()}") from None


def start_comfyui(
    name: str,
    base_dir: Path,
    *,
    custom_nodes: dict[str, Path] | None = None,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    port: int | None = None,
    ready_timeout: float = 180.0,
) -> ComfyInstance:
    """Start a ComfyUI server on 127.0.0.1 with its own base directory and wait until it is ready.

    ``custom_nodes`` maps a folder name to a source directory symlinked into
    ``base_dir/custom_nodes/NAME``. With ``port=None`` a free port is chosen, and another one
    is tried if the chosen port was taken in the meantime.
    """
    if not COMFYUI_PATH:
        raise ComfyUIMissing(SKIP_REASON)
    base_dir = Path(base_dir).resolve()
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/checkpoints"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    for folder, source in (custom_nodes or {}).items():
        link = base_dir / "custom_nodes" / folder
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(source).resolve(), target_is_directory=True)

    environment = dict(os.environ)
    environment["OMP_NUM_THREADS"] = "1"
    environment["PYTHONUNBUFFERED"] = "1"
    environment.update(env or {})
    log_path = base_dir / "comfyui.log"

    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        command = [
            comfyui_python(), str(Path(COMFYUI_PATH) / "main.py"),
            "--listen", LOOPBACK, "--port", str(chosen), "--cpu",
            "--base-directory", str(base_dir),
            "--database-url", f"sqlite:///{base_dir / 'comfyui.db'}",
            "--disable-auto-launch",
            *(extra_args or []),
        ]
        process = _launch(command, environment, log_path, note=f"start of {name} on port {chosen}")
        instance = ComfyInstance(
            name=name, port=chosen, url=f"http://{LOOPBACK}:{chosen}", base_dir=base_dir, log_path=log_path,
            process=process, command=command, environment=environment, ready_timeout=ready_timeout,
        )
        try:
            _await_instance(instance, ready_timeout)
            return instance
        except RuntimeError as exc:
            port_taken = "address already in use" in str(exc).lower() or "errno 98" in str(exc).lower()
            if not port_taken or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# --- helpers for driving a server over its HTTP API ---------------------------------------


def http_json(method: str, url: str, payload: Any | None = None, timeout: float = 30.0) -> Any:
    """Send a JSON request and decode the JSON answer; HTTP errors raise with the body attached."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        with exc:  # closes the response it holds (no ResourceWarning)
            detail = exc.read().decode(errors="replace")
        raise RuntimeError(f"{method} {url} -> {exc.code}: {detail}") from None
    return json.loads(body) if body else None


def port_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False




def history_entry(url: str, prompt_id: str, timeout: float = 30.0) -> dict:
    """The finished prompt's history entry, whether it succeeded or not."""
    deadline = time.monotonic() + timeout
    while True:
        entry = (http_json("GET", f"{url}/history/{prompt_id}") or {}).get(prompt_id)
        if entry:
            return entry
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no history for {prompt_id} after {timeout:.0f}s")
        time.sleep(0.05)
