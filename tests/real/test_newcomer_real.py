"""Tier 3 for the first hour: a worker that loads the extension stays passive, and the token command on a
public master (real ComfyUI processes started by the launcher; COMFYUI_PATH, COMFYUI_PYTHON)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from comfy_distributed.api.access import TOKEN_ENV
from tests.launcher.helpers import explain
from tests.real.cluster import image_workflow
from tests.real.harness import requires_comfyui, start_comfyui
from tests.real.launched_site import ENV, REPO, TEST_NODES
from tests.waiting import poll

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]

PASSIVE = "the extension stays passive here"
FROZEN = "of ComfyUI's startup left out of later garbage collections"


def get(port: int, path: str, token: str | None = None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


def test_workers_that_load_the_extension_stay_passive(site, tmp_path):
    (site.bases[1] / "custom_nodes" / "ComfyUI-Distributed").symlink_to(REPO, target_is_directory=True)
    by_hand = start_comfyui(  # started by hand on worker 2's port, with the extension and the master's config
        "by-hand", tmp_path / "by-hand", port=site.ports[2],
        custom_nodes={"ComfyUI-Distributed": REPO, "comfy_test_nodes": TEST_NODES},
        env={"COMFY_DISTRIBUTED_CONFIG": str(site.config)})
    try:
        started = site.cli("all-slow")
        assert started.returncode == 0, explain(started)
        assert "2 started, 1 already running" in started.stdout
        launched_log = (site.state / "worker-1.log").read_text()
        assert PASSIVE in launched_log and "COMFY_DISTRIBUTED_ROLE=worker" in launched_log
        assert "is worker 2 (GPU 2)" in by_hand.log_path.read_text()
        assert "its port" in by_hand.log_path.read_text() and PASSIVE in by_hand.log_path.read_text()
        assert FROZEN in launched_log and FROZEN in by_hand.log_path.read_text(), "a worker's heap is frozen too"
        for port in site.ports[1:]:
            assert get(port, "/multigpu/status")[0] == 404, "no /multigpu routes on a worker"
        master_log = (site.state / "master.log").read_text()
        assert PASSIVE not in master_log and "3 worker(s)" not in master_log and "2 worker(s), 2 enabled" in master_log

        def both_idle() -> bool:
            status, body = get(site.ports[0], "/multigpu/status")
            return status == 200 and [w["status"] for w in body["workers"]] == ["idle", "idle"]

        poll(both_idle, 60, "the master sees both workers idle")
        workflow = tmp_path / "workflow.json"
        workflow.write_text(json.dumps(image_workflow(seed=21, delay=0.2, batch=2)))
        ran = site.cli("run", str(workflow), "--output", str(tmp_path / "images"))
        assert ran.returncode == 0, explain(ran)
        assert len(list((tmp_path / "images").glob("*.png"))) == 6
        fresh = site.cli("run", str(workflow), "--set", "2.seed=22", "--output", str(tmp_path / "fresh"))
        assert fresh.returncode == 0, explain(fresh)
        assert len(list((tmp_path / "fresh").glob("*.png"))) == 6

        plain = tmp_path / "plain.json"  # no Collector: ComfyUI answers a repeat from its cache
        plain.write_text(json.dumps({
            "1": {"class_type": "DistributedTestImage",
                  "inputs": {"seed": 5, "batch_size": 1, "width": 32, "height": 32, "delay": 0.0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "plain"}}}))
        first = site.cli("run", str(plain), "--output", str(tmp_path / "plain1"))
        assert first.returncode == 0 and "answered from its cache" not in first.stdout, explain(first)
        assert "no Multi-GPU Collector" in first.stdout
        again = site.cli("run", str(plain), "--output", str(tmp_path / "plain2"))
        assert again.returncode == 0 and "answered from its cache" in again.stdout, explain(again)
        assert len(list((tmp_path / "plain2").glob("*.png"))) == 1
    finally:
        by_hand.stop()


def test_the_token_command_opens_a_public_master(site, tmp_path):
    site.data["master"]["extra_args"] = site.data["master"]["extra_args"].replace("--listen 127.0.0.1",
                                                                                  "--listen 0.0.0.0")
    site.data["workers"] = []
    site.save()
    started = site.cli("master")
    assert started.returncode == 0, explain(started)
    port = site.ports[0]
    master_log = (site.state / "master.log").read_text()
    assert "no API token is configured" in master_log and "launch_distributed.sh token" in master_log
    status, body = get(port, "/multigpu/config")
    assert status == 401 and body["token_configured"] is False and "token" in body["error"]

    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(image_workflow(seed=31, delay=0.0, batch=1)))
    refused = site.cli("run", str(workflow), "--output", str(tmp_path / "refused"))
    assert refused.returncode == 1 and "the master refused the job" in refused.stderr, explain(refused)
    assert "none is configured yet" in refused.stderr

    made = site.cli("token")
    assert made.returncode == 0, explain(made)
    token = next(line.split(": ", 1)[1] for line in made.stdout.splitlines() if line.startswith("Token: "))
    assert (site.config.stat().st_mode & 0o777) == 0o600
    status, body = get(port, "/multigpu/config", token)  # no restart
    assert status == 200 and body["auth"] == {"token_configured": True, "token_required": True, "public": True}
    status, body = get(port, "/multigpu/config", "wrong-token-0123456789")
    assert status == 401 and body["token_configured"] is True

    from tests.launcher.helpers import run_cli
    from tests.real.harness import COMFYUI_PATH

    ran = run_cli("run", str(workflow), "--output", str(tmp_path / "images"), "--comfyui", str(COMFYUI_PATH),
                  "--config", str(site.config), "--state-dir", str(site.state), env={**ENV, TOKEN_ENV: token})
    assert ran.returncode == 0, explain(ran)
    assert len(list((tmp_path / "images").glob("*.png"))) == 1
    assert "refused" not in ran.stdout + ran.stderr
