// The worker form and the settings table: the same rules as gpu_config.json, checked before sending.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { WORKER_RULES } from "../../web/multigpu_contract.js";
import { hostError, parseSetting, settingRows, validateWorker, workerForm } from "../../web/multigpu_forms.js";

// the master's settings_form (GET /multigpu/config), as comfy_distributed.config.settings_form() makes it; a Python
// test (tests/unit/test_settings_form.py) keeps this copy equal to it
const FORM = JSON.parse(readFileSync(new URL("./settings_form.json", import.meta.url), "utf-8"));

const WORKERS = [
  { id: 1, name: "GPU 1", port: 8189, host: null, cuda_device: 1, extra_args: "--listen", enabled: true },
  { id: 2, name: "", port: 8190, host: "10.0.0.5", cuda_device: null, extra_args: "", enabled: true },
];
const form = (fields) => ({ ...workerForm(null), ...fields });

test("a valid new worker becomes an add_worker body", () => {
  const { errors, payload } = validateWorker(form({ name: " GPU 3 ", port: "8191", cuda_device: "2" }),
                                             { workers: WORKERS });
  assert.deepEqual(errors, {});
  assert.deepEqual(payload, { name: "GPU 3", port: 8191, cuda_device: 2, extra_args: "" });
});

test("an explicit id: numbers stay numbers, names are checked", () => {
  assert.equal(validateWorker(form({ id: "7", port: "9000" }), { workers: WORKERS }).payload.id, 7);
  assert.equal(validateWorker(form({ id: "gpu-a", port: "9000" }), { workers: WORKERS }).payload.id, "gpu-a");
  assert.match(validateWorker(form({ id: "a b", port: "9000" }), { workers: WORKERS }).errors.id, /letters/);
  assert.match(validateWorker(form({ id: "1", port: "9000" }), { workers: WORKERS }).errors.id, /already used/);
});

test("each bad field is named", () => {
  const { errors, payload } = validateWorker(
    form({ name: "a\nb", host: "bad host", port: "70000", cuda_device: "-1", extra_args: "x\ty" }),
    { workers: WORKERS });
  assert.equal(payload, null);
  assert.deepEqual(Object.keys(errors).sort(), ["cuda_device", "extra_args", "host", "name", "port"]);
  assert.match(errors.port, /between 1 and 65535/);
  assert.equal(validateWorker(form({ port: "" }), { workers: WORKERS }).errors.port, "Port is required");
  assert.match(validateWorker(form({ port: "81.5" }), { workers: WORKERS }).errors.port, /whole number/);
});

test("an address already used by another worker is refused", () => {
  const { errors } = validateWorker(form({ host: "127.0.0.1", port: "8189" }), { workers: WORKERS });
  assert.match(errors.port, /already used by GPU 1/);
  const sameHost = validateWorker(form({ host: "10.0.0.5", port: "8190" }), { workers: WORKERS });
  assert.match(sameHost.errors.port, /worker 2/);
});

test("hosts: names, IPs and http(s) URLs", () => {
  for (const ok of ["", "gpu-box", "gpu.lan", "192.168.1.10", "::1", "[fe80::1]", "https://x.example/comfy",
                    "http://10.0.0.1:8188"]) {
    assert.equal(hostError(ok), null, ok);
  }
  for (const bad of ["ftp://x", "http://x/?q=1", "http://u@x", "bad_host!", "-x"]) {
    assert.notEqual(hostError(bad), null, bad);
  }
});

test("editing sends only what changed, and refuses an empty change", () => {
  const editing = WORKERS[0];
  const same = validateWorker(workerForm(editing), { workers: WORKERS, editing });
  assert.deepEqual(same.errors, { form: "Nothing changed" });
  const { payload } = validateWorker({ ...workerForm(editing), name: "Renamed", cuda_device: "" },
                                     { workers: WORKERS, editing });
  assert.deepEqual(payload, { worker_id: 1, name: "Renamed", cuda_device: null });
  const kept = validateWorker({ ...workerForm(editing), port: "8189" }, { workers: WORKERS, editing });
  assert.deepEqual(kept.errors, { form: "Nothing changed" }, "its own address is no clash");
  const cleared = validateWorker({ ...workerForm(WORKERS[1]), host: "" }, { workers: WORKERS, editing: WORKERS[1] });
  assert.deepEqual(cleared.payload, { worker_id: 2, host: null });
});

test("settings rows: described keys in the form's order, the token always, unknown keys typed by value", () => {
  const rows = settingRows({ worker_timeout: 600, heartbeat_interval: 2, future_flag: true, mystery: { a: 1 },
                             scheduling_mode: "static", queue_mode: "off", note: "x", ratio: 0.5, count: 3 },
                           { token_configured: true }, FORM);
  assert.deepEqual(rows.map((r) => [r.key, r.kind]), [
    ["worker_timeout", "number"], ["api_token", "secret"], ["heartbeat_interval", "number"],
    ["scheduling_mode", "enum"], ["queue_mode", "enum"], ["future_flag", "bool"], ["mystery", "json"],
    ["note", "text"], ["ratio", "number"], ["count", "integer"],
  ]);
  assert.deepEqual(rows.find((r) => r.key === "queue_mode").options, ["off", "no_collector", "all"],
                   "queue_mode is a choice, not free text");
  assert.equal(rows.find((r) => r.key === "api_token").configured, true);
  assert.equal(rows.find((r) => r.key === "api_token").value, null, "the token is never shown");
  assert.equal(rows.find((r) => r.key === "future_flag").label, "Future flag");
});

test("setting values are checked against the model's bounds", () => {
  const rows = Object.fromEntries(settingRows({ worker_timeout: 1, heartbeat_interval: 1, max_retries: 1,
                                                scheduling_mode: "static", skip_offline_workers: false }, {}, FORM)
    .map((r) => [r.key, r]));
  assert.deepEqual(parseSetting(rows.worker_timeout, " 300 "), { value: 300 });
  assert.match(parseSetting(rows.worker_timeout, "0").error, /more than 0/);
  assert.match(parseSetting(rows.worker_timeout, "abc").error, /number/);
  assert.deepEqual(parseSetting(rows.heartbeat_interval, "0.1"), { value: 0.1 });
  assert.match(parseSetting(rows.heartbeat_interval, "0.05").error, /at least 0.1/);
  assert.match(parseSetting(rows.max_retries, "1.5").error, /whole number/);
  assert.match(parseSetting(rows.max_retries, "11").error, /at most 10/);
  assert.deepEqual(parseSetting(rows.scheduling_mode, "dynamic"), { value: "dynamic" });
  assert.match(parseSetting(rows.scheduling_mode, "fast").error, /static, weighted, dynamic/);
  assert.deepEqual(parseSetting(rows.skip_offline_workers, true), { value: true });
  assert.match(parseSetting(rows.api_token, "short").error, /16 to 256/);
  assert.deepEqual(parseSetting(rows.api_token, "a-long-enough-token-1"), { value: "a-long-enough-token-1" });
  assert.match(parseSetting({ kind: "json", label: "Mystery" }, "{}").error, /gpu_config.json/);
});

test("the worker form checks a field as the config model does (rules from multigpu_contract.js)", () => {
  const form = { id: "", name: "GPU", host: "", port: "8190", cuda_device: "2048", extra_args: "" };
  assert.deepEqual(validateWorker(form).errors, {}, "the config has no upper bound on cuda_device, nor has the form");
  assert.equal(WORKER_RULES.cuda_device.max, null);
  const bad = validateWorker({ ...form, cuda_device: "-1", port: String(WORKER_RULES.port.max + 1),
                               name: "x".repeat(WORKER_RULES.name.max_length + 1) }).errors;
  assert.equal(bad.cuda_device, "CUDA device must be 0 or more");
  assert.equal(bad.port, "Port must be between 1 and 65535");
  assert.ok(bad.name.includes(`at most ${WORKER_RULES.name.max_length} characters`));
});
