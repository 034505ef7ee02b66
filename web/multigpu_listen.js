// What the panel does with the master's events: the multigpu.* ones (names from multigpu_contract.js) and
// ComfyUI's own. Kept apart from multigpu.js (which needs the frontend's app) so that a Node test can check it.

import { EVENTS } from "./multigpu_contract.js";
import { renewMs } from "./multigpu_state.js";

const OFFLINE_LOG_LINES = 8;

const NO_CLIENT_ID_RETRY_MS = 1000;

/** The master sends its multigpu.* events only to the websocket clients registered with POST /multigpu/events.
 *  This keeps the page's client registered while it is open (renewed at a third of the life the master gives, at
 *  once when the socket reconnects or the page shows again), with the live previews while `wantsPreviews()`.
 *  Returns `renew`, for when the wish for previews changes. `api.clientId` is the sid ComfyUI gave the socket. */
export function keepRegistered(api, actions, wantsPreviews, doc = globalThis.document, timers = globalThis) {
  let timer = null;
  const renew = async () => {
    timers.clearTimeout(timer);
    const clientId = api.clientId || api.initialClientId;
    const hidden = doc && doc.visibilityState === "hidden";
    const answer = clientId ? await actions.watchEvents(clientId, true, !hidden && wantsPreviews()) : null;
    timer = timers.setTimeout(renew, clientId ? renewMs(answer) : NO_CLIENT_ID_RETRY_MS);
  };
  api.addEventListener("reconnected", renew);
  if (doc) doc.addEventListener("visibilitychange", () => { if (doc.visibilityState === "visible") renew(); });
  renew();
  return renew;
}

/** Subscribe the store, the actions and the toasts to `api`'s events; returns the names listened to. */
export function listen(api, store, actions, notify) {
  const names = new Set();
  const on = (name, handler) => {
    names.add(name);
    api.addEventListener(name, handler);
  };
  const forward = (name, type) => on(name, (e) => store.dispatch({ type, data: e.detail }));
  forward(EVENTS.WORKER_STATUS, "worker_status");
  forward(EVENTS.JOB_PROGRESS, "job_progress");
  forward(EVENTS.JOB_DONE, "job_done");
  forward(EVENTS.WORKER_FAILED, "worker_failed");
  forward(EVENTS.PREVIEW, "preview");
  forward("status", "master_queue");
  forward("progress", "master_progress");
  on("executing", (e) => store.dispatch({ type: "master_executing", node: e.detail }));
  on("reconnected", () => actions.refresh());

  on(EVENTS.WORKER_STATUS, (e) => {
    const known = store.state.config && store.state.config.workers.some((w) => String(w.id) === String(e.detail.id));
    if (store.state.config && !known) actions.refreshConfig();  // a worker added elsewhere (file, script)
  });
  on(EVENTS.WORKER_STATUS, async (e) => {
    // a launched worker that stopped answering (or never did after its launch): what it printed last
    const { id, name, status, previous, error } = e.detail;
    if (status !== "offline" || !["idle", "busy", "launching"].includes(previous)) return;
    const lines = await actions.logs(id, OFFLINE_LOG_LINES, { quiet: true });
    if (!lines || !lines.length) return;
    const what = previous === "launching" ? "did not come up after its launch" : "went offline";
    notify("warn", `Multi-GPU: ${name || `worker ${id}`} ${what}`,
           `${error ? `${error}\n` : ""}Last lines of its log:\n${lines.join("\n")}`, 15000);
  });
  on(EVENTS.WORKER_FAILED, (e) => {
    const { message, rerun } = e.detail;
    notify(rerun ? "warn" : "error", "Multi-GPU worker failed", message, 10000);
  });
  on(EVENTS.JOB_DONE, (e) => {
    const missing = e.detail.units_missing || [];
    if (missing.length) {
      notify("error", "Multi-GPU job", `Left out: ${missing.map((u) => `${u.worker} (${u.message || u.state})`).join("; ")}`);
    }
  });
  on(EVENTS.NOTICE, (e) => notify("info", "Multi-GPU", String(e.detail.message || ""), 8000));
  return names;
}
