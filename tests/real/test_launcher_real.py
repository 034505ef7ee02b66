"""Tier 3: ``comfy-distributed`` with real ComfyUI processes (COMFYUI_PATH, COMFYUI_PYTHON).

The launcher starts a master with this extension and two plain workers with the test node pack,
each with its own base directory and database (``extra_args``), checks that a second launch starts
nothing, that ``status``, ``stop`` and ``restart`` do what they say, runs a distributed workflow with
``run``, and shows real ComfyUI's own refusal of a bad argument. The SSH test starts a real ComfyUI
worker through a throwaway sshd on 127.0.0.1 (skipped when sshd is not installed).
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.launcher.helpers import answers, explain, pid_alive, read_pid
from tests.launcher.sshd import INSTALL_HINT, LocalSshd, sshd_binary
from tests.real.cluster import image_workflow
from tests.real.harness import COMFYUI_PATH, comfyui_python
from tests.real.launched_site import instance_args
from tests.waiting import poll

def row(output: str, label: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(label))


def test_launcher_with_real_comfyui(site, tmp_path):
    result = site.cli("all-slow")
    assert result.returncode == 0, explain(result)
    assert "3 started" in result.stdout and all(answers(port) for port in site.ports)
    assert site.cli("all-slow").stdout.count(": already running on http") == 3, "a second call starts nothing"
    pids = {key: read_pid(site.state, key) for key in ("master", "worker-1", "worker-2")}

    def master_sees_idle() -> bool:
        status = site.cli("status")
        return status.returncode == 0 and all(" idle " in row(status.stdout, f"GPU {k}") for k in (1, 2))

    poll(master_sees_idle, 60, "status: every instance ready, the master's heartbeat sees the workers idle")
    status = site.cli("status")
    assert str(pids["master"]) in row(status.stdout, "master") and "GiB" in row(status.stdout, "master")
    assert "cluster: no prompts queued" in status.stdout, status.stdout

    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(image_workflow(seed=11, delay=1.0, batch=2)))
    output = tmp_path / "images"
    ran = site.cli("run", str(workflow), "--output", str(output))
    assert ran.returncode == 0, explain(ran)
    assert len(list(output.glob("*.png"))) == 6, "batch 2 x (master + 2 workers), collected by the master"
    assert "cluster:" in ran.stdout and "units done" in ran.stdout and "100%" in ran.stdout
    logs = site.cli("logs", "1", "-n", "200")
    assert logs.returncode == 0, explain(logs)
    assert "worker-1.log <==" in logs.stdout and "To see the GUI go to" in logs.stdout, "ComfyUI's own lines"
    with urllib.request.urlopen(f"http://127.0.0.1:{site.ports[0]}/multigpu/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'comfy_distributed_jobs_started_total{kind="collector"} 1' in metrics, metrics
    assert 'comfy_distributed_worker_images_total{worker="1"} 2' in metrics, metrics

    assert site.cli("stop", "2").returncode == 0 and not pid_alive(pids["worker-2"])
    down = site.cli("status")
    assert down.returncode == 1 and "GPU 2 (worker 2) is down" in down.stderr
    restarted = site.cli("restart", "2")
    assert restarted.returncode == 0, explain(restarted)
    assert answers(site.ports[2])

    everything = [read_pid(site.state, key) for key in pids]
    final = site.cli("stop")
    assert final.returncode == 0, explain(final)
    assert not any(pid_alive(pid) for pid in everything) and not any(answers(port) for port in site.ports)

    site.data["workers"][0]["extra_args"] += " --no-such-flag"
    site.data["workers"][1]["enabled"] = False
    site.save()
    refused = site.cli("workers")
    assert refused.returncode == 1, explain(refused)
    assert "GPU 1 (worker 1) exited with code 2" in refused.stderr
    assert "unrecognized arguments: --no-such-flag" in refused.stderr
    assert "refused an argument of workers[0].extra_args" in refused.stderr


@pytest.mark.skipif(sshd_binary() is None, reason=INSTALL_HINT)
def test_real_comfyui_worker_over_ssh(site, tmp_path):
    sshd = LocalSshd(tmp_path / "sshd").start()
    worker_id = f"t3-{uuid.uuid4().hex[:8]}"  # the remote pid and log files live in COMFYUI_PATH/user/...
    remote_files = [Path(COMFYUI_PATH) / "user" / "comfy-distributed" / f"worker-{worker_id}.{ext}"
                    for ext in ("pid", "log")]
    try:
        site.data["workers"] = [{
            "id": worker_id, "name": "Remote", "port": site.ports[1], "cuda_device": None, "enabled": True,
            "extra_args": instance_args(site.bases[1]),
            "ssh": sshd.ssh_block(Path(COMFYUI_PATH), comfyui_python()),
        }]
        site.save()
        started = site.cli("workers")
        assert started.returncode == 0, explain(started)
        first = int(remote_files[0].read_text())
        assert answers(site.ports[1]) and pid_alive(first)
        assert "To see the GUI go to" in remote_files[1].read_text(), "ComfyUI's output is logged on its machine"
        logs = site.cli("logs", worker_id, "-n", "200")
        assert logs.returncode == 0 and "To see the GUI go to" in logs.stdout, explain(logs)  # read over SSH
        restarted = site.cli("restart", worker_id)
        assert restarted.returncode == 0, explain(restarted)
        assert not pid_alive(first) and answers(site.ports[1])
        second = int(remote_files[0].read_text())
        stopped = site.cli("stop", worker_id)
        assert stopped.returncode == 0, explain(stopped)
        poll(lambda: not pid_alive(second), 30, "the ssh worker is gone")
        assert not answers(site.ports[1])
    finally:
        for path in remote_files:
            if path.name.endswith(".pid") and path.exists():
                try:
                    os.kill(int(path.read_text()), 9)
                except (ValueError, ProcessLookupError):
                    pass
            path.unlink(missing_ok=True)
        sshd.stop()
