"""Every node class this extension gives ComfyUI: the Collector's (``nodes``) and the tiles' (``tile_nodes``)."""

from __future__ import annotations

from . import nodes, tile_nodes

NODE_CLASS_MAPPINGS = {**nodes.NODE_CLASS_MAPPINGS, **tile_nodes.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**nodes.NODE_DISPLAY_NAME_MAPPINGS, **tile_nodes.NODE_DISPLAY_NAME_MAPPINGS}
