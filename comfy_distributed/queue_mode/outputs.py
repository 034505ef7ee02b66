"""What a prompt sent whole to a worker (queue mode) brings back: each output node's small values, and its files,
checked and streamed into the master's folders (:mod:`.files` says which are taken and how they are written).

Every file's name and type is checked before one is fetched; each is then streamed from the worker's ``/view``
into a hidden temporary file in its destination folder, its first bytes checked against its type, its size
against the file cap (``settings.max_file_mb``) and what is left of the prompt's budget
(``settings.max_forward_mb``). Only once every file of the prompt is in are they named; any refusal removes
them all, so nothing of a refused prompt is kept, and the prompt goes to the next candidate.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..cluster.transport import UnitTransport
from ..errors import WorkerAnswerTooLarge, WorkerError, WorkerProtocolError
from ..worker_client import MAX_FILES_PER_OUTPUT, OutputFile, PromptResult, clip_text
from ..worker_client.answers import size_text
from .files import HEAD_BYTES, NewFile, OutputSaver, SavedFile, content_problem, name_problem, type_problem

log = logging.getLogger("comfy_distributed")

MAX_FORWARD_FILES = 4 * MAX_FILES_PER_OUTPUT
"""Files one forwarded prompt may bring back, all its output nodes and keys together."""

MAX_OUTPUT_KEYS = 32
"""Keys one output node of a forwarded prompt may report (ComfyUI's save nodes report one to three)."""

MAX_OUTPUT_KEY = 64
"""Longest output key kept (``images``, ``latents``, ``animated``...)."""

MAX_OUTPUT_VALUE = 64 * 1024
"""Largest other output value kept (as JSON characters): a text, the animated flag. A larger one is dropped."""


@dataclass(slots=True)
class NodeOutput:
    """What one output node of a forwarded prompt reported on the worker: its files by key (images, latents,
    audio...), each as the worker named it and as the master saved it, and its other values (text, animated), as
    the worker reported them."""

    files: dict[str, list[tuple[OutputFile, SavedFile]]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


FILE_KEYS = frozenset({"images", "latents", "audio", "video", "gifs", "3d"})
"""Output keys that always list files (ComfyUI's save nodes, and video packs' ``gifs``): checked as files."""


def _is_file_list(key: str, value: Any) -> bool:
    """Whether an output value lists files (ComfyUI's ``[{"filename", "subfolder", "type"}, ...]``): a key of
    :data:`FILE_KEYS` (whatever it holds, so that a malformed one is refused), or any list with a file entry."""
    return key in FILE_KEYS or isinstance(value, list) and any(
        isinstance(entry, dict) and "filename" in entry for entry in value)


@dataclass(slots=True, frozen=True)
class Listed:
    """The files one output node reported under one key."""

    node_id: str
    key: str
    files: list[OutputFile]

    def where(self, file: OutputFile) -> str:
        return f"output node {clip_text(self.node_id, 64)} {clip_text(self.key, 64)} file " \
               f"{clip_text(file.filename, 120)!r}"


def reported_outputs(output_nodes: list[str], client: UnitTransport,
                     result: PromptResult) -> tuple[dict[str, NodeOutput], list[Listed]]:
    """Each output node's small values, and the files its keys list (checked to be file entries)."""
    outputs: dict[str, NodeOutput] = {}
    listed: list[Listed] = []
    for node_id in output_nodes:
        reported = result.outputs.get(node_id)
        node = outputs[node_id] = NodeOutput()
        if not isinstance(reported, dict):
            continue  # the node reported nothing (ComfyUI leaves it out of the history then)
        if len(reported) > MAX_OUTPUT_KEYS:
            raise WorkerProtocolError(client.name, f"output node {clip_text(node_id, 64)} reported "
                                                   f"{len(reported)} keys, more than {MAX_OUTPUT_KEYS}")
        for key, value in reported.items():
            if not isinstance(key, str) or not 0 < len(key) <= MAX_OUTPUT_KEY:
                raise WorkerProtocolError(client.name, f"output node {clip_text(node_id, 64)} reported a key "
                                                       f"{clip_text(key, 64)!r}: empty or longer than "
                                                       f"{MAX_OUTPUT_KEY} characters")
            if _is_file_list(key, value):
                listed.append(Listed(node_id, key, result.files(node_id, key)))
            elif len(json.dumps(value, default=str)) <= MAX_OUTPUT_VALUE:
                node.values[key] = value
            else:
                log.warning("Multi-GPU queue: worker %s: output %s of node %s is larger than %d characters; "
                            "left out", client.name, clip_text(key, 64), clip_text(node_id, 64), MAX_OUTPUT_VALUE)
    return outputs, listed


def refuse_names(worker: str, listed: list[Listed]) -> None:
    """Every file's name, subfolder and type checked before one is fetched (WorkerProtocolError naming it)."""
    total = sum(len(item.files) for item in listed)
    if total > MAX_FORWARD_FILES:
        raise WorkerProtocolError(worker, f"reported {total} files, more than {MAX_FORWARD_FILES}; none fetched")
    for item in listed:
        if len(item.files) > MAX_FILES_PER_OUTPUT:
            raise WorkerProtocolError(worker, f"output node {clip_text(item.node_id, 64)} reported {len(item.files)} "
                                              f"files, more than {MAX_FILES_PER_OUTPUT}; none fetched")
        for file in item.files:
            parts = file.subfolder.replace("\\", "/").split("/") if file.subfolder else []
            problem = next((f"{what} is {why}" for what, part in [("its name", file.filename)] +
                            [(f"its subfolder part {clip_text(p, 64)!r}", p) for p in parts]
                            if (why := name_problem(part))), None)
            problem = problem or type_problem(item.key, file.filename)
            if problem:
                raise WorkerProtocolError(worker, f"{item.where(file)} refused: {problem}; none of the prompt's "
                                                  "files is kept")


async def fetch_outputs(client: UnitTransport, output_nodes: list[str], result: PromptResult, saver: OutputSaver,
                        worker_tag: str, budget: int, deadline: float) -> dict[str, NodeOutput]:
    """What each of ``output_nodes`` reported in ``result``: its values, and its files saved by ``saver`` in the
    worker's folder (``worker_tag``), all of them within ``budget`` bytes, or none."""
    outputs, listed = reported_outputs(output_nodes, client, result)
    saved = await fetch_forward_files(client, listed, saver, worker_tag, budget, deadline)
    for item, files in zip(listed, saved):
        outputs[item.node_id].files[item.key] = files
    return outputs


async def fetch_forward_files(client: UnitTransport, listed: list[Listed], saver: OutputSaver, worker_tag: str,
                              budget: int, deadline: float) -> list[list[tuple[OutputFile, SavedFile]]]:
    """Every listed file streamed into the master's folders, per item of ``listed``: all kept, or none.

    ``budget`` bounds the bytes of them all; ``client.max_file_bytes`` each one. A refusal (a name, a type, a
    signature, a size) is a :class:`WorkerProtocolError` naming the node and the file.
    """
    refuse_names(client.name, listed)
    staged: list[tuple[OutputFile, NewFile]] = []
    spent = 0
    try:
        for item in listed:
            for file in item.files:
                # opened and named on the loop: a folder and a link are quick, and a cancel then finds every
                # file in ``staged`` (a thread could still be making one that nobody would remove)
                staged.append((file, _open(client.name, saver, item, file, worker_tag)))
                spent += await _Download(client, item, file, staged[-1][1], budget, budget - spent).run(deadline)
        try:
            kept = _keep_all([new for _, new in staged])
        except (OSError, ValueError) as exc:  # the master's disk, or no free name left
            raise WorkerError(client.name, f"the master could not save the prompt's files: {exc}") from None
    except BaseException:
        for _, new in staged:
            new.drop()
        raise
    saved = iter(zip((file for file, _ in staged), kept))
    return [[next(saved) for _ in item.files] for item in listed]


def _open(worker: str, saver: OutputSaver, item: Listed, file: OutputFile, worker_tag: str) -> NewFile:
    try:
        return saver.save_output(file, worker_tag)
    except ValueError as exc:
        raise WorkerProtocolError(worker, f"{item.where(file)} refused: {exc}; none of the prompt's files is "
                                          "kept") from None
    except OSError as exc:
        raise WorkerError(worker, f"{item.where(file)}: the master could not write it: "
                                  f"{exc.strerror or exc}") from None


def _keep_all(staged: list[NewFile]) -> list[SavedFile]:
    """Name every file; if one cannot be named, the ones named already are removed too (all or none)."""
    kept: list[SavedFile] = []
    try:
        for new in staged:
            kept.append(new.keep())
    except BaseException:
        for saved in kept:
            saved.path.unlink(missing_ok=True)
        raise
    return kept


class _Download:
    """One file streamed from the worker's ``/view`` into its new file: its signature checked on its first bytes,
    its size against the file cap and what is left of the prompt's budget."""

    def __init__(self, client: UnitTransport, item: Listed, file: OutputFile, target: NewFile, budget: int,
                 left: int) -> None:
        self.client, self.item, self.file, self.target = client, item, file, target
        self.budget, self.limit = budget, min(client.max_file_bytes, left)

    async def run(self, deadline: float) -> int:
        """The file's size, once all of it is written."""
        self.head: bytes | None = b""
        size = await self.client.stream_view(self.file, self._receive, self.limit, self._too_much,
                                             timeout=max(deadline - time.monotonic(), 0.001))
        if self.head is not None:
            self._write(self._checked(self.head))
        try:
            self.target.close()
        except OSError as exc:
            raise self._disk_error(exc) from None
        return size

    def _receive(self, chunk: bytes) -> None:
        """Its first bytes are held until its signature can be checked, the rest written as they come."""
        if self.head is not None and len(self.head) + len(chunk) < HEAD_BYTES:
            self.head += chunk
            return
        self._write(chunk if self.head is None else self._checked(self.head + chunk))
        self.head = None

    def _checked(self, head: bytes) -> bytes:
        problem = content_problem(self.file.filename, head)
        if problem:
            raise WorkerProtocolError(self.client.name, f"{self.item.where(self.file)} refused: {problem}; none of "
                                                        "the prompt's files is kept")
        return head

    def _write(self, data: bytes) -> None:
        try:
            self.target.write(data)
        except OSError as exc:
            raise self._disk_error(exc) from None

    def _disk_error(self, exc: OSError) -> WorkerError:
        """The master's disk failed, not the worker's answer (which the client would call unreachable)."""
        return WorkerError(self.client.name, f"{self.item.where(self.file)}: the master could not write it: "
                                             f"{exc.strerror or exc}")

    def _too_much(self, size: int) -> WorkerError:
        where, cap = self.item.where(self.file), self.client.max_file_bytes
        if size > cap:
            return WorkerAnswerTooLarge(self.client.name, f"GET /view: {where} is larger than the file cap of "
                                                          f"{size_text(cap)} (settings.max_file_mb); refused, not "
                                                          "read further", cap)
        return WorkerProtocolError(self.client.name, f"GET /view: the prompt's files pass its budget of "
                                                     f"{size_text(self.budget)} (settings.max_forward_mb) at {where}; "
                                                     "the rest is not fetched and none is kept")
