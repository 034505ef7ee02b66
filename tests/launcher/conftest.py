"""Fixtures for the launcher tests: a stand-in ComfyUI folder and a state folder, both cleaned up, and one
throwaway sshd on loopback for the SSH tests (their modules skip, saying why, where sshd is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.waiting import free_port

from .helpers import explain, kill_recorded, make_comfyui, run_cli, write_config
from .sshd import LocalSshd


@pytest.fixture
def comfy_root(tmp_path: Path) -> Iterator[Path]:
    """A ComfyUI folder whose main.py is the stand-in; every process recorded under tmp_path is killed after."""
    root = make_comfyui(tmp_path / "ComfyUI")
    try:
        yield root
    finally:
        kill_recorded(tmp_path)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    server = LocalSshd(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stand_in_master(comfy_root, state_dir, tmp_path):
    """A stand-in master started by the launcher; the CLI options that reach it."""
    port = free_port()
    config = write_config(tmp_path / "gpu_config.json", port, [])
    options = ["--comfyui", str(comfy_root), "--config", str(config), "--state-dir", str(state_dir)]
    started = run_cli("master", *options)
    assert started.returncode == 0, explain(started)
    yield options
    run_cli("stop", *options)
