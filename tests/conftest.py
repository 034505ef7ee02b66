"""The suite's toolkit: what tests share lives in plain modules, never in another test module.

- ``tests/waiting.py``: ``until`` (async), ``poll`` (blocking), ``free_port`` and ``closed_port``;
- ``tests/audio_support.py``: audio encoded as ComfyUI writes it;
- ``tests/component/cluster.py``: an orchestrator or a queue balancer over stand-in workers;
- ``tests/component/api_support.py`` and ``openapi_support.py``: the /multigpu API under test;
- ``tests/launcher/helpers.py``, ``scripted_master.py``, ``launch_api.py``: the launcher and ``run``;
- ``tests/real/harness.py``, ``cluster.py``, ``launched_site.py``: real ComfyUI processes (tier 3).

pytest rewrites the ``assert`` statements of test modules only; the helper modules named here, whose
asserts came out of test modules, are rewritten too, so their failures still show the values compared.
"""

import pytest

pytest.register_assert_rewrite(
    "tests.component.api_support",
    "tests.component.cluster",
    "tests.component.openapi_support",
    "tests.launcher.launch_api",
    "tests.launcher.scripted_master",
    "tests.real.launched_site",
)
