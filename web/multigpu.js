// ComfyUI-Distributed's frontend: the "Multi-GPU" sidebar tab and toasts for worker failures.
// Built only on the frontend's public extension API (registerExtension, registerSidebarTab,
// toast, dialog, api events and fetchApi). It never touches queueing: distribution happens in
// the master's backend, whoever queues the prompt.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { createActions } from "./multigpu_actions.js";
import { createClient } from "./multigpu_client.js";
import { keepRegistered, listen } from "./multigpu_listen.js";
import { mountPanel } from "./multigpu_panel.js";
import { VALUE_NODE } from "./multigpu_contract.js";
import { createStore, initialState, readValueNode, reduce } from "./multigpu_state.js";

const TAB_ID = "multigpu";
const VALUES_EVERY_MS = 1000;

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

function graphNodes() {
  const graph = app.graph;
  return graph ? graph._nodes || graph.nodes || [] : [];
}

/** The name of the first input a node's output feeds (for a Value node's label), or null. */
function fedInput(node) {
  const graph = app.graph;
  for (const id of (node.outputs && node.outputs[0] && node.outputs[0].links) || []) {
    const link = graph.links && (typeof graph.links.get === "function" ? graph.links.get(id) : graph.links[id]);
    const target = link && graph.getNodeById(link.target_id);
    const input = target && target.inputs && target.inputs[link.target_slot];
    if (input) return input.name;
  }
  return null;
}

/** The open workflow's Value nodes, for the worker cards (sent to the store, which ignores an unchanged list). */
function shareWorkflowValues() {
  try {
    const values = graphNodes().filter((node) => node.type === VALUE_NODE.CLASS)
      .map((node) => readValueNode(node.id, node.title, node.widgets, fedInput(node)));
    store.dispatch({ type: "workflowValues", values });
  } catch (error) {
    console.warn("[Multi-GPU] could not read the workflow's Value nodes", error);
  }
}

/** A table in a Value node: one row per configured worker, its value (empty: the default). It writes the
 *  node's `values` widget (JSON by worker id), which stays the one that is saved and sent. */
function attachValueTable(node) {
  const valuesWidget = (node.widgets || []).find((w) => w.name === VALUE_NODE.VALUES);
  if (!valuesWidget || typeof node.addDOMWidget !== "function") return;
  const table = document.createElement("table");
  table.className = "mgpu-value-table";
  const parsed = () => {
    try {
      const values = JSON.parse(valuesWidget.value || "{}");
      return values && typeof values === "object" && !Array.isArray(values) ? values : null;
    } catch (error) {
      return null;
    }
  };
  // redrawn when the workers' ids or names change, not each time the config is read again: a redraw replaces
  // the inputs, and a value being typed into one would be lost
  const shape = (state) => JSON.stringify(((state.config && state.config.workers) || [])
    .map((worker) => [String(worker.id), worker.name || ""]));
  let shown = null;
  const render = () => {
    const workers = (store.state.config && store.state.config.workers) || [];
    shown = shape(store.state);  // what it shows now: the next change of the store is compared with this
    const values = parsed();
    const rows = workers.map((worker) => {
      const id = String(worker.id);
      const input = document.createElement("input");
      input.dataset.workerId = id;
      input.placeholder = "default";
      input.value = values && values[id] !== undefined ? String(values[id]) : "";
      input.disabled = values === null;  // the JSON is broken: fix it in the text first
      input.addEventListener("change", () => {
        const next = parsed() || {};
        if (input.value === "") delete next[id];
        else next[id] = input.value;
        valuesWidget.value = JSON.stringify(next);
        shareWorkflowValues();
      });
      const name = document.createElement("td");
      name.textContent = worker.name || `Worker ${id}`;
      const cell = document.createElement("td");
      cell.append(input);
      const row = document.createElement("tr");
      row.append(name, cell);
      return row;
    });
    if (!rows.length) {
      const row = document.createElement("tr");
      row.textContent = "No workers configured (Multi-GPU tab)";
      rows.push(row);
    }
    table.replaceChildren(...rows);
  };
  node.addDOMWidget("worker_values", "multigpu_value_table", table, { serialize: false });
  const previousCallback = valuesWidget.callback;
  valuesWidget.callback = function (...args) {
    render();
    return previousCallback ? previousCallback.apply(this, args) : undefined;
  };
  const unsubscribe = store.subscribe((state) => {
    if (shape(state) !== shown) render();
  });
  const removed = node.onRemoved;
  node.onRemoved = function (...args) {
    unsubscribe();
    return removed ? removed.apply(this, args) : undefined;
  };
  render();
}

app.registerExtension({
  name: "ComfyUI-Distributed.multigpu",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== VALUE_NODE.CLASS) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = created ? created.apply(this, args) : undefined;
      attachValueTable(this);
      return result;
    };
  },
  setup() {
    listen(api, store, actions, notify);
    let panelOpen = false;  // the workers' live previews are asked for while the panel shows
    const renewRegistration = keepRegistered(api, actions, () => panelOpen);
    const showPreviews = (on) => {
      panelOpen = on;
      renewRegistration();
    };
    setInterval(shareWorkflowValues, VALUES_EVERY_MS);
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
        destroy = mountPanel(el, { store, actions, client, confirm, showPreviews });
      },
      destroy() {
        if (destroy) destroy();
        destroy = null;
      },
    });
    actions.refresh();  // toasts and the status dots are right before the tab is first opened
  },
});
