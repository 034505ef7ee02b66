"""Every node class this extension gives ComfyUI: the Collector's (``nodes``), the Value node (``values``), the
tiles' (``tile_nodes``) and the Clips node (``clip_nodes``)."""

from __future__ import annotations

from ..collector import clip_nodes, nodes
from ..tiles import nodes as tile_nodes
from ..graph import values

NODE_CLASS_MAPPINGS = {**nodes.NODE_CLASS_MAPPINGS, **values.NODE_CLASS_MAPPINGS, **tile_nodes.NODE_CLASS_MAPPINGS,
                       **clip_nodes.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**nodes.NODE_DISPLAY_NAME_MAPPINGS, **values.NODE_DISPLAY_NAME_MAPPINGS,
                              **tile_nodes.NODE_DISPLAY_NAME_MAPPINGS, **clip_nodes.NODE_DISPLAY_NAME_MAPPINGS}
