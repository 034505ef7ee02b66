"""A stand-in for ComfyUI's ``DynamicPrompt``: the two methods the tile nodes use, over a plain prompt."""

from __future__ import annotations


class FakeDynamicPrompt:
    """``get_node`` and ``all_node_ids`` of ComfyUI's DynamicPrompt, over ``prompt``."""

    def __init__(self, prompt: dict) -> None:
        self.nodes = dict(prompt)

    def get_node(self, node_id: str) -> dict:
        return self.nodes[node_id]

    def all_node_ids(self) -> set[str]:
        return set(self.nodes)
