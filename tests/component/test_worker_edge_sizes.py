"""Sizes a worker sends are capped while they stream, and files are measured before they are decoded."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_distributed.config import Settings, WorkerConfig
from comfy_distributed.errors import WorkerProtocolError
from comfy_distributed.collector.codecs import PNG_SIGNATURE, decode_kind, fits
from comfy_distributed.worker_client import MAX_FILES_PER_OUTPUT, MIB, OutputFile, WorkerClient
from tests.audio_support import flac_like_comfyui
from tests.component.cluster import Cluster, assert_unit_images, by_position, workflow
from tests.standin import StandinComfy
from tests.waiting import until


def client_for(worker: StandinComfy, **settings) -> WorkerClient:
    return WorkerClient(WorkerConfig(id=1, name="GPU 1", port=worker.port), Settings(**settings))


async def test_a_file_over_the_cap_is_refused_and_its_stream_cut(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.huge_routes = {"/view": 64 * MIB}
        async with client_for(w1, max_file_mb=1) as client:
            with pytest.raises(WorkerProtocolError) as caught:
                await client.view(OutputFile("big.png", "", "output"))
        assert caught.value.worker == "GPU 1"
        assert "GET /view" in caught.value.message and "cap of 1 MiB" in caught.value.message
        await until(lambda: "/view" in w1.huge_aborted, timeout=10)
        assert w1.huge_sent["/view"] < 32 * MIB  # the master hung up long before the end


@pytest.mark.parametrize("route, size, declared, cap", [
    ("/object_info", 64 * MIB, True, "32 MiB"),
    ("/system_stats", 64 * MIB, False, "4 MiB"),
])
async def test_json_answers_are_capped(tmp_path, route, size, declared, cap):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.huge_routes, w1.huge_declared = {route: size}, declared
        async with client_for(w1) as client:
            call = client.object_info if route == "/object_info" else client.system_stats
            started = time.monotonic()
            with pytest.raises(WorkerProtocolError, match=f"GET {route}: the answer is larger than the cap of {cap}"):
                await call()
            assert time.monotonic() - started < 5
        await until(lambda: route in w1.huge_aborted, timeout=10)


async def test_more_files_than_an_output_may_list_are_not_fetched(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        files = [OutputFile(f"{i}.png", "", "output") for i in range(MAX_FILES_PER_OUTPUT + 1)]
        async with client_for(w1) as client:
            with pytest.raises(WorkerProtocolError, match="none fetched"):
                await client.fetch_files(files, time.monotonic() + 5)
        assert w1.request_counts["/view"] == 0


def repeat_images(times: int):
    """A history in which every output node lists its files ``times`` over."""
    def tamper(body: dict) -> dict:
        return {prompt_id: {**entry, "outputs": {node: {**out, "images": out.get("images", []) * times}
                                                 for node, out in entry["outputs"].items()}}
                for prompt_id, entry in body.items()}
    return tamper


async def test_a_unit_bringing_back_more_than_its_batch_is_refused_and_rerun(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        w2.tamper_json = {"/history/{prompt_id}": repeat_images(5)}
        w2.drop_ws_after_start = True  # its files come from the (tampered) history
        w2.huge_routes = {"/view": 900 * 1024}  # each "file" just under the cap; 2 of them are the budget
        async with Cluster(tmp_path, [w1.port, w2.port], max_file_mb=1, worker_timeout=20) as cluster:
            job = cluster.start(workflow(seed=42, batch=2))
            await until(lambda: job.settled.is_set())
            result = await cluster.collect(job)
            assert by_position(result)[2][0] == "GPU 1"
            assert_unit_images(result, 1, 43)
            assert_unit_images(result, 2, 44)
            assert w2.request_counts["/view"] == 3  # stopped at the file that passed the budget
            (event,) = [d for e, d in cluster.events if e == "multigpu.worker_failed"]
            assert event["reason"] == "protocol_error" and "2 MiB" in event["message"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels (its data would decode to width*height*3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 << 16))) + chunk(b"IEND", b"")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_png_bomb_is_refused_from_its_header_without_decoding():
    reference = torch.zeros(2, 24, 32, 3)
    good = png(np.full((24, 32, 3), 9, dtype=np.uint8))
    value = decode_kind("images", [good, png_header_only(30000, 30000)], reference)
    assert fits("images", reference, value) == "images are (30000, 30000) (height, width), the master's (24, 32)"
    assert value.untyped_storage().nbytes() <= 16  # no pixels were made
    same = decode_kind("images", [good, good], reference)
    assert fits("images", reference, same) is None and same.shape == (2, 24, 32, 3)
    from comfy_distributed.collector.codecs import CODECS

    assert CODECS["images"].early([good, png_header_only(30000, 30000)]) is None  # left to the master's check


def test_audio_longer_than_the_masters_is_not_decoded_in_full():
    reference = {"waveform": torch.zeros(1, 1, 800), "sample_rate": 8000}
    minute = flac_like_comfyui(torch.zeros(1, 8000 * 60), 8000)
    value = decode_kind("audio", [minute], reference)
    assert "audio is" in fits("audio", reference, value)
    assert value["waveform"].shape[-1] < 8000 * 5  # decoding stopped soon after the master's length
