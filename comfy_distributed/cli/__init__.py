"""``comfy-distributed``: start, stop and inspect the ComfyUI instances of gpu_config.json, run a workflow.

Run it from ComfyUI's folder (or pass ``--comfyui PATH``); ``comfy-distributed --help`` lists the
modes, all of them in one table (:data:`.modes.MODES`). User errors are printed as one message (no
traceback) and give exit code 1.

The package, by concept: :mod:`.site` (where ComfyUI, the config and the state folder are),
:mod:`.instances` (start, stop, status), :mod:`.agent` (a pool agent), :mod:`.maintenance` (venv, updates, token), ``run`` in
:mod:`.run` with :mod:`.workflow_file`, :mod:`.progress` and :mod:`.results`, and :mod:`.modes`.
"""

from .modes import MODES, build_parser, main
from .progress import Progress, ProgressDisplay, apply_event
from .results import history_images, safe_name
from .run import run_workflow
from .site import TOKEN_ENV, config_warnings, find_config
from .instances import format_status
from .workflow_file import apply_override, load_workflow

__all__ = [
    "MODES", "TOKEN_ENV", "Progress", "ProgressDisplay", "apply_event", "apply_override", "build_parser",
    "config_warnings", "find_config", "format_status", "history_images", "load_workflow", "main", "run_workflow",
    "safe_name",
]
