"""A unit's images on the worker's ``/ws`` as it makes them, instead of files fetched after the prompt.

A standard ComfyUI install has ``SaveImageWebsocket`` (``custom_nodes/websocket_image_save.py``): an output node
that hands each image of its batch to ComfyUI's progress hook as a PNG, which ComfyUI encodes on its server loop
and sends to the client that queued the prompt. A client that announced ``supports_preview_metadata`` gets each one
as a type-4 frame naming the prompt and the node (:mod:`.preview_frames`), the sampler's previews as well, so the
two are told apart by node. Where a worker's ``/object_info`` lists the node and the job's socket negotiated the
flag, a unit's ``PreviewImage`` outputs become ``SaveImageWebsocket`` nodes: the master receives the first image
while the worker encodes the next, and asks nothing after the prompt (no ``GET /view``). The pixels are the same:
both nodes turn the tensor into 8 bits the same way, and PNG is lossless. Without a socket, the node or the flag,
the unit keeps ``PreviewImage`` and its files.

Every frame is checked at the edge: its prompt and node, its size (at most the file cap, and the prompt's frames
at most :data:`MAX_FRAME_BYTES_PER_PROMPT` in all), that it is a PNG, and how many a node sent (at most
:data:`~.answers.MAX_FILES_PER_OUTPUT`, as files). A frame of our prompt's frame node that does
not fit fails the worker; the sampler's previews go on to the preview relay as before.
"""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

from ..errors import WorkerAnswerTooLarge, WorkerFramesLost, WorkerProtocolError
from .answers import MAX_FILES_PER_OUTPUT, MIB, clip_text, size_text
from .preview_frames import MAX_METADATA_BYTES, PREVIEW_IMAGE_WITH_METADATA

FRAME_NODE = "SaveImageWebsocket"
SWAPPED_NODE = "PreviewImage"
INLINE_TYPE = "multigpu-frame"
"""The ``type`` of the file entries a frame node's images are listed under in a result (no worker folder has it)."""

MAX_FRAME_BYTES_PER_PROMPT = 2048 * MIB
"""What the frames of one prompt may hold in all (170 noise PNGs of 2048x2048); past it the worker fails."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER = struct.Struct(">I")


def offers_frames(object_info: Any) -> bool:
    """Whether a worker's ``/object_info`` has ComfyUI's ``SaveImageWebsocket`` with its ``images`` input."""
    node = object_info.get(FRAME_NODE) if isinstance(object_info, dict) else None
    inputs = node.get("input") if isinstance(node, dict) else None
    required = inputs.get("required") if isinstance(inputs, dict) else None
    images = required.get("images") if isinstance(required, dict) else None
    return isinstance(images, list) and bool(images) and images[0] == "IMAGE"


def with_frame_nodes(prompt: dict[str, Any], wanted: frozenset[str]) -> tuple[dict[str, Any], frozenset[str]]:
    """``prompt`` with each wanted ``PreviewImage`` made a ``SaveImageWebsocket`` (a copy; the caller's prompt is
    kept for a retry elsewhere), and those nodes' ids."""
    swapped = {node_id for node_id in wanted
               if isinstance(prompt.get(node_id), dict) and prompt[node_id].get("class_type") == SWAPPED_NODE
               and isinstance(prompt[node_id].get("inputs"), dict) and "images" in prompt[node_id]["inputs"]}
    if not swapped:
        return prompt, frozenset()
    changed = dict(prompt)
    for node_id in swapped:
        changed[node_id] = {"class_type": FRAME_NODE, "inputs": {"images": prompt[node_id]["inputs"]["images"]}}
    return changed, frozenset(swapped)


class ImageFrames:
    """The images of one followed prompt's frame nodes, taken off the socket as they come."""

    def __init__(self, name: str, prompt_id: str, nodes: frozenset[str], max_file_bytes: int) -> None:
        self.name = name
        self.prompt_id = prompt_id
        self.nodes = nodes
        self.max_file_bytes = max_file_bytes
        self.images: dict[str, list[bytes]] = {node: [] for node in nodes}
        self.total = 0
        self.complete = False
        """Whether the prompt's success was read on the socket after its frames: only then are they all here."""
        self.announced: dict[str, int] = {}
        """Per frame node, how many images its ``progress`` events said it sends (the batch: their ``max``)."""

    def progress(self, node: Any, maximum: Any) -> bool:
        """A ``progress`` event of our prompt: a frame node's says how many images it sends (whether it was one)."""
        if node not in self.nodes:
            return False
        if isinstance(maximum, (int, float)) and not isinstance(maximum, bool) and 0 < maximum <= 1 << 20:
            self.announced[str(node)] = max(self.announced.get(str(node), 0), int(maximum))
        return True

    def check(self) -> None:
        """Every frame node sent as many images as it announced (a frame lost on the way fails the unit)."""
        for node, images in self.images.items():
            announced = self.announced.get(node)
            if announced is None or len(images) != announced:
                raise WorkerFramesLost(self.name, f"GET /ws: node {clip_text(node, 64)} sent {len(images)} "
                                                     f"image(s) of the {announced or 'unknown number'} it announced; "
                                                     "none are taken")

    def take(self, message: bytes) -> bool:
        """Whether ``message`` is an image of one of our frame nodes (then kept, or the worker failed when it does
        not fit); False leaves it to the preview relay."""
        if len(message) <= 8 or _HEADER.unpack_from(message, 0)[0] != PREVIEW_IMAGE_WITH_METADATA:
            return False
        (length,) = _HEADER.unpack_from(message, 4)
        if length > MAX_METADATA_BYTES or 8 + length > len(message):
            return False
        try:
            metadata = json.loads(message[8:8 + length])
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(metadata, dict) or metadata.get("prompt_id") != self.prompt_id \
                or metadata.get("node_id") not in self.nodes:
            return False
        node, image = str(metadata["node_id"]), message[8 + length:]
        if len(self.images[node]) >= MAX_FILES_PER_OUTPUT:  # the flood guard does not count these: this does
            raise WorkerProtocolError(self.name, f"GET /ws: node {clip_text(node, 64)} sent more than "
                                                 f"{MAX_FILES_PER_OUTPUT} images")
        if len(image) > self.max_file_bytes:
            raise WorkerAnswerTooLarge(self.name, f"GET /ws: an image of node {clip_text(node, 64)} is larger than "
                                                  f"the file cap of {size_text(self.max_file_bytes)}",
                                       self.max_file_bytes)
        self.total += len(image)
        if self.total > MAX_FRAME_BYTES_PER_PROMPT:
            raise WorkerAnswerTooLarge(self.name, f"GET /ws: the images of one prompt pass "
                                                  f"{size_text(MAX_FRAME_BYTES_PER_PROMPT)}",
                                       MAX_FRAME_BYTES_PER_PROMPT)
        if not image.startswith(PNG_SIGNATURE):
            raise WorkerProtocolError(self.name, f"GET /ws: an image of node {clip_text(node, 64)} is not a PNG")
        self.images[node].append(bytes(image))
        return True

    def outputs(self, store: dict[str, bytes]) -> dict[str, dict[str, Any]]:
        """Each frame node's images as a result lists files (``images``: one entry each, of :data:`INLINE_TYPE`),
        their bytes put in ``store`` under the entries' names."""
        listed: dict[str, dict[str, Any]] = {}
        for node, images in self.images.items():
            entries = []
            for image in images:
                name = f"{uuid.uuid4().hex}.png"
                store[name] = image
                entries.append({"filename": name, "subfolder": "", "type": INLINE_TYPE})
            listed[node] = {"images": entries}
        return listed
