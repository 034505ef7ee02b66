// Validation of the worker form and the settings table, mirroring gpu_config.json's rules
// (comfy_distributed/config.py) so that a mistake is shown next to its field before any request.
// The master validates again; its answer is shown when it disagrees. Pure: unit-tested with node:test.

import { workerAddress } from "./multigpu_state.js";

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const IPV6 = /^[0-9A-Fa-f:.]+$/;
const WORKER_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const CONTROL = /[\x00-\x1f\x7f]/;
const INTEGER = /^[+-]?\d+$/;
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

export const WORKER_FIELDS = ["id", "name", "host", "port", "cuda_device", "extra_args"];

function isIp(value) {
  const bare = value.replace(/^\[|\]$/g, "");
  return IPV4.test(bare) || (bare.includes(":") && IPV6.test(bare));
}

function plainText(value, limit) {
  if (value.length > limit) return `at most ${limit} characters`;
  if (CONTROL.test(value)) return "must not contain control characters (newlines, tabs)";
  return null;
}

export function hostError(value) {
  if (value === "") return null;
  if (value.includes("://")) {
    let url;
    try {
      url = new URL(value);
    } catch {
      return "not a valid URL";
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") return "a URL must start with http:// or https://";
    if (!url.hostname || url.search || url.hash || url.username) {
      return "must be http(s)://host[:port][/path] without query, fragment or user";
    }
    return null;
  }
  return isIp(value) || HOSTNAME.test(value) ? null : "must be a host name, an IP address, or an http(s):// URL";
}

function parseInteger(text, { min, max, field }) {
  if (!INTEGER.test(text)) return { error: `${field} must be a whole number` };
  const value = Number(text);
  if (value < min || value > max) return { error: `${field} must be between ${min} and ${max}` };
  return { value };
}

/**
 * Checks the worker form (strings as typed) against the other workers.
 * Returns {errors: {field: message}, payload}: the body for add_worker, or for update_worker the changed
 * fields plus worker_id (editing = the worker as configured).
 */
export function validateWorker(form, { workers = [], editing = null } = {}) {
  const errors = {};
  const text = (name) => String(form[name] ?? "").trim();
  const values = {};

  const name = String(form.name ?? "");
  const nameError = plainText(name, 100);
  if (nameError) errors.name = `Name: ${nameError}`;
  values.name = name.trim();

  const host = text("host");
  const hostProblem = hostError(host);
  if (hostProblem) errors.host = `Host: ${hostProblem}`;
  values.host = host === "" ? null : host.replace(/\/+$/, "");

  const port = text("port");
  if (port === "") errors.port = "Port is required";
  else {
    const parsed = parseInteger(port, { min: 1, max: 65535, field: "Port" });
    if (parsed.error) errors.port = parsed.error;
    values.port = parsed.value;
  }

  const cuda = text("cuda_device");
  if (cuda === "") values.cuda_device = null;
  else {
    const parsed = parseInteger(cuda, { min: 0, max: 1024, field: "CUDA device" });
    if (parsed.error) errors.cuda_device = parsed.error;
    values.cuda_device = parsed.value;
  }

  const extra = String(form.extra_args ?? "");
  const extraError = plainText(extra, 2000);
  if (extraError) errors.extra_args = `Extra arguments: ${extraError}`;
  values.extra_args = extra.trim();

  const others = workers.filter((w) => !editing || String(w.id) !== String(editing.id));
  if (!editing) {
    const id = text("id");
    if (id !== "") {
      if (!WORKER_ID.test(id)) errors.id = "ID: a number or up to 64 letters, digits, '_', '.', '-'";
      else {
        values.id = /^\d{1,15}$/.test(id) ? Number(id) : id;
        if (others.some((w) => String(w.id) === String(values.id))) errors.id = `ID ${id} is already used`;
      }
    }
  }
  if (!errors.host && !errors.port && values.port !== undefined) {
    const address = workerAddress(values);
    const clash = others.find((w) => workerAddress(w) === address);
    if (clash) errors.port = `${address} is already used by ${clash.name || `worker ${clash.id}`}`;
  }

  if (Object.keys(errors).length) return { errors, payload: null };
  if (!editing) {
    const payload = { port: values.port, extra_args: values.extra_args, cuda_device: values.cuda_device };
    if (values.id !== undefined) payload.id = values.id;
    if (values.name) payload.name = values.name;
    if (values.host) payload.host = values.host;
    return { errors, payload };
  }
  const payload = { worker_id: editing.id };
  for (const field of ["name", "host", "port", "cuda_device", "extra_args"]) {
    const before = editing[field] ?? (field === "name" || field === "extra_args" ? "" : null);
    if (values[field] !== before) payload[field] = values[field];
  }
  if (Object.keys(payload).length === 1) return { errors: { form: "Nothing changed" }, payload: null };
  return { errors, payload };
}

/** The form's strings for a configured worker (or an empty form). */
export function workerForm(worker) {
  if (!worker) return { id: "", name: "", host: "", port: "", cuda_device: "", extra_args: "" };
  return {
    id: String(worker.id),
    name: worker.name || "",
    host: worker.host || "",
    port: String(worker.port ?? ""),
    cuda_device: worker.cuda_device === null || worker.cuda_device === undefined ? "" : String(worker.cuda_device),
    extra_args: worker.extra_args || "",
  };
}

// --- settings ------------------------------------------------------------------------------

const seconds = (label, min, max, help, minInclusive = false) =>
  ({ label, kind: "number", min, max, minInclusive, unit: "s", help });

/** What the panel knows about each setting. Keys it does not know are still shown, typed by their value. */
export const SETTINGS_SCHEMA = {
  scheduling_mode: {
    label: "Scheduling mode", kind: "enum", options: ["static", "weighted", "dynamic"],
    help: "static: one unit per participant; weighted: shares by speed; dynamic: small units handed out as GPUs free up",
  },
  unit_size: { label: "Unit size", kind: "integer", min: 1, max: 4096, unit: "images",
               help: "images per unit in weighted and dynamic modes" },
  worker_timeout: seconds("Worker timeout", 0, 86400, "how long a worker may take for its share, queue wait included"),
  connect_timeout: seconds("Connect timeout", 0, 600, "to open a connection to a worker"),
  request_timeout: seconds("Request timeout", 0, 3600, "for one HTTP request to a worker"),
  heartbeat_interval: seconds("Heartbeat interval", 0.1, 3600, "time between two health checks of a worker", true),
  health_ttl: seconds("Health TTL", 0.5, 86400, "a worker with no answer for this long is offline", true),
  max_retries: { label: "Max retries", kind: "integer", min: 0, max: 10,
                 help: "how many times a failed unit is re-run on another participant" },
  skip_offline_workers: { label: "Skip offline workers", kind: "bool",
                          help: "leave out the images of a worker that is offline when a job starts" },
  launch_timeout: seconds("Launch timeout", 0, 3600, "how long a launched instance has to answer"),
  stop_workers_on_exit: { label: "Stop workers on exit", kind: "bool",
                          help: "the launcher stops the workers it started when the master exits" },
  api_token: { label: "API token", kind: "secret",
               help: "required by the control endpoints; 16-256 printable characters; never shown" },
};

function inferred(key, value) {
  const label = key.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  if (typeof value === "boolean") return { label, kind: "bool" };
  if (typeof value === "number") return { label, kind: Number.isInteger(value) ? "integer" : "number" };
  if (typeof value === "string") return { label, kind: "text" };
  return { label, kind: "json", readOnly: true };
}

/** Rows for the settings table: known keys in schema order, then the others as the config lists them. */
export function settingRows(settings, auth = {}) {
  const rows = [];
  const present = settings || {};
  for (const [name, schema] of Object.entries(SETTINGS_SCHEMA)) {
    if (schema.kind === "secret") rows.push({ key: name, ...schema, value: null, configured: !!auth.token_configured });
    else if (name in present) rows.push({ key: name, ...schema, value: present[name] });
  }
  for (const [name, value] of Object.entries(present)) {
    if (!(name in SETTINGS_SCHEMA)) rows.push({ key: name, ...inferred(name, value), value });
  }
  return rows;
}

/** The value to send for a row, from what the input holds (a string, or a boolean for checkboxes). */
export function parseSetting(row, raw) {
  switch (row.kind) {
    case "bool":
      return { value: !!raw };
    case "enum":
      return row.options.includes(raw) ? { value: raw } : { error: `${row.label}: one of ${row.options.join(", ")}` };
    case "integer":
    case "number": {
      const textValue = String(raw).trim();
      const pattern = row.kind === "integer" ? INTEGER : NUMBER;
      if (!pattern.test(textValue)) return { error: `${row.label}: a ${row.kind === "integer" ? "whole " : ""}number` };
      const value = Number(textValue);
      const tooLow = row.min !== undefined && (row.kind === "number" && !row.minInclusive ? value <= row.min : value < row.min);
      if (tooLow || (row.max !== undefined && value > row.max)) {
        const low = row.kind === "number" && !row.minInclusive ? `more than ${row.min}` : `at least ${row.min}`;
        return { error: `${row.label}: ${low} and at most ${row.max}` };
      }
      return { value };
    }
    case "secret": {
      const token = String(raw);
      if (!/^[\x21-\x7e]{16,256}$/.test(token)) return { error: "API token: 16 to 256 printable characters, no spaces" };
      return { value: token };
    }
    case "text":
      return { value: String(raw) };
    default:
      return { error: `${row.label} is edited in gpu_config.json` };
  }
}
