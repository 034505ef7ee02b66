"""The transport seam: how the runner and the job kinds reach a worker to run one unit there.

Everything the engine does to a worker goes through this one interface: ask what it can run, put the unit's
input files there, submit the unit's prompt and follow it to its end (``run_prompt``: submit, follow, and on a
cancel remove and interrupt it), and fetch what it made, whole or streamed. The scheduler and the job kinds do not
know which transport ran a unit. There are two, chosen per worker by :meth:`..cluster.core.Cluster.client`: the
direct one, :class:`~..worker_client.WorkerClient` (ComfyUI's own HTTP + websocket API on the worker's address),
and the shared pool's, :class:`~..pool.member.PoolTransport` (a unit put into Redis for agents that dial out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from ..config import GpuConfig, Settings, WorkerConfig
from ..errors import WorkerError
from ..worker_client import Channel, OutputFile, PreviewSink, PromptResult


class UnitTransport(Protocol):
    """One worker, as the engine uses it. Every method raises a :class:`~..errors.WorkerError` (never a
    transport's own error) and keeps within its deadline or timeout."""

    @property
    def name(self) -> str:
        """The worker's name in messages."""

    @property
    def worker(self) -> WorkerConfig:
        """The worker of the config it reaches."""

    @property
    def max_file_bytes(self) -> int:
        """The most one file may bring back."""

    async def object_info(self) -> dict:
        """Every node class the worker has, with its inputs and their allowed values."""

    async def upload_input(self, path: Path, name: str, subfolder: str = "") -> dict:
        """Put a file of the master's into the worker's input folder; the name the worker gave it."""

    async def upload_bytes(self, data: bytes, name: str, subfolder: str = "", folder: str = "input",
                           overwrite: bool = False) -> dict:
        """Put bytes into one of the worker's folders; the name the worker gave them."""

    async def run_prompt(self, prompt: dict, deadline: float, extra_data: dict | None = None,
                         on_progress: Callable[[float, float], None] | None = None,
                         wanted: frozenset[str] = frozenset(), channel: Channel | None = None,
                         previews: PreviewSink | None = None, unit: tuple[int, int] | None = None) -> PromptResult:
        """Run ``prompt`` to its end (or until its ``wanted`` outputs reported) by ``deadline``; its outputs. A
        cancel removes and interrupts it on the worker. ``channel``: the job's connection to this worker, where
        the transport keeps one (the direct one's websocket). ``unit``: the (position, attempt) this run is, for a
        transport that names it (the pool's, so that an answer to an older attempt is told apart)."""

    async def fetch_files(self, files: list[OutputFile], deadline: float, expected: int | None = None) -> list[bytes]:
        """Each file's bytes, in order, within what one output may bring back."""

    async def stream_view(self, output: OutputFile, receive: Callable[[bytes], None], limit: int,
                          too_large: Callable[[int], WorkerError], timeout: float | None = None) -> int:
        """A file's bytes handed to ``receive`` as they arrive, at most ``limit`` of them; its size."""


class SharedPool(Protocol):
    """A pool of workers the master reaches through a broker (:class:`~..pool.member.PoolMember`), as the cluster
    uses it: its participants now, and the transport of each."""

    def owns(self, worker: WorkerConfig) -> bool:
        """Whether ``worker`` is one of the pool's slots (else a configured worker)."""

    def with_slots(self, config: GpuConfig) -> GpuConfig:
        """``config`` with the pool's slots among its enabled workers."""

    def transport(self, slot: WorkerConfig, settings: Settings, job_id: str) -> UnitTransport:
        """How a unit of ``job_id`` reaches ``slot``."""

    async def close_job(self, job_id: str) -> None:
        """The job ended: the pool forgets it."""

    def status(self) -> dict[str, Any]:
        """The pool as ``GET /multigpu/status`` shows it (``schemas_out.PoolStatus``)."""

    async def close(self) -> None:
        """Leave the pool."""
