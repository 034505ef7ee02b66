"""Start, find and stop the ComfyUI instances that ``gpu_config.json`` names: the master and its workers.

An *instance* is the master or one worker. A local one runs as a detached process of ComfyUI's
own Python in ComfyUI's folder, with ``CUDA_VISIBLE_DEVICES`` from ``cuda_device``, ``--port`` from
the config and ``extra_args`` split into arguments (never given to a shell). Its output goes to
``<state>/<key>.log`` and its pid to ``<state>/<key>.pid`` (JSON), ``<state>`` being
``<ComfyUI>/user/comfy-distributed`` unless ``--state-dir`` or ``COMFY_DISTRIBUTED_STATE_DIR`` says
otherwise; ``<key>`` is ``master`` or ``worker-<id>``. That folder is private (0700, the user's own) and
its files 0600, never reached through a link: a pid file decides which process a stop signals. Starting and stopping an instance holds
``<state>/<key>.lock`` (and a lock per thread), so that two launchers at once (API and CLI, a
button pressed twice) never start it twice. A worker with an ``ssh`` block is started and
stopped on its own machine by :mod:`.ssh`. An instance is running when its port answers
``GET /system_stats`` as ComfyUI, and only instances that are not running are started. A local worker with
``"pool_agent": true`` gets a pool agent beside it when a pool is configured (:mod:`.agents`): started, stopped and
reported with it, under the key ``agent-worker-<id>`` and the name ``<worker name> agent``.

Every failure is a :class:`LaunchError` whose message says what to do about it.

The package, by concept: :mod:`.model` (instances, records, outcomes), :mod:`.discovery` (ComfyUI's
folder and Python, command lines, which hosts are here), :mod:`.probing` (is it ComfyUI?),
:mod:`.processes` (detached processes), :mod:`.state_files` (the private state folder), :mod:`.locks`,
:mod:`.diagnostics`, :mod:`.status` (what ``status`` says of an instance: starting only while a start is
under way, then a verdict), the backends :mod:`.local` and :mod:`.ssh` (with :mod:`.capped`, ssh's output kept
bounded), :mod:`.agents` (the pool agents beside local workers), and :mod:`.core` (the :class:`Launcher` that uses
them).
"""

from ..errors import LaunchError
from .core import Launcher, make_folder, master_launcher_factory, state_dir_for
from .diagnostics import explain
from .discovery import (
    COMMAND_ENV,
    command_name,
    cpu_hints,
    find_comfyui_root,
    find_python,
    instances_of,
    is_local_host,
    listen_address,
    probe_host,
    split_args,
)
from .local import Backend, LocalProcesses
from .model import LOG_MARK, WINDOWS, Instance, InstanceStatus, LaunchContext, Outcome, Record
from .probing import probe, vram_text
from .processes import since_last_start

__all__ = [
    "COMMAND_ENV", "LOG_MARK", "WINDOWS", "Backend", "Instance", "InstanceStatus", "LaunchContext", "LaunchError",
    "Launcher", "LocalProcesses", "Outcome", "Record", "command_name", "cpu_hints", "explain", "find_comfyui_root",
    "find_python", "instances_of", "is_local_host", "listen_address", "make_folder", "master_launcher_factory",
    "probe", "probe_host", "since_last_start", "split_args", "state_dir_for", "vram_text",
]
