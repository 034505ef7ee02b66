"""Pool agents as real processes (``python -m comfy_distributed agent``), for the real tier and the benchmarks:
started in a session of their own, killed like ``kill -9``, or stopped as a user's Ctrl+C stops them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .comfy_process import ROOT

STOP_TIMEOUT = 20.0
"""Seconds an agent gets to finish its unit and leave after SIGTERM, before SIGKILL."""


def start_agent(pool_url: str, comfyui_url: str, name: str, log_path: Path) -> subprocess.Popen:
    """An agent beside the ComfyUI at ``comfyui_url`` in the pool at ``pool_url``, writing to ``log_path``."""
    with open(log_path, "ab") as log:  # the agent holds its own copy of the handle
        return subprocess.Popen(
            [sys.executable, "-m", "comfy_distributed", "agent", "--pool", pool_url, "--comfyui", comfyui_url,
             "--name", name], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)


def kill_agent(process: subprocess.Popen) -> None:
    """SIGKILL its process group now (the agent dies mid-unit: nothing is cleaned up in Redis)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop_agent(process: subprocess.Popen) -> None:
    """SIGTERM (it finishes its unit and leaves), then SIGKILL after :data:`STOP_TIMEOUT` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_agent(process)
