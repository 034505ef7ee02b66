"""Fixtures for the launcher tests: a stand-in ComfyUI folder and a state folder, both cleaned up, and one
throwaway sshd on loopback for the SSH tests (their modules skip, saying why, where sshd is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .helpers import kill_recorded, make_comfyui
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
