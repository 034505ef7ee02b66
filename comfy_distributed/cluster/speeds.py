"""How fast each participant is: images per second, learned from finished units and kept across jobs.

A participant is ``"master"`` or a worker id. The weighted plan and the dynamic scheduler take
these speeds as input; only :meth:`Speeds.learn` changes them.
"""

from __future__ import annotations

from ..config import GpuConfig
from ..config.models import MASTER

SMOOTHING = 0.3
"""Weight of the newest measurement in a participant's moving average."""


class Speeds:
    """Images per second per participant: a moving average of seconds per image (robust to one quick unit)."""

    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing
        self._seconds_per_image: dict[str, float] = {}

    def learn(self, participant: str, images: float, seconds: float) -> None:
        """``participant`` made ``images`` images in ``seconds``; nothing is learned from an empty or instant unit."""
        if images <= 0 or seconds <= 0:
            return
        per_image = seconds / images
        previous = self._seconds_per_image.get(participant)
        self._seconds_per_image[participant] = per_image if previous is None else \
            (1 - self.smoothing) * previous + self.smoothing * per_image

    def get(self, participant: str) -> float | None:
        """Images per second, None before its first finished unit."""
        seconds = self._seconds_per_image.get(participant)
        return None if seconds is None else 1.0 / seconds

    def __getitem__(self, participant: str) -> float:
        speed = self.get(participant)
        if speed is None:
            raise KeyError(participant)
        return speed

    def weights(self, config: GpuConfig) -> list[float]:
        """Master first, then the enabled workers: the configured weight, else the learned speed, else 1."""
        return [config.master.weight or self.get(MASTER) or 1.0] + \
            [w.weight or self.get(str(w.id)) or 1.0 for w in config.enabled_workers()]
