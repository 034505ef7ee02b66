"""Fixtures for tier-3 tests: real ComfyUI processes, a launcher-run site and a random-weight SD1.5 checkpoint.

Every test collected from this folder is skipped with ``SKIP_REASON`` when ``COMFYUI_PATH``
is unset, so the rest of the suite runs anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.launcher.helpers import kill_recorded

from .harness import COMFYUI_PATH, SKIP_REASON, ComfyInstance, random_sd15, start_comfyui
from .launched_site import RealSite

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the visible reason, every test under tests/real when there is no ComfyUI."""
    if COMFYUI_PATH:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture
def comfy_factory(tmp_path: Path) -> Iterator[Callable[..., ComfyInstance]]:
    """Start real ComfyUI instances under tmp_path; all of them are stopped at teardown.

    The callable takes start_comfyui's arguments minus ``base_dir``; each instance gets
    ``tmp_path/NAME``, so a test may put files there (e.g. models) before starting it. A name
    used twice in one test gets ``tmp_path/NAME-2`` and so on.
    """
    started: list[ComfyInstance] = []
    used: set[str] = set()

    def factory(name: str, **kwargs) -> ComfyInstance:
        folder, suffix = name, 1
        while folder in used:
            suffix += 1
            folder = f"{name}-{suffix}"
        used.add(folder)
        instance = start_comfyui(name, tmp_path / folder, **kwargs)
        started.append(instance)
        return instance

    try:
        yield factory
    finally:
        errors = []
        for instance in started:
            try:
                instance.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{instance.name}: {exc!r}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))


@pytest.fixture
def site(tmp_path) -> Iterator[RealSite]:
    """A RealSite under tmp_path; after the test its instances are stopped and every recorded process killed."""
    real = RealSite(tmp_path)
    try:
        yield real
    finally:
        real.cli("stop")
        kill_recorded(tmp_path)


@pytest.fixture(scope="session")
def random_sd15_checkpoint() -> Path:
    """Path of the random-weight SD1.5 checkpoint, built once per cache dir (``harness.random_sd15``)."""
    return random_sd15()
