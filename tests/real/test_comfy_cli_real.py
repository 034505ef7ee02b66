"""Tier 3: comfy-cli's ``comfy run --workflow`` runs a shipped API example on a real master, and the job is
distributed (COMFYUI_PATH, COMFYUI_PYTHON).

comfy-cli lives in its own venv: ``COMFY_CLI`` names its ``comfy`` executable; otherwise ``comfy`` on PATH;
otherwise the test makes a venv under the test cache and installs comfy-cli from the package index there once.
Where none of these works the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real.cluster import Cluster
from tests.real.harness import cache_dir, http_json, link_model, random_sd15, requires_comfyui

pytestmark = [requires_comfyui, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "api_workflows" / "txt2img_cpu.json"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
"""The checkpoint the examples name; the random SD1.5 one is linked under this name."""


def comfy_cli() -> str:
    """The ``comfy`` executable of a comfy-cli in its own venv, or a skip saying why there is none."""
    named = os.environ.get("COMFY_CLI")
    if named:
        if not os.access(named, os.X_OK):
            pytest.skip(f"COMFY_CLI={named} is not an executable")
        return named
    on_path = shutil.which("comfy")
    if on_path:
        return on_path
    venv = cache_dir() / "comfy-cli-venv"
    executable = venv / ("Scripts" if os.name == "nt" else "bin") / "comfy"
    if executable.exists():
        return str(executable)
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        pytest.skip(f"comfy-cli: could not make a venv for it: {made.stderr.strip()[-300:]}")
    pip = venv / ("Scripts" if os.name == "nt" else "bin") / "pip"
    installed = subprocess.run([str(pip), "install", "-q", "comfy-cli"], capture_output=True, text=True, timeout=900)
    if installed.returncode != 0 or not executable.exists():
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip("comfy-cli cannot be installed here (pip install comfy-cli failed: "
                    f"{installed.stderr.strip()[-300:]}); set COMFY_CLI to its comfy executable")
    return str(executable)


def test_comfy_run_runs_a_shipped_api_example_distributed(tmp_path: Path) -> None:
    comfy = comfy_cli()
    checkpoint = random_sd15()
    cluster = Cluster(tmp_path, workers=("w1",))
    try:
        for instance in (cluster.master, cluster.w1):
            link_model(instance.base_dir, "checkpoints", checkpoint, CHECKPOINT)
        cluster.use_workers(cluster.w1)
        home = tmp_path / "home"  # comfy-cli keeps its settings under the home folder: not the user's
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "COMFY_NO_WATCH": "1",
               "NO_COLOR": "1", "COLUMNS": "200"}
        ran = subprocess.run(
            [comfy, "--skip-prompt", "--no-json", "run", "--workflow", str(EXAMPLE), "--host", "127.0.0.1",
             "--port", str(cluster.master.port), "--wait", "--timeout", "600"],
            capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
        said = f"comfy run exited {ran.returncode}\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
        assert ran.returncode == 0, said + "\n" + cluster.master.log_tail()

        history = http_json("GET", f"{cluster.master.url}/history")
        assert len(history) == 1, f"one prompt on the master: {list(history)}"
        (entry,) = history.values()
        assert entry["status"]["status_str"] == "success", entry["status"]
        images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
        assert len(images) == 2, f"the master's image and the worker's, collected: {images}\n{said}"
        saved = sorted((cluster.master.base_dir / "output").glob("*.png"))
        assert len(saved) == 2, saved
        on_worker = http_json("GET", f"{cluster.w1.url}/history")
        assert len(on_worker) == 1, f"the worker ran its share: {list(on_worker)}"
        (worker_entry,) = on_worker.values()
        assert worker_entry["status"]["status_str"] == "success", worker_entry["status"]
    finally:
        cluster.stop()
