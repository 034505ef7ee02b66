// ComfyUI-Distributed's frontend: the "Multi-GPU" sidebar tab and toasts for worker failures.
// Built only on the frontend's public extension API (registerExtension, registerSidebarTab,
// toast, dialog, api events and fetchApi). It never touches queueing: distribution happens in
// the master's backend, whoever queues the prompt.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { createActions } from "./multigpu_actions.js";
import { createClient } from "./multigpu_client.js";
import { mountPanel } from "./multigpu_panel.js";
import { createStore, initialState, reduce } from "./multigpu_state.js";

const TAB_ID = "multigpu";

function notify(severity, summary, detail, life = 6000) {
  const toast = app.extensionManager && app.extensionManager.toast;
  if (toast) toast.add({ severity, summary, detail, life: severity === "error" ? 12000 : life });
  else console.warn(`[Multi-GPU] ${summary}: ${detail}`);
}

async function confirm(title, message) {
  const dialog = app.extensionManager && app.extensionManager.dialog;
  if (dialog && typeof dialog.confirm === "function") return !!(await dialog.confirm({ title, message, type: "delete" }));
  return window.confirm(`${title}\n${message}`);
}

const store = createStore(reduce, initialState());
const client = createClient((path, options) => api.fetchApi(path, options), window.localStorage);
const actions = createActions(store, client, notify);

function listen() {
  const forward = (event, type) => api.addEventListener(event, (e) => store.dispatch({ type, data: e.detail }));
  forward("multigpu.worker_status", "worker_status");
  forward("multigpu.job_progress", "job_progress");
  forward("multigpu.job_done", "job_done");
  forward("multigpu.worker_failed", "worker_failed");
  forward("status", "master_queue");
  forward("progress", "master_progress");
  api.addEventListener("executing", (e) => store.dispatch({ type: "master_executing", node: e.detail }));
  api.addEventListener("reconnected", () => actions.refresh());

  api.addEventListener("multigpu.worker_status", (e) => {
    const known = store.state.config && store.state.config.workers.some((w) => String(w.id) === String(e.detail.id));
    if (store.state.config && !known) actions.refreshConfig();  // a worker added elsewhere (file, script)
  });
  api.addEventListener("multigpu.worker_failed", (e) => {
    const { message, rerun } = e.detail;
    notify(rerun ? "warn" : "error", "Multi-GPU worker failed", message, 10000);
  });
  api.addEventListener("multigpu.job_done", (e) => {
    const missing = e.detail.units_missing || [];
    if (missing.length) {
      notify("error", "Multi-GPU job", `Left out: ${missing.map((u) => `${u.worker} (${u.message || u.state})`).join("; ")}`);
    }
  });
}

app.registerExtension({
  name: "ComfyUI-Distributed.multigpu",
  setup() {
    listen();
    const manager = app.extensionManager;
    if (!manager || typeof manager.registerSidebarTab !== "function") {
      console.warn("[Multi-GPU] this ComfyUI frontend has no registerSidebarTab: the panel is not shown");
      return;
    }
    let destroy = null;
    manager.registerSidebarTab({
      id: TAB_ID,
      icon: "pi pi-server",
      title: "Multi-GPU",
      tooltip: "Multi-GPU: workers, VRAM and settings",
      type: "custom",
      render(el) {
        if (destroy) destroy();
        destroy = mountPanel(el, { store, actions, client, confirm });
      },
      destroy() {
        if (destroy) destroy();
        destroy = null;
      },
    });
    actions.refresh();  // toasts and the status dots are right before the tab is first opened
  },
});
