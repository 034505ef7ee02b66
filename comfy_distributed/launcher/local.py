"""The backend for instances on this machine, and the interface every backend has."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Protocol

from ..config import CONFIG_ENV
from ..errors import LaunchError
from ..config.models import ROLE_ENV
from .model import LOG_TAIL_LINES, Instance, LaunchContext, Record, STATE_ENV
from .discovery import ROOT_HINT, find_python, split_args
from .processes import exit_code, is_process_id, process_alive, read_log_tail, spawn_detached, start_token, terminate
from .state_files import read_private, replace_private


class Backend(Protocol):
    """Where instances run: this machine (:class:`LocalProcesses`) or another one (:class:`.ssh.SshProcesses`)."""

    def spawn(self, instance: Instance) -> Record: ...
    def record(self, instance: Instance) -> Record | None: ...
    def alive(self, instance: Instance, record: Record) -> bool: ...
    def stop(self, instance: Instance) -> int | None: ...
    def log_tail(self, instance: Instance, lines: int = LOG_TAIL_LINES) -> str: ...
    def log_name(self, instance: Instance) -> str: ...
    def describe_exit(self, instance: Instance, record: Record) -> str: ...


class LocalProcesses:
    """Instances on this machine: detached processes found again through their pid files."""

    def __init__(self, context: LaunchContext) -> None:
        self.context = context

    def pid_path(self, key: str) -> Path:
        return self.context.state_dir / f"{key}.pid"

    def log_path(self, key: str) -> Path:
        return self.context.state_dir / f"{key}.log"

    def lock_path(self, key: str) -> Path:
        return self.context.state_dir / f"{key}.lock"

    def log_name(self, instance: Instance) -> str:
        return str(self.log_path(instance.key))

    def read(self, key: str) -> Record | None:
        """The pid file's record; None when it is missing, unreadable, or not a file of ours (see
        :mod:`.state_files`: a link or another user's file is never trusted)."""
        raw = read_private(self.pid_path(key))
        if raw is None:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                data = {"pid": data, "port": 0, "started": 0.0}  # a bare pid, as other tools write (no token)
            known = {name: value for name, value in data.items() if name in Record.__dataclass_fields__}
            return Record(**known) if is_process_id(known.get("pid")) else None
        except (ValueError, TypeError):
            return None

    def write(self, key: str, record: Record) -> None:
        replace_private(self.pid_path(key), (json.dumps({
            "pid": record.pid, "port": record.port, "started": record.started, "where": record.where,
            "token": record.token, "log": record.log, "python": record.python}) + "\n").encode("utf-8"))

    def forget(self, key: str) -> None:
        self.pid_path(key).unlink(missing_ok=True)

    def record(self, instance: Instance) -> Record | None:
        """The live record of a process this launcher started; a stale pid file is removed."""
        record = self.read(instance.key)
        if record is not None and not process_alive(record.pid, record.token):
            self.forget(instance.key)
            return None
        return record

    def alive(self, instance: Instance, record: Record) -> bool:
        return process_alive(record.pid, record.token)

    def plan(self, instance: Instance) -> tuple[list[str], dict[str, str], str]:
        """Command, environment and the Python's origin for a local instance."""
        root = self.context.comfyui_root
        main = root / "main.py"
        if not main.is_file():
            raise LaunchError(f"{root} has no main.py, so it is not ComfyUI's folder. {ROOT_HINT}")
        python, origin = find_python(root, instance.python, instance.field)
        command = [python, str(main), "--port", str(instance.port), *split_args(instance.extra_args, instance.field)]
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if instance.cuda_device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(instance.cuda_device)
        env[ROLE_ENV] = "master" if instance.worker is None else "worker"  # a worker keeps the extension passive
        if instance.worker is None:  # the master reads the same config and state as its launcher
            env[CONFIG_ENV] = str(self.context.config_path)
            env[STATE_ENV] = str(self.context.state_dir)
        return command, env, origin

    def spawn(self, instance: Instance) -> Record:
        command, env, origin = self.plan(instance)
        log = self.log_path(instance.key)
        pid = spawn_detached(command, env, self.context.comfyui_root, log,
                             f"start of {instance.label} on port {instance.port} (Python: {origin})")
        record = Record(pid, instance.port, time.time(), "local", start_token(pid), str(log),
                        f"{command[0]} ({origin})")
        self.write(instance.key, record)
        return record

    def stop(self, instance: Instance) -> int | None:
        record = self.record(instance)
        if record is None:
            return None
        terminate(record.pid, record.token)
        self.forget(instance.key)
        return record.pid

    def log_tail(self, instance: Instance, lines: int = LOG_TAIL_LINES) -> str:
        return read_log_tail(self.log_path(instance.key), lines)

    def describe_exit(self, instance: Instance, record: Record) -> str:
        code = exit_code(record.pid)
        return "exited" if code is None else f"exited with code {code}"


Say = Callable[[str], None]
