"""What the launcher works on: instances of the config, pid-file records, outcomes, and its constants."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import WorkerConfig


STATE_ENV = "COMFY_DISTRIBUTED_STATE_DIR"
FAST_SPACING = 2.0
"""Seconds between two starts in ``all-fast`` (the original README's value)."""
POLL_INTERVAL = 0.25
PROBE_TIMEOUT = 2.0
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 30
LOG_MARK = "===== comfy-distributed:"
"""First characters of the line written to a log before each start; the tail shown after a failure
starts after the last one."""
WINDOWS = os.name == "nt"
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from comfy_distributed.cli import main; "
             "sys.exit(main(sys.argv[1:]))")
"""Runs the CLI from the package's folder (``-c``, not ``-m`` + PYTHONPATH: python_embeded ignores PYTHONPATH)."""


# --- what to run --------------------------------------------------------------------------------


@dataclass(slots=True)
class Instance:
    """The master or a worker, as the launcher sees it."""

    key: str
    """``master`` or ``worker-<id>``: names the pid and log files."""
    name: str
    field: str
    """Where it is in gpu_config.json (``master``, ``workers[1]``), for messages."""
    port: int
    url: str
    """Where the launcher checks that it answers."""
    cuda_device: int | None
    extra_args: str
    python: str | None
    enabled: bool = True
    kind: str = "local"
    """``local`` (a process here), ``ssh`` (started over SSH), ``external`` (on another machine, not ours to start),
    ``agent`` (the pool agent beside a local worker, :mod:`.agents`)."""
    worker: WorkerConfig | None = None

    @property
    def label(self) -> str:
        return "master" if self.worker is None else f"{self.name} (worker {self.worker.id})"


@dataclass(slots=True)
class LaunchContext:
    comfyui_root: Path
    config_path: Path
    state_dir: Path


@dataclass(slots=True)
class Record:
    """What a pid file holds."""

    pid: int
    port: int
    started: float
    where: str = "local"
    token: str | None = None
    """Identifies the process beyond its pid (Linux start time), so a reused pid is not taken for it."""
    log: str = ""
    python: str = ""


@dataclass(slots=True)
class Outcome:
    """What happened to one instance: started, running (already), stopped, not_running, failed, skipped."""

    instance: Instance
    action: str
    pid: int | None = None
    detail: str = ""
    error: str | None = None
    log: str | None = None

    def as_json(self) -> dict[str, Any]:
        worker = self.instance.worker
        return {"worker_id": None if worker is None else worker.id, "name": self.instance.name,
                "action": self.action, "ok": self.error is None, "pid": self.pid, "error": self.error,
                "log": self.log}


@dataclass(slots=True)
class InstanceStatus:
    instance: Instance
    state: str
    """ready, starting, down, disabled, port-taken, wrong-port, not-answering; a pool agent's up, down or disabled
    (see :mod:`.status`)."""
    pid: int | None = None
    vram: str | None = None
    detail: str = ""
    """A short note for the status table."""
    hint: str = ""
    """What to do about a state other than ready, in a sentence (empty when there is nothing to do)."""

    @property
    def down(self) -> bool:
        return self.instance.enabled and self.state not in ("ready", "up")
