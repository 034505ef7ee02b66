"""A ComfyUI instance, reached only through its native HTTP + websocket API: the package's one client of it.

Every aiohttp error, timeout and unexpected answer is converted here, at the edge, into
the :mod:`errors` hierarchy, so callers handle one kind of failure per cause. An instance is
untrusted: answers are read up to a size cap, their shapes are checked before use, no
redirect is followed (per-worker headers would travel to the other address), and an
instance's own text reaches our messages only parsed and shortened.

:mod:`.answers` checks what an instance says, :mod:`.transport` is the HTTP edge (where
aiohttp's errors become ours), :mod:`.following` reads a prompt's events on ``/ws``, each message
capped and all of them within a budget (and :mod:`.preview_frames` its preview frames),
:mod:`.comfy` the :class:`ComfyClient` of any instance by its URL (the CLI's master, a probed
address), :mod:`.client` the :class:`WorkerClient` of a configured worker, :mod:`.blocking` the
same client for code that runs no event loop (the launcher), and :mod:`.sessions` the connections
kept between the units of a job and :func:`worker_session`, the one kind of session that talks to
a worker (no cookies, no redirects, no proxy from the environment).
"""

from .answers import MIB, MAX_TEXT, OutputFile, PromptResult, clip_text, json_kind, summarize_rejection
from .blocking import run_blocking
from .answers import MAX_FILES_PER_OUTPUT
from .client import WorkerClient
from .comfy import DEFAULT_MAX_FILE_BYTES, MAX_JSON_BYTES, MAX_OBJECT_INFO_BYTES, ComfyClient, Limits, Reply
from .following import EventStream, Followed, finished
from .preview_frames import MAX_PREVIEW_BYTES, PreviewFrame, PreviewSink, parse_preview
from .sessions import Channel, SessionPool, worker_session

__all__ = [
    "DEFAULT_MAX_FILE_BYTES", "MAX_FILES_PER_OUTPUT", "MAX_JSON_BYTES", "MAX_OBJECT_INFO_BYTES", "MAX_PREVIEW_BYTES",
    "MAX_TEXT", "MIB", "Channel", "ComfyClient", "EventStream", "Followed", "Limits", "OutputFile", "PreviewFrame",
    "PreviewSink", "PromptResult", "Reply", "SessionPool", "WorkerClient", "clip_text", "finished", "json_kind",
    "parse_preview", "run_blocking", "summarize_rejection", "worker_session",
]
