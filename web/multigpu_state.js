// State of the Multi-GPU panel: a reducer over the master's API answers and websocket events,
// and the view models the DOM layer draws. No DOM and no network here, so it is unit-tested
// with node:test (tests/web/) and survives frontend updates untouched.

import {
  TOKEN_COMMAND, TOKEN_COMMAND_WINDOWS, UNIT_ORDER, VALUE_NODE, WORKER_STATUSES,
} from "./multigpu_contract.js";

const GIB = 1024 ** 3;


/** Shown instead of the panel where GET /multigpu/config is ComfyUI's own 404: the extension is passive there. */
export const PASSIVE_MESSAGE = "This ComfyUI is not a Multi-GPU master: the extension is passive here (a worker, "
  + "or a master whose config makes it one). Manage the cluster from the master's page.";

export function initialState() {
  return {
    config: null,      // GET /multigpu/config (without secrets)
    workers: {},       // worker id (as a string) -> its latest health entry
    seq: 0,            // worker_status events seen: a status answer older than an event does not undo it
    jobs: {},          // job id -> {progress, units}
    failures: {},      // worker id -> the last multigpu.worker_failed of a running job
    lastJob: null,     // the last multigpu.job_done
    master: { queueRemaining: null, progress: null, device: null, deviceType: null, vramTotal: null, vramFree: null },
    auth: { required: false, configured: null, rejected: null },  // configured: null until the master says
    passive: false,    // this ComfyUI has no /multigpu routes (a worker): the panel shows PASSIVE_MESSAGE only
    error: null,       // a message for the banner (API unreachable, invalid config file)
    workflowValues: [], // the open workflow's Multi-GPU Value nodes: {id, label, default, values: {worker id: value}}
    cluster: null,     // GET /multigpu/status' cluster summary ({line, prompts_running, ...})
    previews: {},      // worker id -> {jobId, position, src}: the last multigpu.preview frame of the unit it runs
    pool: null,        // GET /multigpu/status' pool: the shared pool and its live agents (null: no pool)
    configWarnings: [], // GET /multigpu/status' config_warnings: what in gpu_config.json changes nothing, one line each
  };
}

/** A minimal store: the panel subscribes, the websocket listeners dispatch (even while the tab is closed). */
export function createStore(reducer, state) {
  const listeners = new Set();
  return {
    get state() { return state; },
    dispatch(action) {
      const next = reducer(state, action);
      if (next !== state) {
        state = next;
        for (const listener of [...listeners]) listener(state, action);
      }
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

const key = (id) => String(id);
const flag = (value) => (typeof value === "boolean" ? value : null);

function withoutKeys(object, keys) {
  const copy = { ...object };
  for (const k of keys) delete copy[k];
  return copy;
}

function jobFromSummary(job) {
  // GET /multigpu/status gives each job's progress and its units as multigpu.job_progress does (JobSummary)
  const units = (job.units || []).map((u) => ({
    position: u.position, state: u.state, worker_id: u.worker_id ?? null, worker: u.worker ?? null,
    progress: Number(u.progress) || 0,
  }));
  return { progress: Number(job.progress) || 0, units };
}

const PREVIEW_TYPES = ["image/jpeg", "image/png"];
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** A multigpu.preview frame as an image source (a data: URL), or null: the unit ended, or it is no JPEG/PNG. */
export function previewSource(mime, data) {
  return PREVIEW_TYPES.includes(mime) && typeof data === "string" && BASE64.test(data)
    ? `data:${mime};base64,${data}` : null;
}

/** A worker's thumbnail after a multigpu.preview event: its unit's newest frame, or none once that unit ended (an
 *  end of another unit, which came late, leaves a newer thumbnail alone). */
function withPreview(state, data) {
  if (data.worker_id === undefined || data.worker_id === null) return state;
  const id = key(data.worker_id);
  const jobId = data.job_id ?? null;
  const src = previewSource(data.mime, data.data);
  if (src !== null) return { ...state, previews: { ...state.previews, [id]: { jobId, position: data.position, src } } };
  const shown = state.previews[id];
  if (!shown || shown.jobId !== jobId || shown.position !== data.position) return state;
  return { ...state, previews: withoutKeys(state.previews, [id]) };
}

export function reduce(state, action) {
  const data = action.data || {};
  switch (action.type) {
    case "workflowValues": {
      const next = action.values || [];
      return JSON.stringify(next) === JSON.stringify(state.workflowValues) ? state : { ...state, workflowValues: next };
    }
    case "config": {
      const auth = data.auth || {};
      return {
        ...state, config: data, error: null, passive: false,
        auth: { ...state.auth, required: !!auth.token_required, configured: flag(auth.token_configured) },
      };
    }
    case "settings":  // POST /multigpu/config/update_setting answers the settings only
      if (!state.config) return state;
      return { ...state, config: { ...state.config, settings: data } };
    case "status": {
      // action.since: the event count when the request was sent; entries changed by an event since then are newer
      const since = action.since ?? Infinity;
      const workers = { ...state.workers };
      for (const entry of data.workers || []) {
        const known = workers[key(entry.id)];
        if (!known || !(known.seq > since)) workers[key(entry.id)] = { ...known, ...entry };
      }
      const jobs = {};
      for (const job of data.jobs || []) {
        if (job.settled) continue;
        jobs[job.job_id] = state.jobs[job.job_id] || jobFromSummary(job);
      }
      const master = data.master || {};
      const auth = "token_required" in master
        ? { ...state.auth, required: !!master.token_required, configured: flag(master.token_configured) }
        : state.auth;
      const warnings = Array.isArray(data.config_warnings)
        ? data.config_warnings.filter((line) => typeof line === "string" && line.trim()) : [];
      const configWarnings = JSON.stringify(warnings) === JSON.stringify(state.configWarnings)
        ? state.configWarnings : warnings;
      const pool = data.pool && typeof data.pool === "object" ? data.pool : null;
      return { ...state, workers, jobs, auth, error: null, cluster: data.cluster || null, configWarnings, pool };
    }
    case "worker_status": {
      if (data.id === undefined || data.id === null) return state;
      const id = key(data.id);
      const seq = state.seq + 1;
      return { ...state, seq, workers: { ...state.workers, [id]: { ...state.workers[id], ...data, seq } } };
    }
    case "job_progress":
      if (!data.job_id) return state;
      return {
        ...state,
        jobs: { ...state.jobs, [data.job_id]: { progress: Number(data.progress) || 0, units: data.units || [],
                                                eta: Number.isFinite(data.eta_seconds) ? data.eta_seconds : null } },
      };
    case "job_done": {
      const failed = Object.entries(state.failures).filter(([, f]) => f.job_id === data.job_id).map(([id]) => id);
      const shown = Object.entries(state.previews).filter(([, p]) => p.jobId === data.job_id).map(([id]) => id);
      return {
        ...state, jobs: withoutKeys(state.jobs, [data.job_id]), failures: withoutKeys(state.failures, failed),
        previews: withoutKeys(state.previews, shown), lastJob: data,
      };
    }
    case "preview":
      return withPreview(state, data);
    case "worker_failed":
      if (data.worker_id === undefined) return state;
      return { ...state, failures: { ...state.failures, [key(data.worker_id)]: data } };
    case "worker_saved": {  // the answer of update_worker or add_worker
      if (!state.config || !data.worker) return state;
      const workers = [...(state.config.workers || [])];
      const index = workers.findIndex((w) => key(w.id) === key(data.worker.id));
      if (index >= 0) workers[index] = data.worker;
      else workers.push(data.worker);
      return { ...state, config: { ...state.config, workers } };
    }
    case "worker_removed": {
      const workers = state.config ? (state.config.workers || []).filter((w) => key(w.id) !== key(data.id)) : [];
      return {
        ...state, config: state.config && { ...state.config, workers },
        workers: withoutKeys(state.workers, [key(data.id)]),
        failures: withoutKeys(state.failures, [key(data.id)]),
        previews: withoutKeys(state.previews, [key(data.id)]),
      };
    }
    case "master_stats": {
      const device = (data.devices || [])[0] || {};
      return {
        ...state,
        master: { ...state.master, device: device.name ?? null, deviceType: device.type ?? null,
                  vramTotal: device.vram_total ?? null, vramFree: device.vram_free ?? null },
      };
    }
    case "master_queue": {
      const remaining = data.exec_info ? data.exec_info.queue_remaining : undefined;
      if (remaining === undefined || remaining === state.master.queueRemaining) return state;
      return { ...state, master: { ...state.master, queueRemaining: remaining } };
    }
    case "master_progress":
      if (!(data.max > 0)) return state;
      return { ...state, master: { ...state.master, progress: { value: data.value, max: data.max } } };
    case "master_executing":
      // ComfyUI's "executing" with no node: the master's prompt has finished
      if (action.node !== null && action.node !== undefined) return state;
      if (state.master.progress === null) return state;
      return { ...state, master: { ...state.master, progress: null } };
    case "auth_rejected": {
      // action.configured: the 401's token_configured (false: a public master without a token), when it says
      const configured = flag(action.configured) ?? state.auth.configured;
      const rejected = action.message || "the master refused the token";
      return { ...state, auth: { ...state.auth, configured, rejected } };
    }
    case "token_saved":
      return { ...state, auth: { ...state.auth, rejected: null } };
    case "passive":  // GET /multigpu/config is not a route here
      return { ...state, passive: true, error: null };
    case "error":
      return { ...state, error: action.message || null };
    default:
      return state;
  }
}

// --- formatting ----------------------------------------------------------------------------

export function formatBytes(bytes) {
  if (typeof bytes !== "number" || !Number.isFinite(bytes) || bytes < 0) return "—";
  return `${(bytes / GIB).toFixed(1)} GB`;
}

/** "RAM" for a CPU instance (ComfyUI's --cpu reports device name and type "cpu"), "VRAM" otherwise. */
export function memoryLabel(name, type) {
  const lower = (value) => (typeof value === "string" ? value.trim().toLowerCase() : "");
  return lower(name).startsWith("cpu") || lower(type) === "cpu" ? "RAM" : "VRAM";
}

/** VRAM used/total as text and as a 0-1 fraction; null when the worker has not reported it. */
export function vramUsage(total, free) {
  if (typeof total !== "number" || !(total > 0)) return null;
  const used = typeof free === "number" ? Math.min(Math.max(total - free, 0), total) : null;
  return {
    text: `${used === null ? "?" : formatBytes(used)} / ${formatBytes(total)}`,
    fraction: used === null ? 0 : used / total,
  };
}

export function formatPercent(fraction) {
  const value = Math.round(Math.min(Math.max(Number(fraction) || 0, 0), 1) * 100);
  return `${value}%`;
}

/** "http://127.0.0.1:8189" -> "127.0.0.1:8189"; an https or path URL is kept whole. */
export function formatAddress(address) {
  if (!address) return "";
  return address.startsWith("http://") && !address.slice(7).includes("/") ? address.slice(7) : address;
}

/** The address the master uses for a config entry (mirrors WorkerConfig.base_url). */
export function workerAddress(worker) {
  const host = worker.host || "127.0.0.1";
  if (host.includes("://")) return host.replace(/\/+$/, "");
  const bracketed = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return `http://${bracketed}:${worker.port}`;
}

export function formatCuda(device) {
  return device === null || device === undefined || device === "" ? null : `CUDA ${device}`;
}

export function statusLabel(status) {
  const text = WORKER_STATUSES.includes(status) ? status : "unknown";
  return text[0].toUpperCase() + text.slice(1);
}

export function displayName(worker) {
  return worker.name || `Worker ${worker.id}`;
}

// --- view models -------------------------------------------------------------------------

/** The unit of a running job that a worker card shows (units name the worker; newer backends add worker_id). */
export function workerProgress(worker, jobs) {
  const id = key(worker.id);
  const name = displayName(worker);
  let best = null;
  for (const [jobId, job] of Object.entries(jobs)) {
    for (const unit of job.units || []) {
      const mine = unit.worker_id !== undefined && unit.worker_id !== null
        ? key(unit.worker_id) === id : unit.worker === name;
      if (!mine || unit.state === "master") continue;
      const rank = UNIT_ORDER[unit.state] ?? 9;
      if (best === null || rank < best.rank) best = { rank, unit, jobId };
    }
  }
  if (best === null) return null;
  const { unit, jobId } = best;
  const fraction = unit.state === "done" ? 1 : Number(unit.progress) || 0;
  const what = unit.state === "running" ? formatPercent(fraction) : unit.state.replace("_", " ");
  return { jobId, fraction, state: unit.state, text: `unit ${unit.position} · ${what}` };
}

export function workerCards(state) {
  const configured = state.config ? state.config.workers || [] : [];
  return configured.map((worker) => {
    const health = state.workers[key(worker.id)] || {};
    const status = !worker.enabled ? "disabled" : health.status && health.status !== "disabled"
      ? health.status : "offline";
    const failure = state.failures[key(worker.id)] || null;
    return {
      id: worker.id,
      name: displayName(worker),
      address: formatAddress(health.address || workerAddress(worker)),
      cuda: formatCuda(worker.cuda_device),
      device: health.device || null,
      ssh: worker.ssh ? `SSH ${worker.ssh.user ? `${worker.ssh.user}@` : ""}${worker.ssh.host}` : null,
      enabled: !!worker.enabled,
      status,
      statusText: statusLabel(status),
      detail: status === "offline" || status === "error" ? health.error || null
        : status === "busy" && health.queue_remaining ? `${health.queue_remaining} in queue` : null,
      vram: worker.enabled && status !== "offline" ? vramUsage(health.vram_total, health.vram_free) : null,
      vramLabel: memoryLabel(health.device),  // a worker's health keeps only the device's name
      // a unit still named after a worker that is down is about to run elsewhere: not shown as its job
      progress: worker.enabled && status !== "offline" && !failure ? workerProgress(worker, state.jobs) : null,
      failure: failure ? failure.message : null,
      canClear: status === "idle" || status === "busy",
      canRestart: worker.enabled && status !== "launching",
      canLaunch: worker.enabled && status === "offline",
      values: valueLines(state.workflowValues, worker.id),
      preview: previewView(state.previews[key(worker.id)], displayName(worker)),
    };
  });
}

/** A card's live preview: the image and its text for screen readers; null when the worker shows none. */
export function previewView(preview, name) {
  return preview ? { src: preview.src, alt: `Live preview of ${name}, unit ${preview.position}` } : null;
}

/**
 * What the open workflow's Multi-GPU Value nodes give a participant (workerId null: the master), one line per
 * node: its own value, else the default (as the backend gives it). Read-only: the values are edited in the node.
 */
export function valueLines(workflowValues, workerId) {
  return (workflowValues || []).map((node) => {
    const own = workerId === null ? undefined : (node.values || {})[String(workerId)];
    const value = own === undefined ? node.default : own;
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return `${node.label}: ${text.length > 60 ? `${text.slice(0, 57)}...` : text}${own === undefined && workerId !== null ? " (default)" : ""}`;
  });
}

/**
 * A Multi-GPU Value node of the graph as the panel shows it, from its widgets (`default`, `values` as JSON);
 * values that are not a JSON object of worker ids are shown as none (the backend refuses them with the reason).
 */
export function readValueNode(id, title, widgets, target) {
  const widget = (name) => (widgets || []).find((w) => w && w.name === name);
  let values = {};
  try {
    const parsed = JSON.parse((widget(VALUE_NODE.VALUES) || {}).value || "{}");
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) values = parsed;
  } catch (error) {
    values = {};
  }
  const named = title && title !== "Multi-GPU Value" ? title : `Value ${id}`;
  return { id: String(id), label: target ? `${named} (${target})` : named, default: (widget(VALUE_NODE.DEFAULT) || {}).value ?? "", values };
}

export function masterCard(state, location) {
  const master = (state.config && state.config.master) || {};
  const { progress, queueRemaining } = state.master;
  const status = progress || queueRemaining > 0 ? "busy" : "idle";
  return {
    name: "Master",
    address: location || `127.0.0.1:${master.port ?? 8188}`,
    cuda: formatCuda(master.cuda_device ?? null),
    device: state.master.device,
    status,
    statusText: statusLabel(status),
    vram: vramUsage(state.master.vramTotal, state.master.vramFree),
    vramLabel: memoryLabel(state.master.device, state.master.deviceType),
    // only a master that runs no unit of its own is a coordinator (gpu_config.json's master.participates: false)
    tag: master.participates === false ? "coordinator" : null,
    role: master.participates === false ? "Coordinator only: the workers make its share" : null,
    values: valueLines(state.workflowValues, null),
    progress: progress
      ? { fraction: progress.value / progress.max, text: `step ${progress.value}/${progress.max}` }
      : null,
  };
}

const TOKEN_HOW = `in ComfyUI's folder run ${TOKEN_COMMAND} (Windows: ${TOKEN_COMMAND_WINDOWS})`;

/**
 * The token prompt's text, or null while it is hidden. Whether the master has a token (its 401 says, and
 * GET /multigpu/config) decides what to tell: how to create one, or that this browser's is missing or wrong.
 */
export function tokenPrompt(auth, hasToken) {
  if (!auth.rejected && !(auth.required && !hasToken)) return null;
  const kept = "It is kept in this browser only.";
  if (auth.configured === false) {
    return `No API token is configured on this master yet, and it needs one (it listens beyond loopback). To create `
      + `it, ${TOKEN_HOW}, then paste the token it prints here. ${kept}`;
  }
  if (auth.configured === true) {
    return `This master has an API token, and the one this browser has is missing or wrong. To see it, ${TOKEN_HOW}, `
      + `then paste it here. ${kept}`;
  }
  return auth.rejected ? `The master refused the token: ${auth.rejected}`
    : `This master needs its API token for changes. ${kept}`;
}

export function activeJobs(state) {
  return Object.entries(state.jobs).map(([jobId, job]) => ({
    jobId,
    short: jobId.slice(0, 8),
    fraction: job.progress,
    text: `${(job.units || []).length} unit(s) · ${formatPercent(job.progress)}`
      + (job.eta !== null && job.eta !== undefined ? ` · about ${formatDuration(job.eta)} left` : ""),
  }));
}

/** Seconds as the cluster line says them (cluster_view._duration): 40 s, 3 min, 1.5 h. */
export function formatDuration(seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** What the master found in gpu_config.json that changes nothing (unknown keys, with the key meant), for the
 *  warning box above the cards: GET /multigpu/status' config_warnings, one line each (none from an older master). */
export function configWarnings(state) {
  return state.configWarnings || [];
}

/** The master's one line about the whole cluster (prompts, units, time left), from GET /multigpu/status. */
export function clusterLine(state) {
  return state.cluster && typeof state.cluster.line === "string" ? state.cluster.line : null;
}

export function summary(state) {
  const cards = workerCards(state);
  const counts = {};
  for (const card of cards) counts[card.status] = (counts[card.status] || 0) + 1;
  const parts = WORKER_STATUSES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
  const noun = cards.length === 1 ? "worker" : "workers";
  return cards.length ? `${cards.length} ${noun}: ${parts.join(", ")}` : "No workers configured";
}

/** Workers the "Launch workers" button starts: enabled and offline. */
export function launchableIds(state) {
  return workerCards(state).filter((card) => card.canLaunch).map((card) => card.id);
}

/** When the page renews its registration for the master's events: at a third of the life the master gave it (10 s
 *  when it gave none: an older master, or a refusal), so that one late renewal does not let it lapse. */
export function renewMs(answer) {
  const life = Number(answer && answer.expires_in);
  return Math.max(Number.isFinite(life) && life > 0 ? life / 3 : 10, 1) * 1000;
}

/** The panel refreshes VRAM and status no faster than the health TTL (events bring the rest). */
export function pollIntervalMs(settings) {
  const ttl = Number(settings && settings.health_ttl);
  return Math.max(Number.isFinite(ttl) && ttl > 0 ? ttl : 6, 2) * 1000;
}
