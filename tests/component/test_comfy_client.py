"""The one ComfyUI client built from a URL (no worker config): the master the CLI talks to, a probed address.

Against the stand-in ComfyUI: a prompt queued and followed like ComfyUI's page does, answers of any
status, the errors that tell a refused connection, a closed socket and a deadline apart, and the
blocking entry for synchronous code.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from comfy_distributed.errors import WorkerAnswerTooLarge, WorkerRefused, WorkerTimeout, WorkerUnreachable
from comfy_distributed.worker_client import ComfyClient, Limits, PromptResult, finished, run_blocking
from tests.standin import StandinComfy
from tests.waiting import free_port


def preview_prompt(delay: float = 0.0) -> dict:
    return {"1": {"class_type": "DistributedTestImage",
                  "inputs": {"seed": 1, "batch_size": 2, "width": 8, "height": 8, "delay": delay}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


@pytest.mark.parametrize("path", ["/prompt", "/api/prompt"])
async def test_a_prompt_is_queued_and_followed_to_its_end(tmp_path, path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, ComfyClient(w1.url) as client:
        followed = await client.queue_and_follow(preview_prompt(), time.monotonic() + 30, path=path)
        assert w1.received[0]["prompt_id"] == followed.prompt_id
        kinds = [event["type"] for _, event in followed.events]
        assert "execution_start" in kinds and finished(followed.events[-1][1], followed.prompt_id)
        assert followed.seconds == followed.events[-1][0] > 0
        entry = await client.history(followed.prompt_id)
        assert entry is not None
        files = PromptResult(followed.prompt_id, entry["outputs"]).images("2")
        assert len(files) == 2 and (await client.view(files[0])).startswith(b"\x89PNG")


async def test_a_reply_carries_any_status_and_only_the_start_of_an_error(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, ComfyClient(w1.url) as client:
        assert (await client.reply("GET", "/system_stats")).json()["system"]["comfyui_version"]
        w1.fail_routes, w1.fail_text = {"/system_stats": 404}, "x" * 5000
        missing = await client.reply("GET", "/system_stats", limit=100)
        assert (missing.status, missing.body) == (404, b"x" * 100)
        w1.fail_routes, w1.redirect_routes = {}, {"/system_stats": "http://elsewhere.invalid/"}
        assert (await client.reply("GET", "/system_stats")).status == 302, "a redirect is answered, not followed"
        w1.redirect_routes, w1.huge_routes = {}, {"/system_stats": 10_000}
        with pytest.raises(WorkerAnswerTooLarge) as caught:
            await client.reply("GET", "/system_stats", limit=1000)
        assert caught.value.limit == 1000 and "cap of 1000 bytes" in caught.value.message


async def test_refused_closed_and_too_late_are_told_apart(tmp_path):
    async with ComfyClient(f"http://127.0.0.1:{free_port()}", name="nothing") as client:
        with pytest.raises(WorkerRefused, match="GET /system_stats: cannot connect"):
            await client.system_stats()
        with pytest.raises(WorkerRefused):
            async with client.listen("c", time.monotonic() + 5):
                pass
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, ComfyClient(w1.url) as client:
        w1.drop_ws_after_start = True
        with pytest.raises(WorkerUnreachable, match="closed before the prompt ended") as closed:
            await client.queue_and_follow(preview_prompt(), time.monotonic() + 30)
        assert not isinstance(closed.value, WorkerRefused)
        w1.drop_ws_after_start, w1.gate = False, asyncio.Event()
        with pytest.raises(WorkerTimeout, match="before the deadline"):
            await client.queue_and_follow(preview_prompt(), time.monotonic() + 1)
        w1.gate.set()


async def test_synchronous_code_gets_the_same_client(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        def stats() -> dict:
            return run_blocking(w1.url, lambda client: client.system_stats(), limits=Limits(2.0, 2.0))

        assert (await asyncio.to_thread(stats))["devices"], "on a thread without a loop, as in the launcher"
        # on a thread whose loop runs (a route or a test calling the launcher): that loop waits, so no stand-in here
        closed = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(WorkerRefused):
            run_blocking(closed, lambda client: client.system_stats())
