"""One remote ComfyUI, reached only through its native HTTP + websocket API.

Every aiohttp error, timeout and unexpected answer is converted here, at the edge, into
the :mod:`errors` hierarchy, so callers handle one kind of failure per cause. A worker is
untrusted: answers are read up to a size cap, their shapes are checked before use, no
redirect is followed (per-worker headers would travel to the other address), and a
worker's own text reaches our messages only parsed and shortened.

:mod:`.answers` checks what a worker says, :mod:`.transport` is the HTTP edge, :mod:`.following`
reads a prompt's events on ``/ws``, :mod:`.client`
the :class:`WorkerClient` itself.
"""

from .answers import MIB, MAX_TEXT, OutputFile, PromptResult, clip_text, json_kind, summarize_rejection
from .client import DEFAULT_MAX_FILE_BYTES, MAX_FILES_PER_OUTPUT, MAX_JSON_BYTES, MAX_OBJECT_INFO_BYTES, WorkerClient

__all__ = [
    "DEFAULT_MAX_FILE_BYTES", "MAX_FILES_PER_OUTPUT", "MAX_JSON_BYTES", "MAX_OBJECT_INFO_BYTES", "MAX_TEXT", "MIB",
    "OutputFile", "PromptResult", "WorkerClient", "clip_text", "json_kind", "summarize_rejection",
]
