"""One hierarchy for every error this package raises on purpose.

::

    DistributedError
    ├── ConfigError                 gpu_config.json unreadable, invalid, or not savable
    ├── WorkflowError               a prompt we cannot distribute (bad graph, bad seed input)
    ├── WorkerError                 one worker failed its share; carries the worker's name
    │   ├── WorkerUnreachable       connection refused, DNS, TLS, dropped connection
    │   │   └── WorkerRefused       nothing listens at the address (connection refused)
    │   ├── WorkerTimeout           no answer or no result before the deadline
    │   ├── WorkerRejected          POST /prompt answered 4xx (node_errors: missing node, bad input)
    │   ├── WorkerExecutionFailed   the prompt ran and ended in execution_error / interrupted
    │   └── WorkerProtocolError     the worker answered something that is not ComfyUI's API
    │       └── WorkerAnswerTooLarge  an answer past its size cap (refused, not read further)
    ├── LaunchError                 an instance could not be started, found or stopped
    ├── RunError                    the CLI's ``run``: a workflow file, an ``--set``, or the master's answer
    ├── PoolError                   the shared pool (Redis): redis-py missing, a unit no agent can run
    │   ├── PoolUnavailable         Redis unreachable, refused us, or timed out (retried with backoff)
    │   └── PoolProtocolError       something read from Redis that is not the pool's protocol (refused)
    └── JobError                    a distributed job as a whole (unknown job, cancelled)
        ├── UnknownJob              no such job (expired, finished, or never planned)
        └── ResultRejected          a worker's callback that does not match its job

Third-party exceptions (aiohttp, asyncio timeouts, JSON) are converted at the edge, in
``worker_client`` (redis-py's in ``pool.connection``), with ``raise ... from exc``. The ``Worker*`` errors also
come from a ``ComfyClient`` that talks to an instance that is not a configured worker (the CLI's master,
a URL the launcher probes): it names that instance, and its caller turns them into its own
(``RunError``, a probe's result).
"""

from __future__ import annotations


class DistributedError(Exception):
    """Base of every error raised on purpose by ComfyUI-Distributed."""


class ConfigError(DistributedError):
    """The configuration file cannot be read, is invalid, or cannot be saved."""


class WorkflowError(DistributedError):
    """The queued prompt cannot be turned into per-worker copies."""


class WorkerError(DistributedError):
    """A worker could not deliver its share of a job."""

    reason = "failed"

    def __init__(self, worker: str, message: str) -> None:
        super().__init__(f"worker {worker}: {message}")
        self.worker = worker
        self.message = message


class WorkerUnreachable(WorkerError):
    reason = "unreachable"


class WorkerRefused(WorkerUnreachable):
    """Nothing accepts connections at the address: a stopped instance, not a broken network."""


class WorkerTimeout(WorkerError):
    reason = "timeout"


class WorkerRejected(WorkerError):
    reason = "rejected"

    def __init__(self, worker: str, message: str, node_errors: dict | None = None) -> None:
        super().__init__(worker, message)
        self.node_errors = node_errors or {}


class WorkerExecutionFailed(WorkerError):
    reason = "execution_error"


class WorkerLacks(WorkerError):
    """A worker lacks a node class, a model or a choice the prompt needs (its preflight failed)."""

    reason = "preflight"


class WorkerProtocolError(WorkerError):
    reason = "protocol_error"


class WorkerFramesLost(WorkerProtocolError):
    """A prompt's images did not all come as websocket frames (the socket closed, or a node sent fewer than it
    announced): none are taken, and that worker's units keep their files from then on."""


class WorkerAnswerTooLarge(WorkerProtocolError):
    """An answer longer than its cap: refused as soon as that was known, so a caller can say which cap."""

    def __init__(self, worker: str, message: str, limit: int) -> None:
        super().__init__(worker, message)
        self.limit = limit


class LaunchError(DistributedError):
    """An instance could not be started, found or stopped; the message says what to do."""


class RunError(DistributedError):
    """The CLI's ``run`` could not queue, follow or save a workflow; the message says what to do."""


class PoolError(DistributedError):
    """The shared pool could not be used; the message says what to do."""


class PoolUnavailable(PoolError):
    """Redis did not answer, refused the connection or our credentials: worth retrying later."""


class PoolProtocolError(PoolError):
    """A key or stream entry that does not have the pool protocol's shape or size; it is refused, not used."""


class JobError(DistributedError):
    """A distributed job as a whole failed or is unknown."""


class UnknownJob(JobError):
    """No job with that id is waiting for results."""


class ResultRejected(JobError):
    """Results posted to ``/multigpu/job_complete`` that do not belong to the job."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
