"""Queue mode saves a worker's files on the master's origin: only names, types and bytes that fit what its node
says it saved, streamed to disk within the prompt's budget; nothing of a refused prompt is kept."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from pathlib import Path

import pytest

from comfy_distributed.queue_mode.files import FolderSaver
from comfy_distributed.queue_mode.balancer import FORWARD_POSITION
from tests.component.cluster import balancer, plain
from tests.standin import StandinComfy

PNG_START = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"


@pytest.fixture(autouse=True)
async def nothing_leaks(standin_cluster):
    """Every test here fails at teardown if it leaked a task or an unclosed client session (see conftest)."""
    yield


def listing(files: list[tuple[str, str]], key: str = "images"):
    """A history in which the prompt's output node ``2`` lists ``files`` ((subfolder, name)) under ``key``."""
    entries = [{"filename": name, "subfolder": subfolder, "type": "output"} for subfolder, name in files]
    return lambda body: {prompt_id: {**entry, "outputs": {"2": {key: entries}}} for prompt_id, entry in body.items()}


def plant(worker: StandinComfy, subfolder: str, name: str, data: bytes) -> None:
    folder = worker.base_dir / "output" / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def files_under(folder: Path) -> list[str]:
    return sorted(str(Path(root, name).relative_to(folder)) for root, _, names in os.walk(folder) for name in names)


async def forward(tmp_path: Path, worker: StandinComfy, events: list | None = None, **settings):
    b = balancer(tmp_path, [worker.port], events=events, queue_mode="no_collector", max_retries=0, **settings)
    b.saver = FolderSaver(tmp_path / "master-output")
    _, sent = b.route(plain())
    assert sent is not None
    b.start(sent)
    try:
        return await asyncio.to_thread(b.wait, sent.job_id, "2", lambda: False)
    finally:
        await b.close()
        await b.cluster.close()


async def test_a_worker_s_files_land_in_its_own_folder_and_the_node_shows_them(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        done = await forward(tmp_path, w1)
        assert done.state() == "done", done.record(FORWARD_POSITION).causes
        ((file, saved),) = done.outputs()["2"].files["images"]
        assert saved.reference == {"filename": file.filename, "subfolder": "worker-1", "type": "output"}
        assert saved.path.read_bytes() == (w1.base_dir / "output" / file.filename).read_bytes()
        assert files_under(tmp_path / "master-output") == [f"worker-1/{file.filename}"]  # no temporary file left


HOSTILE = {
    "svg": ("", "pic.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            "a .svg file is never saved on the master"),
    "html": ("", "page.html", b"<html><script>steal(localStorage)</script></html>", "a .html file is never saved"),
    "dot-file": ("", ".hidden.png", PNG_START, "a hidden file"),
    "device": ("", "NUL.png", PNG_START, "the Windows device name NUL"),
    "device folder": ("com1", "a.png", PNG_START, "its subfolder part 'com1' is the Windows device name COM1"),
    "wrong magic": ("", "fake.png", b"<svg onload='alert(1)'/>" + b" " * 64, "it does not start like a PNG image"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_hostile_file_is_refused_with_its_reason_and_nothing_of_the_prompt_is_kept(tmp_path, case):
    subfolder, name, data, words = HOSTILE[case]
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        plant(w1, "", "good.png", PNG_START + b"\0" * 64)
        plant(w1, subfolder, name, data)
        w1.tamper_json = {"/history/{prompt_id}": listing([("", "good.png"), (subfolder, name)])}
        w1.drop_ws_after_start = True  # the files come from the (tampered) history
        events: list = []
        done = await forward(tmp_path, w1, events)
        assert done.state() == "master" and done.outputs() == {}  # no other worker: the master runs the prompt itself
        (cause,) = done.record(FORWARD_POSITION).causes
        assert cause.startswith("GPU 1: ") and words in cause and "output node 2 images" in cause, cause
        (failed,) = [data for event, data in events if event == "multigpu.worker_failed"]
        assert failed["reason"] == "protocol_error" and words in failed["message"]
        assert files_under(tmp_path / "master-output") == []  # not even the good file
        if case != "wrong magic":
            assert w1.request_counts["/view"] == 0  # refused by its name: nothing fetched


async def test_files_past_the_prompt_s_budget_are_refused_part_way_and_none_is_kept(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        names = [f"frame{i}.png" for i in range(4)]
        for name in names:
            plant(w1, "", name, PNG_START + os.urandom(400 * 1024))
        w1.tamper_json = {"/history/{prompt_id}": listing([("", name) for name in names])}
        w1.drop_ws_after_start = True
        done = await forward(tmp_path, w1, max_forward_mb=1)
        assert done.state() == "master"
        (cause,) = done.record(FORWARD_POSITION).causes
        assert "budget of 1 MiB (settings.max_forward_mb)" in cause and "frame2.png" in cause, cause
        assert w1.request_counts["/view"] == 3  # the third passed the budget: the fourth was never asked for
        assert files_under(tmp_path / "master-output") == []


async def test_a_large_file_is_streamed_to_disk_not_held_in_memory(tmp_path):
    size = 24 * 1024 * 1024
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        plant(w1, "clips", "clip.mp4", b"\0\0\0\x18ftypisom" + os.urandom(size))
        w1.tamper_json = {"/history/{prompt_id}": listing([("clips", "clip.mp4")], key="gifs")}
        w1.drop_ws_after_start = True
        tracemalloc.start()
        try:
            done = await forward(tmp_path, w1)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert done.state() == "done", done.record(FORWARD_POSITION).causes
        ((_, saved),) = done.outputs()["2"].files["gifs"]
        assert saved.reference == {"filename": "clip.mp4", "subfolder": "worker-1/clips", "type": "output"}
        assert saved.path.stat().st_size == size + 12
        assert peak < size / 3, f"the master held {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"
