"""One unit run by an agent on its ComfyUI: input files from Redis, the prompt run with the project's client, the
outputs and progress sent back to the unit's master through its reply stream.

The agent's ComfyUI is reached with :class:`~..worker_client.WorkerClient`, the same client the master uses for a
configured worker (submit, follow ``/ws``, fetch ``/view``; every answer checked and capped), so a unit runs the
same way through the pool as directly. What the unit names is checked here too: an input file must be in Redis, no
larger than the cap, and have the sha256 it is named by; a unit its ComfyUI lacks a node or choice for fails with
what is missing. Progress is sent at most every ``progress_interval`` seconds (the latest value wins), preview
frames only when the master asked for them, at the same pace.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..cluster.preflight import with_media
from ..errors import PoolError, PoolProtocolError, WorkerError
from ..worker_client import MIB, OutputFile, PreviewFrame, PromptResult, WorkerClient, clip_text
from ..worker_client.answers import output_file, size_text
from .caps import digest_of, lacks, needs_of
from .connection import SOCKET_TIMEOUT, end_tasks, pause_unless, redis_errors
from .keys import REPLY_MAXLEN, REPLY_TTL, PoolKeys
from .protocol import MAX_ERROR_TEXT, Caps, FileRef, OutputRef, ReplyHead, ReplyKind, UnitEntry, reply_fields

MAX_INPUT_FILE_BYTES = 512 * MIB
"""The largest input file an agent fetches from Redis (a video to upscale)."""
MAX_REPLY_BYTES = 2048 * MIB
"""All the files of one unit's done reply together."""


class UnitFailed(Exception):
    """The unit cannot run here; the message goes back to the master as the failure."""


class ReplySender:
    """Sends one unit attempt's replies to its master: progress and previews throttled, then done or failed."""

    def __init__(self, client: Any, url: str, stream: str, head: ReplyHead, interval: float) -> None:
        self._client, self._url, self.stream, self.head = client, url, stream, head
        self.interval = interval
        self._progress: tuple[float, float] | None = None
        self._frame: PreviewFrame | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name="pool-unit-progress")

    async def stop(self) -> None:
        """End the pump after the reply it may be sending (cancelling redis-py inside a command can hang it)."""
        if self._task is not None:
            self._closing.set()
            self._wake.set()
            await end_tasks([self._task], SOCKET_TIMEOUT)
            self._task = None

    def progress(self, value: float, maximum: float) -> None:
        self._progress = (value, maximum)
        self._wake.set()

    def wanted(self) -> bool:  # PreviewSink: given to run_prompt only when the master asked for previews
        return True

    def show(self, frame: PreviewFrame) -> None:
        self._frame = frame
        self._wake.set()

    async def _pump(self) -> None:
        await pause_unless(self._closing, self.interval)  # a unit shorter than that sends its done reply alone
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing.is_set():
                return
            progress, self._progress = self._progress, None
            frame, self._frame = self._frame, None
            try:
                if progress is not None:
                    await self.send("progress", value=progress[0], max=progress[1])
                if frame is not None:
                    await self.send("preview", {"image": frame.image}, mime=frame.mime)
            except PoolError:
                pass  # progress is best effort: the done or failed reply is what counts
            await pause_unless(self._closing, self.interval)

    async def send(self, kind: ReplyKind, blobs: dict[str, bytes] | None = None, **head: Any) -> None:
        fields = reply_fields(kind, self.head.model_copy(update=head), blobs)
        with redis_errors(f"XADD {self.stream}", self._url):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.stream, fields, maxlen=REPLY_MAXLEN, approximate=True)
                pipe.expire(self.stream, REPLY_TTL)
                await pipe.execute()

    async def failed(self, error: str) -> None:
        await self.send("failed", error=clip_text(error, MAX_ERROR_TEXT))


def file_value(ref: FileRef) -> str:
    """How the unit's prompt names an input file: ``subfolder/name``, or ``name`` (a temp file with `` [temp]``)."""
    value = f"{ref.subfolder}/{ref.name}" if ref.subfolder else ref.name
    return value + " [temp]" if ref.folder == "temp" else value


async def upload_inputs(redis: Any, url: str, keys: PoolKeys, comfy: WorkerClient,
                        files: list[FileRef]) -> dict[str, str]:
    """Put each input file from Redis into the agent's ComfyUI; prompt value -> the name ComfyUI gave it."""
    names: dict[str, str] = {}
    for ref in files:
        key = keys.file(ref.sha256)
        with redis_errors("GET input file", url):
            size = await redis.strlen(key)
            data = await redis.get(key) if 0 < size <= MAX_INPUT_FILE_BYTES else None
        if size > MAX_INPUT_FILE_BYTES:
            raise UnitFailed(f"input file {ref.name} is {size} bytes, more than the cap of "
                             f"{size_text(MAX_INPUT_FILE_BYTES)}")
        if data is None or digest_of(data) != ref.sha256:
            raise UnitFailed(f"input file {ref.name} is not in the pool (expired?) or not the content it is named by")
        answer = await comfy.upload_bytes(data, ref.name, ref.subfolder, folder=ref.folder,
                                          overwrite=ref.folder == "temp")
        uploaded = f"{answer.get('subfolder')}/{answer['name']}" if answer.get("subfolder") else answer["name"]
        if ref.folder == "temp":
            names[file_value(ref)] = uploaded + " [temp]"
        else:
            names[file_value(ref)] = uploaded
            names[file_value(ref) + " [input]"] = uploaded + " [input]"
    return names


def check_caps(caps: Caps | None, unit: UnitEntry) -> None:
    """UnitFailed naming what the agent's ComfyUI lacks for this unit's prompt (a safety net: the agent took the
    job because its needs fit, but a unit's own copy may differ)."""
    if caps is None:
        raise UnitFailed("its ComfyUI has not said what it can run yet")
    uploaded = {file_value(ref) for ref in unit.files} | {file_value(ref) + " [input]" for ref in unit.files}
    missing = lacks(caps, needs_of(unit.prompt, uploaded))
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise UnitFailed(f"its ComfyUI lacks {'; '.join(missing[:8])}{more}")


def output_refs(result: PromptResult, wanted: list[str]) -> list[tuple[str, str, OutputFile]]:
    """Every file the prompt's output nodes reported (only the ``wanted`` nodes when it names some):
    (node, kind, file). A list that holds no file entries (text, flags) is not files and is left out."""
    found = []
    for node_id, node in result.outputs.items():
        if wanted and node_id not in wanted:
            continue
        for kind, entries in node.items():
            if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
                continue
            found += [(node_id, kind, output_file(result.worker, node_id, kind, e)) for e in entries]
    return found


def output_values(result: PromptResult, wanted: list[str]) -> dict[str, dict[str, Any]]:
    """What the output nodes reported besides files (text, flags), by node (the ``wanted`` ones when it names
    some): a forwarded prompt shows them on the master as the node did here."""
    values: dict[str, dict[str, Any]] = {}
    for node_id, node in result.outputs.items():
        if wanted and node_id not in wanted:
            continue
        for kind, entries in node.items():
            if not (isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries)):
                values.setdefault(node_id, {})[kind] = entries
    return values


async def fetch_outputs(comfy: WorkerClient, result: PromptResult, unit: UnitEntry,
                        deadline: float) -> tuple[dict[str, dict[str, list[OutputRef]]], dict[str, bytes]]:
    """The outputs as a done reply's head lists them, and each file's bytes by field."""
    outputs: dict[str, dict[str, list[OutputRef]]] = {}
    blobs: dict[str, bytes] = {}
    total = 0
    for index, (node_id, kind, file) in enumerate(output_refs(result, unit.wanted)):
        data = await comfy.view(file, timeout=max(deadline - time.monotonic(), 0.001))
        total += len(data)
        if total > MAX_REPLY_BYTES:
            raise UnitFailed(f"its outputs pass {size_text(MAX_REPLY_BYTES)} in all; not sent")
        name = f"f{index}"
        blobs[name] = data
        ref = OutputRef(filename=file.filename, subfolder=file.subfolder, type=file.type, field=name)
        outputs.setdefault(node_id, {}).setdefault(kind, []).append(ref)
    return outputs, blobs


async def run_unit(comfy: WorkerClient, redis: Any, url: str, keys: PoolKeys, caps: Caps | None, unit: UnitEntry,
                   sender: ReplySender) -> None:
    """Run ``unit`` on the agent's ComfyUI and send its done reply, or its failed reply saying why."""
    try:
        check_caps(caps, unit)
        names = await upload_inputs(redis, url, keys, comfy, unit.files)
        deadline = time.monotonic() + (unit.deadline - time.time())
        if deadline <= time.monotonic():
            raise UnitFailed("its deadline passed before it could start")
        result = await comfy.run_prompt(with_media(unit.prompt, names), deadline, unit.extra_data,
                                        on_progress=sender.progress, wanted=frozenset(unit.wanted),
                                        previews=sender if unit.previews else None)
        outputs, blobs = await fetch_outputs(comfy, result, unit, deadline)
    except (UnitFailed, WorkerError, PoolProtocolError) as exc:
        await sender.stop()
        await sender.failed(f"agent {sender.head.agent_name}: {exc}")
        return
    await sender.stop()
    try:
        await sender.send("done", blobs, outputs=outputs, values=output_values(result, unit.wanted))
    except PoolProtocolError as exc:
        await sender.failed(f"agent {sender.head.agent_name}: {exc}")
