"""Fixtures for the launcher tests: a stand-in ComfyUI folder and a state folder, both cleaned up."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .helpers import kill_recorded, make_comfyui


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
