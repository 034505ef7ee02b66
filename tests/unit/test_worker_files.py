"""A worker's file names, types and first bytes, as queue mode checks them before saving anything on the master."""

from __future__ import annotations

import os

import pytest

from comfy_distributed.worker_client import OutputFile
from comfy_distributed.queue_mode.files import (
    FolderSaver,
    confined_output_path,
    content_problem,
    name_problem,
    type_problem,
    write_new_file,
)


@pytest.mark.parametrize("name", ["CON", "con", "NUL.png", "nul.tar.gz", "Com1.txt", "LPT9", "aux.png", "PRN.latent",
                                  "NUL .png", "COM\u00b9.png", "conin$"])
def test_windows_device_names_are_refused_whatever_the_case_or_extension(name):
    assert "Windows device name" in name_problem(name)


@pytest.mark.parametrize("name, words", [(".htaccess", "hidden"), (".x.png", "hidden"), ("a.png.", "ending in a dot"),
                                         ("a.png ", "ending in a dot or a space"), ("a\nb.png", "reserved"),
                                         ("a?.png", "reserved"), ("..", "not a name")])
def test_hidden_and_odd_names_are_refused(name, words):
    assert words in name_problem(name)


@pytest.mark.parametrize("name", ["ComfyUI_00001_.png", "console.png", "nullify.png", "com10.png", "lpt.png",
                                  "my clip (2).mp4"])
def test_ordinary_names_pass(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("subfolder", ["CON", "clips/NUL", "a/.git", "aux.d/x"])
def test_every_subfolder_part_is_checked_too(subfolder):
    with pytest.raises(ValueError, match="subfolder part"):
        confined_output_path("worker-1", subfolder, "a.png")


@pytest.mark.parametrize("key, name", [("images", "a.svg"), ("images", "a.SVG"), ("gifs", "a.html"),
                                       ("audio", "a.xml"), ("text", "a.js"), ("3d", "a.htm")])
def test_documents_a_browser_renders_are_never_saved(key, name):
    assert "never saved" in type_problem(key, name)


@pytest.mark.parametrize("key, name, allowed", [
    ("images", "a.png", True), ("images", "a.mp4", True), ("images", "a.latent", False), ("latents", "a.latent", True),
    ("latents", "a.png", False), ("audio", "a.flac", True), ("audio", "a.mp4", False), ("gifs", "a.webm", True),
    ("3d", "a.glb", True), ("3d", "a.exe", False), ("anything", "a.ogg", True), ("anything", "a", False)])
def test_a_file_must_be_of_a_type_its_key_saves(key, name, allowed):
    assert (type_problem(key, name) is None) == allowed


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 24


@pytest.mark.parametrize("name, head", [
    ("a.png", PNG), ("a.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 20), ("a.gif", b"GIF89a" + b"\0" * 10),
    ("a.webp", b"RIFF\0\0\0\0WEBPVP8 "), ("a.wav", b"RIFF\0\0\0\0WAVEfmt "), ("a.flac", b"fLaC\0\0\0\x22"),
    ("a.ogg", b"OggS\0\x02"), ("a.opus", b"OggS\0\x02"), ("a.mp3", b"ID3\x04\0"), ("a.mp3", b"\xff\xfb\x90\x00"),
    ("a.mp4", b"\0\0\0\x18ftypisom"), ("a.mov", b"\0\0\0\x14ftypqt  "), ("a.webm", b"\x1a\x45\xdf\xa3\x9f"),
    ("a.mkv", b"\x1a\x45\xdf\xa3\x9f"), ("a.avi", b"RIFF\0\0\0\0AVI LIST"), ("a.glb", b"glTF\x02\0\0\0"),
    ("a.gltf", b'\xef\xbb\xbf  {"asset": {}}'), ("a.latent", (40).to_bytes(8, "little") + b'{"latent_tensor"'),
    ("a.obj", b"<html>anything: obj has no signature"), ("a.ply", b"ply\nformat ascii 1.0")])
def test_a_file_that_starts_like_its_type_passes(name, head):
    assert content_problem(name, head) is None


@pytest.mark.parametrize("name, head", [
    ("a.png", b"<svg xmlns='http://www.w3.org/2000/svg'><script>"), ("a.png", b""), ("a.jpg", PNG),
    ("a.webp", b"RIFF\0\0\0\0WAVEfmt "), ("a.mp4", b"<html><body>"), ("a.latent", b"\xff" * 16),
    ("a.gltf", b"<!DOCTYPE html>"), ("a.flac", b"OggS")])
def test_a_file_whose_first_bytes_lie_about_its_type_is_refused(name, head):
    assert "does not start like" in content_problem(name, head)


def test_a_new_file_is_written_aside_and_named_without_overwriting(tmp_path):
    saver = FolderSaver(tmp_path / "out", tmp_path / "tmp")
    (tmp_path / "out" / "worker-1" / "clips").mkdir(parents=True)
    (tmp_path / "out" / "worker-1" / "clips" / "a.mp4").write_bytes(b"older")
    new = saver.save_output(OutputFile("a.mp4", "clips", "output"), "worker-1")
    new.write(b"\0\0\0\x18ftypisom")
    folder = tmp_path / "out" / "worker-1" / "clips"
    (hidden,) = [p for p in folder.iterdir() if p.name.startswith(".multigpu-")]  # not under its name until kept
    saved = new.keep()
    assert saved.reference == {"filename": "a (1).mp4", "subfolder": "worker-1/clips", "type": "output"}
    assert saved.path.read_bytes() == b"\0\0\0\x18ftypisom" and not hidden.exists()
    assert (folder / "a.mp4").read_bytes() == b"older"
    temp = saver.save_output(OutputFile("b.png", "", "temp"), "worker-1")
    temp.write(b"x")
    temp.drop()
    assert os.listdir(tmp_path / "tmp" / "worker-1") == []  # a dropped file leaves nothing


def test_write_new_file_keeps_its_old_form(tmp_path):
    assert write_new_file(str(tmp_path), "worker-2", "worker-2/sub", "a.png", b"one") == "a.png"
    assert write_new_file(str(tmp_path), "worker-2", "worker-2/sub", "a.png", b"two") == "a (1).png"
    assert sorted(os.listdir(tmp_path / "worker-2" / "sub")) == ["a (1).png", "a.png"]
