// The master's multigpu.* events, generated from comfy_distributed/events.py (NAMES) by
// `python -m comfy_distributed.events`; a test fails when this file and NAMES differ.
export const EVENTS = Object.freeze({
  WORKER_STATUS: "multigpu.worker_status",
  JOB_PROGRESS: "multigpu.job_progress",
  JOB_DONE: "multigpu.job_done",
  WORKER_FAILED: "multigpu.worker_failed",
  NOTICE: "multigpu.notice",
  PREVIEW: "multigpu.preview",
});
