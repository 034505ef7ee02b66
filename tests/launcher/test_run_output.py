"""``run --output DIR`` against a hostile or broken master (finding 7): files stay in DIR, nothing is overwritten.

The master is :class:`~.scripted_master.ScriptedMaster` (an aiohttp server on port 0) with its ``/history``
and ``/view`` answers replaced.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from comfy_distributed import cli
from comfy_distributed.errors import RunError

from .scripted_master import PNG, ScriptedMaster, image_workflow, write

HOSTILE_NAMES = ["../evil.png", "", ".", "..", "a/b.png", "..\\win.png", "nul\x00.png", "keep.png"]


class HostileMaster(ScriptedMaster):
    """A master whose /history says whatever the test wants and whose /view sends ``body``."""

    def __init__(self, outputs: Any, body: bytes = PNG, chunked: bool = False) -> None:
        super().__init__(prepare=False)
        self.outputs, self.body, self.chunked = outputs, body, chunked

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        try:
            return await super().ws(request)
        finally:  # a closed socket would end play() before it reached the next run's
            self.sockets[:] = [(client_id, ws) for client_id, ws in self.sockets if not ws.closed]

    async def history(self, request: web.Request) -> web.Response:
        return web.json_response({"P": {"status": {"status_str": "success"}, "outputs": self.outputs}})

    async def view(self, request: web.Request) -> web.StreamResponse:
        if not self.chunked:
            return web.Response(body=self.body, content_type="image/png")
        response = web.StreamResponse()  # no Content-Length: only counting what arrives finds the size
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(self.body), 1000):
            await response.write(self.body[start:start + 1000])
        await response.write_eof()
        return response


def images(*names: str) -> list[dict[str, str]]:
    return [{"filename": name, "subfolder": "", "type": "output"} for name in names]


def files_under(folder: Path) -> set[Path]:
    return {path.resolve() for path in folder.rglob("*") if path.is_file()}


async def test_hostile_names_stay_inside_the_output_folder(tmp_path):
    output = tmp_path / "a" / "b" / "out"  # where '..' and '../../x' lead is still under tmp_path
    output.mkdir(parents=True)
    (output / "keep.png").write_bytes(b"original")
    before = files_under(tmp_path)
    master = HostileMaster({"../../x": {"images": images(*HOSTILE_NAMES)}})
    stream = io.StringIO()
    async with master.server:
        saved = await cli.run_workflow(master.url, image_workflow(), {}, output, 30, stream)
    assert len(saved) == len(HOSTILE_NAMES) and len(set(saved)) == len(saved)
    assert all(path.parent == output.resolve() for path in saved), saved
    assert files_under(tmp_path) - before == set(saved), "nothing is written outside the output folder"
    assert (output / "keep.png").read_bytes() == b"original", "an existing file is never overwritten"
    assert all(path.read_bytes() == PNG for path in saved)
    assert {"_evil.png", "a_b.png", "_win.png", "nul_.png"} <= {path.name for path in saved}
    assert "image '../evil.png', which is not a plain file name: saved as _evil.png" in stream.getvalue()


async def test_an_existing_name_gets_a_new_one_each_time(tmp_path):
    output = tmp_path / "out"
    master = HostileMaster({"9": {"images": images("a.png")}})
    async with master.server:
        names = [(await cli.run_workflow(master.url, image_workflow(), {}, output, 30, io.StringIO()))[0].name
                 for _ in range(4)]
    assert names == ["a.png", "9-0-a.png", "9-0-a-1.png", "9-0-a-2.png"]


@pytest.mark.parametrize("outputs, named", [
    ([1, 2], "outputs should be an object"),
    ({"2": "x"}, "outputs['2'] should be an object"),
    ({"2": {"images": {"filename": "a.png"}}}, "outputs['2'].images should be a list"),
    ({"2": {"images": ["a.png"]}}, "outputs['2'].images[0] should be an object"),
    ({"2": {"images": [{"filename": 5}]}}, "outputs['2'].images[0].filename should be a string, got 5"),
    ({"2": {"images": [{"subfolder": ""}]}}, "outputs['2'].images[0].filename should be a string, got null"),
    ({"2": {"images": [{"filename": "a.png", "type": ["output"]}]}}, "images[0].type should be a string"),
])
async def test_a_history_of_the_wrong_shape_is_a_clear_error(tmp_path, outputs, named):
    master = HostileMaster(outputs)
    async with master.server:
        with pytest.raises(RunError) as caught:
            await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, io.StringIO())
    message = str(caught.value)
    assert "the master's answer to GET" in message and "/history/P is not ComfyUI's" in message and named in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_image_past_the_size_cap_is_refused(tmp_path, monkeypatch, chunked):
    monkeypatch.setattr(cli.results, "MAX_IMAGE_BYTES", 4096)
    master = HostileMaster({"2": {"images": images("big.png")}}, body=PNG + b"\x00" * 10_000, chunked=chunked)
    async with master.server:
        with pytest.raises(RunError, match=r"'big.png' .*more than 4096 bytes"):
            await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, io.StringIO())
    assert not (tmp_path / "out" / "big.png").exists(), "no partial file is left"


async def test_the_cli_prints_a_message_not_a_traceback(tmp_path, capsys):
    workflow = write(tmp_path / "wf.json", image_workflow())
    output = tmp_path / "out"
    master = HostileMaster({"../../x": {"images": images("../evil.png")}})
    async with master.server:
        code = await asyncio.to_thread(cli.main, ["run", str(workflow), "--output", str(output), "--master",
                                                  master.url])
    captured = capsys.readouterr()
    assert code == 0, captured
    assert "warning: the master named an image '../evil.png'" in captured.out and "saved as _evil.png" in captured.out
    assert [path.name for path in output.iterdir()] == ["_evil.png"] and not (tmp_path / "evil.png").exists()

    broken = HostileMaster({"2": {"images": [{"filename": None}]}})
    async with broken.server:
        code = await asyncio.to_thread(cli.main, ["run", str(workflow), "--output", str(output), "--master",
                                                  broken.url])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert "error: the master's answer to GET" in captured.err and "filename should be a string" in captured.err
