"""Tier 3: the harness against real ComfyUI, and SD1.5 determinism across processes.

Why: every other tier-3 test trusts that the harness really starts, kills and restarts
ComfyUI, and that two ComfyUI processes given the same seed produce the same pixels (the
premise of comparing distributed output to a single-machine run).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import (
    ComfyInstance,
    http_json,
    link_model,
    output_images,
    port_answers,
    requires_comfyui,
    sd15_workflow,
    submit_prompt,
    wait_for_history,
)

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]

TEST_NODES = Path(__file__).resolve().parent.parent / "comfy_test_nodes"
CKPT_NAME = "sd15-random-v1.safetensors"


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def test_start_kill_restart(comfy_factory: Callable[..., ComfyInstance]) -> None:
    started = time.monotonic()
    comfy = comfy_factory("solo", custom_nodes={"comfy_test_nodes": TEST_NODES})
    print(f"startup {time.monotonic() - started:.1f}s")

    stats = http_json("GET", f"{comfy.url}/system_stats")
    assert "system" in stats and "devices" in stats, stats
    assert (comfy.base_dir / "custom_nodes" / "comfy_test_nodes").is_symlink()
    info = http_json("GET", f"{comfy.url}/object_info/DistributedTestImage")
    assert "DistributedTestImage" in info, comfy.log_tail()
    assert comfy.log_path.exists() and "Starting server" in comfy.log_path.read_text(errors="replace")

    comfy.kill()
    assert comfy.process.returncode == -9
    _wait_until(lambda: not port_answers(comfy.port), 10, f"port {comfy.port} to close")

    port = comfy.port
    comfy.restart()
    assert comfy.port == port and comfy.process.poll() is None
    assert http_json("GET", f"{comfy.url}/system_stats")["system"]
    assert comfy.log_path.read_text(errors="replace").count("Starting server") == 2

    comfy.stop()
    assert comfy.process.returncode is not None
    _wait_until(lambda: not port_answers(comfy.port), 10, f"port {comfy.port} to close after stop")


def test_start_failure_raises_with_log_tail(comfy_factory: Callable[..., ComfyInstance]) -> None:
    with pytest.raises(RuntimeError) as failure:
        comfy_factory("broken", extra_args=["--no-such-flag"], ready_timeout=60)
    message = str(failure.value)
    assert "exited with code" in message and "--no-such-flag" in message, message


def _pixels(png_bytes: list[bytes]) -> list[tuple[str, tuple[int, int], bytes]]:
    """Decoded pixel data (mode, size, raw bytes) for each PNG, so metadata cannot matter."""
    from PIL import Image

    out = []
    for data in png_bytes:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert all(low < high for low, high in image.getextrema()) or image.mode != "RGB", "one-colour image"
            out.append((image.mode, image.size, image.tobytes()))
    return out


def _run(comfy: ComfyInstance, seed: int) -> tuple[list[tuple[str, tuple[int, int], bytes]], float]:
    started = time.monotonic()
    prompt_id = submit_prompt(comfy.url, sd15_workflow(CKPT_NAME, seed, steps=1, batch_size=2))
    try:
        entry = wait_for_history(comfy.url, prompt_id, timeout=600)
    except RuntimeError as exc:
        raise AssertionError(f"{exc}\n{comfy.log_tail()}") from None
    elapsed = time.monotonic() - started
    return _pixels(output_images(comfy.url, entry)), elapsed


def test_sd15_same_seed_same_pixels_across_processes(
    comfy_factory: Callable[..., ComfyInstance], random_sd15_checkpoint: Path, tmp_path: Path
) -> None:
    instances = []
    for name in ("first", "second"):
        link_model(tmp_path / name, "checkpoints", random_sd15_checkpoint, CKPT_NAME)
        instances.append(comfy_factory(name))
    first, second = instances

    a42, cold = _run(first, 42)
    a43, warm = _run(first, 43)
    b42, other_process = _run(second, 42)
    print(f"job timings: cold {cold:.1f}s, warm {warm:.1f}s, second process cold {other_process:.1f}s")

    assert len(a42) == len(b42) == len(a43) == 2
    assert all(mode == "RGB" and size == (64, 64) for mode, size, _ in a42)
    assert a42[0][2] != a42[1][2], "the two images of one batch must differ"
    assert a42 == b42, "same seed in two ComfyUI processes must give identical pixels"
    assert a42 != a43 and a42[0][2] != a43[0][2], "a different seed must give different pixels"
