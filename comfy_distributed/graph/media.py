"""What a Collector can collect: one registry of media kinds, in the Collector's output order.

Each kind says how it travels: its ComfyUI type, the core output node that writes it on a worker
(and that node's input), the key of those files in the worker's ``/history``, and the codec that
decodes the files, checks that they fit the master's own value and joins the values of every
position (:mod:`.codecs`, loaded only when a value is decoded: planning needs no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .codecs import Codec


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

    @property
    def codec(self) -> Codec:
        from .codecs import CODECS

        return CODECS[self.name]


KINDS: tuple[MediaKind, ...] = (
    MediaKind("images", "IMAGE", "PreviewImage", "images", "images"),
    MediaKind("latent", "LATENT", "SaveLatent", "samples", "latents", (("filename_prefix", "multigpu/latent"),)),
    MediaKind("audio", "AUDIO", "PreviewAudio", "audio", "audio"),
)
BY_NAME: dict[str, MediaKind] = {kind.name: kind for kind in KINDS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
