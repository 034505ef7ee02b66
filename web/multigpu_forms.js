// Validation of the worker form and the settings table, by gpu_config.json's rules (the worker form's come from
// the config model through multigpu_contract.js, the settings' from GET /multigpu/config), so that a mistake is
// shown next to its field before any request.
// The master validates again; its answer is shown when it disagrees. Pure: unit-tested with node:test.

import { WORKER_RULES } from "./multigpu_contract.js";
import { workerAddress } from "./multigpu_state.js";

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const IPV6 = /^[0-9A-Fa-f:.]+$/;
const WORKER_ID = new RegExp(WORKER_RULES.id_pattern);
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
  if (max === null || max === undefined) {
    if (value < min) return { error: `${field} must be ${min} or more` };
  } else if (value < min || value > max) return { error: `${field} must be between ${min} and ${max}` };
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
  const nameError = plainText(name, WORKER_RULES.name.max_length);
  if (nameError) errors.name = `Name: ${nameError}`;
  values.name = name.trim();

  const host = text("host");
  const hostProblem = hostError(host);
  if (hostProblem) errors.host = `Host: ${hostProblem}`;
  values.host = host === "" ? null : host.replace(/\/+$/, "");

  const port = text("port");
  if (port === "") errors.port = "Port is required";
  else {
    const parsed = parseInteger(port, { ...WORKER_RULES.port, field: "Port" });
    if (parsed.error) errors.port = parsed.error;
    values.port = parsed.value;
  }

  const cuda = text("cuda_device");
  if (cuda === "") values.cuda_device = null;
  else {
    const parsed = parseInteger(cuda, { ...WORKER_RULES.cuda_device, field: "CUDA device" });
    if (parsed.error) errors.cuda_device = parsed.error;
    values.cuda_device = parsed.value;
  }

  const extra = String(form.extra_args ?? "");
  const extraError = plainText(extra, WORKER_RULES.extra_args.max_length);
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

function inferred(key, value) {
  const label = key.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  if (typeof value === "boolean") return { label, kind: "bool" };
  if (typeof value === "number") return { label, kind: Number.isInteger(value) ? "integer" : "number" };
  if (typeof value === "string") return { label, kind: "text" };
  return { label, kind: "json", readOnly: true };
}

/**
 * Rows for the settings table: the settings the master's form describes (GET /multigpu/config's settings_form,
 * derived from its settings model: no copy of it here), in its order, then any others, typed by their value.
 */
export function settingRows(settings, auth = {}, form = []) {
  const rows = [];
  const present = settings || {};
  const described = new Set();
  for (const field of form || []) {
    described.add(field.key);
    if (field.kind === "secret") rows.push({ ...field, value: null, configured: !!auth.token_configured });
    else if (field.key in present) rows.push({ ...field, value: present[field.key] });
  }
  for (const [name, value] of Object.entries(present)) {
    if (!described.has(name)) rows.push({ key: name, ...inferred(name, value), value });
  }
  return rows;
}

const UNBOUNDED_CHARS = 10;

/**
 * How many characters a number row's input must show whole: its largest value (86400, 600), its least and its
 * current one, with room for a decimal part where the setting takes one ("600" must never show as "60(").
 * null for other kinds, which take the width they are given.
 */
export function inputChars(row) {
  if (row.kind !== "integer" && row.kind !== "number") return null;
  const bounded = (value) => value !== undefined && value !== null && Number.isFinite(Number(value));
  const widest = Math.max(
    bounded(row.max) ? String(row.max).length : UNBOUNDED_CHARS,
    bounded(row.min) ? String(row.min).length : 0,
    String(row.value ?? "").length,
  );
  return Math.min(widest + (row.kind === "number" ? 2 : 0), 16);
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
      const hasMin = row.min !== undefined && row.min !== null;
      const hasMax = row.max !== undefined && row.max !== null;
      const exclusive = row.min_inclusive === false;
      const tooLow = hasMin && (exclusive ? value <= row.min : value < row.min);
      if (tooLow || (hasMax && value > row.max)) {
        const low = hasMin ? (exclusive ? `more than ${row.min}` : `at least ${row.min}`) : "";
        const high = hasMax ? `at most ${row.max}` : "";
        return { error: `${row.label}: ${[low, high].filter(Boolean).join(" and ")}` };
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
