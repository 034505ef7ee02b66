"""Workers with an ``ssh`` block, for real: a throwaway OpenSSH server on 127.0.0.1 launches stand-ins here.

Skipped, with the reason shown, when sshd is not installed (Debian: openssh-server).
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from comfy_distributed.api.launch import RESTART_PATH

from tests.waiting import free_port, poll

from .helpers import answers, explain, pid_alive, read_pid
from .launch_api import LaunchApi
from .sshd import INSTALL_HINT, SshSite, sshd_binary

pytestmark = pytest.mark.skipif(sshd_binary() is None or os.name == "nt", reason=INSTALL_HINT)


@pytest.fixture
def site(tmp_path, comfy_root, sshd) -> SshSite:
    return SshSite(tmp_path, comfy_root, sshd)


def test_ssh_worker_start_status_restart_stop(site):
    result = site.cli("workers")
    assert result.returncode == 0, explain(result)
    assert answers(site.ports[1])
    report = site.remote_report()
    assert report["cuda_visible_devices"] == "3" and report["cwd"] == str(site.remote_root)
    assert report["argv"] == ["--port", str(site.ports[1]), "--cpu", "--preview-method", "auto"]
    remote_pid = int((site.remote_state / "worker-1.pid").read_text())
    assert remote_pid == report["pid"] == read_pid(site.state, "worker-1")
    record = json.loads((site.state / "worker-1.pid").read_text())
    assert record["where"] == f"ssh {site.sshd.user}@127.0.0.1:{site.sshd.port}"
    assert "STARTED" in (site.state / "worker-1.log").read_text(), "ssh's output is logged here"

    again = site.cli("workers")
    assert again.returncode == 0 and "already running" in again.stdout

    status = site.cli("status")
    row = next(line for line in status.stdout.splitlines() if line.startswith("GPU 1"))
    assert str(remote_pid) in row and " ready " in row and "ssh 127.0.0.1" in row

    restarted = site.cli("restart", "1")
    assert restarted.returncode == 0, explain(restarted)
    assert not pid_alive(remote_pid) and answers(site.ports[1])
    second_pid = int((site.remote_state / "worker-1.pid").read_text())
    assert second_pid != remote_pid

    stopped = site.cli("stop")
    assert stopped.returncode == 0, explain(stopped)
    assert not pid_alive(second_pid) and not answers(site.ports[1])
    assert not (site.remote_state / "worker-1.pid").exists() and not (site.state / "worker-1.pid").exists()


@pytest.mark.parametrize("change, expected", [
    ({"key_file": "other"}, "was refused (Permission denied): check ssh.user and ssh.key_file"),
    ({"known_hosts_file": "wrong"}, "the host key of 127.0.0.1 is not known here, or it changed"),
    ({"port": "closed"}, "no SSH server answers on 127.0.0.1:"),
    ({"comfyui_path": "/no/such/ComfyUI"}, "/no/such/ComfyUI does not exist on 127.0.0.1: set workers[0].ssh.comfyui_path"),
    ({"python": "/no/such/python"}, "no Python found on 127.0.0.1 (/no/such/python): set workers[0].ssh.python"),
    ({"key_file": "/no/such/key"}, "workers[0].ssh.key_file: /no/such/key does not exist"),
], ids=["wrong-key", "unknown-host-key", "no-sshd", "no-comfyui", "no-python", "no-key-file"])
def test_ssh_failures_say_what_to_fix(site, change, expected):
    values = {"other": str(site.sshd.other_key_file), "wrong": str(site.sshd.wrong_known_hosts), "closed": free_port()}
    site.configure(**{name: values.get(value, value) if isinstance(value, str) else value
                      for name, value in change.items()})
    result = site.cli("workers")
    assert result.returncode == 1, explain(result)
    assert expected in result.stderr, explain(result)
    assert "Traceback" not in result.stderr
    assert not answers(site.ports[1])


def test_ssh_worker_that_exits_early_shows_the_remote_log(site):
    site.configure(extra_args="--cpu --fake-exit 3 --fake-message 'RuntimeError: CUDA error: invalid device ordinal'")
    result = site.cli("workers")
    assert result.returncode == 1, explain(result)
    err = result.stderr
    assert "GPU 1 (worker 1) exited on 127.0.0.1 after" in err
    assert f"127.0.0.1:{site.remote_root}/user/comfy-distributed/worker-1.log" in err
    assert "| RuntimeError: CUDA error: invalid device ordinal" in err
    assert "workers[0].cuda_device = 3" in err, "the probable cause names the setting"
    assert not (site.state / "worker-1.pid").exists()


def test_ssh_workers_stop_when_the_master_exits(site):
    site.configure(settings={"stop_workers_on_exit": True})
    result = site.cli("all-slow")
    assert result.returncode == 0, explain(result)
    remote_pid = int((site.remote_state / "worker-1.pid").read_text())
    os.killpg(read_pid(site.state, "master"), signal.SIGKILL)
    poll(lambda: not pid_alive(remote_pid), 60, "the ssh worker stopped after the master")
    poll(lambda: not (site.state / "watcher.pid").exists(), 20, "the watcher ended")


async def test_the_ui_restart_uses_ssh_for_a_remote_worker(site):
    assert site.cli("workers").returncode == 0
    first = int((site.remote_state / "worker-1.pid").read_text())
    site.state.mkdir(exist_ok=True)
    async with LaunchApi(site.local_root, site.state, site.config) as api:
        status, answer = await api.post(RESTART_PATH, {"worker_id": 1}, token=None)
        assert status == 200, answer
        assert answer["worker"]["pid"] != first and not pid_alive(first)
        poll(lambda: answers(site.ports[1]), 30, "the worker restarted over ssh")
        assert api.health.launching == [(1, 60.0)]
    assert site.cli("stop").returncode == 0
