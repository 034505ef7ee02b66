"""Workers given to the pool (``pool_agent``, ``pool_tags``): their checks, the config without them, the warnings."""

from __future__ import annotations

import pytest

from comfy_distributed.config import GpuConfig, parse_config, pool_agent_warnings
from comfy_distributed.errors import ConfigError
from comfy_distributed.pool.protocol import Heartbeat


def config(*workers: dict) -> GpuConfig:
    return parse_config({"workers": [{"port": 8189 + n, "id": n + 1, **w} for n, w in enumerate(workers)]})


@pytest.mark.parametrize("worker, words", [
    ({"pool_tags": ["gpu48", "a b"]}, "workers[0].pool_tags: 'a b' is not a tag: 1 to 64 letters"),
    ({"pool_tags": ["gpu48,video"]}, "'gpu48,video' is not a tag"),
    ({"pool_tags": [""]}, "'' is not a tag"),
    ({"pool_tags": ["x" * 65]}, "is not a tag"),
    ({"pool_tags": "gpu48"}, "workers[0].pool_tags"),
    ({"pool_tags": [f"t{n}" for n in range(33)]}, "workers[0].pool_tags"),
    ({"pool_agent": "maybe"}, "workers[0].pool_agent"),
    ({"pool_agent": True, "name": "GPU #1"}, "workers[0]: name 'GPU #1' is also its pool agent's name"),
    ({"pool_agent": True, "name": "x" * 100 + "\u00e9"}, "workers[0].name"),
])
def test_bad_pool_fields_are_refused_naming_the_field(worker, words):
    with pytest.raises(ConfigError) as caught:
        config({**worker})
    assert words in str(caught.value)


def test_the_config_takes_the_tags_an_agent_takes():
    """One rule for a tag: what the config accepts, the pool's heartbeat accepts too."""
    tags = ["gpu48", "A.b_c-1", "x" * 64]
    assert config({"pool_agent": True, "pool_tags": tags}).workers[0].pool_tags == tags
    assert Heartbeat(id="a", name="GPU 1", tags=tags).tags == tags


def test_an_agent_name_needs_only_the_agent_rule_with_pool_agent():
    assert config({"name": "GPU #1"}).workers[0].display_name == "GPU #1"
    assert config({"pool_agent": True}).workers[0].display_name == "Worker 1"  # the default name fits
    assert config({"pool_agent": True, "name": "Big GPU (48 GB) @ home: 1+2"}).workers[0].pool_agent


@pytest.mark.parametrize("fields, given", [
    ({"pool_agent": True}, True),
    ({"pool_agent": True, "host": "127.0.0.1"}, True),
    ({"pool_agent": True, "host": "localhost"}, True),
    ({"pool_agent": True, "host": "[::1]"}, True),
    ({"pool_agent": True, "host": "127.0.0.2"}, True),
    ({"pool_agent": True, "host": "192.0.2.7"}, False),
    ({"pool_agent": True, "host": "http://127.0.0.1:8190"}, False),
    ({"pool_agent": True, "ssh": {"host": "127.0.0.1", "comfyui_path": "/opt/ComfyUI"}}, False),
    ({}, False),
])
def test_only_a_worker_the_launcher_starts_here_is_given_to_the_pool(fields, given):
    assert config(fields).workers[0].given_to_pool is given


def test_the_config_without_the_workers_given_to_the_pool():
    full = config({"pool_agent": True}, {"name": "direct"}, {"pool_agent": True, "host": "192.0.2.7"},
                  {"pool_agent": True, "enabled": False})
    direct = full.without_pool_workers()
    assert [w.id for w in direct.workers] == [2, 3]
    assert [w.id for w in full.workers] == [1, 2, 3, 4], "the config itself is left as it is"
    assert direct.settings == full.settings and direct.master == full.master
    plain = config({"name": "a"}, {"name": "b"})
    assert plain.without_pool_workers() is plain


def test_pool_agent_warnings_say_why_it_does_nothing():
    workers = config({"pool_agent": True, "name": "here"},
                     {"pool_agent": True, "ssh": {"host": "box", "comfyui_path": "/opt/ComfyUI"}},
                     {"pool_agent": True, "host": "192.0.2.7"},
                     {"pool_tags": ["gpu48"]},
                     {"pool_agent": True, "host": "192.0.2.8", "enabled": False},
                     {"name": "plain"})
    with_pool = pool_agent_warnings(workers, pool_configured=True)
    assert [line.split(":")[0] for line in with_pool] == ["worker 2", "worker 3", "worker 4"]
    assert "started over SSH on box" in with_pool[0]
    assert "Run 'comfy-distributed agent' on that machine" in with_pool[0]
    assert "host is 192.0.2.7" in with_pool[1] and "no agent is started beside it" in with_pool[1]
    assert "pool_tags are the tags of its pool agent" in with_pool[2]
    without = pool_agent_warnings(workers, pool_configured=False)
    assert without[0] == ("worker 1 (here): pool_agent is set but no pool is configured (settings.pool or "
                          "COMFY_DISTRIBUTED_POOL), so no agent is started beside it and the master reaches it directly")
    assert without[1:] == with_pool
    assert pool_agent_warnings(config({"pool_agent": True}), pool_configured=True) == []
