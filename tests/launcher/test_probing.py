"""The launcher's probe: ``GET /system_stats`` asked through the one ComfyUI client, its answer judged.

The probe is synchronous (the launcher runs no event loop), so it is called on a thread here while
the stand-in ComfyUI serves on the test's loop.
"""

from __future__ import annotations

import asyncio

from comfy_distributed.launcher import probe
from comfy_distributed.launcher.probing import Probe, judge
from comfy_distributed.worker_client import Reply
from tests.standin import StandinComfy
from tests.waiting import free_port


async def test_the_probe_tells_comfyui_from_other_programs(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        found = await asyncio.to_thread(probe, w1.url)
        assert found.state == "comfyui" and found.stats and found.stats["devices"]
        w1.fail_routes = {"/system_stats": 404}
        assert await asyncio.to_thread(probe, w1.url) == Probe(
            "foreign", detail="it answers HTTP 404 to GET /system_stats")
        w1.fail_routes, w1.redirect_routes = {}, {"/system_stats": "http://elsewhere.invalid/system_stats"}
        assert await asyncio.to_thread(probe, w1.url) == Probe(
            "foreign", detail="it answers HTTP 302 to GET /system_stats"), "a redirect is not followed"
        w1.redirect_routes, w1.tamper_json = {}, {"/system_stats": lambda body: {"system": body["system"]}}
        assert await asyncio.to_thread(probe, w1.url) == Probe(
            "foreign", detail="its GET /system_stats is not ComfyUI's")
        w1.tamper_json, w1.huge_routes = {}, {"/system_stats": 2_000_000}
        assert await asyncio.to_thread(probe, w1.url) == Probe("foreign", detail="its GET /system_stats is not JSON")
    assert probe(f"http://127.0.0.1:{free_port()}") == Probe("closed"), "nothing listens: no detail"


def test_answers_that_are_not_comfyuis():
    assert judge(Reply(200, b"<html>hello</html>")) == Probe("foreign", detail="its GET /system_stats is not JSON")
    assert judge(Reply(200, b"[1, 2]")) == Probe("foreign", detail="its GET /system_stats is not ComfyUI's")
    assert judge(Reply(500, b"{}")).detail == "it answers HTTP 500 to GET /system_stats"
    stats = {"system": {"os": "posix"}, "devices": []}
    assert judge(Reply(200, b'{"system": {"os": "posix"}, "devices": []}')) == Probe("comfyui", stats)
