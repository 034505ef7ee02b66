"""Tier-3 tests' layer over the real-ComfyUI harness (:mod:`harness.comfy_process`): a skip that says why when
``COMFYUI_PATH`` is unset, the random-weight SD1.5 checkpoint, and helpers that drive a server over its HTTP API.

The process control itself lives outside the tests, because the real benchmarks use it too.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from harness import comfy_process
from harness.comfy_process import (  # noqa: F401  (re-exported: the tier's tests import them from here)
    COMFYUI_PATH,
    LOOPBACK,
    POLL_INTERVAL,
    SKIP_REASON,
    ComfyInstance,
    ComfyUIMissing,
    comfyui_python,
    http_json,
    port_answers,
    wait_ready,
)

requires_comfyui = pytest.mark.skipif(not COMFYUI_PATH, reason=SKIP_REASON)
CHECKPOINT_NAME = "sd15-random-v1.safetensors"
CHECKPOINT_BUILD_TIMEOUT = 900.0


def start_comfyui(name: str, base_dir: Path, **options: Any) -> ComfyInstance:
    """:func:`harness.comfy_process.start_comfyui`, skipped with the reason when there is no ComfyUI."""
    try:
        return comfy_process.start_comfyui(name, base_dir, **options)
    except ComfyUIMissing as exc:
        pytest.skip(str(exc))


def link_model(base_dir: Path, folder: str, source: Path, name: str | None = None) -> Path:
    """Symlink a model file into ``base_dir/models/FOLDER`` (ComfyUI rescans on each request)."""
    target_dir = Path(base_dir) / "models" / folder
    target_dir.mkdir(parents=True, exist_ok=True)
    link = target_dir / (name or Path(source).name)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(source).resolve())
    return link


def submit_prompt(url: str, workflow: dict[str, Any], client_id: str | None = None) -> str:
    """POST an API-format workflow to ``/prompt`` and return its prompt_id."""
    answer = http_json("POST", f"{url}/prompt", {"prompt": workflow, "client_id": client_id or uuid.uuid4().hex})
    if answer.get("node_errors"):
        raise RuntimeError(f"node errors: {answer['node_errors']}")
    return str(answer["prompt_id"])


def wait_for_history(url: str, prompt_id: str, timeout: float) -> dict[str, Any]:
    """Poll ``/history/ID`` until the prompt has finished; raise if it failed or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        history = http_json("GET", f"{url}/history/{prompt_id}")
        entry = (history or {}).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            status = entry["status"]
            if status.get("status_str") != "success":
                raise RuntimeError(f"prompt {prompt_id} failed: {json.dumps(status.get('messages'))[-4000:]}")
            return entry
        if time.monotonic() >= deadline:
            raise RuntimeError(f"prompt {prompt_id} not finished after {timeout:.0f}s")
        time.sleep(POLL_INTERVAL)


def output_images(url: str, history_entry: dict[str, Any]) -> list[bytes]:
    """Fetch every image a finished prompt produced, via ``/view``, in node then batch order."""
    images: list[bytes] = []
    for node_id in sorted(history_entry.get("outputs", {}), key=str):
        for image in history_entry["outputs"][node_id].get("images", []):
            query = urllib.parse.urlencode(
                {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image.get("type", "output")}
            )
            with urllib.request.urlopen(f"{url}/view?{query}", timeout=30.0) as response:
                images.append(response.read())
    return images


def sd15_workflow(
    ckpt_name: str,
    seed: int,
    *,
    steps: int = 1,
    width: int = 64,
    height: int = 64,
    batch_size: int = 2,
    cfg: float = 7.0,
    positive: str = "a photo of a cat",
    negative: str = "blurry",
    filename_prefix: str = "sd15",
) -> dict[str, Any]:
    """The classic txt2img graph in API format, with ComfyUI core nodes only."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch_size}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": filename_prefix}},
    }


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "comfy-distributed-tests"
    return Path(os.environ.get("COMFY_DISTRIBUTED_TEST_CACHE") or default)


def random_sd15() -> Path:
    """Path of the random-weight SD1.5 checkpoint, built once per cache dir (about 20 s, 2.1 GB); the
    ``random_sd15_checkpoint`` fixture of tier 3, and the browser test's.

    Built with ComfyUI's own interpreter and model code; a file lock keeps parallel sessions
    from building it twice, and the build writes to a temporary name renamed at the end so a
    killed build never leaves a truncated checkpoint behind.
    """
    if not COMFYUI_PATH:
        pytest.skip(SKIP_REASON)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / CHECKPOINT_NAME
    with open(cache / f"{CHECKPOINT_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        partial = cache / f"{CHECKPOINT_NAME}.partial-{os.getpid()}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (COMFYUI_PATH, env.get("PYTHONPATH")) if p)
        env["OMP_NUM_THREADS"] = "1"
        started = time.monotonic()
        result = subprocess.run(
            [comfyui_python(), str(Path(__file__).resolve().parent / "make_random_sd15.py"), str(partial)],
            cwd=COMFYUI_PATH, env=env, capture_output=True, text=True, timeout=CHECKPOINT_BUILD_TIMEOUT,
        )
        if result.returncode != 0 or not partial.exists():
            partial.unlink(missing_ok=True)
            raise RuntimeError(
                f"make_random_sd15.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
            )
        os.replace(partial, target)
        print(f"built {target} in {time.monotonic() - started:.1f}s")
        return target
