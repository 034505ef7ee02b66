"""The images a run made: the master's /history answer is checked, never trusted with a path."""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import RunError, WorkerAnswerTooLarge, WorkerError
from ..launcher import make_folder
from ..worker_client import ComfyClient, OutputFile


MAX_IMAGE_BYTES = 256 * 2**20
"""Most bytes 'run' reads for one image from GET /view: more is a broken or hostile master, not an image."""



@dataclass(slots=True)
class ImageRef:
    """One image of a prompt's outputs, as the master's /history names it."""

    node_id: str
    filename: str
    subfolder: str
    kind: str
    """``type`` on the wire: output, temp or input."""

    def output_file(self) -> OutputFile:
        return OutputFile(self.filename, self.subfolder, self.kind)



def history_images(history: Any, prompt_id: str, where: str) -> list[ImageRef]:
    """The images of ``prompt_id``'s /history entry (node order, then batch order); a clear error on a bad shape."""
    if not isinstance(history, dict):
        raise _not_comfyui(where, "the answer", history)
    entry = history.get(prompt_id) or {}
    if not isinstance(entry, dict):
        raise _not_comfyui(where, repr(prompt_id), entry)
    status = entry.get("status") or {}
    if isinstance(status, dict) and status.get("status_str") == "error":
        raise RunError(f"the workflow failed on the master: {json.dumps(status.get('messages'))[-600:]}")
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise _not_comfyui(where, "outputs", outputs)
    found: list[ImageRef] = []
    for node_id in sorted(outputs, key=lambda n: (len(n), n)):
        found += _node_images(node_id, outputs[node_id], where)
    return found



def _node_images(node_id: str, node: Any, where: str) -> list[ImageRef]:
    field = f"outputs[{node_id!r}]"
    node = {} if node is None else node
    if not isinstance(node, dict):
        raise _not_comfyui(where, field, node)
    images = node.get("images") or []
    if not isinstance(images, list):
        raise _not_comfyui(where, f"{field}.images", images, "a list")
    return [_image_ref(node_id, image, f"{field}.images[{index}]", where) for index, image in enumerate(images)]



def _image_ref(node_id: str, image: Any, field: str, where: str) -> ImageRef:
    if not isinstance(image, dict):
        raise _not_comfyui(where, field, image)
    values = {"filename": image.get("filename"), "subfolder": image.get("subfolder", ""),
              "type": image.get("type", "output")}
    for key, value in values.items():
        if not isinstance(value, str):
            raise _not_comfyui(where, f"{field}.{key}", value, "a string")
    return ImageRef(node_id, str(values["filename"]), str(values["subfolder"]), str(values["type"]))



def _not_comfyui(where: str, field: str, value: Any, expected: str = "an object") -> RunError:
    return RunError(f"the master's answer to {where} is not ComfyUI's: {field} should be {expected}, got "
                       f"{json.dumps(value)[:200]}")



_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
"""Separators (both), NUL and control characters, and what Windows refuses in a name (':' opens a stream)."""



_RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.IGNORECASE)



def safe_name(text: str) -> str:
    """``text`` as one plain file name, ``""`` when nothing is left: a server's name must never choose the folder."""
    name = _UNSAFE.sub("_", text).strip(" .")  # no leading dots: no '..', no hidden files; Windows drops trailing
    if _RESERVED.fullmatch(name):
        name = f"_{name}"  # CON, NUL.png ... are devices on Windows
    stem, suffix = os.path.splitext(name)
    return stem[:120] + suffix[:16]



def _file_names(ref: ImageRef, index: int, name: str) -> Iterator[str]:
    """The master's name, then one naming the node and position, then that with -1, -2, ..."""
    yield name
    prefixed = f"{safe_name(ref.node_id) or 'node'}-{index}-{name}"
    yield prefixed
    stem, suffix = os.path.splitext(prefixed)
    for number in itertools.count(1):
        yield f"{stem}-{number}{suffix}"



async def save_images(client: ComfyClient, refs: list[ImageRef], output: Path,
                      note: Callable[[str], None]) -> list[Path]:
    """Fetch every image through GET /view and write it as a new file directly inside ``output``."""
    saved: list[Path] = []
    for ref in refs:
        blob = await _fetch_image(client, ref)
        name = safe_name(ref.filename) or "image.png"
        target = _write_new(_output_folder(output), _file_names(ref, len(saved), name), blob)
        if name != ref.filename:
            note(f"warning: the master named an image {ref.filename!r}, which is not a plain file name: saved as "
                 f"{target.name}")
        saved.append(target)
    return saved



def _output_folder(output: Path) -> Path:
    return make_folder(output, "the output folder", "--output")



def _write_new(folder: Path, names: Iterator[str], blob: bytes) -> Path:
    """``blob`` under the first free name; 'xb' (O_EXCL) never writes over, or through a link at, an existing one."""
    for name in itertools.islice(names, 1000):
        target = folder / name
        if name in ("", ".", "..") or Path(os.path.abspath(target)).parent != folder:  # safe_name's promise
            raise RunError(f"refusing to save an image as {name!r}: it would not land in {folder}")
        try:
            handle = open(target, "xb")
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunError(f"cannot create {target}: {exc.strerror or exc}") from None
        with handle:
            try:
                handle.write(blob)
            except OSError as exc:  # disk full: no half image left behind (the file is ours, just created)
                handle.close()
                target.unlink(missing_ok=True)
                raise RunError(f"cannot write {target}: {exc.strerror or exc}") from None
        return target
    raise RunError(f"no free file name left in {folder} for an image: empty it or pass another --output")



async def _fetch_image(client: ComfyClient, ref: ImageRef) -> bytes:
    """One image from GET /view, refused past MAX_IMAGE_BYTES (a server could send forever)."""
    try:
        return await client.view(ref.output_file(), timeout=120, limit=MAX_IMAGE_BYTES)
    except WorkerAnswerTooLarge as exc:
        raise _too_big(ref, exc.limit) from None
    except WorkerError as exc:
        raise RunError(f"fetching {ref.filename!r} from the master failed: {exc.message}") from None



def _too_big(ref: ImageRef, limit: int) -> RunError:
    return RunError(f"the master's image {ref.filename!r} is more than {limit} bytes (the most 'run' reads "
                       "for one image): not saved")
