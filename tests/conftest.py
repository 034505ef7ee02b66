"""The suite's toolkit: what tests share lives in plain modules and the fixtures here, never in another test module.

- ``tests/waiting.py``: ``until`` (async), ``until_empty`` (async, returns what is still wrong), ``poll``
  (blocking), ``free_port`` and ``closed_port``;
- ``tests/audio_support.py``: audio encoded as ComfyUI writes it;
- ``tests/component/cluster.py``: an orchestrator or a queue balancer over stand-in workers, and
  ``standin_clusters``, behind the ``standin_cluster`` fixture below;
- ``tests/component/tiles_support.py``: the tile workflow, the master's side of a tile job, the master alone;
- ``tests/component/pool/pool_support.py`` and ``harness/redis_server.py``: the pool's sites on a real Redis;
- ``tests/component/leaks.py``: what a test left behind (pending tasks, open sessions and sockets, a stash);
- ``tests/component/api_support.py`` and ``openapi_support.py``: the /multigpu API under test;
- ``tests/launcher/helpers.py``, ``scripted_master.py``, ``launch_api.py``: the launcher and ``run``;
- ``tests/real/harness.py``, ``cluster.py``, ``launched_site.py``: real ComfyUI processes (tier 3), over
  ``harness/comfy_process.py`` (shared with the benchmarks).

Fixtures:

- ``standin_cluster``: ``cluster = await standin_cluster(workers=2, offline=0, **settings)`` starts that
  many stand-in workers on port 0 and an orchestrator over them (``cluster.workers``, ``.orchestrator``,
  ``.events``, ``.run(prompt)``; ``health=`` and ``input_dir=`` go to the orchestrator). It may be
  called more than once. At teardown it stops the stand-ins and fails the test if it left an asyncio
  task pending, an aiohttp session unclosed, a connection to a stand-in open or a Collector result
  stashed (each given a few seconds to finish closing).

pytest rewrites the ``assert`` statements of test modules only; the helper modules named here, whose
asserts came out of test modules, are rewritten too, so their failures still show the values compared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.component.cluster import StartCluster

pytest.register_assert_rewrite(
    "tests.component.api_support",
    "tests.component.cluster",
    "tests.component.openapi_support",
    "tests.component.tiles_support",
    "tests.launcher.launch_api",
    "tests.launcher.scripted_master",
    "tests.real.launched_site",
)


@pytest.fixture
async def standin_cluster(tmp_path: Path) -> AsyncIterator[StartCluster]:
    """Stand-in workers plus the master's orchestrator, checked for leaks at teardown (see the docstring above)."""
    from tests.component.cluster import standin_clusters  # imported here: the other tiers need not load it

    async with standin_clusters(tmp_path) as start:
        yield start
