"""Before a worker gets a job: can it run the workflow, and does it have the input files?

Preflight compares the worker's copy of the prompt with the worker's ``/object_info``
(cached per worker, fetched again after the worker came back from offline): every node
class must exist, and every choice input (checkpoints, LoRAs, VAEs, samplers...) must be
one of the values the worker offers. Media sync uploads the files the workflow loads from
the master's input folder with the worker's native ``POST /upload/image`` (ComfyUI keeps
one copy per content), once per worker and job.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import WorkerConfig
from ..errors import WorkerProtocolError, WorkflowError
from ..worker_client import clip_text, json_kind
from ..graph.values import choices_of
from ..graph.workflow import Prompt, is_link

MEDIA_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mp4", ".webm", ".mov", ".mkv", ".avi",
    ".m4v", ".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus",
})
"""Input values that name a file of these kinds in the master's input folder are synced."""

UPLOADS_AT_ONCE = 4
TYPE_SUFFIXES = (" [input]", " [output]", " [temp]")


@dataclass(slots=True, frozen=True)
class MediaFile:
    """A file of the master's input folder that a prompt loads."""

    value: str
    """The input value as written in the prompt (``name.png``, ``sub/name.png``, ``name.png [input]``)."""
    path: Path
    subfolder: str
    name: str
    sha256: str


def media_values(prompt: Prompt) -> set[str]:
    """String inputs that look like media file names (candidates for sync)."""
    values = set()
    for node in prompt.values():
        for value in node.get("inputs", {}).values():
            if isinstance(value, str) and not is_link(value):
                bare = value[: -len(" [input]")] if value.endswith(" [input]") else value
                if os.path.splitext(bare)[1].lower() in MEDIA_EXTENSIONS and not value.endswith(TYPE_SUFFIXES[1:]):
                    values.add(value)
    return values


def _input_path(root: Path, value: str) -> Path:
    bare = value[: -len(" [input]")] if value.endswith(" [input]") else value
    path = (root / bare).resolve()
    if os.path.isabs(bare) or os.path.commonpath((str(root), str(path))) != str(root):
        raise WorkflowError(f"the input file {value!r} is outside the master's input folder; refused")
    return path


def check_media_paths(prompt: Prompt, input_dir: Path) -> None:
    """Refuse a prompt that names a media file outside the master's input folder (cheap: no reading)."""
    root = input_dir.resolve()
    for value in media_values(prompt):
        _input_path(root, value)


def local_media(prompt: Prompt, input_dir: Path) -> set[str]:
    """The media values of ``prompt`` that are files of the master's input folder (they are synced, so a worker
    need not have them). Cheap enough for the prompt hook: nothing is read. WorkflowError for a name outside it."""
    root = input_dir.resolve()
    return {value for value in media_values(prompt) if _input_path(root, value).is_file()}


def find_media(prompt: Prompt, input_dir: Path) -> list[MediaFile]:
    """The master's input files that ``prompt`` names; a name escaping the input folder is refused."""
    root = input_dir.resolve()
    found = []
    for value in sorted(media_values(prompt)):
        path = _input_path(root, value)
        if not path.is_file():
            continue  # not a file of ours (a prompt text, a file the workers have): leave it alone
        relative = path.relative_to(root).as_posix()
        subfolder, _, name = relative.rpartition("/")
        found.append(MediaFile(value, path, subfolder, name, _sha256(path)))
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def with_media(prompt: Prompt, names: dict[str, str]) -> Prompt:
    """The prompt with each synced file's value replaced by its name on the worker."""
    if not names:
        return prompt
    return {
        node_id: {**node, "inputs": {k: names.get(v, v) if isinstance(v, str) else v
                                     for k, v in node.get("inputs", {}).items()}}
        for node_id, node in prompt.items()
    }


def object_info_problem(info: Any) -> str | None:
    """What is wrong with the shape of an ``/object_info`` answer (None when it is ComfyUI's).

    ComfyUI builds every entry from a node's INPUT_TYPES dict (and leaves out a node whose
    info fails), so any other shape is not ComfyUI's answer.
    """
    if not isinstance(info, dict):
        return f"the answer is {json_kind(info)}, not an object of node classes"
    for name, node in info.items():
        where = f"node class {clip_text(name, 100)!r}"
        if not isinstance(node, dict):
            return f"{where} is {json_kind(node)}, not an object"
        inputs = node.get("input", {})
        if not isinstance(inputs, dict):
            return f"the input of {where} is {json_kind(inputs)}, not an object"
        for group in ("required", "optional"):
            specs = inputs.get(group)
            if specs is not None and not isinstance(specs, dict):
                return f"the {group} inputs of {where} are {json_kind(specs)}, not an object"
    return None


def _declared_inputs(info: dict[str, Any]) -> dict[str, Any]:
    """A node class's required and optional input specs (empty for a shape we do not know)."""
    inputs = info.get("input")
    declared: dict[str, Any] = {}
    for group in ("required", "optional"):
        specs = inputs.get(group) if isinstance(inputs, dict) else None
        if isinstance(specs, dict):
            declared.update(specs)
    return declared


def preflight_problems(prompt: Prompt, object_info: dict[str, Any], synced: set[str]) -> list[str]:
    """What the worker lacks to run ``prompt``: missing node classes, unknown choice values.

    Never raises on an odd shape of either argument: what cannot be read counts as missing.
    """
    problems = []
    known = object_info if isinstance(object_info, dict) else {}
    for node_id, node in sorted(prompt.items()):
        class_type = node.get("class_type") if isinstance(node, dict) else None
        info = known.get(class_type) if isinstance(class_type, str) else None
        if not isinstance(info, dict):
            problems.append(f"node class {class_type} (node {node_id})")
            continue
        declared = _declared_inputs(info)
        inputs = node.get("inputs")
        for name, value in (inputs.items() if isinstance(inputs, dict) else ()):
            if not isinstance(value, str) or value in synced:
                continue  # only a literal string can be a choice (a link is a list)
            choices = choices_of(declared.get(name))
            if choices is not None and value not in choices:
                problems.append(f"{name} {value!r} (node {node_id}, {class_type})")
    return problems


async def lacks_of(cache: "ObjectInfoCache", worker: WorkerConfig, fetch: Callable[[], Any], prompt: Prompt,
                   synced: set[str]) -> list[str]:
    """What ``worker`` lacks to run ``prompt`` (empty: nothing). The cached ``/object_info`` is asked first; when
    it lacks something, the worker is asked once more, as a model or node may have been added since.
    Raises WorkerError when the worker does not answer as ComfyUI does."""
    lacks = preflight_problems(prompt, await cache.get(worker, fetch), synced)
    if lacks:
        lacks = preflight_problems(prompt, await cache.get(worker, fetch, fresh=True), synced)
    return lacks


class ObjectInfoCache:
    """Each worker's /object_info, fetched again when the worker has been offline since."""

    def __init__(self, epoch: Callable[[str], int] = lambda worker_id: 0) -> None:
        self.epoch = epoch
        self._cache: dict[str, tuple[int, str, dict]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def peek(self, worker: WorkerConfig) -> dict | None:
        """The worker's node classes as last fetched, if still current (None: ask with :meth:`get`)."""
        key = str(worker.id)
        cached = self._cache.get(key)
        if cached is None or cached[0] != self.epoch(key) or cached[1] != worker.base_url:
            return None
        return cached[2]

    async def get(self, worker: WorkerConfig, fetch: Callable[[], Any], fresh: bool = False) -> dict:
        """The worker's node classes; ``fresh`` asks the worker again (a model may have been added).

        An answer of another shape than ComfyUI's raises WorkerProtocolError and is not kept.
        """
        key = str(worker.id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            current = self.epoch(key)
            if fresh or cached is None or cached[0] != current or cached[1] != worker.base_url:
                info = await fetch()
                problem = object_info_problem(info)
                if problem:
                    raise WorkerProtocolError(worker.display_name, f"GET /object_info: {problem}")
                self._cache[key] = (current, worker.base_url, info)
            return self._cache[key][2]


class MediaUploads:
    """Uploads with bounded concurrency, at most once per worker and file in a job."""

    def __init__(self) -> None:
        self._semaphore: asyncio.Semaphore | None = None

    @property
    def semaphore(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(UPLOADS_AT_ONCE)
        return self._semaphore

    async def sync(self, files: list[MediaFile], upload: Callable[[MediaFile], Any]) -> dict[str, str]:
        """Value in the prompt -> value on the worker, for every file."""
        async def one(media: MediaFile) -> tuple[str, str]:
            async with self.semaphore:
                answer = await upload(media)
            name = str(answer.get("name") or media.name)
            subfolder = str(answer.get("subfolder") or "")
            return media.value, f"{subfolder}/{name}" if subfolder else name

        return dict(await asyncio.gather(*(one(m) for m in files)))
