"""Preview frames as ComfyUI 0.3.64 frames them on ``/ws`` (server.py ``send_image``, ``send_image_with_metadata``,
``encode_bytes``), parsed at the edge: what a frame gives, what is dropped, and whose prompt a frame is."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfy_distributed.worker_client import MAX_PREVIEW_BYTES, PreviewFrame, parse_preview
from comfy_distributed.worker_client import preview_frames
from comfy_distributed.worker_client.preview_frames import PromptPreviews

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg body" * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"png body" * 4


def type1(image: bytes, image_type: int = 1) -> bytes:
    """``encode_bytes(PREVIEW_IMAGE, ...)`` of ``send_image``: event 1, image type, image."""
    return struct.pack(">I", 1) + struct.pack(">I", image_type) + image


def type4(image: bytes, metadata: dict | bytes) -> bytes:
    """``encode_bytes(PREVIEW_IMAGE_WITH_METADATA, ...)``: event 4, metadata length, metadata, image."""
    raw = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
    return struct.pack(">I", 4) + struct.pack(">I", len(raw)) + raw + image


def test_a_plain_frame_gives_its_image_and_type():
    assert parse_preview(type1(JPEG)) == PreviewFrame("image/jpeg", JPEG)
    assert parse_preview(type1(PNG, 2)) == PreviewFrame("image/png", PNG)


def test_a_frame_with_metadata_names_its_prompt_and_node():
    metadata = {"node_id": "5", "prompt_id": "p-1", "display_node_id": "5", "parent_node_id": None,
                "real_node_id": "5", "image_type": "image/jpeg"}
    assert parse_preview(type4(JPEG, metadata)) == PreviewFrame("image/jpeg", JPEG, "p-1", "5")
    assert parse_preview(type4(PNG, {"prompt_id": 7})) == PreviewFrame("image/png", PNG, "7", None)


@pytest.mark.parametrize("message", [
    b"", struct.pack(">I", 1), type1(b""), type1(JPEG)[:9],
    type1(PNG, 1), type1(JPEG, 2), type1(JPEG, 3),               # the image is not what its type says
    type1(b"<script>alert(1)</script>"),                          # not an image at all
    struct.pack(">I", 3) + b"text",                                # TEXT: not a preview
    struct.pack(">I", 2) + JPEG,                                   # UNENCODED_PREVIEW_IMAGE never travels
    type4(JPEG, b"{not json"), type4(JPEG, b"[1, 2]"), type4(b"", {"prompt_id": "p"}),
    struct.pack(">I", 4) + struct.pack(">I", 1 << 30) + JPEG,      # a metadata length past the message
    type4(JPEG, {"pad": "x" * (17 * 1024)}),                       # metadata past its cap
    type1(JPEG + b"\0" * MAX_PREVIEW_BYTES),                       # a frame past the cap
])
def test_what_does_not_hold_together_is_dropped(message):
    assert parse_preview(message) is None


def test_odd_ids_in_metadata_are_left_out():
    frame = parse_preview(type4(JPEG, {"prompt_id": True, "node_id": "n" * 300}))
    assert frame == PreviewFrame("image/jpeg", JPEG, None, None)


@given(st.binary(max_size=64))
def test_no_message_raises(message):
    parse_preview(message)
    parse_preview(struct.pack(">I", 1) + message)
    parse_preview(struct.pack(">I", 4) + message)


class Sink:
    def __init__(self, wanted: bool = True) -> None:
        self.on = wanted
        self.frames: list[PreviewFrame] = []

    def wanted(self) -> bool:
        return self.on

    def show(self, frame: PreviewFrame) -> None:
        self.frames.append(frame)


def test_a_plain_frame_is_the_prompt_s_while_its_events_are_the_last_seen():
    sink = Sink()
    watch = PromptPreviews(sink, "mine")
    watch.read(type1(JPEG))                      # before any event of ours: the channel's previous unit
    watch.saw({"prompt_id": "other", "node": "5"})
    watch.read(type1(JPEG))
    watch.saw({"status": {}})                    # names no prompt: changes nothing
    watch.saw({"prompt_id": "mine", "value": 1, "max": 4})
    watch.read(type1(JPEG))
    watch.saw({"status": {}})
    watch.read(type1(PNG, 2))
    assert [f.mime for f in sink.frames] == ["image/jpeg", "image/png"]


def test_a_frame_that_names_its_prompt_is_judged_by_it():
    sink = Sink()
    watch = PromptPreviews(sink, "mine")
    watch.saw({"prompt_id": "mine"})
    watch.read(type4(JPEG, {"prompt_id": "other"}))
    watch.read(type4(PNG, {"prompt_id": "mine"}))
    assert [f.prompt_id for f in sink.frames] == ["mine"]


def test_nobody_watching_drops_frames_unread(monkeypatch):
    def unread(message: bytes) -> None:
        raise AssertionError("a frame was parsed while nobody watches")

    monkeypatch.setattr(preview_frames, "parse_preview", unread)
    sink = Sink(wanted=False)
    watch = PromptPreviews(sink, "mine")
    watch.saw({"prompt_id": "mine"})
    watch.read(type1(JPEG))
    assert sink.frames == []
