"""Start and stop real ComfyUI processes for tier-3 tests.

Why a harness: tier-3 tests run ComfyUI-Distributed inside unmodified ComfyUI servers (one
master, several workers) on loopback ports, and must be able to kill, restart and inspect
them. Every instance gets its own base directory (custom_nodes, models, output, input, temp,
user, SQLite database, log) so instances never share state, and runs in its own session so a
kill takes its whole process group with it.

Configuration comes from the environment:

* ``COMFYUI_PATH``: ComfyUI root (the folder with ``main.py``). Unset: tier-3 tests skip.
* ``COMFYUI_PYTHON``: its interpreter. Default: ``COMFYUI_PATH/venv/bin/python`` or
  ``COMFYUI_PATH/.venv/bin/python`` when present, else the running interpreter.

Besides the standard library and pytest, only the package's own ComfyUI client is used here (to ask
whether an instance is ready), so the harness imports wherever the package does.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from comfy_distributed.errors import WorkerError
from comfy_distributed.worker_client import Limits, run_blocking
from tests.waiting import free_port

COMFYUI_PATH: str | None = os.environ.get("COMFYUI_PATH") or None
SKIP_REASON = "COMFYUI_PATH is not set: tier-3 tests need a real ComfyUI checkout (see README, Testing)"
requires_comfyui = pytest.mark.skipif(not COMFYUI_PATH, reason=SKIP_REASON)

LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.2
CHECKPOINT_NAME = "sd15-random-v1.safetensors"
CHECKPOINT_BUILD_TIMEOUT = 900.0


def comfyui_python() -> str:
    """Interpreter for ComfyUI: ``COMFYUI_PYTHON``, else a venv inside the checkout, else ours."""
    explicit = os.environ.get("COMFYUI_PYTHON")
    if explicit:
        return explicit
    if COMFYUI_PATH:
        for candidate in ("venv/bin/python", ".venv/bin/python"):
            path = Path(COMFYUI_PATH) / candidate
            if path.exists():
                return str(path)
    return sys.executable


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _is_ready(url: str) -> bool:
    """Whether ``GET /system_stats`` answers, asked with the package's one ComfyUI client."""
    try:
        run_blocking(url, lambda client: client.system_stats(), limits=Limits(2.0, 2.0))
    except WorkerError:
        return False
    return True


def wait_ready(url: str, timeout: float, *, process: subprocess.Popen | None = None) -> None:
    """Poll ``GET /system_stats`` until it answers 200.

    Raises RuntimeError when ``timeout`` seconds pass first, or when ``process`` (if given)
    exits meanwhile, so a crashed server fails fast instead of at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"ComfyUI at {url} exited with code {process.returncode} before it was ready")
        if _is_ready(url):
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"ComfyUI at {url} not ready after {timeout:.0f}s")
        time.sleep(_POLL_INTERVAL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group the process leads (it was started in its own session)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class ComfyInstance:
    """One running ComfyUI server and the files that belong to it."""

    name: str
    port: int
    url: str
    base_dir: Path
    log_path: Path
    process: subprocess.Popen
    command: list[str] = field(default_factory=list, repr=False)
    environment: dict[str, str] = field(default_factory=dict, repr=False)
    ready_timeout: float = 180.0

    def log_tail(self, lines: int = 60) -> str:
        """Last ``lines`` lines of the server log, for assertion messages."""
        return _tail(self.log_path, lines)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL if it has not exited within ``timeout``."""
        if self.running:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
        self.process.wait()

    def kill(self) -> None:
        """SIGKILL the process group now (like ``kill -9``): simulates a crashed worker."""
        _signal_group(self.process, signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        """Stop if running, then start again on the same port with the same dirs; wait until ready."""
        self.stop()
        self.process = _launch(self.command, self.environment, self.log_path, note=f"restart of {self.name}")
        _await_instance(self, self.ready_timeout)


def _launch(command: list[str], environment: dict[str, str], log_path: Path, note: str) -> subprocess.Popen:
    """Start ComfyUI in its own session, appending stdout+stderr to ``log_path``."""
    assert COMFYUI_PATH, SKIP_REASON
    with open(log_path, "ab") as log:
        log.write(f"\n===== harness: {note} at {time.strftime('%H:%M:%S')} =====\n".encode())
        log.flush()
        return subprocess.Popen(
            command,
            cwd=COMFYUI_PATH,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _await_instance(instance: ComfyInstance, timeout: float) -> None:
    """Wait for readiness; on failure kill the process and raise RuntimeError with the log tail."""
    try:
        wait_ready(instance.url, timeout, process=instance.process)
    except RuntimeError as exc:
        instance.kill()
        raise RuntimeError(f"{exc} [{instance.name}]\n--- {instance.log_path} (tail) ---\n{instance.log_tail()}") from None


def start_comfyui(
    name: str,
    base_dir: Path,
    *,
    custom_nodes: dict[str, Path] | None = None,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    port: int | None = None,
    ready_timeout: float = 180.0,
) -> ComfyInstance:
    """Start a ComfyUI server on 127.0.0.1 with its own base directory and wait until it is ready.

    ``custom_nodes`` maps a folder name to a source directory symlinked into
    ``base_dir/custom_nodes/NAME``. With ``port=None`` a free port is chosen, and another one
    is tried if the chosen port was taken in the meantime.
    """
    if not COMFYUI_PATH:
        pytest.skip(SKIP_REASON)
    base_dir = Path(base_dir).resolve()
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/checkpoints"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    for folder, source in (custom_nodes or {}).items():
        link = base_dir / "custom_nodes" / folder
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(source).resolve(), target_is_directory=True)

    environment = dict(os.environ)
    environment["OMP_NUM_THREADS"] = "1"
    environment["PYTHONUNBUFFERED"] = "1"
    environment.update(env or {})
    log_path = base_dir / "comfyui.log"

    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        command = [
            comfyui_python(), str(Path(COMFYUI_PATH) / "main.py"),
            "--listen", LOOPBACK, "--port", str(chosen), "--cpu",
            "--base-directory", str(base_dir),
            "--database-url", f"sqlite:///{base_dir / 'comfyui.db'}",
            "--disable-auto-launch",
            *(extra_args or []),
        ]
        process = _launch(command, environment, log_path, note=f"start of {name} on port {chosen}")
        instance = ComfyInstance(
            name=name, port=chosen, url=f"http://{LOOPBACK}:{chosen}", base_dir=base_dir, log_path=log_path,
            process=process, command=command, environment=environment, ready_timeout=ready_timeout,
        )
        try:
            _await_instance(instance, ready_timeout)
            return instance
        except RuntimeError as exc:
            port_taken = "address already in use" in str(exc).lower() or "errno 98" in str(exc).lower()
            if not port_taken or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# --- helpers for driving a server over its HTTP API ---------------------------------------


def http_json(method: str, url: str, payload: Any | None = None, timeout: float = 30.0) -> Any:
    """Send a JSON request and decode the JSON answer; HTTP errors raise with the body attached."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        with exc:  # closes the response it holds (no ResourceWarning)
            detail = exc.read().decode(errors="replace")
        raise RuntimeError(f"{method} {url} -> {exc.code}: {detail}") from None
    return json.loads(body) if body else None


def port_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


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
        time.sleep(_POLL_INTERVAL)


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
