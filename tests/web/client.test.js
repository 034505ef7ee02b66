// The API client and the actions behind the panel's buttons, with a fake fetch and a fake store.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createActions } from "../../web/multigpu_actions.js";
import {
  ApiRequestError, TOKEN_STORAGE_KEY, createClient, describeClearMemory, describeLaunch,
} from "../../web/multigpu_client.js";
import { createStore, initialState, reduce, tokenPrompt } from "../../web/multigpu_state.js";

function memoryStorage(initial = {}) {
  const items = new Map(Object.entries(initial));
  return {
    getItem: (k) => (items.has(k) ? items.get(k) : null),
    setItem: (k, v) => items.set(k, String(v)),
    removeItem: (k) => items.delete(k),
  };
}

/** A fetch that answers from `routes` ("METHOD path" -> [status, body or text]) and records the requests. */
function fakeFetch(routes) {
  const calls = [];
  const fetchApi = async (path, options) => {
    calls.push({ path, method: options.method, headers: options.headers,
                 body: options.body === undefined ? undefined : JSON.parse(options.body) });
    const route = routes[`${options.method} ${path}`];
    if (route instanceof Error) throw route;
    const [status, body] = route || [404, "404: Not Found"];
    const text = typeof body === "string" ? body : JSON.stringify(body);
    return { ok: status >= 200 && status < 300, status, text: async () => text };
  };
  return { fetchApi, calls };
}

test("requests carry JSON and the stored token as a Bearer header on /multigpu routes", async () => {
  const { fetchApi, calls } = fakeFetch({
    "POST /multigpu/config/update_worker": [200, { worker: { id: 1 } }],
    "GET /system_stats": [200, { devices: [] }],
  });
  const client = createClient(fetchApi, memoryStorage({ [TOKEN_STORAGE_KEY]: "secret-token-0123456789" }));
  assert.deepEqual(await client.updateWorker({ worker_id: 1, enabled: false }), { worker: { id: 1 } });
  await client.masterStats();
  assert.deepEqual(calls[0], {
    path: "/multigpu/config/update_worker", method: "POST",
    headers: { "Content-Type": "application/json", Authorization: "Bearer secret-token-0123456789" },
    body: { worker_id: 1, enabled: false },
  });
  assert.deepEqual(calls[1].headers, {}, "ComfyUI's own routes get no token");
});

test("the token is saved, replaced and forgotten in storage", () => {
  const storage = memoryStorage();
  const client = createClient(fakeFetch({}).fetchApi, storage);
  assert.equal(client.hasToken(), false);
  client.setToken("abc");
  assert.equal(storage.getItem(TOKEN_STORAGE_KEY), "abc");
  client.setToken("");
  assert.equal(client.hasToken(), false);
});

test("refusals become ApiRequestError with the master's message; a missing route is told apart", async () => {
  const { fetchApi } = fakeFetch({
    "POST /multigpu/config/remove_worker": [404, { error: "no worker with id 9" }],
    "POST /multigpu/config/update_setting": [401, { error: "missing or wrong token" }],
  });
  const client = createClient(fetchApi, memoryStorage());
  await assert.rejects(client.removeWorker(9), (error) => {
    assert.ok(error instanceof ApiRequestError);
    assert.equal(error.message, "no worker with id 9");
    assert.equal(error.routeMissing, false);
    return true;
  });
  await assert.rejects(client.restartWorker(1), (error) => error.routeMissing
    && /workers\/restart is not available on this master/.test(error.message));
  const viaApi = createClient(fakeFetch({ "POST /multigpu/workers/launch": [405, "405: Method Not Allowed"] }).fetchApi,
                              memoryStorage());
  await assert.rejects(viaApi.launchWorkers([1]), (error) => error.routeMissing && error.status === 405);
  await assert.rejects(client.updateSetting("worker_timeout", 5), { status: 401, message: "missing or wrong token" });
});

test("a 401 keeps whether the master has a token at all", async () => {
  const answer = (body) => createClient(fakeFetch({ "GET /multigpu/config": [401, body] }).fetchApi, memoryStorage())
    .getConfig().catch((error) => error);
  assert.equal((await answer({ error: "none yet", token_configured: false })).tokenConfigured, false);
  assert.equal((await answer({ error: "wrong", token_configured: true })).tokenConfigured, true);
  assert.equal((await answer({ error: "refused" })).tokenConfigured, null);
  assert.equal((await answer("401: Unauthorized")).tokenConfigured, null);
});

test("a network failure is an ApiRequestError with status 0", async () => {
  const { fetchApi } = fakeFetch({ "GET /multigpu/config": new TypeError("Failed to fetch") });
  await assert.rejects(createClient(fetchApi, memoryStorage()).getConfig(),
                       { status: 0, message: "the master does not answer (Failed to fetch)" });
});

test("clear_memory answers become one line", () => {
  assert.deepEqual(describeClearMemory({ master: { ok: true }, workers: [{ ok: true, name: "GPU 1" }] }),
                   { severity: "success", text: "VRAM cleared on 2 instances" });
  assert.deepEqual(describeClearMemory({ master: null, workers: [{ ok: false, name: "GPU 2", error: "refused" }] }),
                   { severity: "error", text: "VRAM not cleared on GPU 2: refused" });
});

function setup(routes) {
  const { fetchApi, calls } = fakeFetch(routes);
  const storage = memoryStorage();
  const client = createClient(fetchApi, storage);
  const store = createStore(reduce, initialState());
  const toasts = [];
  const actions = createActions(store, client, (severity, summary, detail) => toasts.push({ severity, summary, detail }));
  return { actions, store, calls, toasts, client, storage };
}

const CONFIG = { master: {}, workers: [{ id: 1, name: "GPU 1", port: 8189, enabled: true }], settings: { health_ttl: 6 },
                 auth: { token_required: false, token_configured: false } };

test("refresh loads the config then the status and the master's stats", async () => {
  const { actions, store } = setup({
    "GET /multigpu/config": [200, CONFIG],
    "GET /multigpu/status": [200, { master: { status: "online" }, workers: [{ id: 1, status: "idle" }], jobs: [] }],
    "GET /system_stats": [200, { devices: [{ name: "cpu", vram_total: 1, vram_free: 1 }] }],
  });
  await actions.refresh();
  assert.equal(store.state.workers["1"].status, "idle");
  assert.equal(store.state.master.device, "cpu");
  assert.equal(store.state.error, null);
});

test("an unreachable master shows in the banner, not as a toast", async () => {
  const { actions, store, toasts } = setup({ "GET /multigpu/config": [409, { error: "the configuration file is invalid" }] });
  await actions.refresh();
  assert.equal(store.state.error, "Multi-GPU configuration: the configuration file is invalid");
  assert.deepEqual(toasts, []);
});

test("a public master that refuses reads asks for the token, and the saved token reloads the panel", async () => {
  const { actions, store, calls } = setup({ "GET /multigpu/config": [401, { error: "the /multigpu routes need a token" }] });
  await actions.refresh();
  assert.equal(store.state.auth.rejected, "the /multigpu routes need a token");
  const before = calls.length;
  await actions.saveToken("token-0123456789abcdef");
  assert.equal(store.state.auth.rejected, "the /multigpu routes need a token");  // refused again by the fake
  assert.ok(calls.length > before, "saving the token asks the master again");
});

test("a 401's token_configured reaches the token prompt, from reads and from changes", async () => {
  const none = setup({ "GET /multigpu/config": [401, { error: "none configured yet", token_configured: false }] });
  await none.actions.refresh();
  assert.equal(none.store.state.auth.configured, false);
  assert.match(tokenPrompt(none.store.state.auth, none.client.hasToken()), /^No API token is configured/);

  const wrong = setup({ "POST /multigpu/config/update_setting": [401, { error: "wrong", token_configured: true }] });
  assert.deepEqual(await wrong.actions.saveSetting("health_ttl", 5), { ok: false, error: "wrong" });
  assert.equal(wrong.store.state.auth.configured, true);
  assert.match(tokenPrompt(wrong.store.state.auth, true), /missing or wrong/);
});

test("where GET /multigpu/config is ComfyUI's own 404 the panel turns passive and asks nothing more", async () => {
  const routes = { "GET /multigpu/config": [404, "404: Not Found"] };
  const { actions, store, calls, toasts } = setup(routes);
  await actions.refresh();
  assert.equal(store.state.passive, true);
  assert.equal(store.state.error, null);
  await actions.refreshStatus();  // the panel's poll
  assert.deepEqual(calls.map((c) => c.path), ["/multigpu/config"]);
  assert.deepEqual(toasts, []);

  routes["GET /multigpu/config"] = [200, CONFIG];  // restarted as a master: a reconnect refreshes
  routes["GET /multigpu/status"] = [200, { workers: [], jobs: [] }];
  await actions.refresh();
  assert.equal(store.state.passive, false);
  assert.ok(calls.some((c) => c.path === "/multigpu/status"));

  const unknownWorker = setup({ "GET /multigpu/config": [404, { error: "not found" }] });
  await unknownWorker.actions.refresh();
  assert.equal(unknownWorker.store.state.passive, false, "a JSON 404 is the extension's own refusal");
});

test("toggling a worker updates the config; a 401 asks for the token", async () => {
  const { actions, store, toasts } = setup({
    "GET /multigpu/config": [200, CONFIG],
    "POST /multigpu/config/update_worker": [200, { worker: { ...CONFIG.workers[0], enabled: false } }],
  });
  await actions.refreshConfig();
  assert.equal(await actions.setEnabled(1, false), true);
  assert.equal(store.state.config.workers[0].enabled, false);

  const refused = setup({ "POST /multigpu/config/update_worker": [401, { error: "missing or wrong token" }] });
  assert.equal(await refused.actions.setEnabled(1, false), false);
  assert.equal(refused.store.state.auth.rejected, "missing or wrong token");
  assert.equal(refused.toasts[0].severity, "error");
  refused.actions.saveToken("  new-token-0123456789 ");
  assert.equal(refused.store.state.auth.rejected, null);
  assert.equal(refused.storage.getItem(TOKEN_STORAGE_KEY), "new-token-0123456789");
  assert.ok(toasts.length === 0);
});

test("clear VRAM reports each instance's outcome", async () => {
  const { actions, calls, toasts } = setup({
    "POST /multigpu/clear_memory": [200, { master: null, workers: [{ worker_id: 1, name: "GPU 1", ok: true }] }],
  });
  await actions.clearMemory({ worker_ids: [1], master: false }, "GPU 1");
  assert.deepEqual(calls[0].body, { worker_ids: [1], master: false });
  assert.deepEqual(toasts, [{ severity: "success", summary: "Clear VRAM", detail: "VRAM cleared on 1 instance" }]);
});

test("launch answers become one line", () => {
  const started = { worker_id: 1, name: "GPU 1", action: "started", ok: true, pid: 10, error: null };
  const running = { worker_id: 2, name: "GPU 2", action: "running", ok: true, pid: null, error: null };
  const failed = { worker_id: 3, name: "GPU 3", action: "failed", ok: false, error: "port 8190 is taken" };
  assert.deepEqual(describeLaunch({ workers: [started, running] }),
                   { severity: "success", text: "Launching GPU 1; already running: GPU 2" });
  assert.deepEqual(describeLaunch({ workers: [failed] }),
                   { severity: "error", text: "Could not launch GPU 3: port 8190 is taken" });
  assert.deepEqual(describeLaunch({ workers: [running] }), { severity: "info", text: "Already running: GPU 2" });
});

test("launch and restart call the launcher routes; a missing route says so", async () => {
  const { actions, calls, toasts } = setup({ "POST /multigpu/workers/launch": [200, { workers: [
    { worker_id: 1, name: "GPU 1", action: "started", ok: true, pid: 10, error: null }] }] });
  await actions.launch([1]);
  assert.deepEqual(calls[0].body, { worker_ids: [1] });
  assert.deepEqual(toasts[0], { severity: "success", summary: "Launch workers", detail: "Launching GPU 1" });
  await actions.launch([]);
  assert.equal(toasts[1].detail, "Every enabled worker is already running");
  await actions.restart(1, "GPU 1");
  assert.match(toasts[2].detail, /workers\/restart is not available/);
});

test("the page's registration for the events goes to POST /multigpu/events; a refusal or a missing route is quiet",
     async () => {
  const answer = { on: true, previews: true, expires_in: 30 };
  const { actions, calls, toasts } = setup({ "POST /multigpu/events": [200, answer] });
  assert.deepEqual(await actions.watchEvents("abc123", true, true), answer);
  assert.deepEqual(calls.at(-1), { path: "/multigpu/events", method: "POST",
                                   headers: { "Content-Type": "application/json" },
                                   body: { client_id: "abc123", on: true, previews: true } });
  const older = setup({});
  assert.equal(await older.actions.watchEvents("abc123", false, false), null);
  assert.deepEqual([...toasts, ...older.toasts], []);
});

test("saving a worker returns the master's refusal for the form", async () => {
  const { actions, store } = setup({
    "GET /multigpu/config": [200, CONFIG],
    "POST /multigpu/config/add_worker": [400, { error: "gpu_config.json: workers[1].port: too big" }],
  });
  await actions.refreshConfig();
  assert.deepEqual(await actions.saveWorker({ port: 1 }, null),
                   { ok: false, error: "gpu_config.json: workers[1].port: too big" });
  assert.equal(store.state.config.workers.length, 1);
});

test("setting the API token also keeps it in this browser", async () => {
  const { actions, store, storage } = setup({
    "GET /multigpu/config": [200, { ...CONFIG, auth: { token_required: true, token_configured: true } }],
    "POST /multigpu/config/update_setting": [200, { settings: { health_ttl: 6 } }],
  });
  assert.deepEqual(await actions.saveSetting("api_token", "fresh-token-0123456789"), { ok: true });
  assert.equal(storage.getItem(TOKEN_STORAGE_KEY), "fresh-token-0123456789");
  assert.equal(store.state.auth.configured, true);
});

test("every client method asks for a route and method that the master's OpenAPI document has", async () => {
  const { readFileSync } = await import("node:fs");
  const doc = JSON.parse(readFileSync(new URL("../../comfy_distributed/api/openapi.json", import.meta.url), "utf8"));
  const { fetchApi, calls } = fakeFetch({});
  const client = createClient(fetchApi, memoryStorage());
  const methods = Object.entries(client).filter(([name, value]) => typeof value === "function"
    && !["setToken", "token", "hasToken"].includes(name));
  for (const [name, method] of methods) {
    await method.call(client, 1, true, false).catch(() => null);
    const call = calls.at(-1);
    assert.ok(call, `${name} sent no request`);
    if (!call.path.startsWith("/multigpu/")) continue;  // ComfyUI's own routes (/system_stats) are not ours
    const operation = (doc.paths[call.path] || {})[call.method.toLowerCase()];
    assert.ok(operation, `${name}: ${call.method} ${call.path} is not in openapi.json`);
  }
  assert.ok(methods.length >= 12, `the client's methods: ${methods.map(([n]) => n)}`);
});
