"""A launcher-run site of real ComfyUI instances for tier-3 tests (COMFYUI_PATH, COMFYUI_PYTHON): a master
with this extension and two plain workers with the test node pack, each with its own base directory and
database (``extra_args``); ``cli`` runs ``comfy-distributed`` over its config and state folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.launcher.helpers import run_cli
from tests.real.harness import COMFYUI_PATH, comfyui_python
from tests.waiting import free_port

REPO = Path(__file__).resolve().parents[2]
TEST_NODES = REPO / "tests" / "comfy_test_nodes"
ENV = {"OMP_NUM_THREADS": "1"}


def base_directory(base: Path, with_extension: bool) -> Path:
    """An instance's own folders and database, with the test node pack (and this extension for the master)."""
    for sub in ("custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    links = {"comfy_test_nodes": TEST_NODES, **({"ComfyUI-Distributed": REPO} if with_extension else {})}
    for name, source in links.items():
        (base / "custom_nodes" / name).symlink_to(source, target_is_directory=True)
    return base


def instance_args(base: Path) -> str:
    return (f"--cpu --listen 127.0.0.1 --disable-auto-launch --base-directory {base} "
            f"--database-url sqlite:///{base / 'comfyui.db'}")


class RealSite:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.config = tmp_path / "gpu_config.json"
        self.ports = [free_port() for _ in range(3)]
        self.bases = [base_directory(tmp_path / name, name == "master") for name in ("master", "w1", "w2")]
        self.data: dict[str, Any] = {
            "master": {"port": self.ports[0], "cuda_device": None, "extra_args": instance_args(self.bases[0]),
                       "python": comfyui_python()},
            "workers": [{"id": k, "name": f"GPU {k}", "port": self.ports[k], "cuda_device": None, "enabled": True,
                         "extra_args": instance_args(self.bases[k]), "python": comfyui_python()} for k in (1, 2)],
            "settings": {"launch_timeout": 240, "worker_timeout": 300, "heartbeat_interval": 0.5},
        }
        self.save()

    def save(self) -> None:
        self.config.write_text(json.dumps(self.data, indent=2))

    def cli(self, *args: str, timeout: float = 900) -> Any:
        return run_cli(*args, "--comfyui", str(COMFYUI_PATH), "--config", str(self.config), "--state-dir",
                       str(self.state), env=ENV, timeout=timeout)
