"""A worker given to the pool (``"pool_agent": true``): the launcher starts a real agent beside it on a real Redis.

The worker is the stand-in ComfyUI, the agent the real ``comfy-distributed agent`` process, the pool a
``redis-server`` on a free port with a password (so that the tests see it kept out of the agent's command line and
log); those tests skip, saying why, where redis-server is missing. The pure parts (the agent's command line, how it
is found and judged) are at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from comfy_distributed import cli
from comfy_distributed.config import parse_config
from comfy_distributed.launcher import LaunchContext, Launcher, Record
from comfy_distributed.launcher.agents import agent_plan, agents_pool
from comfy_distributed.launcher.status import judge_agent
from harness.redis_server import RedisMissing, RedisServer, running_redis
from tests.waiting import LOOPBACK, free_port, poll

from .helpers import Site, explain, pid_alive, read_pid, worker

PASSWORD = "s3cret-pool-pw"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis that asks for :data:`PASSWORD` (set once it answers; the harness starts it without one)."""
    pytest.importorskip("redis", reason="redis-py is not installed (the agent needs it: pip install redis)")
    try:
        with running_redis(tmp_path_factory.mktemp("redis")) as server:
            with socket.create_connection((LOOPBACK, server.port), timeout=2) as sock:
                sock.sendall(f"CONFIG SET requirepass {PASSWORD}\r\n".encode())
                assert sock.recv(64).startswith(b"+OK")
            yield server
    except RedisMissing as exc:
        pytest.skip(str(exc))


def pool_url(server: RedisServer) -> str:
    return f"redis://:{PASSWORD}@{LOOPBACK}:{server.port}/0"


def heartbeats(server: RedisServer) -> list[dict[str, Any]]:
    """The live agents' heartbeats in the pool ``default``."""
    import redis as redis_py

    client = redis_py.Redis.from_url(pool_url(server))
    try:
        return [json.loads(client.get(key) or b"null") for key in client.scan_iter("cdp:default:agent:*")]
    finally:
        client.close()


@pytest.fixture
def site(comfy_root, state_dir, tmp_path, monkeypatch) -> Site:
    monkeypatch.delenv("COMFY_DISTRIBUTED_POOL", raising=False)  # the config's pool, or none, in these tests
    return Site(comfy_root, tmp_path / "gpu_config.json", state_dir, [free_port() for _ in range(3)])


def row(output: str, label: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(label))


def test_the_agent_starts_shows_and_stops_with_its_worker(site, redis):
    site.configure([worker(1, site.ports[1], pool_agent=True, pool_tags=["gpu48", "video"]),
                    worker(2, site.ports[2])], pool={"url": pool_url(redis)})
    result = site.cli("workers")
    assert result.returncode == 0, explain(result)
    assert "GPU 1 agent (worker 1): starting" in result.stdout and "GPU 2 agent" not in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    agent, first_worker = read_pid(site.state, "agent-worker-1"), read_pid(site.state, "worker-1")
    assert not (site.state / "agent-worker-2.pid").exists()

    poll(lambda: [beat for beat in heartbeats(redis) if beat["comfyui"]], 30, "the agent's heartbeat, its ComfyUI up")
    (beat,) = heartbeats(redis)
    assert beat["name"] == "GPU 1" and beat["tags"] == ["gpu48", "video"]
    command_line = Path(f"/proc/{agent}/cmdline").read_bytes().decode() if Path("/proc").is_dir() else ""
    assert PASSWORD not in command_line, "the pool's password is in the environment, not the process list"
    assert PASSWORD not in (site.state / "agent-worker-1.log").read_text()

    status = site.cli("status")
    assert row(status.stdout, "GPU 1 agent (worker 1)").split()[5:8] == [str(agent), str(site.ports[1]), "up"], \
        explain(status)
    logs = site.cli("logs", "GPU 1 agent")
    assert logs.returncode == 0 and "serves pool" in logs.stdout, explain(logs)

    restarted = site.cli("restart", "1")
    assert restarted.returncode == 0, explain(restarted)
    assert not pid_alive(agent) and not pid_alive(first_worker)
    agent = read_pid(site.state, "agent-worker-1")
    assert pid_alive(agent)

    stopped = site.cli("stop", "1")
    assert stopped.returncode == 0, explain(stopped)
    assert "GPU 1 agent (worker 1): stopped" in stopped.stdout
    assert not pid_alive(agent) and not (site.state / "agent-worker-1.pid").exists()
    assert not heartbeats(redis), "a stopped agent leaves the pool at once"
    status = site.cli("status")
    assert row(status.stdout, "GPU 1 agent (worker 1)").split()[5:8] == ["-", str(site.ports[1]), "down"]
    assert "is down: its process is not running" in status.stderr

    second_worker = read_pid(site.state, "worker-2")
    assert site.cli("stop").returncode == 0
    assert not pid_alive(second_worker) and not list(site.state.glob("*.pid")), "nothing of ours is left"


def test_the_agent_stops_when_the_master_exits(site, redis):
    site.configure([worker(1, site.ports[1], pool_agent=True)], pool={"url": pool_url(redis)},
                   stop_workers_on_exit=True)
    result = site.cli("all-slow")
    assert result.returncode == 0, explain(result)
    started = [read_pid(site.state, key) for key in ("worker-1", "agent-worker-1", "watcher")]
    os.killpg(read_pid(site.state, "master"), signal.SIGKILL)
    poll(lambda: not any(pid_alive(pid) for pid in started), 40, "the worker, its agent and the watcher stopped")
    assert not list(site.state.glob("*.pid"))


def test_without_a_pool_the_worker_starts_alone_with_a_warning(site):
    site.configure([worker(1, site.ports[1], pool_agent=True)])
    result = site.cli("workers")
    assert result.returncode == 0, explain(result)
    assert "warning: worker 1 (GPU 1): pool_agent is set but no pool is configured" in result.stdout
    assert "agent" not in result.stdout.replace("pool_agent", "").replace("no agent is started", "")
    assert not (site.state / "agent-worker-1.pid").exists()
    assert "GPU 1 agent" not in site.cli("status").stdout
    assert site.cli("stop").returncode == 0


def test_an_agent_that_cannot_start_fails_its_worker_start(site, monkeypatch):
    """A malformed COMFY_DISTRIBUTED_POOL: the worker starts, its agent does not, and the outcome says why."""
    site.configure([worker(1, site.ports[1], pool_agent=True)])
    monkeypatch.setenv("COMFY_DISTRIBUTED_POOL", "http://not-redis")
    result = site.cli("workers")
    assert result.returncode == 1, explain(result)
    assert "GPU 1 agent (worker 1): FAILED: COMFY_DISTRIBUTED_POOL: must start with redis://" in result.stdout
    assert not (site.state / "agent-worker-1.pid").exists()
    assert site.cli("stop").returncode == 0


# --- the pure parts: the agent's command line, its name, its state -------------------------------------------------


def launcher_for(tmp_path: Path, workers: list[dict], **settings: Any) -> Launcher:
    config = parse_config({"workers": workers, "settings": settings})
    return Launcher(config, LaunchContext(tmp_path, tmp_path / "gpu_config.json", tmp_path))


def test_the_agent_command_line_holds_no_pool_url(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFY_DISTRIBUTED_POOL", raising=False)
    url = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
    launcher = launcher_for(tmp_path, [worker(1, 8189, name="-odd name", pool_agent=True, pool_tags=["a", "b"],
                                              extra_args="--cpu --listen 127.0.0.5")],
                            pool={"url": url, "name": "team"})
    agent = launcher.agent_of(launcher.find("1"))
    assert agent is not None and agent.key == "agent-worker-1" and agent.label == "-odd name agent (worker 1)"
    pool = agents_pool(launcher.config.settings)
    assert pool is not None
    command, env = agent_plan(agent, pool)
    assert command[0] == sys.executable and command[4:] == [
        "agent", "--comfyui=http://127.0.0.5:8189", "--name=-odd name", "--pool-name=team", "--tags=a,b"]
    assert PASSWORD not in " ".join(command) and env["COMFY_DISTRIBUTED_POOL"] == url


def test_an_agent_is_found_by_its_name_or_key_and_a_worker_by_its_id(tmp_path):
    launcher = launcher_for(tmp_path, [worker(1, 8189, pool_agent=True), worker("1-agent", 8190)])
    assert launcher.find("1").kind == "local" and launcher.find("1-agent").kind == "local"
    assert launcher.find("GPU 1 agent").key == "agent-worker-1" == launcher.find("agent-worker-1").key
    assert launcher.find("agent-worker-1-agent").worker.id == "1-agent"


def test_which_workers_get_an_agent(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFY_DISTRIBUTED_POOL", raising=False)
    workers = [worker(1, 8189, pool_agent=True), worker(2, 8190),
               worker(3, 8191, pool_agent=True, ssh={"host": "box", "comfyui_path": "/opt/ComfyUI"})]
    with_pool = launcher_for(tmp_path, workers, pool={"url": "redis://127.0.0.1:6379/0"})
    assert [with_pool.agent_of(i) is not None for i in with_pool.instances()] == [False, True, False, False]
    without = launcher_for(tmp_path, workers)
    assert [without.agent_of(i) for i in without.instances()] == [None] * 4
    monkeypatch.setenv("COMFY_DISTRIBUTED_POOL", "redis://127.0.0.1:6379/0")
    assert without.agent_of(without.find("1")) is not None, "the environment's pool counts"


def test_an_agent_is_up_down_or_disabled(tmp_path):
    launcher = launcher_for(tmp_path, [worker(1, 8189, pool_agent=True), worker(2, 8190, pool_agent=True,
                                                                                 enabled=False)])
    agent, disabled = (launcher.find(name) for name in ("GPU 1 agent", "GPU 2 agent"))
    up = judge_agent(agent, Record(4242, 8189, 0.0))
    assert (up.state, up.pid, up.down) == ("up", 4242, False)
    down = judge_agent(agent, None)
    assert down.state == "down" and down.down and "logs agent-worker-1" in down.hint and "restart 1" in down.hint
    assert judge_agent(disabled, None).state == "disabled" and not judge_agent(disabled, None).down


def test_the_cli_warns_of_a_malformed_pool_in_the_environment(monkeypatch):
    monkeypatch.setenv("COMFY_DISTRIBUTED_POOL", "http://not-redis")
    warnings = cli.config_warnings(parse_config({"workers": [worker(1, 8189, pool_agent=True)]}))
    assert warnings[0].startswith("COMFY_DISTRIBUTED_POOL: must start with redis://")
    assert "pool_agent is set but no pool is configured" in warnings[1]
