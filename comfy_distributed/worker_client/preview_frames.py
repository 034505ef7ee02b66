"""Preview frames on an instance's ``/ws``: ComfyUI's binary messages, checked and sorted out at the edge.

While a sampler runs on an instance started with a preview method (``--preview-method auto``,
``latent2rgb`` or ``taesd``), ComfyUI sends the client that queued the prompt one binary websocket
message per step: a 4-byte big-endian event type, then

* type 1, ``PREVIEW_IMAGE``: a 4-byte big-endian image type (1 JPEG, 2 PNG) and the image. This is what
  a client that announced no feature flags gets, as the master's does (ComfyUI 0.3.64: ``main.py``
  ``hijack_progress`` sends it, ``server.py`` ``send_image`` encodes it). It names no prompt: it belongs
  to the prompt the instance runs for this client, whose ``progress`` event comes just before it.
* type 4, ``PREVIEW_IMAGE_WITH_METADATA``: a 4-byte big-endian length, that much JSON metadata
  (``prompt_id``, ``node_id``, ``image_type``...) and the image; sent instead of type 1 to a client
  that announced ``supports_preview_metadata`` (``comfy_execution/progress.py``), so parsed too.

Other types (3, ``TEXT``) are not previews. A frame is looked at only while someone watches (see
:class:`PreviewSink`), its size is capped and its image must start like the JPEG or PNG it claims to be;
a frame that does not fit is dropped, never raised. The image is never decoded here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from .answers import MIB

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4

MAX_PREVIEW_BYTES = 2 * MIB
"""Largest preview message read (ComfyUI's default ``--preview-size`` of 512 gives JPEGs of tens of KiB)."""

MAX_METADATA_BYTES = 16 * 1024
"""Largest JSON metadata of a type-4 frame (ComfyUI's is a few ids)."""

_MAGIC = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n"}
_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}
_HEADER = struct.Struct(">I")


@dataclass(slots=True, frozen=True)
class PreviewFrame:
    """One preview image as a worker sent it: its type, its bytes, and which prompt and node made it when
    the frame says so (type 4)."""

    mime: str
    image: bytes
    prompt_id: str | None = None
    node_id: str | None = None


class PreviewSink(Protocol):
    """Where a followed prompt's preview frames go (the master's relay to its panel)."""

    def wanted(self) -> bool:
        """Whether anyone looks now: when not, a frame is dropped as it is read, unparsed."""

    def show(self, frame: PreviewFrame) -> None:
        """A frame of the followed prompt (called on the loop that reads the socket)."""


def parse_preview(message: bytes) -> PreviewFrame | None:
    """The preview in a binary ``/ws`` message, or None when it is none, is too large or does not hold together."""
    if not _HEADER.size * 2 < len(message) <= MAX_PREVIEW_BYTES:
        return None
    (event,) = _HEADER.unpack_from(message, 0)
    if event == PREVIEW_IMAGE:
        (image_type,) = _HEADER.unpack_from(message, 4)
        return _frame(_IMAGE_TYPES.get(image_type), message[8:], {})
    if event == PREVIEW_IMAGE_WITH_METADATA:
        (length,) = _HEADER.unpack_from(message, 4)
        if length > MAX_METADATA_BYTES or 8 + length >= len(message):
            return None
        try:
            metadata = json.loads(message[8:8 + length])
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(metadata, dict):
            return None
        image = message[8 + length:]
        return _frame(_mime_of(image), image, metadata)
    return None


def _mime_of(image: bytes) -> str | None:
    return next((mime for mime, magic in _MAGIC.items() if image.startswith(magic)), None)


def _frame(mime: str | None, image: bytes, metadata: dict[str, Any]) -> PreviewFrame | None:
    """The frame, when ``image`` is the JPEG or PNG that ``mime`` says (a worker's bytes go to a browser)."""
    if mime is None or not image.startswith(_MAGIC[mime]):
        return None
    return PreviewFrame(mime, bytes(image), _short_id(metadata.get("prompt_id")), _short_id(metadata.get("node_id")))


def _short_id(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) and len(str(value)) <= 256 \
        else None


class PromptPreviews:
    """The preview frames of one prompt, picked out of a socket that carries other prompts' too (a job's
    channel is followed by its units in turn, and a frame of type 1 names no prompt)."""

    def __init__(self, sink: PreviewSink, prompt_id: str) -> None:
        self.sink = sink
        self.prompt_id = prompt_id
        self._ours_running = False
        """Whether the last event that named a prompt named this one: a type-1 frame then is its."""

    def saw(self, data: dict[str, Any]) -> None:
        """An event read from the socket (its ``data``)."""
        if "prompt_id" in data:
            self._ours_running = data["prompt_id"] == self.prompt_id

    def read(self, message: bytes) -> None:
        """A binary message read from the socket."""
        if not self.sink.wanted():
            return
        frame = parse_preview(message)
        if frame is None:
            return
        ours = frame.prompt_id == self.prompt_id if frame.prompt_id is not None else self._ours_running
        if ours:
            self.sink.show(frame)
