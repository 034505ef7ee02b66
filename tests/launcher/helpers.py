"""What the launcher tests share: a ComfyUI folder whose main.py is the stand-in, configs, the CLI, cleanup.

Every process a test starts is found again through the pid files the launcher writes (here and
in a stand-in ComfyUI folder's ``user/comfy-distributed``, where the SSH path keeps them) and
killed at teardown, by pid, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_distributed.errors import WorkerError
from comfy_distributed.worker_client import Limits, run_blocking

REPO = Path(__file__).resolve().parents[2]
FAKE_MAIN = Path(__file__).resolve().parent / "fake_comfyui" / "main.py"
CLI_TIMEOUT = 120.0


def make_comfyui(folder: Path) -> Path:
    """A ComfyUI folder (main.py, comfy/, custom_nodes/) whose main.py runs the stand-in server."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comfy").mkdir(exist_ok=True)
    (folder / "custom_nodes").mkdir(exist_ok=True)
    (folder / "main.py").write_text(f"import runpy\nrunpy.run_path({str(FAKE_MAIN)!r}, run_name='__main__')\n")
    return folder


def write_config(path: Path, master_port: int, workers: list[dict[str, Any]], master_args: str = "--cpu",
                 **settings: Any) -> Path:
    config = {"master": {"port": master_port, "cuda_device": None, "extra_args": master_args},
              "workers": workers, "settings": {"launch_timeout": 60, **settings}}
    path.write_text(json.dumps(config, indent=2))
    return path


def worker(worker_id: int | str, port: int, **fields: Any) -> dict[str, Any]:
    return {"id": worker_id, "name": f"GPU {worker_id}", "port": port, "enabled": True, "extra_args": "--cpu",
            **fields}


def run_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = CLI_TIMEOUT, new_session: bool = False) -> subprocess.CompletedProcess:
    """``python -m comfy_distributed ARGS`` as a user would run it; output captured as text. ``new_session``: in
    a process group of its own (a launcher that signalled its own group would not take the tests with it)."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("COMFY_DISTRIBUTED_CONFIG", None)
    environment.pop("COMFY_DISTRIBUTED_STATE_DIR", None)
    return subprocess.run([sys.executable, "-m", "comfy_distributed", *args], cwd=cwd, env=environment,
                          input=input, capture_output=True, text=True, timeout=timeout, check=False,
                          start_new_session=new_session)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit code {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``GET /system_stats`` answers on the port (asked with the package's one ComfyUI client)."""
    try:
        run_blocking(f"http://{host}:{port}", lambda client: client.system_stats(), limits=Limits(2.0, 2.0))
    except WorkerError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True


def read_pid(state: Path, key: str) -> int:
    return int(json.loads((state / f"{key}.pid").read_text())["pid"])


def pids_in(folder: Path) -> list[int]:
    """Every pid recorded in the pid files under ``folder`` (JSON, or a plain number as the SSH script writes)."""
    found = []
    for path in folder.rglob("*.pid"):
        try:
            text = path.read_text().strip()
            found.append(int(json.loads(text)["pid"]) if text.startswith("{") else int(text))
        except (OSError, ValueError, KeyError):
            continue
    return found


def kill_recorded(folder: Path) -> None:
    """Teardown: SIGKILL every process group recorded under ``folder`` (only ours: we wrote those files)."""
    for pid in pids_in(folder):
        if pid <= 1:  # 0 and -1 would be this process's group and every process: a test planted it
            continue
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass


class RecordingLauncher:
    """A stand-in for :class:`~comfy_distributed.launcher.Launcher` that starts nothing, for API tests.

    ``add_launch_routes(..., launcher_factory=lambda: RecordingLauncher(store.get(), calls), ...)``: every
    start and restart succeeds at once (``action: started``, pid 0) and is appended to ``calls``; every instance
    has a two-line log.
    """

    def __init__(self, config: Any, calls: list[tuple[str, str]]) -> None:
        from comfy_distributed.launcher import LaunchContext, Launcher

        self._real = Launcher(config, LaunchContext(Path("."), Path("gpu_config.json"), Path(".")))
        self.calls = calls

    def find(self, name: str) -> Any:
        return self._real.find(name)

    def _started(self, what: str, instance: Any) -> Any:
        from comfy_distributed.launcher import Outcome

        self.calls.append((what, instance.key))
        return Outcome(instance, "started", 0)

    def start(self, instance: Any, wait: bool = True) -> Any:
        return self._started("start", instance)

    def restart(self, instance: Any, wait: bool = True) -> Any:
        return self._started("restart", instance)

    def log_tail(self, instance: Any, lines: int = 30) -> tuple[str, str]:
        """A log of two lines for every instance (its reading is recorded too)."""
        self.calls.append(("logs", instance.key))
        return f"{instance.key}.log", "\n".join([f"{instance.label} started", "To see the GUI go to: ..."][-lines:])


@dataclass
class Site:
    """A launcher test's ComfyUI folder, config, state folder and ports (master first), and its CLI."""

    root: Path
    config: Path
    state: Path
    ports: list[int]

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_cli(*args, "--comfyui", str(self.root), "--config", str(self.config), "--state-dir",
                       str(self.state), **kwargs)

    def configure(self, workers: list[dict], master_args: str = "--cpu", **settings) -> None:
        write_config(self.config, self.ports[0], workers, master_args, **settings)

    def started(self, key: str) -> dict:
        """The stand-in's own report of how it was started (first line it logs)."""
        for line in (self.state / f"{key}.log").read_text().splitlines():
            if line.startswith("fake-comfyui: {"):
                report = json.loads(line.split(": ", 1)[1])
        return report
