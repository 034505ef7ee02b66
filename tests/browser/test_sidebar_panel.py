"""The Multi-GPU sidebar panel in real headless Chromium against a real ComfyUI cluster.

Why: the panel is built on the frontend's public extension API, and only a real browser on a
real master shows that it registers, follows the websocket events and drives the API. This
starts two plain workers and a master with this extension (tier 3, like ``tests/real``), then
runs ``sidebar_panel.mjs`` (playwright-core driving Debian's ``chromium``): it opens the tab,
enters the token, sees both workers idle, edits them, runs a job from the UI and sees its
progress, sees a worker's live preview on its card while it samples the random SD1.5 checkpoint (the
workers run with ``--preview-method latent2rgb``) and sees it go when the unit ends, clears VRAM, disables a worker, kills another mid-job and sees it offline within the
health TTL, launches it again and reads its log from the card (and the cluster's line in the
header), adds and removes a worker, edits a setting, fills a Multi-GPU Value node's per-worker
table and sees each card show its value, sees the master's card say when it only
coordinates, and sees a pool's agents as cards (the pool added to the master's status answer in the browser: no
Redis here), a hostile agent's name, tags and checkpoint shown as text. Screenshots go to ``test-artifacts/browser/``.

Skipped, with the reason, without ``COMFYUI_PATH``, Node.js, ``node_modules/playwright-core``
(``npm ci``) or a Chromium (``apt-get install chromium``; ``CHROMIUM_PATH`` names another one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.browser.browser_support import CHROMIUM, FRONT_END_ROOT, ROOT, run_driver, skip_reason
from tests.real.cluster import Cluster, image_workflow
from tests.real.harness import ComfyInstance, link_model, random_sd15, sd15_workflow
from tests.waiting import free_port, poll

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "sidebar_panel.mjs"
RECORDER = HERE / "request_recorder"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
TOKEN = "browser-test-token-0123456789"
HEALTH_TTL = 3.0

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


class RecordingCluster(Cluster):
    """A cluster whose workers log the non-GET requests they receive (to see POST /free) and send preview frames
    while they sample."""

    def _start(self, name: str, base: Path, **kwargs) -> ComfyInstance:
        if name == "master" and FRONT_END_ROOT:
            kwargs["extra_args"] = [*(kwargs.get("extra_args") or []), "--front-end-root", FRONT_END_ROOT]
        if name != "master":
            kwargs["custom_nodes"] = {**(kwargs.get("custom_nodes") or {}), "request_recorder": RECORDER}
            kwargs["env"] = {**(kwargs.get("env") or {}), "MULTIGPU_REQUEST_LOG": str(base / f"{name}-requests.log")}
            kwargs["extra_args"] = [*(kwargs.get("extra_args") or []), *PREVIEW_ARGS]
        return super()._start(name, base, **kwargs)


PREVIEW_ARGS = ("--preview-method", "latent2rgb")
"""The workers' preview method, as a user gives it in their extra_args (README, Live previews)."""


def preview_workflow() -> dict:
    """The random SD1.5 checkpoint through a Collector: a few steps of a few seconds each on a 2-core machine, so
    that the live previews show for a while."""
    prompt = sd15_workflow("random-sd15.safetensors", seed=0, steps=6, batch_size=1)
    prompt["5"]["inputs"]["seed"] = ["20", 0]
    prompt["20"] = {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": 5}}
    prompt["21"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["6", 0]}}
    prompt["7"]["inputs"]["images"] = ["21", 0]
    return prompt


@pytest.fixture(scope="module")
def sd15_checkpoint() -> Path:
    return random_sd15()


def _free_requests(log: Path) -> int:
    return log.read_text().splitlines().count("POST /free") if log.exists() else 0


def _launchable(config_path: Path, worker_index: int, base: Path) -> None:
    """Give a worker the arguments the master's launcher needs to start it again like the harness did."""
    config = json.loads(config_path.read_text())
    config["workers"][worker_index]["extra_args"] = (
        f"--listen 127.0.0.1 --cpu --disable-auto-launch --base-directory {base} "
        f"--database-url sqlite:///{base / 'comfyui-launched.db'}")
    config_path.write_text(json.dumps(config))


def _kill_launched(pids: list[int], state_dir: Path) -> None:
    """Stop what the panel's Launch and Restart buttons started (the test owns those processes too)."""
    for pid_file in state_dir.glob("*.pid"):
        try:
            pids.append(int(json.loads(pid_file.read_text())["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for pid in set(pids):
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                kill()
                break
            except (ProcessLookupError, PermissionError):
                continue


@pytest.mark.timeout(900)
def test_sidebar_panel_in_chromium(tmp_path: Path, sd15_checkpoint: Path) -> None:
    state_dir = tmp_path / "launcher-state"
    cluster = RecordingCluster(tmp_path, master_env={"COMFY_DISTRIBUTED_TOKEN": TOKEN,
                                                     "COMFY_DISTRIBUTED_STATE_DIR": str(state_dir)})
    launched: list[int] = []
    try:
        for instance in (cluster.master, cluster.w1, cluster.w2):
            link_model(instance.base_dir, "checkpoints", sd15_checkpoint, "random-sd15.safetensors")
        cluster.use_workers(cluster.w1, cluster.w2, heartbeat_interval=0.5, health_ttl=HEALTH_TTL)
        _launchable(cluster.config_path, 1, cluster.w2.base_dir)
        poll(lambda: [w["status"] for w in cluster.status()["workers"]] == ["idle", "idle"], 30, "both workers idle",
             interval=0.05)
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        logs = {w.name: tmp_path / f"{w.name}-requests.log" for w in (cluster.w1, cluster.w2)}
        plan = {
            "master": cluster.master.url,
            "token": TOKEN,
            "ttl": HEALTH_TTL,
            "config_path": str(cluster.config_path),
            "artifacts": str(ARTIFACTS),
            "report": str(tmp_path / "report.json"),
            "chromium": CHROMIUM,
            "workflow": image_workflow(seed=7, delay=4.0),
            "preview_workflow": preview_workflow(),
            "workers": {str(i + 1): {"url": w.url, "pid": w.process.pid, "requests_log": str(logs[w.name])}
                        for i, w in enumerate((cluster.w1, cluster.w2))},
            "spare_port": free_port(),
        }
        run_driver(SCRIPT, plan, tmp_path / "plan.json", cluster.master, timeout=780)

        report = json.loads(Path(plan["report"]).read_text())
        launched.extend(report["launched_pids"])
        assert all(step["ok"] for step in report["steps"]) and len(report["steps"]) == 21, report["steps"]
        assert not report["extension_errors"], report["extension_errors"]
        assert report["timings"]["offline_after_kill_s"] <= HEALTH_TTL
        assert report["skipped"] == [], f"steps skipped in the browser: {report['skipped']}"
        # what the clicks left behind, checked again from outside the browser
        config = json.loads(cluster.config_path.read_text())
        assert [(w["id"], w["enabled"], w["cuda_device"]) for w in config["workers"]] == [(1, True, 1), (2, True, 2)]
        assert config["settings"]["worker_timeout"] == 150
        assert _free_requests(logs["w2"]) == 2 and _free_requests(logs["w1"]) == 1
        assert not cluster.w2.running, "worker 2 was killed from the browser test"
        assert sorted(p.name for p in ARTIFACTS.glob("*.png")) == sorted(Path(p).name for p in report["screenshots"])
    finally:
        report_path = tmp_path / "report.json"
        if report_path.exists() and not launched:
            launched.extend(json.loads(report_path.read_text()).get("launched_pids", []))
        _kill_launched(launched, state_dir)
        cluster.stop()
