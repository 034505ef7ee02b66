// The Multi-GPU sidebar panel: a master card, a card per worker, the running jobs, the worker form, the shared
// pool's agents (multigpu_pool_panel.js) and the settings. It draws the store's state and calls the actions; the
// store is fed by the websocket listeners in multigpu.js, so the panel only polls for VRAM (no faster than the
// health TTL).

import { button, h, meter, setAvailable, setText } from "./multigpu_dom.js";
import { createSettings, createWorkerForm } from "./multigpu_editors.js";
import { poolSummary } from "./multigpu_pool.js";
import { createPoolSection } from "./multigpu_pool_panel.js";
import {
  PASSIVE_MESSAGE, activeJobs, clusterLine, configWarnings, launchableIds, masterCard, pollIntervalMs, summary,
  tokenPrompt, workerCards,
} from "./multigpu_state.js";

const STYLESHEET_ID = "comfyui-distributed-multigpu-css";

function ensureStylesheet() {
  if (document.getElementById(STYLESHEET_ID)) return;
  document.head.append(h("link", { id: STYLESHEET_ID, rel: "stylesheet",
                                   href: new URL("./multigpu.css", import.meta.url).href }));
}

/** The enable switch of a worker card; it shows the saved value once the master has answered. */
function enableSwitch(ctx, workerId, current) {
  const input = h("input", {
    type: "checkbox", class: "mgpu-switch-input", dataset: { action: "toggle" },
    onchange: async () => {
      input.disabled = true;
      await ctx.actions.setEnabled(workerId, input.checked);
      input.disabled = false;
      if (current()) input.checked = current().enabled;
    },
  });
  const el = h("label", { class: "mgpu-switch", title: "Take part in jobs" }, input, h("span", { class: "mgpu-switch-track" }));
  return {
    el,
    update(vm) {
      if (!input.disabled) input.checked = vm.enabled;
      input.setAttribute("aria-label", `${vm.enabled ? "Disable" : "Enable"} ${vm.name}`);
    },
  };
}

/** The buttons of a card: clear VRAM; for a worker also launch or restart, edit and remove. */
function cardButtons(ctx, workerId, current) {
  const isMaster = workerId === null;
  const clear = button("pi-eraser", "Clear VRAM", () => (isMaster
    ? ctx.actions.clearMemory({ worker_ids: [], master: true }, "master")
    : ctx.actions.clearMemory({ worker_ids: [workerId], master: false }, current().name)), { action: "clear" });
  if (isMaster) return { el: h("div", { class: "mgpu-actions" }, clear), update: () => setAvailable(clear, true) };
  const launch = button("pi-play", "Launch", () => ctx.actions.launch([workerId]), { action: "launch" });
  const restart = button("pi-replay", "Restart", () => ctx.actions.restart(workerId, current().name),
                         { action: "restart" });
  const logs = button("pi-file", "Log", () => ctx.toggleLog(workerId), { action: "logs", iconOnly: true });
  const el = h("div", { class: "mgpu-actions" }, clear, launch, restart, h("span", { class: "mgpu-spacer" }), logs,
    button("pi-pencil", "Edit", () => ctx.editWorker(workerId), { action: "edit", iconOnly: true }),
    button("pi-trash", "Remove", () => ctx.removeWorker(workerId, current().name),
           { action: "remove", iconOnly: true, kind: "mgpu-danger" }));
  return {
    el,
    update(vm) {
      setAvailable(clear, true, vm.canClear);
      setAvailable(launch, vm.canLaunch);
      setAvailable(restart, !vm.canLaunch, vm.canRestart);
    },
  };
}

/** A card's live preview: the unit's newest frame, or nothing (the image is only replaced when it changed). */
function showPreview(img, shown) {
  img.hidden = !shown;
  if (!shown) {
    if (img.hasAttribute("src")) img.removeAttribute("src");
    img.alt = "";
    return;
  }
  if (img.getAttribute("src") !== shown.src) img.src = shown.src;
  img.alt = shown.alt;
  img.title = shown.alt;
}

/** One card; built once per worker (or for the master, workerId null) and updated in place. */
function createCard(ctx, workerId) {
  let vm = null;
  const current = () => vm;
  const dot = h("span", { class: "mgpu-dot" });
  const name = h("span", { class: "mgpu-name", dataset: { part: "name" } });
  const tag = h("span", { class: "mgpu-tag", hidden: true, dataset: { part: "tag" } });
  const badge = h("span", { class: "mgpu-badge" });
  const meta = h("div", { class: "mgpu-meta" });
  const detail = h("div", { class: "mgpu-detail" });
  const failure = h("div", { class: "mgpu-detail mgpu-failure" });
  const values = h("div", { class: "mgpu-values", dataset: { part: "values" } });
  const logView = h("pre", { class: "mgpu-log", hidden: true, dataset: { part: "log" } });
  if (workerId !== null) ctx.logViews.set(String(workerId), logView);
  const vram = meter("VRAM", "vram");
  const progress = meter("Job", "progress");
  const preview = h("img", { class: "mgpu-preview", hidden: true, dataset: { part: "preview" } });
  const toggle = workerId === null ? null : enableSwitch(ctx, workerId, current);
  const buttons = cardButtons(ctx, workerId, current);
  const el = h("div", { class: `mgpu-card${workerId === null ? " mgpu-master" : ""}`,
                        dataset: workerId === null ? { role: "master" } : { workerId: String(workerId) } },
    h("div", { class: "mgpu-card-head" }, dot, name, tag, badge, toggle && toggle.el),
    meta, detail, failure, values, vram.el, progress.el, preview, buttons.el, logView);

  function update(next) {
    vm = next;
    for (const node of [el, dot, badge]) node.dataset.status = vm.status;
    dot.title = vm.statusText;
    badge.textContent = vm.statusText;
    setText(name, vm.name);
    name.title = vm.name;  // a long name wraps in the card; the tooltip shows it on one line
    setText(tag, vm.tag || null);
    setText(meta, [vm.address, vm.cuda, vm.device, vm.ssh].filter(Boolean).join(" · "));
    setText(detail, vm.role || vm.detail);
    const lines = vm.values || [];
    if (values.children.length !== lines.length || lines.some((line, i) => values.children[i].textContent !== line)) {
      values.replaceChildren(...lines.map((line) => h("div", { class: "mgpu-value", title: line }, line)));
    }
    values.hidden = lines.length === 0;
    setText(failure, vm.failure);
    detail.title = vm.detail || "";
    failure.title = vm.failure || "";
    vram.setLabel(vm.vramLabel);
    vram.set(vm.vram);
    progress.set(vm.progress);
    showPreview(preview, vm.preview);
    if (toggle) toggle.update(vm);
    buttons.update(vm);
  }

  return { el, update };
}

/** The master's card, then the workers' in config order; cards are kept across updates by worker id. */
function createCardList(ctx) {
  const el = h("div", { class: "mgpu-cards" });
  const master = createCard(ctx, null);
  const cards = new Map();
  return {
    el,
    update(state) {
      master.update(masterCard(state, window.location.host));
      const order = [master.el];
      const seen = new Set();
      for (const vm of workerCards(state)) {
        const id = String(vm.id);
        seen.add(id);
        if (!cards.has(id)) cards.set(id, createCard(ctx, vm.id));
        cards.get(id).update(vm);
        order.push(cards.get(id).el);
      }
      for (const id of [...cards.keys()]) if (!seen.has(id)) cards.delete(id);
      const same = order.length === el.children.length && order.every((card, i) => el.children[i] === card);
      if (!same) el.replaceChildren(...order);
    },
  };
}

function createJobList() {
  const el = h("div", { class: "mgpu-jobs" });
  return {
    el,
    update(state) {
      const jobs = activeJobs(state);
      el.hidden = jobs.length === 0;
      el.replaceChildren(...jobs.map((job) => {
        const bar = meter(`Job ${job.short}`, "job");
        bar.set(job);
        bar.el.dataset.jobId = job.jobId;
        return bar.el;
      }));
    },
  };
}

/** Shown when the master requires a token this browser does not have, or refused the one it has. */
function createTokenPrompt({ actions, client, store }) {
  const message = h("div", { class: "mgpu-token-message" });
  const input = h("input", { class: "mgpu-input", type: "password", name: "token", autocomplete: "off",
                             placeholder: "API token" });
  const save = () => {
    if (!input.value.trim()) return;
    actions.saveToken(input.value);
    input.value = "";
    prompt.update(store.state);
  };
  const el = h("form", { class: "mgpu-token", hidden: true, onsubmit: (e) => { e.preventDefault(); save(); } },
    message, h("div", { class: "mgpu-row" }, input,
      button("pi-key", "Use token", save, { action: "save-token", kind: "mgpu-primary" })));
  const prompt = {
    el,
    update(state) {
      const text = tokenPrompt(state.auth, client.hasToken());
      el.hidden = text === null;
      message.textContent = text || "";
      message.title = state.auth.rejected || "";  // the master's own words
    },
  };
  return prompt;
}

function createHeader({ actions, store }) {
  const summaryText = h("div", { class: "mgpu-summary" });
  const clusterText = h("div", { class: "mgpu-summary mgpu-cluster", dataset: { part: "cluster" } });
  const banner = h("div", { class: "mgpu-banner", role: "alert", hidden: true });
  const warnings = createConfigWarnings();
  const launchAll = button("pi-play", "Launch workers", () => actions.launch(launchableIds(store.state)),
                           { action: "launch-all", title: "Launch every enabled worker that is offline" });
  const toolbar = h("div", { class: "mgpu-toolbar" }, launchAll,
    button("pi-eraser", "Clear all VRAM", () => actions.clearMemory({}, "all"),
           { action: "clear-all", title: "Clear VRAM on every enabled worker and on the master" }),
    h("span", { class: "mgpu-spacer" }),
    button("pi-refresh", "Refresh", () => actions.refresh(), { action: "refresh", iconOnly: true }));
  const el = h("div", { class: "mgpu-header" },
    h("div", { class: "mgpu-title", text: "Multi-GPU" }), summaryText, clusterText, toolbar, banner, warnings.el);
  return {
    el,
    update(state) {
      toolbar.hidden = state.passive;  // its buttons would only fail where the routes are missing
      setText(summaryText, state.passive ? null : state.config
        ? [summary(state), poolSummary(state)].filter(Boolean).join(" · ") : "Loading…");
      setText(clusterText, state.passive ? null : clusterLine(state));
      setText(banner, state.passive ? null : state.error);
      warnings.update(state.passive ? [] : configWarnings(state));
      setAvailable(launchAll, true, launchableIds(state).length > 0);
    },
  };
}

/** The master's config warnings (GET /multigpu/status' config_warnings): a box of one line each, hidden when
 *  there is none; redrawn only when the lines change. */
function createConfigWarnings() {
  const list = h("ul", { class: "mgpu-warning-list" });
  const el = h("div", { class: "mgpu-warnings", role: "status", hidden: true, dataset: { part: "config-warnings" } },
    h("div", { class: "mgpu-warnings-title" }, h("i", { class: "pi pi-exclamation-triangle", "aria-hidden": "true" }),
      h("span", { text: "gpu_config.json" })),
    list);
  let shown = [];
  return {
    el,
    update(lines) {
      el.hidden = lines.length === 0;
      if (lines === shown) return;
      shown = lines;
      list.replaceChildren(...lines.map((line) => h("li", { class: "mgpu-warning", text: line })));
    },
  };
}

/** Where this ComfyUI has no /multigpu routes (a worker): one message in place of the panel. */
function createPassiveNotice() {
  const el = h("div", { class: "mgpu-notice", role: "status", dataset: { notice: "passive" }, text: PASSIVE_MESSAGE,
                        hidden: true });
  return {
    el,
    update(state) {
      el.hidden = !state.passive;
    },
  };
}

/** Draws the panel into `root` (the sidebar's element); returns the function that stops it. */
export function mountPanel(root, { store, actions, client, confirm, showPreviews = null }) {
  ensureStylesheet();
  const workerForm = createWorkerForm({ store, actions });
  const ctx = {
    actions,
    logViews: new Map(),
    async toggleLog(workerId) {
      const view = ctx.logViews.get(String(workerId));
      if (!view) return;
      if (!view.hidden) {
        view.hidden = true;
        return;
      }
      const lines = await actions.logs(workerId, 40);
      if (lines === null) return;
      view.textContent = lines.length ? lines.join("\n") : "(the log is empty)";
      view.hidden = false;
      view.scrollTop = view.scrollHeight;
    },
    editWorker(workerId) {
      const worker = (store.state.config.workers || []).find((w) => String(w.id) === String(workerId));
      if (worker) workerForm.open(worker);
    },
    async removeWorker(workerId, name) {
      const ok = await confirm(`Remove ${name}?`, `${name} is removed from gpu_config.json. Its ComfyUI keeps running.`);
      if (ok) await actions.removeWorker(workerId, name);
    },
  };
  const header = createHeader({ actions, store });
  const notice = createPassiveNotice();
  const parts = [createTokenPrompt({ actions, client, store }), createJobList(), createCardList(ctx)];
  const settings = createSettings({ client, actions });
  const pool = createPoolSection();
  const content = h("div", { class: "mgpu-content" }, parts.map((part) => part.el),
    h("div", { class: "mgpu-add" }, button("pi-plus", "Add worker", () => workerForm.open(null), { action: "add-worker" })),
    workerForm.el, pool.el, settings.el);
  root.replaceChildren(h("div", { class: "mgpu-panel" }, header.el, notice.el, content));

  const update = (state) => {
    header.update(state);
    notice.update(state);
    content.hidden = state.passive;
    if (state.passive) return;  // cards, forms and settings stay as they were until a master answers
    for (const part of [...parts, pool, settings]) part.update(state);
  };
  let timer = null;
  let alive = true;
  const poll = async () => {
    await actions.refreshStatus();
    if (alive) timer = setTimeout(poll, pollIntervalMs(store.state.config && store.state.config.settings));
  };
  const unsubscribe = store.subscribe(update);
  update(store.state);
  actions.refreshConfig().then(() => { if (alive) poll(); });
  if (showPreviews) showPreviews(true);  // the master relays the workers' previews while a panel is open
  return function destroy() {
    alive = false;
    clearTimeout(timer);
    unsubscribe();
    if (showPreviews) showPreviews(false);
  };
}
