"""Every node class this extension gives ComfyUI: the Collector's and the Value node (``collector.nodes``), the
Clips node (``collector.clip_nodes``), the tiles' (``tiles.nodes``, ``tiles.upscale``) and the queue mode's stand-in
(``queue_mode.nodes``)."""

from __future__ import annotations

from ..collector import clip_nodes, nodes
from ..queue_mode import nodes as queue_nodes
from ..tiles import nodes as tile_nodes, upscale

_PACKS = (nodes, clip_nodes, tile_nodes, upscale, queue_nodes)

NODE_CLASS_MAPPINGS = {name: cls for pack in _PACKS for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: shown for pack in _PACKS for name, shown in pack.NODE_DISPLAY_NAME_MAPPINGS.items()}
