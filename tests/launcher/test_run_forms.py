"""``comfy-distributed run`` takes a workflow in any of its three forms: a bare API graph (Export (API)), a
``{"prompt": ...}`` request body, or the UI's format (Save, the templates), converted with the master's
``/object_info``.

Against the scripted master of ``test_run.py`` with the node definitions of a real ComfyUI added, and against
the stand-in ComfyUI the launcher starts.
"""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from aiohttp import web

from comfy_distributed import cli
from comfy_distributed.cli.workflow_file import MAX_WORKFLOW_BYTES, read_workflow
from comfy_distributed.errors import RunError
from tests.waiting import free_port

from .helpers import explain, run_cli, write_config
from .scripted_master import ScriptedMaster, write

ROOT = Path(__file__).resolve().parents[2]
OBJECT_INFO = json.loads((ROOT / "tests" / "unit" / "data" / "object_info_examples.json").read_text())
EXAMPLE = "txt2img_cpu"


class DefiningMaster(ScriptedMaster):
    """The scripted master, which also answers ``/object_info`` (``None``: as a master without that route)."""

    def __init__(self, object_info: object = OBJECT_INFO) -> None:
        super().__init__()
        self.object_info = object_info
        self.server.app.router.add_get("/object_info", self.definitions)

    async def definitions(self, request: web.Request) -> web.Response:
        if self.object_info is None:
            return web.Response(status=404, text="404: Not Found")
        return web.json_response(self.object_info)


async def run_in_thread(*argv: str) -> tuple[int, str]:
    """``comfy-distributed ARGV`` in a thread (it runs its own event loop), its exit code and what it printed."""
    out = io.StringIO()

    def call() -> int:
        with redirect_stdout(out):
            return cli.main(list(argv))

    return await asyncio.to_thread(call), out.getvalue()


def example(folder: str) -> dict:
    return json.loads((ROOT / folder / f"{EXAMPLE}.json").read_text())


@pytest.mark.parametrize("form", ["api", "body", "ui"])
async def test_run_takes_each_form_of_a_workflow_file(tmp_path, form):
    content = {"api": example("api_workflows"), "ui": example("example_workflows"),
               "body": {"prompt": example("api_workflows"), "extra_data": {"client": "x"}}}[form]
    path = write(tmp_path / "wf.json", content)
    master = DefiningMaster()
    async with master.server:
        code, printed = await run_in_thread("run", str(path), "--master", master.url, "--output",
                                            str(tmp_path / "out"), "--set", "8.seed=7")
    assert code == 0, printed
    queued = master.queued[0]
    expected = example("api_workflows")
    expected["8"]["inputs"]["seed"] = 7
    assert queued["prompt"] == expected
    extra = queued["extra_data"]
    if form == "ui":
        assert extra["extra_pnginfo"] == {"workflow": content}, "the images keep the workflow, as the UI's do"
        assert f"Converted wf.json from the UI's format with the master's node definitions (9 nodes)" in printed
    else:
        assert "extra_pnginfo" not in extra and "Converted" not in printed
    assert extra.get("client") == ("x" if form == "body" else None)


async def test_a_ui_workflow_the_master_cannot_define_is_refused(tmp_path, capsys):
    path = write(tmp_path / "wf.json", example("example_workflows"))
    lacking = {k: v for k, v in OBJECT_INFO.items() if k != "MultiGPUCollector"}
    for answer, message in [
        (lacking, "node 9 (MultiGPUCollector): the master has no node class 'MultiGPUCollector'"),
        (None, "the master's node definitions, which convert it, cannot be read"),
        ([], "GET {url}/object_info: the answer is a list, not an object of node classes"),
    ]:
        master = DefiningMaster(answer)
        async with master.server:
            url = master.url
            code, _ = await run_in_thread("run", str(path), "--master", url, "--output", str(tmp_path / "o"))
        error = capsys.readouterr().err
        assert code == 1 and message.format(url=url) in error, error
        assert "Export (API)" in error and "Traceback" not in error
        assert master.queued == []
    code, _ = await run_in_thread("run", str(path), "--master", f"http://127.0.0.1:{free_port()}")
    error = capsys.readouterr().err
    assert code == 1 and "does not answer" in error and "Traceback" not in error


def test_workflow_files_are_checked_before_any_master_is_asked(tmp_path):
    bad_ui = write(tmp_path / "ui.json", {"nodes": [{"id": 1, "type": "SaveImage", "widgets_values": "x"}]})
    with pytest.raises(RunError, match=r"ui\.json: node 1's widgets_values must be a list.*Export \(API\)"):
        read_workflow(bad_ui)
    nested = tmp_path / "deep.json"
    nested.write_text("[" * 200 + "]" * 200)
    with pytest.raises(RunError, match="nested deeper than 100 levels"):
        read_workflow(nested)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(MAX_WORKFLOW_BYTES + 1)
    with pytest.raises(RunError, match="larger than any workflow"):
        read_workflow(huge)
    with pytest.raises(RunError, match="nor one in the UI's format"):
        read_workflow(write(tmp_path / "list.json", [1, 2]))
    with pytest.raises(RunError, match=r"takes the master's node definitions.*Export \(API\)"):
        cli.load_workflow(write(tmp_path / "ui2.json", example("example_workflows")))


def ui_image_workflow() -> dict:
    """The stand-in's test image saved, in the UI's format, with a Note and a muted Preview Image."""
    return {
        "last_node_id": 4, "last_link_id": 2, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "DistributedTestImage", "mode": 0, "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1, 2]}], "widgets_values": [3, "fixed", 2, 32, 24, 0]},
            {"id": 2, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
             "outputs": [], "widgets_values": ["run"]},
            {"id": 3, "type": "PreviewImage", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
             "outputs": []},
            {"id": 4, "type": "Note", "mode": 0, "widgets_values": ["a note"]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 3, 0, "IMAGE"]],
    }


def test_run_converts_a_ui_workflow_on_the_stand_in_master(stand_in_master, tmp_path):
    output = tmp_path / "out"
    result = run_cli("run", str(write(tmp_path / "ui.json", ui_image_workflow())), "--output", str(output),
                     *stand_in_master)
    assert result.returncode == 0, explain(result)
    assert "Converted ui.json from the UI's format" in result.stdout
    assert len(list(output.iterdir())) == 2
