// The panel handles every multigpu.* event the master sends (names from web/multigpu_events.js, which a Python
// test keeps equal to comfy_distributed/events.py), and a notice reaches the user as a toast.
import { test } from "node:test";
import assert from "node:assert/strict";

import { EVENTS } from "../../web/multigpu_events.js";
import { listen } from "../../web/multigpu_listen.js";

function fakeApi() {
  const handlers = new Map();
  return {
    handlers,
    addEventListener(name, handler) {
      if (!handlers.has(name)) handlers.set(name, []);
      handlers.get(name).push(handler);
    },
    emit(name, detail) {
      for (const handler of handlers.get(name) || []) handler({ detail });
    },
  };
}

function setUp() {
  const api = fakeApi();
  const dispatched = [];
  const toasts = [];
  const store = { state: { config: null }, dispatch: (action) => dispatched.push(action) };
  const asked = [];
  const actions = { refresh() {}, refreshConfig() {},
                    async logs(id, lines, options) { asked.push({ id, lines, options }); return id === 2 ? ["boom", "Traceback"] : null; } };
  const names = listen(api, store, actions, (severity, summary, detail) => toasts.push({ severity, summary, detail }));
  return { api, dispatched, toasts, names, asked };
}

test("every event the master sends has a listener, and only known multigpu names are heard", () => {
  const { names } = setUp();
  for (const name of Object.values(EVENTS)) assert.ok(names.has(name), `no listener for ${name}`);
  const ours = [...names].filter((name) => name.startsWith("multigpu."));
  assert.deepEqual(ours.filter((name) => !Object.values(EVENTS).includes(name)), []);
});

test("a notice becomes an info toast with the master's message", () => {
  const { api, toasts } = setUp();
  api.emit(EVENTS.NOTICE, { job_id: null, message: "Multi-GPU: the Collector's batch is not a literal: runs static" });
  assert.deepEqual(toasts, [{ severity: "info", summary: "Multi-GPU",
                              detail: "Multi-GPU: the Collector's batch is not a literal: runs static" }]);
});

test("a failure toast says whether the unit is re-run", () => {
  const { api, toasts, dispatched } = setUp();
  api.emit(EVENTS.WORKER_FAILED, { worker_id: 2, message: "Worker GPU 2: offline", rerun: true });
  api.emit(EVENTS.WORKER_FAILED, { worker_id: 2, message: "Worker GPU 2: no retry left", rerun: false });
  assert.deepEqual(toasts.map((t) => t.severity), ["warn", "error"]);
  assert.equal(dispatched.filter((a) => a.type === "worker_failed").length, 2);
});

test("a launched worker that goes offline shows the last lines of its log in a toast", async () => {
  const { api, toasts, asked } = setUp();
  api.emit(EVENTS.WORKER_STATUS, { id: 2, name: "GPU 2", status: "offline", previous: "busy", error: "refused" });
  api.emit(EVENTS.WORKER_STATUS, { id: 3, name: "GPU 3", status: "offline", previous: "launching" });  // no log
  api.emit(EVENTS.WORKER_STATUS, { id: 2, name: "GPU 2", status: "offline", previous: "offline" });  // no change
  api.emit(EVENTS.WORKER_STATUS, { id: 2, name: "GPU 2", status: "idle", previous: "offline" });
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(asked.map((a) => [a.id, a.options.quiet]), [[2, true], [3, true]]);
  assert.equal(toasts.length, 1);
  assert.equal(toasts[0].summary, "Multi-GPU: GPU 2 went offline");
  assert.equal(toasts[0].detail, "refused\nLast lines of its log:\nboom\nTraceback");
});
