"""Which checkpoint each participant ran last: the queue mode sends a prompt where its model is likely loaded.

Loading a checkpoint costs seconds on a fast disk and minutes on a slow one; ComfyUI keeps the
last one in memory. The master cannot ask a worker what it has loaded (ComfyUI says nothing of
it), so it remembers what it sent: each time a participant (``"master"`` or a worker id) is given
a prompt that names checkpoints, those names become its own. A prompt that names none (an
upscale, a latent operation) leaves the memory alone, as it leaves ComfyUI's loaded model alone.

Everything here is called on the server's event loop.
"""

from __future__ import annotations

from typing import Any

MODEL_INPUTS = frozenset({"ckpt_name", "unet_name"})
"""Inputs that name a model loaded whole (CheckpointLoaderSimple, UNETLoader and their kin)."""


def model_names(prompt: Any) -> frozenset[str]:
    """The checkpoints ``prompt`` names as literal inputs (a linked input names none; an odd shape names none)."""
    if not isinstance(prompt, dict):
        return frozenset()
    names: set[str] = set()
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict):
            names.update(value for key, value in inputs.items() if key in MODEL_INPUTS and isinstance(value, str))
    return frozenset(names)


class LoadedModels:
    """Per participant, the checkpoints of the last prompt it was given that named any."""

    def __init__(self) -> None:
        self._last: dict[str, frozenset[str]] = {}

    def ran(self, participant: str, prompt: Any) -> None:
        """``participant`` runs ``prompt`` now: its checkpoints (if it names any) are the ones it has loaded."""
        names = model_names(prompt)
        if names:
            self._last[participant] = names

    def holds(self, participant: str, names: frozenset[str]) -> bool:
        """Whether ``participant`` last ran every one of ``names`` (False for a prompt that names none)."""
        return bool(names) and names <= self._last.get(participant, frozenset())

    def last(self, participant: str) -> frozenset[str]:
        """The checkpoints ``participant`` last ran (empty when none is known)."""
        return self._last.get(participant, frozenset())
