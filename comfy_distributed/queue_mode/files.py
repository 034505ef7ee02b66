"""A worker's files saved on the master (queue mode): which names, types and bytes are taken, and how they are
written.

The master serves what it saves with ComfyUI's ``/view``, on its own origin, where the panel keeps its API
token; ``/view`` forces a download only for html, js and css. So a worker's file is kept only when

- every part of its name (subfolders too) is a plain name: no path, no dot-file, no Windows device name
  (``CON``, ``NUL.png``, ``com1.txt``, also with trailing dots or spaces), no control or reserved character;
- its extension is one its output key saves (``images``: png, jpg, webp, gif, and the videos ComfyUI's video
  nodes list there...), so never svg, xml, html or a script, which a browser would render or run;
- its first bytes are those of that type (a PNG signature, ``RIFF....WEBP``, an MP4 ``ftyp`` box...).

A kept file is written as a hidden temporary file in its destination folder (:class:`NewFile`), then named
with a hard link: never over an existing file, never out of the worker's own folder.
:mod:`.outputs` streams a forwarded prompt's files into such files.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..worker_client import MIB, OutputFile, clip_text

MAX_NAME_TRIES = 10000
"""New names tried for a worker's file before giving up (``name (1).png``, ``name (2).png``...)."""

DEVICE_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
                         | {f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"})
"""Names Windows opens as a device whatever the folder or extension (``NUL.png`` is ``NUL``)."""

RESERVED_CHARACTERS = '/\\:*?"<>|'
"""Not in a name: a path separator, a drive or stream (``C:x``, ``x:y``), or what Windows refuses."""

IMAGES = ("png", "jpg", "jpeg", "webp", "gif")
VIDEOS = ("mp4", "webm", "mov", "mkv", "avi", "m4v", "gif", "webp", "png")
AUDIO = ("flac", "wav", "mp3", "opus", "ogg", "m4a", "aac")
MODELS = ("glb", "gltf", "obj", "ply", "stl", "fbx")
TYPES_BY_KEY: dict[str, tuple[str, ...]] = {
    "images": IMAGES + VIDEOS,  # ComfyUI's SaveVideo and SaveWEBM list their file under images (animated)
    "gifs": VIDEOS, "video": VIDEOS, "latents": ("latent",), "audio": AUDIO, "3d": MODELS,
}
"""What each output key of ComfyUI's save nodes (and video packs' ``gifs``) may list."""
ANY_MEDIA = tuple(sorted({ext for types in TYPES_BY_KEY.values() for ext in types}))
"""What another key that lists files may hold: any of the above, never a document a browser renders."""
NEVER_SAVED = ("svg", "svgz", "xml", "xsl", "xht", "xhtml", "html", "htm", "shtml", "mht", "js", "mjs", "css")
"""Named in the refusal: a browser renders or runs these from the master's origin."""


def _starts(*signatures: bytes) -> Callable[[bytes], bool]:
    return lambda head: head.startswith(signatures)


def _riff(form: bytes) -> Callable[[bytes], bool]:
    return lambda head: head[:4] in (b"RIFF", b"RF64") and head[8:12] == form


def _iso_media(head: bytes) -> bool:
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")


def _frame_sync(mask: int, value: int) -> Callable[[bytes], bool]:
    """MPEG audio (mp3) or ADTS (aac) without a tag: the first bytes are a frame header."""
    return lambda head: len(head) > 1 and head[0] == 0xFF and head[1] & mask == value


def _safetensors(head: bytes) -> bool:
    """A ``.latent`` is SaveLatent's safetensors: an 8-byte header length, then the JSON header."""
    return len(head) > 8 and 2 <= int.from_bytes(head[:8], "little") <= 100 * MIB and head[8:9] == b"{"


MAGIC: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "png": ("a PNG image", _starts(b"\x89PNG\r\n\x1a\n")), "gif": ("a GIF image", _starts(b"GIF87a", b"GIF89a")),
    **dict.fromkeys(("jpg", "jpeg"), ("a JPEG image", _starts(b"\xff\xd8\xff"))),
    "webp": ("a WebP image", _riff(b"WEBP")), "wav": ("a WAV file", _riff(b"WAVE")),
    "avi": ("an AVI video", _riff(b"AVI ")),
    **dict.fromkeys(("mp4", "m4v", "m4a", "mov"), ("an MP4 or QuickTime file", _iso_media)),
    **dict.fromkeys(("webm", "mkv"), ("a WebM or Matroska file", _starts(b"\x1a\x45\xdf\xa3"))),
    **dict.fromkeys(("ogg", "opus"), ("an Ogg file", _starts(b"OggS"))),
    "flac": ("a FLAC file", _starts(b"fLaC", b"ID3")),
    "mp3": ("an MP3 file", lambda head: head.startswith(b"ID3") or _frame_sync(0xE0, 0xE0)(head)),
    "aac": ("an AAC file", lambda head: head.startswith(b"ADIF") or _frame_sync(0xF6, 0xF0)(head)),
    "glb": ("a binary glTF file", _starts(b"glTF")), "ply": ("a PLY file", _starts(b"ply")),
    "gltf": ("a glTF (JSON) file", lambda head: head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{")),
    "fbx": ("an FBX file", _starts(b"Kaydara FBX Binary", b"; FBX")),
    "latent": ("a latent (safetensors) file", _safetensors),
}
"""Per extension: what its first bytes must show (obj and stl have no signature: an ASCII STL or a binary one's
80 free bytes)."""
HEAD_BYTES = 32
"""Bytes read before a file's signature is checked (every signature above lies within them)."""


def name_problem(part: str) -> str | None:
    """Why ``part`` cannot name one entry of a folder on the master (None: it can)."""
    if part in ("", ".", ".."):
        return "not a name"
    if len(part) > 255:
        return "longer than 255 characters"
    if any(c in RESERVED_CHARACTERS or ord(c) < 32 or ord(c) == 127 for c in part):
        return "a path or holds a reserved character"
    if part.startswith("."):
        return "a hidden file (its name starts with '.')"
    if part[-1] in ". ":
        return "a name ending in a dot or a space (Windows drops them)"
    if part.split(".")[0].rstrip(" ").upper() in DEVICE_NAMES:
        return f"the Windows device name {part.split('.')[0].rstrip(' ').upper()}"
    return None


def plain_component(part: str, what: str) -> str:
    """``part`` when it names one entry of a folder (see :func:`name_problem`); ValueError otherwise."""
    problem = name_problem(part)
    if problem:
        raise ValueError(f"{what} {part[:100]!r} is not a plain name: {problem}")
    return part


def confined_output_path(worker_tag: str, subfolder: str, filename: str) -> tuple[str, str]:
    """(subfolder under the output root, file name) for a worker's file: always inside ``worker_tag``.

    A worker names its files, so every part is checked: an absolute path, ``..``, ``.`` or an
    empty part would leave (or blur) the worker's own folder and is refused with ValueError.
    """
    parts = [plain_component(worker_tag, "worker folder")]
    if subfolder:
        parts += [plain_component(part, "subfolder part") for part in subfolder.replace("\\", "/").split("/")]
    return "/".join(parts), plain_component(filename, "file name")


def extension(name: str) -> str:
    return name.rpartition(".")[2].lower() if "." in name else ""


def type_problem(key: str, filename: str) -> str | None:
    """Why an output listing ``filename`` under ``key`` is refused by its type (None: the type fits)."""
    ext = extension(filename)
    allowed = TYPES_BY_KEY.get(key, ANY_MEDIA)
    if ext in allowed:
        return None
    if ext in NEVER_SAVED:
        return f"a .{ext} file is never saved on the master (a browser would render or run it from its origin)"
    kind = f"a .{ext} file" if ext else "a file without an extension"
    return f"{kind} is not one of what '{clip_text(key, 64)}' saves ({', '.join(allowed)})"


def content_problem(filename: str, head: bytes) -> str | None:
    """Why a file whose first bytes are ``head`` is not what its extension says (None: it is, or has no sign)."""
    expected = MAGIC.get(extension(filename))
    if expected is None or expected[1](head):
        return None
    return f"it does not start like {expected[0]}"


@dataclass(slots=True, frozen=True)
class SavedFile:
    """A worker's file as the master saved it."""

    reference: dict[str, str]
    """Its ``/view`` reference on the master: ``filename``, ``subfolder``, ``type`` (``output`` or ``temp``)."""
    path: Path


class NewFile:
    """A worker's file being written: a hidden temporary file in its folder until :meth:`keep` names it."""

    def __init__(self, folder: str, name: str, subfolder: str, kind: str) -> None:
        self.folder, self.name, self.subfolder, self.kind = folder, name, subfolder, kind
        self._temp = os.path.join(folder, f".multigpu-{uuid.uuid4().hex}.part")
        self._handle = open(self._temp, "xb")  # noqa: SIM115 - closed by close(), keep() or drop()

    def write(self, data: bytes) -> None:
        self._handle.write(data)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def keep(self) -> SavedFile:
        """Name the file: ``name``, else ``name (1).ext``...; never over an existing entry (a link included)."""
        self.close()
        stem, dot, ext = self.name.rpartition(".") if "." in self.name else (self.name, "", "")
        try:
            for counter in range(MAX_NAME_TRIES):
                candidate = self.name if counter == 0 else f"{stem} ({counter}){dot}{ext}"
                try:
                    _place(self._temp, os.path.join(self.folder, candidate))
                except FileExistsError:
                    continue
                reference = {"filename": candidate, "subfolder": self.subfolder, "type": self.kind}
                return SavedFile(reference, Path(self.folder, candidate))
            raise ValueError(f"no free name for {self.name!r} after {MAX_NAME_TRIES} tries")
        finally:
            self.drop()

    def drop(self) -> None:
        """Remove the temporary file (what a refused or kept file leaves behind)."""
        self.close()
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass


def _place(temp: str, target: str) -> None:
    """Give ``temp``'s content the name ``target``; FileExistsError when that name is taken.

    A hard link never replaces an entry; where the folder's file system has none, Windows' rename refuses
    an existing name too, and elsewhere the content is copied into a file created exclusively.
    """
    try:
        os.link(temp, target)
    except FileExistsError:
        raise
    except OSError:
        if os.name == "nt":
            os.rename(temp, target)
            return
        with open(temp, "rb") as source, open(target, "xb") as copy:
            shutil.copyfileobj(source, copy)


def open_new_file(root: str, worker_tag: str, file: OutputFile, kind: str) -> NewFile:
    """A new file under ``root`` for a worker's ``file``, in the worker's own folder; ValueError if refused.

    The folder is checked again once it exists: a link inside the worker's folder must not lead out of it.
    """
    root = os.path.realpath(root)
    subfolder, name = confined_output_path(worker_tag, file.subfolder, file.filename)
    own = os.path.realpath(os.path.join(root, worker_tag))
    folder = os.path.join(root, *subfolder.split("/"))
    os.makedirs(folder, exist_ok=True)
    if os.path.commonpath((own, os.path.realpath(folder))) != own:
        raise ValueError(f"the folder {subfolder!r} leads out of the worker's own folder")
    return NewFile(folder, name, subfolder, kind)


def write_new_file(root: str, worker_tag: str, subfolder: str, name: str, data: bytes) -> str:
    """Write ``data`` as a new file in ``root/subfolder`` (``subfolder`` begins with ``worker_tag``), never over
    another; returns the name used."""
    if subfolder != worker_tag and not subfolder.startswith(worker_tag + "/"):
        raise ValueError(f"the folder {subfolder!r} is not in the worker's own folder")
    new = open_new_file(root, worker_tag, OutputFile(name, subfolder[len(worker_tag) + 1:], "output"), "output")
    try:
        new.write(data)
    except BaseException:
        new.drop()
        raise
    return new.keep().reference["filename"]


class OutputSaver(Protocol):
    def save_output(self, file: OutputFile, worker_tag: str) -> NewFile:
        """A new file for a worker's ``file`` in the master's output (or temp) folder; ValueError if refused."""


class NoFolders:
    """Where a worker's files go outside ComfyUI (tests, tools): nowhere, said as an error."""

    def save_output(self, file: OutputFile, worker_tag: str) -> NewFile:
        raise RuntimeError("Multi-GPU: saving files needs a running ComfyUI")


class FolderSaver:
    """Saves a worker's files under two folders (output and temp), as :class:`~..comfy.adapter.ComfyHost` does
    with ComfyUI's."""

    def __init__(self, output: str | os.PathLike[str], temp: str | os.PathLike[str] | None = None) -> None:
        self.output, self.temp = os.fspath(output), os.fspath(temp if temp is not None else output)

    def save_output(self, file: OutputFile, worker_tag: str) -> NewFile:
        kind = "temp" if file.type == "temp" else "output"  # saved in one of these two, whatever it says
        return open_new_file(self.temp if kind == "temp" else self.output, worker_tag, file, kind)
