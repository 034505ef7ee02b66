// The panel handles every multigpu.* event the master sends (names from web/multigpu_contract.js, which a Python
// test keeps equal to comfy_distributed/events.py), and a notice reaches the user as a toast.
import { test } from "node:test";
import assert from "node:assert/strict";

import { EVENTS } from "../../web/multigpu_contract.js";
import { keepRegistered, listen } from "../../web/multigpu_listen.js";

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

function fakeTimers() {
  const pending = new Map();
  let next = 1;
  return {
    pending,
    setTimeout(fn, ms) { pending.set(next, { fn, ms }); return next++; },
    clearTimeout(id) { pending.delete(id); },
    async fire() {
      const [id, { fn }] = [...pending.entries()].at(-1);
      pending.delete(id);
      await fn();
    },
  };
}

test("the page stays registered for the master's events under its socket's client id, previews while asked", async () => {
  const api = fakeApi();
  const timers = fakeTimers();
  const doc = { visibilityState: "visible", addEventListener(name, handler) { this.handler = handler; } };
  const asked = [];
  const actions = { async watchEvents(clientId, on, previews) { asked.push([clientId, on, previews]);
                                                               return { on, previews, expires_in: 30 }; } };
  let wanted = false;
  const renew = keepRegistered(api, actions, () => wanted, doc, timers);
  await Promise.resolve();
  assert.deepEqual(asked, []);  // no socket yet: no client id to register, tried again in a second
  assert.equal([...timers.pending.values()].at(-1).ms, 1000);
  api.clientId = "sid-1";
  await timers.fire();
  assert.deepEqual(asked, [["sid-1", true, false]]);
  assert.equal([...timers.pending.values()].at(-1).ms, 10000);  // a third of the 30 s the master gave
  wanted = true;
  await renew();
  assert.deepEqual(asked.at(-1), ["sid-1", true, true]);
  assert.equal(timers.pending.size, 1, "one renewal waits, never two");
  api.clientId = "sid-2";  // a new socket after a reconnect
  api.emit("reconnected");
  await Promise.resolve();
  assert.deepEqual(asked.at(-1), ["sid-2", true, true]);
  doc.visibilityState = "hidden";
  await timers.fire();
  assert.deepEqual(asked.at(-1), ["sid-2", true, false], "no previews for a hidden page");
});
