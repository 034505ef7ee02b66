// ComfyUI-Distributed's frontend: the "Multi-GPU" sidebar tab and toasts for worker failures.
// Built only on the frontend's public extension API (registerExtension, registerSidebarTab,
// toast, dialog, api events and fetchApi). It never touches queueing: distribution happens in
// the master's backend, whoever queues the prompt.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { createActions } from "./multigpu_actions.js";
import { createClient } from "./multigpu_client.js";
import { listen } from "./multigpu_listen.js";
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

app.registerExtension({
  name: "ComfyUI-Distributed.multigpu",
  setup() {
    listen(api, store, actions, notify);
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
