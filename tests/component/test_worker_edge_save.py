"""Queue mode saves a worker's files on the master: only in that worker's own folder, never over a file."""

from __future__ import annotations

import os

import pytest

from comfy_distributed.comfy.adapter import confined_output_path, write_new_file


def test_a_workers_file_lands_in_its_own_folder():
    assert confined_output_path("worker-1", "", "a.png") == ("worker-1", "a.png")
    assert confined_output_path("worker-1", "clips/day 2", "a.png") == ("worker-1/clips/day 2", "a.png")
    assert confined_output_path("worker-1", "win\\style", "a.png") == ("worker-1/win/style", "a.png")


@pytest.mark.parametrize("subfolder", ["..", "../master", "a/../../x", "/etc", "a//b", ".", "a/./b", "C:\\x", "a/"])
def test_a_subfolder_that_leaves_or_blurs_the_workers_folder_is_refused(subfolder):
    with pytest.raises(ValueError, match="subfolder part"):
        confined_output_path("worker-1", subfolder, "a.png")


@pytest.mark.parametrize("filename", ["", ".", "..", "../a.png", "/abs.png", "a/b.png", "a\\b.png", "c:evil.png",
                                      "x" * 256, "nul\0.png"])
def test_a_file_name_that_is_not_a_plain_name_is_refused(filename):
    with pytest.raises(ValueError, match="file name"):
        confined_output_path("worker-1", "", filename)


def test_a_worker_tag_must_be_one_folder():
    with pytest.raises(ValueError, match="worker folder"):
        confined_output_path("..", "", "a.png")


def test_an_existing_file_is_never_overwritten(tmp_path):
    root = str(tmp_path)
    assert write_new_file(root, "worker-1", "worker-1", "a.png", b"first") == "a.png"
    assert write_new_file(root, "worker-1", "worker-1", "a.png", b"second") == "a (1).png"
    assert write_new_file(root, "worker-1", "worker-1/sub", "a.png", b"third") == "a.png"
    folder = tmp_path / "worker-1"
    assert (folder / "a.png").read_bytes() == b"first"
    assert (folder / "a (1).png").read_bytes() == b"second"
    assert (folder / "sub" / "a.png").read_bytes() == b"third"


def test_links_never_lead_a_write_out_of_the_workers_folder(tmp_path):
    outside = tmp_path / "master-outputs"
    outside.mkdir()
    own = tmp_path / "out" / "worker-1"
    own.mkdir(parents=True)
    os.symlink(outside, own / "link")
    with pytest.raises(ValueError, match="leads out"):
        write_new_file(str(tmp_path / "out"), "worker-1", "worker-1/link", "a.png", b"x")
    os.symlink(outside / "victim.png", own / "b.png")  # a dangling link where the file would go
    assert write_new_file(str(tmp_path / "out"), "worker-1", "worker-1", "b.png", b"x") == "b (1).png"
    assert list(outside.iterdir()) == []
