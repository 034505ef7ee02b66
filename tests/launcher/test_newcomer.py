"""The first hour (issue "newcomer"): the token command, ``run``'s refusals, ``--set`` and the cache note,
the role of an instance that loads the extension, start-up warnings and the hints' command name."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from aiohttp import web

from comfy_distributed import cli, launcher
from comfy_distributed.comfy.adapter import startup_warnings
from comfy_distributed.config import load_config, parse_config
from comfy_distributed.launcher import command_name, cpu_hints
from comfy_distributed.errors import RunError
from comfy_distributed.comfy.role import ROLE_ENV, decide_role

from tests.waiting import free_port

from .helpers import run_cli, write_config
from .scripted_master import ScriptedMaster, image_workflow


# --- the token command -------------------------------------------------------------------------

def test_token_is_created_owner_only_and_keeps_the_file(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"master": {"port": 8188}, "workers": [{"id": 1, "port": 8189}],
                                "my_notes": "kept"}, indent=1))
    path.chmod(0o644)
    created = run_cli("token", "--config", str(path))
    assert created.returncode == 0, created.stderr
    token = load_config(path).settings.api_token
    assert token and len(token) >= 32 and f"Token: {token}" in created.stdout
    assert "Authorization: Bearer" in created.stdout and "no restart" in created.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["my_notes"] == "kept" and data["workers"] == [{"id": 1, "port": 8189}], "only the token was added"

    again = run_cli("token", "--config", str(path))
    assert again.returncode == 0 and "already holds an API token" in again.stdout and token in again.stdout
    assert load_config(path).settings.api_token == token
    replaced = run_cli("token", "--new", "--config", str(path))
    assert replaced.returncode == 0 and load_config(path).settings.api_token not in (None, token)
    removed = run_cli("token", "--remove", "--config", str(path))
    assert removed.returncode == 0 and load_config(path).settings.api_token is None


def test_token_of_a_missing_file_creates_it_and_a_broken_one_is_left_alone(tmp_path, comfy_root):
    extension = comfy_root / "custom_nodes" / "ComfyUI-Distributed"
    (extension / "comfy_distributed").mkdir(parents=True)
    (extension / "comfy_distributed" / "__init__.py").write_text("")
    made = run_cli("token", "--comfyui", str(comfy_root))
    assert made.returncode == 0, made.stderr
    assert load_config(extension / "gpu_config.json").settings.api_token, "the installed extension's config"
    assert stat.S_IMODE((extension / "gpu_config.json").stat().st_mode) == 0o600
    broken = tmp_path / "broken.json"
    broken.write_text('{"workers": [{"id": 1, "port": 99999}]}')
    before = broken.read_bytes()
    refused = run_cli("token", "--config", str(broken))
    assert refused.returncode == 1 and "workers[0].port" in refused.stderr and "Traceback" not in refused.stderr
    assert broken.read_bytes() == before


# --- run: refusals, --set, the cache ------------------------------------------------------------

class RefusingMaster(ScriptedMaster):
    def __init__(self, status: int, body: object) -> None:
        super().__init__()
        self.answer = (status, body)

    async def prepare_job(self, request: web.Request) -> web.Response:
        status, body = self.answer
        return web.json_response(body, status=status)


@pytest.mark.parametrize("status,body,words", [
    (401, {"error": "this master listens beyond loopback ... none is configured yet", "token_configured": False},
     ["none is configured yet", "token' creates one"]),
    (403, {"error": "refused: the request's Host 'x' is not a loopback address"}, ["HTTP 403", "Host 'x'"]),
    (409, {"error": "the configuration file is invalid, fix it first: ..."}, ["HTTP 409", "configuration file"]),
    (400, {"error": "the Distributor's seed comes from node 7 (KSampler)"}, ["HTTP 400", "node 7"]),
])
async def test_every_refusal_of_prepare_job_is_reported(tmp_path, status, body, words):
    master = RefusingMaster(status, body)
    async with master.server:
        with pytest.raises(RunError) as caught:
            await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, io.StringIO())
    assert all(word in str(caught.value) for word in words), str(caught.value)
    assert master.queued == [], "nothing is queued after a refusal"


async def test_a_workflow_without_collector_runs_with_a_note(tmp_path):
    master = RefusingMaster(400, {"error": "the prompt has no Multi-GPU Collector: nothing to distribute"})
    async with master.server:
        stream = io.StringIO()
        await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, stream)
    assert "no Multi-GPU Collector" in stream.getvalue() and len(master.queued) == 1


class CachedMaster(ScriptedMaster):
    async def play(self) -> None:
        events = [("execution_start", {"prompt_id": "P"}),
                  ("execution_cached", {"nodes": ["1", "2"], "prompt_id": "P"}),
                  ("executing", {"node": None, "prompt_id": "P"})]
        for kind, data in events:
            for _, ws in self.sockets:
                await ws.send_json({"type": kind, "data": data})


async def test_an_answer_from_the_cache_is_said(tmp_path):
    for master, cached in ((CachedMaster(), True), (ScriptedMaster(), False)):
        async with master.server:
            stream = io.StringIO()
            await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / f"out-{cached}", 30, stream)
        assert ("answered from its cache" in stream.getvalue()) is cached


def test_set_changes_one_input_with_its_type():
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1.safetensors"}},
              "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "batch_size": 2}},
              "6": {"class_type": "KSampler", "inputs": {"seed": ["8", 0], "cfg": 7.0, "add_noise": True}}}
    for override in ("4.ckpt_name=my model.safetensors", "4.ckpt_name=123", "5.width=256", "6.cfg=5",
                     "6.add_noise=false"):
        cli.apply_override(prompt, override)
    assert prompt["4"]["inputs"]["ckpt_name"] == "123"
    assert prompt["5"]["inputs"]["width"] == 256 and type(prompt["5"]["inputs"]["width"]) is int
    assert prompt["6"]["inputs"]["cfg"] == 5.0 and prompt["6"]["inputs"]["add_noise"] is False


@pytest.mark.parametrize("override,words", [
    ("width=5", "NODE.INPUT=VALUE"), ("5.width", "NODE.INPUT=VALUE"), ("9.width=1", "no node '9'"),
    ("5.height=1", "no input 'height'"), ("5.width=wide", "expects a number"), ("5.width=1.5", "whole number"),
    ("6.seed=3", "connected to node 8"), ("6.add_noise=1", "true or false"),
])
def test_set_refuses_with_what_is_wrong(override, words):
    prompt = {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512}},
              "6": {"class_type": "KSampler", "inputs": {"seed": ["8", 0], "add_noise": True}}}
    with pytest.raises(RunError, match=words):
        cli.apply_override(prompt, override)


def test_set_on_the_command_line_leaves_the_file_alone(tmp_path):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(image_workflow()))
    before = path.read_bytes()
    result = run_cli("run", str(path), "--master", "http://127.0.0.1:9", "--set", "1.nope=1")
    assert result.returncode == 1 and "no input 'nope'" in result.stderr
    assert path.read_bytes() == before


# --- which instance is the master --------------------------------------------------------------

CONFIG = parse_config({"master": {"port": 8188},
                       "workers": [{"id": 1, "port": 8189}, {"id": 2, "port": 8190, "host": "192.168.1.5"},
                                   {"id": 3, "port": 8191, "host": "localhost"}]})


@pytest.mark.parametrize("port,env,master,worker", [
    (8188, {}, True, None), (8189, {}, False, 1), (8191, {}, False, 3),
    (8190, {}, True, None),  # that port is a worker on another machine: not this one
    (9000, {}, True, None), (8188, {ROLE_ENV: "worker"}, False, None), (8189, {ROLE_ENV: "master"}, True, None),
    (8189, {ROLE_ENV: "Worker"}, False, 1),
])
def test_role_of_an_instance(port, env, master, worker):
    role = decide_role(CONFIG, port, env)
    assert role.is_master is master and (role.worker.id if role.worker else None) == worker


def test_role_without_a_readable_config_is_master_unless_told():
    assert decide_role(None, 8189, {}).is_master
    assert not decide_role(None, 8189, {ROLE_ENV: "worker"}).is_master


def test_the_launcher_tells_each_instance_its_role(tmp_path, comfy_root, state_dir):
    config = parse_config({"master": {"port": 8188}, "workers": [{"id": 1, "port": 8189}]})
    context = launcher.LaunchContext(comfy_root, tmp_path / "gpu_config.json", state_dir)
    local = launcher.LocalProcesses(context)
    master, worker = launcher.Launcher(config, context).instances()
    assert local.plan(master)[1][ROLE_ENV] == "master"
    assert local.plan(worker)[1][ROLE_ENV] == "worker"


# --- start-up warnings and hints ------------------------------------------------------------------

def test_public_master_without_token_warns_at_start():
    plain = parse_config({})
    (warning,) = startup_warnings(plain, public=True)
    assert "--listen" in warning and "launch_distributed.sh token" in warning
    assert startup_warnings(plain, public=False) == []
    assert startup_warnings(parse_config({"settings": {"api_token": "x" * 20}}), public=True) == []
    assert startup_warnings(plain, public=True, env_token="y" * 20) == [], "COMFY_DISTRIBUTED_TOKEN counts too"


def test_cpu_hint_without_a_gpu(monkeypatch, tmp_path, comfy_root, state_dir):
    config = parse_config({"master": {"port": 8188, "extra_args": "--cpu"},
                           "workers": [{"id": 1, "port": 8189}, {"id": 2, "port": 8190, "host": "10.0.0.2"}]})
    instances = launcher.Launcher(config, launcher.LaunchContext(comfy_root, tmp_path / "c.json", state_dir)).instances()
    monkeypatch.setattr(launcher.discovery, "gpu_seen", lambda: False)
    (hint,) = cpu_hints(instances)
    assert "the extra_args of Worker 1 (worker 1)" in hint and "workers[0]" not in hint and "master" not in hint
    assert "--cpu" in hint
    monkeypatch.setattr(launcher.discovery, "gpu_seen", lambda: True)
    assert cpu_hints(instances) == []


def test_hints_name_the_command_the_user_ran(monkeypatch):
    monkeypatch.setenv(launcher.COMMAND_ENV, "./launch_distributed.sh")
    assert command_name() == "./launch_distributed.sh"
    monkeypatch.delenv(launcher.COMMAND_ENV)
    monkeypatch.setattr("sys.argv", ["/venv/bin/comfy-distributed", "status"])
    assert command_name() == "comfy-distributed"
    monkeypatch.setattr("sys.argv", ["-c"])
    assert command_name() == "python -m comfy_distributed"
    monkeypatch.setattr("sys.argv", ["main.py", "--port", "8188"])
    assert command_name().endswith("launch_distributed.sh") or command_name().endswith(".bat")


def test_the_wrapper_names_itself_in_hints(comfy_root, tmp_path):
    import subprocess

    wrapper = Path(__file__).resolve().parents[2] / "launch_distributed.sh"
    config = write_config(tmp_path / "gpu_config.json", free_port(), [])
    result = subprocess.run(["sh", str(wrapper), "status", "--comfyui", str(comfy_root), "--config",
                             str(config), "--state-dir", str(tmp_path / "state")],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COMFY_DISTRIBUTED_PYTHON": sys.executable})
    assert result.returncode == 1, result.stderr
    assert f"start it with '{wrapper} master'" in " ".join(result.stderr.split())  # status wraps at 100 columns


def test_status_leaves_a_disabled_worker_on_another_machine_unprobed(monkeypatch, tmp_path, comfy_root, state_dir):
    # the example config's remote worker (192.168.1.100) is switched off; on a LAN without that host a probe
    # would wait for its connect timeout, and whatever answers there is not the user's worker
    config = parse_config({"master": {"port": 8188},
                           "workers": [{"id": 3, "host": "192.168.1.100", "port": 8188, "enabled": False}]})
    probed: list[str] = []
    real_probe = launcher.probe
    monkeypatch.setattr(launcher.core, "probe", lambda url, *a, **k: probed.append(url) or real_probe(url, *a, **k))
    master, remote = launcher.Launcher(config, launcher.LaunchContext(comfy_root, tmp_path / "c.json", state_dir)).status()
    assert remote.state == "disabled" and remote.pid is None
    assert probed == [master.instance.url]
