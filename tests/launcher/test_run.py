"""``comfy-distributed run WORKFLOW.json``: queue on the master, follow with a progress bar, save the images.

Against the stand-in ComfyUI started by the launcher (plain ComfyUI events), and against a scripted
master that also sends the cluster's ``multigpu.*`` events.
"""

from __future__ import annotations

import io

import pytest
from aiohttp import web

from comfy_distributed import cli
from comfy_distributed.errors import RunError
from tests.waiting import free_port

from .helpers import explain, run_cli, write_config
from .scripted_master import PNG, ScriptedMaster, image_workflow, write


def test_run_saves_the_images_and_shows_progress(stand_in_master, tmp_path):
    output = tmp_path / "out"
    result = run_cli("run", str(write(tmp_path / "wf.json", image_workflow())), "--output", str(output),
                     *stand_in_master)
    assert result.returncode == 0, explain(result)
    saved = sorted(output.iterdir())
    assert len(saved) == 2 and all(p.read_bytes().startswith(PNG[:8]) for p in saved)
    assert "DistributedTestImage" in result.stdout and "/10" in result.stdout, "step progress is shown"
    assert "100%" in result.stdout and f"Saved 2 image(s) to {output}" in result.stdout

    wrapped = write(tmp_path / "wrapped.json", {"prompt": image_workflow(delay=0), "extra_data": {}})
    again = run_cli("run", str(wrapped), "--output", str(output), *stand_in_master)
    assert again.returncode == 0, explain(again)
    assert len(list(output.iterdir())) == 4, "a second run never overwrites the first one's images"


def test_run_failures_say_what_happened(stand_in_master, tmp_path):
    missing = write(tmp_path / "missing.json", {"1": {"class_type": "NoSuchNode", "inputs": {}}})
    result = run_cli("run", str(missing), "--output", str(tmp_path / "o"), *stand_in_master)
    assert result.returncode == 1 and "the master refused the workflow" in result.stderr
    assert "NoSuchNode" in result.stderr and "does not exist" in result.stderr

    failing = write(tmp_path / "fail.json", image_workflow(0, {
        "3": {"class_type": "DistributedTestFail", "inputs": {"images": ["1", 0], "message": "boom"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}))
    result = run_cli("run", str(failing), "--output", str(tmp_path / "o"), *stand_in_master)
    assert result.returncode == 1, explain(result)
    assert "the workflow failed on the master in node 3 (DistributedTestFail): boom" in result.stderr

    ui_format = write(tmp_path / "ui.json", {"nodes": [{"id": 1}], "links": []})
    result = run_cli("run", str(ui_format), *stand_in_master)
    assert result.returncode == 1 and "Export (API)" in result.stderr

    result = run_cli("run", str(missing), "--master", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "does not answer" in result.stderr and "'python -m comfy_distributed master'" in result.stderr
    assert "Traceback" not in result.stderr


async def test_cluster_progress_and_worker_failures_are_shown(tmp_path, monkeypatch):
    monkeypatch.setenv(cli.TOKEN_ENV, "secret-token-0123456789")
    master = ScriptedMaster()
    async with master.server:
        stream = io.StringIO()
        saved = await cli.run_workflow(master.url, image_workflow(), {"client": "x"}, tmp_path / "out", 30, stream)
    assert master.queued[0]["extra_data"] == {"client": "x", "multigpu_job_id": "J"}
    assert master.authorization == ["Bearer secret-token-0123456789"]
    text = stream.getvalue()
    assert "cluster: 1/2 units done" in text and "warning: Worker GPU 2: boom" in text
    assert [p.name for p in saved] == ["a.png", "2-1-a.png"]
    assert [p.read_bytes() for p in saved] == [PNG, PNG + b"w1"]


async def test_cluster_events_are_matched_without_prepare_job(tmp_path):
    master = ScriptedMaster(prepare=False)
    async with master.server:
        stream = io.StringIO()
        await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, stream)
    assert "multigpu_job_id" not in master.queued[0]["extra_data"]
    assert "cluster: 1/2 units done" in stream.getvalue(), "the job was found through /multigpu/status"


async def test_master_going_away_or_too_slow(tmp_path):
    master = ScriptedMaster(finish=False)
    async with master.server:
        with pytest.raises(RunError, match="closed the connection before the workflow finished"):
            await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, io.StringIO())
    slow = ScriptedMaster()
    slow.play = _never  # type: ignore[method-assign]
    async with slow.server:
        with pytest.raises(RunError, match=r"did not finish within 1 s \(--timeout\)"):
            await cli.run_workflow(slow.url, image_workflow(), {}, tmp_path / "out", 1, io.StringIO())


async def _never() -> None:
    return None


class FailingMaster(ScriptedMaster):
    """A master that cannot queue: POST /prompt answers 500 with its own text."""

    async def prompt(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="<b>trouble</b>")


async def test_a_master_that_cannot_queue_says_so(tmp_path):
    master = FailingMaster(prepare=False)
    async with master.server:
        with pytest.raises(RunError) as caught:
            await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, io.StringIO())
    assert str(caught.value) == "the master answered POST /prompt with HTTP 500: <b>trouble</b>"
