// The panel's two editors: the worker form (add or edit, checked field by field before it is sent)
// and the settings table (drawn from GET /multigpu/config's settings plus its settings_form, so a
// setting the master adds later shows up without a change here).

import { button, h } from "./multigpu_dom.js";
import { inputChars, parseSetting, settingRows, validateWorker, workerForm } from "./multigpu_forms.js";

const FORM_FIELDS = [
  { name: "name", label: "Name", placeholder: "GPU 1" },
  { name: "host", label: "Host", placeholder: "127.0.0.1, a host name or https://…" },
  { name: "port", label: "Port", placeholder: "8189", inputmode: "numeric", required: true },
  { name: "cuda_device", label: "CUDA device", placeholder: "none", inputmode: "numeric" },
  { name: "extra_args", label: "Extra arguments", placeholder: "--listen" },
  { name: "id", label: "ID", placeholder: "next free number" },
];

/** The add/edit form. `open(worker)` shows it (null: a new worker); it hides itself once saved. */
export function createWorkerForm({ store, actions }) {
  const inputs = {};
  const errors = {};
  const title = h("div", { class: "mgpu-form-title" });
  const formError = h("div", { class: "mgpu-field-error", dataset: { error: "form" }, hidden: true });
  let editing = null;

  const rows = FORM_FIELDS.map((field) => {
    inputs[field.name] = h("input", {
      class: "mgpu-input", name: field.name, placeholder: field.placeholder, inputmode: field.inputmode,
      autocomplete: "off", spellcheck: "false",
    });
    errors[field.name] = h("div", { class: "mgpu-field-error", dataset: { error: field.name }, hidden: true });
    return h("label", { class: "mgpu-field", dataset: { field: field.name } },
      h("span", { class: "mgpu-field-label", text: field.required ? `${field.label} *` : field.label }),
      inputs[field.name], errors[field.name]);
  });

  function showErrors(found) {
    for (const [name, el] of Object.entries({ ...errors, form: formError })) {
      el.textContent = found[name] || "";
      el.hidden = !found[name];
      if (inputs[name]) inputs[name].classList.toggle("mgpu-invalid", !!found[name]);
    }
  }

  async function save() {
    const values = Object.fromEntries(Object.entries(inputs).map(([name, input]) => [name, input.value]));
    const workers = (store.state.config && store.state.config.workers) || [];
    const { errors: found, payload } = validateWorker(values, { workers, editing });
    showErrors(found);
    if (!payload) return;
    const result = await actions.saveWorker(payload, editing);
    if (result.ok) close();
    else showErrors({ form: result.error });
  }

  const el = h("form", { class: "mgpu-form mgpu-worker-form", hidden: true, novalidate: true,
                         onsubmit: (event) => { event.preventDefault(); save(); } },
    title, ...rows, formError,
    h("div", { class: "mgpu-form-buttons" },
      button("pi-check", "Save", save, { action: "save-worker", kind: "mgpu-primary" }),
      button("pi-times", "Cancel", () => close(), { action: "cancel-worker" })));

  function open(worker) {
    editing = worker;
    title.textContent = worker ? `Edit ${worker.name || `worker ${worker.id}`}` : "Add a worker";
    const values = workerForm(worker);
    for (const [name, input] of Object.entries(inputs)) input.value = values[name];
    inputs.id.disabled = !!worker;
    inputs.id.closest("label").hidden = !!worker;
    showErrors({});
    el.hidden = false;
    inputs.name.focus();
    el.scrollIntoView({ block: "nearest" });
  }

  function close() {
    el.hidden = true;
    editing = null;
  }

  return { el, open, close };
}

function settingInput(row, save) {
  const attrs = { class: "mgpu-input", name: row.key, disabled: !!row.readOnly };
  switch (row.kind) {
    case "bool":
      return h("input", { ...attrs, class: "mgpu-checkbox", type: "checkbox", checked: !!row.value,
                          onchange: (e) => save(e.target.checked, e.target) });
    case "enum":
      return h("select", { ...attrs, onchange: (e) => save(e.target.value, e.target) },
        row.options.map((option) => h("option", { value: option, text: option, selected: option === row.value })));
    case "secret":
      return h("input", { ...attrs, type: "password", autocomplete: "new-password",
                          placeholder: row.configured ? "set (hidden)" : "not set" });
    case "json":
      return h("input", { ...attrs, value: JSON.stringify(row.value) });
    default: {
      const chars = inputChars(row);  // a number shows whole: as wide as its largest value, padding and border added
      return h("input", { ...attrs, value: String(row.value ?? ""), inputmode: row.kind === "text" ? null : "decimal",
                          size: chars, style: chars ? `min-width: calc(${chars}ch + 16px)` : null,
                          onchange: (e) => save(e.target.value, e.target),
                          onkeydown: (e) => { if (e.key === "Enter") e.target.blur(); } });
    }
  }
}

/** The settings table; `update(state)` rebuilds it when its rows change and otherwise refreshes values in place. */
export function createSettings({ client, actions }) {
  const body = h("div", { class: "mgpu-settings-body" });
  const el = h("details", { class: "mgpu-section mgpu-settings" },
    h("summary", { class: "mgpu-section-title" }, h("i", { class: "pi pi-cog" }), h("span", { text: "Settings" })),
    body);
  const inputs = new Map();
  let shape = null;

  function row(settingRow) {
    const message = h("div", { class: "mgpu-field-error", hidden: true });
    const flash = (text, ok) => {
      message.textContent = text;
      message.hidden = false;
      message.classList.toggle("mgpu-ok", ok);
      if (ok) setTimeout(() => { if (message.textContent === text) message.hidden = true; }, 2500);
    };
    const save = async (raw, input) => {
      const parsed = parseSetting(settingRow, raw);
      if (parsed.error) return flash(parsed.error, false);
      input.classList.add("mgpu-saving");
      const result = await actions.saveSetting(settingRow.key, parsed.value);
      input.classList.remove("mgpu-saving");
      flash(result.ok ? "Saved" : result.error, result.ok);
    };
    const input = settingInput(settingRow, save);
    inputs.set(settingRow.key, { input, kind: settingRow.kind, message });
    const controls = [input];
    if (settingRow.kind === "secret") {
      controls.push(button("pi-check", "Set", () => save(input.value, input), { action: "set-token", iconOnly: true }));
      if (settingRow.configured) {
        controls.push(button("pi-trash", "Remove the token", async () => {
          const result = await actions.saveSetting("api_token", null);
          flash(result.ok ? "Token removed" : result.error, result.ok);
        }, { action: "remove-token", iconOnly: true }));
      }
    }
    return h("div", { class: "mgpu-setting", dataset: { setting: settingRow.key }, title: settingRow.help || "" },
      h("label", { class: "mgpu-setting-label", text: settingRow.label }),
      h("div", { class: "mgpu-setting-control" }, controls,
        settingRow.kind === "secret" ? null : h("span", { class: "mgpu-unit", text: settingRow.unit || "" })),
      message);
  }

  function refreshValue(settingRow) {
    const entry = inputs.get(settingRow.key);
    if (!entry || entry.input === document.activeElement) return;
    const before = entry.kind === "bool" ? entry.input.checked : entry.input.value;
    if (entry.kind === "bool") entry.input.checked = !!settingRow.value;
    else if (entry.kind === "json") entry.input.value = JSON.stringify(settingRow.value);
    else if (entry.kind !== "secret") entry.input.value = String(settingRow.value ?? "");
    const after = entry.kind === "bool" ? entry.input.checked : entry.input.value;
    // a refused value the input no longer shows (it shows the saved one again): its error goes with it
    if (before !== after && !entry.message.classList.contains("mgpu-ok")) entry.message.hidden = true;
  }

  function update(state) {
    if (!state.config) return;
    const stored = client.hasToken();
    const rows = settingRows(state.config.settings, { token_configured: state.auth.configured },
                             state.config.settings_form);
    const next = JSON.stringify([rows.map((r) => [r.key, r.kind, r.configured]), stored]);
    if (next === shape) {
      rows.forEach(refreshValue);
      return;
    }
    if (body.contains(document.activeElement)) return;  // not while the user types in it
    shape = next;
    inputs.clear();
    body.replaceChildren(...rows.map(row),
      h("div", { class: "mgpu-hint" },
        h("span", { text: stored ? "This browser keeps a token for the master." : "This browser keeps no token." }),
        stored ? button("pi-sign-out", "Forget it", () => { client.setToken(""); update(state); },
                        { action: "forget-token" }) : null));
  }

  return { el, update };
}
