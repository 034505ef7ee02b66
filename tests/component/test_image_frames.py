"""A unit's images as websocket frames (``SaveImageWebsocket``, where a worker has it): the same images as files,
no ``GET /view``, and every way a frame can be wrong or missing ends with the unit re-run, never with an image lost.
Stand-in workers with ComfyUI's ``websocket_image_save`` node (a standard install's ``custom_nodes``)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from comfy_distributed.worker_client.image_frames import offers_frames, with_frame_nodes
from tests.component.cluster import Cluster, assert_unit_images, by_position, workflow
from tests.standin import StandinComfy
from tests.waiting import until


class FramingStandin(StandinComfy):
    """A stand-in with ``SaveImageWebsocket``; ``forge(metadata, image)`` may change each image frame it sends
    (None: the frame is not sent), ``extra`` frames go before the first one, and ``answer_flags`` False makes it a
    ComfyUI that never answers ``feature_flags``."""

    def __init__(self, *args: Any, forge=None, extra: list[bytes] = (), answer_flags: bool = True, **kwargs):
        super().__init__(*args, websocket_image_save=True, **kwargs)
        self.forge = forge
        self.extra = list(extra)
        self.answers_feature_flags = answer_flags
        self.frames_sent = 0

    async def _send_now(self, event: Any, data: Any, sid: str | None) -> None:
        if event == 4 and isinstance(data, bytes):
            (length,) = struct.unpack_from(">I", data, 0)
            metadata = json.loads(data[4:4 + length])
            if metadata.get("image_type") == "image/png":
                for frame in self.extra:
                    await super()._send_now(4, frame, sid)
                self.extra = []
                image = data[4 + length:]
                if self.forge is not None:
                    forged = self.forge(metadata, image)
                    if forged is None:
                        return
                    metadata, image = forged
                info = json.dumps(metadata).encode()
                data = struct.pack(">I", len(info)) + info + image
                self.frames_sent += 1
        await super()._send_now(event, data, sid)


def frame(metadata: dict, image: bytes) -> bytes:
    info = json.dumps(metadata).encode()
    return struct.pack(">I", len(info)) + info + image


async def run_two(tmp_path, w2: StandinComfy, **settings) -> tuple[Cluster, Any, StandinComfy]:
    async with StandinComfy(tmp_path / "w1", name="w1", websocket_image_save=True) as w1, w2:
        async with Cluster(tmp_path, [w1.port, w2.port], worker_timeout=30, **settings) as cluster:
            job = cluster.start(workflow(seed=42, batch=2, delay=0.1))
            await until(lambda: job.settled.is_set(), timeout=30, what="the job settled")  # the master still busy:
            result = await cluster.collect(job)  # a failed unit goes to the other worker
            assert len(result.images) == 2 and [len(blobs) for _, blobs in result.images] == [2, 2]
            assert_unit_images(result, 1, 43)
            assert_unit_images(result, 2, 44)
            return cluster, result, w1


async def test_images_come_as_frames_the_same_pixels_and_no_file_is_fetched(tmp_path):
    w2 = FramingStandin(tmp_path / "w2", name="w2")
    cluster, result, w1 = await run_two(tmp_path, w2)
    assert result.failures == [] and result.master_units == [] and cluster.failure_messages() == []
    assert by_position(result)[2][0] == "GPU 2"
    for worker in (w1, w2):
        (body,) = worker.received
        assert body["prompt"]["3"] == {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}
        assert worker.request_counts["/view"] == 0 and worker.request_counts["/history/{prompt_id}"] == 0
    assert w2.frames_sent == 2


async def test_a_worker_that_never_answers_the_flags_keeps_files(tmp_path):
    w2 = FramingStandin(tmp_path / "w2", name="w2", answer_flags=False)
    cluster, result, _ = await run_two(tmp_path, w2)
    assert result.failures == [] and cluster.failure_messages() == [] and by_position(result)[2][0] == "GPU 2"
    (body,) = w2.received
    assert body["prompt"]["3"]["class_type"] == "PreviewImage" and w2.request_counts["/view"] == 2


async def test_a_socket_that_drops_during_the_prompt_reruns_the_unit_elsewhere(tmp_path):
    w2 = FramingStandin(tmp_path / "w2", name="w2")
    w2.drop_ws_after_start = True
    cluster, result, w1 = await run_two(tmp_path, w2)
    assert by_position(result)[2][0] == "GPU 1", "its frames never came: worker 1 ran the unit again"
    (message,) = cluster.failure_messages()
    assert "the connection closed before the prompt's images all came; none are taken" in message, message


def not_png(metadata: dict, image: bytes):
    return metadata, b"GIF89a" + image[6:]


def dropping_the_second():
    seen: list[int] = []

    def forge(metadata: dict, image: bytes):
        seen.append(1)
        return None if len(seen) == 2 else (metadata, image)
    return forge


def other_prompt(metadata: dict, image: bytes):
    return {**metadata, "prompt_id": "someone-else"}, image


@pytest.mark.parametrize("forge, words", [
    (not_png, "is not a PNG"),
    (other_prompt, "node 3 sent 0 image(s) of the 2 it announced"),
])
async def test_a_wrong_frame_fails_the_worker_and_the_unit_runs_elsewhere(tmp_path, forge, words):
    w2 = FramingStandin(tmp_path / "w2", name="w2", forge=forge)
    cluster, result, _ = await run_two(tmp_path, w2)
    assert by_position(result)[2][0] == "GPU 1"
    (message,) = cluster.failure_messages()
    assert words in message, message


async def test_a_frame_past_the_file_cap_fails_the_worker(tmp_path):
    big = 1024 * 1024 + 512 * 1024  # past the 1 MiB file cap, within the socket's own 2 MiB
    w2 = FramingStandin(tmp_path / "w2", name="w2", forge=lambda m, image: (m, image + bytes(big)))
    cluster, result, _ = await run_two(tmp_path, w2, max_file_mb=1)
    assert by_position(result)[2][0] == "GPU 1"
    (message,) = cluster.failure_messages()
    assert "is larger than the file cap of 1 MiB" in message, message


async def test_a_missing_frame_is_caught_by_the_batch_count(tmp_path):
    """One image of the batch of two never sent: the Collector's count refuses the unit, it runs elsewhere."""
    w2 = FramingStandin(tmp_path / "w2", name="w2", forge=dropping_the_second())
    cluster, result, _ = await run_two(tmp_path, w2)
    assert by_position(result)[2][0] == "GPU 1"
    assert len(cluster.failure_messages()) == 1


async def test_frames_of_other_prompts_and_nodes_are_left_alone(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + bytes(32)
    extra = [frame({"prompt_id": "someone-else", "node_id": "3", "image_type": "image/png"}, png),
             frame({"prompt_id": None, "node_id": "99", "image_type": "image/png"}, png)]
    w2 = FramingStandin(tmp_path / "w2", name="w2", extra=extra)
    cluster, result, _ = await run_two(tmp_path, w2)
    assert result.failures == [] and cluster.failure_messages() == [] and by_position(result)[2][0] == "GPU 2"


@pytest.mark.parametrize("info, offered", [
    ({"SaveImageWebsocket": {"input": {"required": {"images": ["IMAGE"]}}}}, True),
    ({"SaveImageWebsocket": {"input": {"required": {"images": ["LATENT"]}}}}, False),
    ({"SaveImageWebsocket": {"input": {"required": {}}}}, False),
    ({"SaveImageWebsocket": {"input": []}}, False),
    ({"SaveImageWebsocket": None}, False),
    ({}, False),
    (None, False),
    ([], False),
])
def test_offers_frames_reads_only_comfyui_s_shape(info, offered):
    assert offers_frames(info) is offered


def test_only_wanted_preview_images_are_swapped_and_the_prompt_is_kept():
    prompt = {"1": {"class_type": "X", "inputs": {}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
              "5": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0]}},
              "6": {"class_type": "PreviewImage", "inputs": {}}}
    changed, nodes = with_frame_nodes(prompt, frozenset({"3", "5", "6", "7"}))
    assert nodes == {"3"} and changed["3"] == {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}
    assert changed["4"] is prompt["4"] and prompt["3"]["class_type"] == "PreviewImage"
    assert with_frame_nodes(prompt, frozenset({"4"}))[0] is not prompt
    assert with_frame_nodes(prompt, frozenset({"5"})) == (prompt, frozenset())


async def test_after_a_lost_frame_that_worker_s_units_keep_their_files(tmp_path):
    w2 = FramingStandin(tmp_path / "w2", name="w2", forge=dropping_the_second())
    async with StandinComfy(tmp_path / "w1", name="w1", websocket_image_save=True) as w1, w2:
        async with Cluster(tmp_path, [w1.port, w2.port], worker_timeout=30) as cluster:
            for seed in (42, 52):
                job = cluster.start(workflow(seed=seed, batch=2, delay=0.1))
                await until(lambda: job.settled.is_set(), timeout=30, what="the job settled")
                result = await cluster.collect(job)
                assert_unit_images(result, 1, seed + 1)
                assert_unit_images(result, 2, seed + 2)
            assert [body["prompt"]["3"]["class_type"] for body in w2.received] == ["SaveImageWebsocket", "PreviewImage"]
            assert by_position(result)[2][0] == "GPU 2" and w2.request_counts["/view"] == 2
            (message,) = cluster.failure_messages()
            assert "node 3 sent 1 image(s) of the 2 it announced" in message, message


async def test_a_flood_of_tiny_frames_the_flood_budget_does_not_count_is_capped(tmp_path):
    """Frames taken as a node's images skip the websocket's flood budget: their own count bounds them."""
    tiny = frame({"prompt_id": None, "node_id": "3", "image_type": "image/png"}, b"\x89PNG\r\n\x1a\n")
    prompt_ids: list[str] = []

    def flood(metadata: dict, image: bytes):
        prompt_ids.append(metadata["prompt_id"])
        return metadata, image

    class Flooding(FramingStandin):
        async def _send_now(self, event: Any, data: Any, sid: str | None) -> None:
            if event == 4 and isinstance(data, bytes) and not self.extra and prompt_ids == []:
                (length,) = struct.unpack_from(">I", data, 0)
                ours = json.loads(data[4:4 + length])["prompt_id"]
                copy = json.loads(tiny[4:4 + struct.unpack_from(">I", tiny, 0)[0]])
                self.extra = [frame({**copy, "prompt_id": ours}, b"\x89PNG\r\n\x1a\n")] * 5000
            await super()._send_now(event, data, sid)

    w2 = Flooding(tmp_path / "w2", name="w2", forge=flood)
    cluster, result, _ = await run_two(tmp_path, w2)
    assert by_position(result)[2][0] == "GPU 1"
    (message,) = cluster.failure_messages()
    assert "node 3 sent more than 4096 images" in message, message
