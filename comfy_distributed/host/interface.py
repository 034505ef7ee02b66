"""What the extension needs from the ComfyUI it runs in, as one interface.

:class:`~.adapter.ComfyHost` implements it over ComfyUI's modules (the only code that imports
them); :class:`DetachedHost` is what the package has outside ComfyUI (tests, scripts, the CLI):
nothing is running, nothing is interrupted, nothing can be saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Protocol


log = logging.getLogger("comfy_distributed")


class Host(Protocol):
    def notify(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to the master's UI clients (any thread)."""

    def interrupted(self) -> bool:
        """Whether the user cancelled the prompt running on the master."""

    def raise_if_interrupted(self) -> None:
        """Raise ComfyUI's own interrupt exception, so that a cancel shows as a cancel, not an error."""

    def running_prompts(self) -> set[str]:
        """Prompt ids the master is running now."""

    def pending_prompts(self) -> set[str]:
        """Prompt ids waiting in the master's queue."""

    def finished_prompts(self, prompt_ids: set[str]) -> set[str]:
        """Those of ``prompt_ids`` that are in the master's history."""

    def free_memory(self) -> None:
        """What ComfyUI's own ``POST /free`` does: unload models and free memory when the queue allows."""

    def queue_load(self) -> int:
        """Prompts running or waiting on the master."""

    def is_output_node(self, class_type: str) -> bool:
        """Whether ComfyUI knows ``class_type`` as an output node."""

    def input_dir(self) -> Path | None:
        """The master's input folder (files a workflow loads), None when there is none."""

    def next_number(self) -> float | None:
        """The queue number ComfyUI gives the next prompt queued (None: no queue)."""

    def promote(self, prompt_id: str, number: float) -> bool:
        """Give a prompt waiting in the master's queue this number (its place in the queue); False when it is not
        waiting there (it runs already, or is gone)."""

    def node_class(self, class_type: Any) -> Any:
        """ComfyUI's node class for ``class_type`` (None for a class it lacks)."""

    def describe(self, class_type: str) -> Mapping[str, Any] | None:
        """The class's ``INPUT_TYPES()`` (None for a class it lacks, or one that cannot say)."""

    def sampler_choices(self) -> tuple[list[str], list[str]]:
        """ComfyUI's sampler and scheduler names."""


SAMPLERS_FALLBACK = ["euler"]
SCHEDULERS_FALLBACK = ["normal"]


class DetachedHost:
    """The host outside ComfyUI (tests, tools): events are logged, no prompt runs, nothing can be saved, and no
    node class is known."""

    def notify(self, event: str, data: dict[str, Any]) -> None:
        log.debug("event %s %s", event, data)

    def interrupted(self) -> bool:
        return False

    def raise_if_interrupted(self) -> None:
        return None

    def running_prompts(self) -> set[str]:
        return set()

    def pending_prompts(self) -> set[str]:
        return set()

    def finished_prompts(self, prompt_ids: set[str]) -> set[str]:
        return set()

    def free_memory(self) -> None:
        return None

    def queue_load(self) -> int:
        return 0

    def is_output_node(self, class_type: str) -> bool:
        return False

    def input_dir(self) -> Path | None:
        return None

    def next_number(self) -> float | None:
        return None

    def promote(self, prompt_id: str, number: float) -> bool:
        return False

    def node_class(self, class_type: Any) -> Any:
        return None

    def describe(self, class_type: str) -> Mapping[str, Any] | None:
        return None

    def sampler_choices(self) -> tuple[list[str], list[str]]:
        return list(SAMPLERS_FALLBACK), list(SCHEDULERS_FALLBACK)
