"""What a Collector can collect: one registry of media kinds, in the Collector's output order.

Each kind says how it travels: its ComfyUI type, the core output node that writes it on a worker
(and that node's input) and the key of those files in the worker's ``/history``. The codec that
decodes a kind's files, checks that they fit the master's own value and joins the values of every
position is the Collector's (:data:`..collector.codecs.CODECS`, by the kind's name: planning needs no torch).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MediaKind:
    name: str
    """The Collector's input and output name: ``images``, ``latent``, ``audio``."""
    comfy_type: str
    worker_node: str
    """The core node a worker's copy ends in for this kind."""
    worker_input: str
    history_key: str
    """Where that node lists its files in the worker's ``/history`` outputs."""
    worker_literals: tuple[tuple[str, str], ...] = ()
    """Literal inputs the worker node needs besides the link."""


KINDS: tuple[MediaKind, ...] = (
    MediaKind("images", "IMAGE", "PreviewImage", "images", "images"),
    MediaKind("latent", "LATENT", "SaveLatent", "samples", "latents", (("filename_prefix", "multigpu/latent"),)),
    MediaKind("audio", "AUDIO", "PreviewAudio", "audio", "audio"),
)
BY_NAME: dict[str, MediaKind] = {kind.name: kind for kind in KINDS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
