// The master's /multigpu API as the panel uses it: JSON in and out, the API token (kept in
// localStorage) sent as "Authorization: Bearer", and every refusal turned into an ApiRequestError
// whose message is the master's own "error" text. The fetch function is injected (ComfyUI's
// api.fetchApi in the browser, a fake in tests).

export const TOKEN_STORAGE_KEY = "ComfyUI-Distributed.api_token";

export class ApiRequestError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.name = "ApiRequestError";
    this.status = status;
    this.body = body;
  }

  /** The route itself is missing (an older master), not an unknown worker: ComfyUI's own 404/405 is not JSON. */
  get routeMissing() {
    return (this.status === 404 || this.status === 405) && (this.body === null || typeof this.body.error !== "string");
  }

  /** A 401's token_configured: false while the master has no token, true when it has one; null: not said. */
  get tokenConfigured() {
    const configured = this.body && this.body.token_configured;
    return typeof configured === "boolean" ? configured : null;
  }
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

export function createClient(fetchApi, storage) {
  const token = () => {
    try {
      return storage ? storage.getItem(TOKEN_STORAGE_KEY) || "" : "";
    } catch {
      return "";  // storage refused (privacy mode): behave as without a token
    }
  };

  async function request(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const stored = token();
    if (stored && path.startsWith("/multigpu/")) headers.Authorization = `Bearer ${stored}`;
    let response;
    try {
      response = await fetchApi(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ApiRequestError(0, `the master does not answer (${error && error.message ? error.message : error})`);
    }
    const data = await readBody(response);
    if (!response.ok) {
      const error = new ApiRequestError(response.status, data && typeof data.error === "string" ? data.error
        : `${method} ${path} failed with HTTP ${response.status}`, data);
      if (error.routeMissing) error.message = `${path} is not available on this master (update ComfyUI-Distributed)`;
      throw error;
    }
    return data;
  }

  return {
    hasToken: () => token() !== "",
    setToken(value) {
      try {
        if (value) storage.setItem(TOKEN_STORAGE_KEY, value);
        else storage.removeItem(TOKEN_STORAGE_KEY);
      } catch {
        // nothing to do: the token then lasts for no request
      }
    },
    getConfig: () => request("GET", "/multigpu/config"),
    getStatus: () => request("GET", "/multigpu/status"),
    masterStats: () => request("GET", "/system_stats"),
    updateWorker: (changes) => request("POST", "/multigpu/config/update_worker", changes),
    addWorker: (worker) => request("POST", "/multigpu/config/add_worker", worker),
    removeWorker: (workerId) => request("POST", "/multigpu/config/remove_worker", { worker_id: workerId }),
    updateSetting: (settingKey, value) => request("POST", "/multigpu/config/update_setting", { key: settingKey, value }),
    clearMemory: (target) => request("POST", "/multigpu/clear_memory", target),
    launchWorkers: (workerIds) => request("POST", "/multigpu/workers/launch", { worker_ids: workerIds }),
    restartWorker: (workerId) => request("POST", "/multigpu/workers/restart", { worker_id: workerId }),
    workerLogs: (workerId, lines) => request("POST", "/multigpu/workers/logs", { worker_id: workerId, lines }),
    watchEvents: (clientId, on, previews) => request("POST", "/multigpu/events", { client_id: clientId, on, previews }),
  };
}

/** One line for a toast from a clear_memory answer: who failed, or that all is done. */
export function describeClearMemory(answer) {
  const failed = [];
  let freed = 0;
  if (answer && answer.master) {
    if (answer.master.ok) freed += 1;
    else failed.push(`master: ${answer.master.error}`);
  }
  for (const worker of (answer && answer.workers) || []) {
    if (worker.ok) freed += 1;
    else failed.push(`${worker.name}: ${worker.error}`);
  }
  return failed.length
    ? { severity: "error", text: `VRAM not cleared on ${failed.join("; ")}` }
    : { severity: "success", text: `VRAM cleared on ${freed} instance${freed === 1 ? "" : "s"}` };
}

/** One line for a toast from a workers/launch answer: what started, what was already running, what failed. */
export function describeLaunch(answer) {
  const workers = (answer && answer.workers) || [];
  const failed = workers.filter((w) => !w.ok).map((w) => `${w.name}: ${w.error}`);
  const started = workers.filter((w) => w.ok && w.action !== "running").map((w) => w.name);
  const running = workers.filter((w) => w.ok && w.action === "running").map((w) => w.name);
  const parts = [];
  if (started.length) parts.push(`launching ${started.join(", ")}`);
  if (running.length) parts.push(`already running: ${running.join(", ")}`);
  if (failed.length) parts.push(`could not launch ${failed.join("; ")}`);
  const text = parts.join("; ") || "nothing to launch";
  return { severity: failed.length ? "error" : started.length ? "success" : "info", text: text[0].toUpperCase() + text.slice(1) };
}
