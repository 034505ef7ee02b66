"""The /multigpu routes in one table: path, method, who may call it, its body, its answers.

``MultiGPUApi.add_routes`` registers each master route with the access the table gives it (and
``add_launch_routes`` the launch routes), the handlers read their bodies with the table's request
models, and ``python -m comfy_distributed.api.openapi`` writes ``openapi.json`` from this table: the guard,
the handlers and the document name each route once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from pydantic import BaseModel

from . import schemas_out as answers
from . import schemas_in as bodies
from .access import Access
from .schemas_in import JOB_HEADER, MAX_IDENTITY, SHARE_HEADER, WORKER_HEADER
from .job_complete import MAX_IMAGE_BODY, MAX_RESULT_BODY
from .audience import WATCH_RENEW, WATCH_TTL
from ..cluster.previews import FRAME_INTERVAL

LAUNCH_PATH = "/multigpu/workers/launch"
RESTART_PATH = "/multigpu/workers/restart"
LOGS_PATH = "/multigpu/workers/logs"
EVENTS_PATH = "/multigpu/events"

BAD_INPUT = ("Bad input: malformed JSON, wrong types, missing or unknown fields, invalid values (the error names "
             "the field)")
CONFIG_INVALID = "The configuration file is invalid (fix it first)"
UNKNOWN = "Unknown worker or job"
TOO_LARGE = "The body is too large"
HOST_REFUSED = (
    "Refused by the Host check of a private master (one that listens on loopback only, without "
    "--enable-cors-header): the Host header is not localhost, a loopback address of this master (127.0.0.0/8, ::1; "
    "with or without a port) or a name in settings.allowed_hosts, whatever the Origin (protection against DNS "
    "rebinding); the answer's host field repeats the Host header. Or refused as a cross-site request, whatever the "
    "Host: an Origin header that is present and is not the master's own (null included; the origin that "
    "--enable-cors-header names is allowed), the answer's origin field repeating it; or Sec-Fetch-Site cross-site "
    "or same-site, the answer's fetch_site field repeating it")
NOT_JSON = ("Refused: a POST whose Content-Type is not application/json (a page of another site could send text/plain "
            "or a form without a CORS preflight); send the body as JSON, an empty one as {}; the answer's "
            "content_type field repeats the header")
USUAL_ERRORS = {400: BAD_INPUT, 404: UNKNOWN, 409: CONFIG_INVALID, 413: TOO_LARGE}
"""What an error status means unless a route says more (``Route.notes``)."""
FLAGS_REFUSED = (
    "an extra_args with a flag that moves ComfyUI's folders, frontend, database or config files (any "
    "--*-directory, --front-end-root, --front-end-version, --extra-model-paths-config, --database-url, "
    "--tls-keyfile, --tls-certfile, --comfy-api-base; also abbreviated, like --base-dir, or as --flag=value): the "
    "error names them and its flags field lists them")
MIB = 1 << 20
RESULT_LIMIT = (f"min({MAX_RESULT_BODY // MIB} MiB, 64 KiB + {MAX_IMAGE_BODY // MIB} MiB per image of the unit per "
                "Collector)")


@dataclass(frozen=True)
class Answer:
    """A route's success: its status, what it means, and the model of its body (None: any JSON object)."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    media_type: str = "application/json"
    """Another type (``text/plain``) is a text body, described by ``description``."""


@dataclass(frozen=True)
class Header:
    """A required request header (job_complete's identity), at most MAX_IDENTITY characters."""

    name: str
    description: str


@dataclass(frozen=True)
class Route:
    """One route. ``errors``: the statuses it answers besides the guard's (403 Host, 401 token, which follow
    from ``access``); ``notes``: what a status means here when it is not the usual (replaces it)."""

    method: str
    path: str
    operation_id: str
    access: Access
    summary: str
    answer: Answer
    body: type[BaseModel] | None = None
    body_required: bool = True
    errors: tuple[int, ...] = ()
    notes: Mapping[int, str] = field(default_factory=dict)
    description: str | None = None
    headers: tuple[Header, ...] = ()


BODY_ERRORS = (400, 409, 413)
"""A route with a body that reads the config: bad input, invalid config file, a body too large."""

MASTER_ROUTES = (
    Route("GET", "/multigpu/config", "getConfig", Access.READ, "The configuration, without secrets",
          Answer(200, "gpu_config.json as the API shows it: no token, header values masked, a worker's ssh block "
                      "reduced to its host, and only the fields the schema knows (keys a user added to the file are "
                      "left out)", answers.PublicConfig), errors=(409,)),
    Route("POST", "/multigpu/config/update_worker", "updateWorker", Access.CONTROL,
          "Change fields of a worker (enable/disable, name, address...)",
          Answer(200, "The worker after the change", answers.WorkerAnswer), bodies.UpdateWorkerRequest,
          errors=(*BODY_ERRORS, 404),
          notes={400: f"{BAD_INPUT}; {FLAGS_REFUSED}; a masked header value ('***') sent with a new host or port"}),
    Route("POST", "/multigpu/config/add_worker", "addWorker", Access.CONTROL,
          "Add a worker (id optional: the next free number)",
          Answer(201, "The added worker", answers.WorkerAnswer), bodies.AddWorkerRequest, errors=BODY_ERRORS,
          notes={400: f"{BAD_INPUT}; {FLAGS_REFUSED}"}),
    Route("POST", "/multigpu/config/remove_worker", "removeWorker", Access.CONTROL, "Remove a worker",
          Answer(200, "Removed", answers.RemovedAnswer), bodies.RemoveWorkerRequest, errors=(*BODY_ERRORS, 404)),
    Route("POST", "/multigpu/config/update_setting", "updateSetting", Access.CONTROL, "Change one known setting",
          Answer(200, "The settings after the change (without secrets)", answers.SettingsAnswer),
          bodies.UpdateSettingRequest, errors=BODY_ERRORS),
    Route("POST", "/multigpu/prepare_job", "prepareJob", Access.CONTROL, "Plan a job before queueing it",
          Answer(200, "The plan", answers.Plan), bodies.PrepareJobRequest, errors=BODY_ERRORS,
          description="Returns a job id and the plan. Queue the prompt within expires_in seconds with POST /prompt "
                      "and extra_data.multigpu_job_id set to job_id so that the job's events carry that id."),
    Route("POST", "/multigpu/clear_memory", "clearMemory", Access.CONTROL,
          "Free VRAM on workers (their native POST /free) and on the master",
          Answer(200, "What happened on each", answers.ClearMemoryResult), bodies.ClearMemoryRequest,
          body_required=False, errors=(*BODY_ERRORS, 404)),
    Route("POST", "/multigpu/job_complete", "jobComplete", Access.CONTROL,
          "A worker that runs this extension posts its results",
          Answer(200, "Accepted", answers.Accepted), bodies.JobCompleteRequest, errors=(*BODY_ERRORS, 404, 408),
          description=(
              "The worker's prompt carries extra_data.multigpu = {job_id, worker_id, share_token}; the worker sends "
              f"them back in the {JOB_HEADER}, {WORKER_HEADER} and {SHARE_HEADER} headers. Checks, in order: the "
              "guard of every control route (Host check of a private master and cross-site check: 403; the token: "
              "401; a body that is not JSON: 415), the identity "
              "headers (400), the share they name, before a byte of the body is read (404 unknown job, 403 worker "
              "or share token that do not match a unit of the job, 409 unit already ended, 400 a job that collects "
              f"latents or audio), the body's size (413 past {RESULT_LIMIT}), then the body (400). Only that worker "
              "can complete its share, and the first result of a share wins."),
          headers=(Header(JOB_HEADER, "extra_data.multigpu.job_id of the worker's prompt"),
                   Header(WORKER_HEADER, "extra_data.multigpu.worker_id of the worker's prompt"),
                   Header(SHARE_HEADER, "extra_data.multigpu.share_token of the worker's prompt: the share's own "
                                        "secret")),
          notes={
              400: f"A missing or empty identity header, or one longer than {MAX_IDENTITY} characters; a job that "
                   "collects latents or audio (job_complete carries images only); a body that is not a JSON object, "
                   "has more '{' and '[' than 2 + 2 per Collector (refused before it is parsed), has unknown fields "
                   "or a job_id, worker_id or share_token that differs from its header; outputs that are not "
                   "exactly the job's Collectors, an image that is not base64 PNG, a Collector without images or "
                   "with more than the unit's batch",
              403: f"{HOST_REFUSED}; or {WORKER_HEADER} and {SHARE_HEADER} do not match a unit of the job",
              404: f"No job {JOB_HEADER} is waiting for results (unknown, failed, or already collected)",
              408: "The body did not arrive within settings.request_timeout plus its size at 1 MiB/s; the connection is "
                   "closed: send it again",
              409: f"{CONFIG_INVALID}, or this worker's unit has already ended: its first result won; or another "
                   "result of this share is being read (one at a time per share)",
              413: f"The body is larger than {RESULT_LIMIT}; refused before it is read when Content-Length says so",
          }),
    Route("GET", "/multigpu/status", "getStatus", Access.READ, "Master, per-worker state and running jobs",
          Answer(200, "Status", answers.Status), errors=(409,)),
    Route("GET", "/multigpu/metrics", "getMetrics", Access.READ,
          "Counters and gauges for Prometheus: jobs, units by state, re-runs by reason, each worker's busy seconds, "
          "images and heartbeat age",
          Answer(200, "Prometheus text format 0.0.4: comfy_distributed_jobs_started_total{kind}, "
                      "comfy_distributed_jobs_ended_total{kind,outcome}, comfy_distributed_units_ended_total{state}, "
                      "comfy_distributed_reruns_total{reason}, comfy_distributed_worker_busy_seconds_total{worker}, "
                      "comfy_distributed_worker_images_total{worker}, comfy_distributed_units{state}, "
                      "comfy_distributed_worker_up{worker}, comfy_distributed_worker_heartbeat_age_seconds{worker}",
                 media_type="text/plain"), errors=(409,)),
    Route("POST", EVENTS_PATH, "watchEvents", Access.READ,
          "Register a websocket client for the multigpu.* events (and the live previews): renew or end it",
          Answer(200, "The registration", answers.EventsWatched), bodies.WatchEventsRequest, errors=BODY_ERRORS,
          description=(
              "The master sends its multigpu.* events (worker status, job progress and end, worker failures, "
              "notices, previews) on ComfyUI's websocket only to the clients registered here, never to every "
              "socket: a socket that did not pass this route's guard (a LAN client without the token, a page of "
              f"another site) receives none. A registration lasts {WATCH_TTL:.0f} s: the panel renews it every "
              f"{WATCH_RENEW:.0f} s while its page is open, comfy-distributed run while it follows a job. With "
              "previews true the client also receives the preview frames that workers started with a preview "
              "method (--preview-method auto, latent2rgb or taesd in their extra_args) send while they sample, as "
              "multigpu.preview events: {job_id, position, worker_id, worker, mime, data} with data the image in "
              f"base64, at most {round(1 / FRAME_INTERVAL)} a second per unit (the newest kept), then one with mime "
              "and data null when the unit ends on that worker. While no client wants previews, frames are "
              "dropped as they arrive.")),
    Route("GET", "/multigpu/openapi.json", "getOpenApi", Access.OPEN,
          "This document (no token needed; a private master's Host check applies)",
          Answer(200, "OpenAPI 3 document")),
)
"""The routes ``MultiGPUApi.add_routes`` registers, in the document's order."""

LAUNCH_ROUTES = (
    Route("POST", LAUNCH_PATH, "launchWorkers", Access.CONTROL,
          "Start workers that are not running: local ones as processes here, ones with an ssh block over SSH",
          Answer(200, "What happened to each worker; a started one shows as launching until it answers",
                 answers.LaunchAnswer), bodies.LaunchWorkersRequest, body_required=False,
          errors=(*BODY_ERRORS, 404)),
    Route("POST", RESTART_PATH, "restartWorker", Access.CONTROL,
          "Stop and start one worker (over SSH for a worker with an ssh block)",
          Answer(200, "Restarted: launching until it answers", answers.RestartAnswer), bodies.RestartWorkerRequest,
          errors=(*BODY_ERRORS, 404),
          notes={409: f"{CONFIG_INVALID}, or the worker could not be restarted (the error says why)"}),
    Route("POST", LOGS_PATH, "workerLogs", Access.CONTROL,
          "The last lines of a launched worker's log (a local file, or read over SSH)",
          Answer(200, "The lines since its last start", answers.WorkerLogs), bodies.WorkerLogsRequest,
          errors=(*BODY_ERRORS, 404),
          notes={409: f"{CONFIG_INVALID}, or the worker has no log the launcher can read (it was not started by "
                      "the launcher, or runs on a machine without an ssh block)"}),
)
"""The routes ``add_launch_routes`` registers (every one a control route: the caller's ``authorize``)."""

ROUTES = MASTER_ROUTES + LAUNCH_ROUTES
