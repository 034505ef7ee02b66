// What the panel shares with the master's Python code, generated from comfy_distributed/api/panel_contract.py
// by `python -m comfy_distributed.api.panel_contract`; a test fails when this file and the Python facts differ.
export const EVENTS = Object.freeze({
  "WORKER_STATUS": "multigpu.worker_status",
  "JOB_PROGRESS": "multigpu.job_progress",
  "JOB_DONE": "multigpu.job_done",
  "WORKER_FAILED": "multigpu.worker_failed",
  "NOTICE": "multigpu.notice",
  "PREVIEW": "multigpu.preview"
});
export const WORKER_STATUSES = Object.freeze([
  "idle",
  "busy",
  "offline",
  "disabled",
  "error",
  "launching"
]);
export const UNIT_ORDER = Object.freeze({
  "running": 0,
  "pending": 1,
  "master": 2,
  "done": 3,
  "skipped": 4,
  "given_up": 5
});
export const FINISHED_STATES = Object.freeze([
  "done",
  "given_up",
  "skipped"
]);
export const TOKEN_COMMAND = "custom_nodes/ComfyUI-Distributed/launch_distributed.sh token";
export const TOKEN_COMMAND_WINDOWS = "custom_nodes\\ComfyUI-Distributed\\launch_distributed.bat token";
export const VALUE_NODE = Object.freeze({
  "CLASS": "MultiGPUValue",
  "DEFAULT": "default",
  "VALUES": "values"
});
export const WORKER_RULES = Object.freeze({
  "port": {
    "min": 1,
    "max": 65535
  },
  "cuda_device": {
    "min": 0,
    "max": null
  },
  "name": {
    "max_length": 100
  },
  "extra_args": {
    "max_length": 2000
  },
  "id_pattern": "^[A-Za-z0-9_.-]{1,64}$"
});
