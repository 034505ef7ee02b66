// The panel's state: events and API answers in, view models out.
import assert from "node:assert/strict";
import { test } from "node:test";

import { TOKEN_COMMAND, TOKEN_COMMAND_WINDOWS } from "../../web/multigpu_contract.js";
import {
  PASSIVE_MESSAGE, activeJobs, createStore, formatAddress, formatBytes,
  clusterLine, formatDuration, initialState, launchableIds, masterCard, memoryLabel, pollIntervalMs,
  renewMs,
  previewSource, readValueNode, reduce, summary, tokenPrompt,
  valueLines, vramUsage, workerAddress, workerCards, workerProgress,
} from "../../web/multigpu_state.js";

const GIB = 1024 ** 3;
const CONFIG = {
  master: { port: 8188, cuda_device: 0, extra_args: "" },
  workers: [
    { id: 1, name: "GPU 1", port: 8189, cuda_device: 1, enabled: true, host: null, extra_args: "" },
    { id: "box", name: "", port: 8190, cuda_device: null, enabled: false, host: "10.0.0.2", extra_args: "" },
  ],
  settings: { health_ttl: 6, worker_timeout: 600 },
  auth: { token_configured: false, token_required: true },
};

function run(...actions) {
  return actions.reduce(reduce, initialState());
}

test("config sets the workers and whether a token is required", () => {
  const state = run({ type: "config", data: CONFIG });
  assert.equal(state.auth.required, true);
  const cards = workerCards(state);
  assert.deepEqual(cards.map((c) => [c.id, c.name, c.address, c.cuda, c.status]), [
    [1, "GPU 1", "127.0.0.1:8189", "CUDA 1", "offline"],
    ["box", "Worker box", "10.0.0.2:8190", null, "disabled"],
  ]);
});

test("status answers and status events update a worker's card", () => {
  let state = run(
    { type: "config", data: CONFIG },
    { type: "status", data: { workers: [{ id: 1, status: "idle", vram_total: 8 * GIB, vram_free: 6 * GIB,
                                          address: "http://127.0.0.1:8189", device: "cuda:0 RTX" }], jobs: [] } },
  );
  let [card] = workerCards(state);
  assert.equal(card.status, "idle");
  assert.deepEqual(card.vram, { text: "2.0 GB / 8.0 GB", fraction: 0.25 });
  assert.equal(card.device, "cuda:0 RTX");
  assert.equal(card.canClear, true);
  assert.equal(card.canLaunch, false);

  state = reduce(state, { type: "worker_status", data: { id: 1, status: "offline", previous: "idle",
                                                         error: "connection refused" } });
  [card] = workerCards(state);
  assert.equal(card.status, "offline");
  assert.equal(card.detail, "connection refused");
  assert.equal(card.vram, null, "an offline worker's last VRAM figures are not shown as current");
  assert.equal(card.canClear, false);
  assert.equal(card.canLaunch, true);
  assert.deepEqual(launchableIds(state), [1]);
});

test("a status answer requested before a status event does not undo the event", () => {
  let state = run({ type: "config", data: CONFIG }, { type: "worker_status", data: { id: 1, status: "idle" } });
  const since = state.seq;
  state = reduce(state, { type: "worker_status", data: { id: 1, status: "launching" } });
  const stale = { workers: [{ id: 1, status: "idle", vram_total: 1 }], jobs: [] };
  state = reduce(state, { type: "status", data: stale, since });
  assert.equal(workerCards(state)[0].status, "launching");
  state = reduce(state, { type: "status", data: stale, since: state.seq });
  assert.equal(workerCards(state)[0].status, "idle", "an answer requested after the event is newer");
});

test("a worker disabled in the config shows disabled whatever its last health said", () => {
  const state = run(
    { type: "config", data: CONFIG },
    { type: "worker_status", data: { id: "box", status: "idle" } },
  );
  assert.equal(workerCards(state)[1].status, "disabled");
  assert.equal(workerCards(state)[1].canRestart, false);
});

test("a health entry that still says disabled after enabling shows offline until the next beat", () => {
  const enabled = { ...CONFIG.workers[1], enabled: true };
  const state = run(
    { type: "config", data: CONFIG },
    { type: "worker_status", data: { id: "box", status: "disabled" } },
    { type: "worker_saved", data: { worker: enabled } },
  );
  assert.equal(workerCards(state)[1].status, "offline");
});

test("job progress is shown on the card of the worker running the unit, matched by id or by name", () => {
  const progress = {
    job_id: "job-1", progress: 0.3,
    units: [
      { position: 1, state: "running", worker: "GPU 1", progress: 0.6 },
      { position: 2, state: "running", worker: "other", worker_id: "box", progress: 0.1 },
    ],
  };
  const state = run({ type: "config", data: CONFIG }, { type: "job_progress", data: progress });
  assert.equal(workerCards(state)[0].progress, null, "not shown while the worker counts as offline");
  const online = reduce(state, { type: "worker_status", data: { id: 1, status: "busy" } });
  assert.equal(workerCards(online)[0].progress.text, "unit 1 · 60%");
  assert.deepEqual(workerProgress(CONFIG.workers[0], state.jobs),
                   { jobId: "job-1", fraction: 0.6, state: "running", text: "unit 1 · 60%" });
  assert.equal(workerProgress(CONFIG.workers[1], state.jobs).fraction, 0.1);
  assert.equal(workerCards(state)[1].progress, null, "a disabled worker's card shows no job");
  assert.deepEqual(activeJobs(state), [{ jobId: "job-1", short: "job-1", fraction: 0.3, text: "2 unit(s) · 30%" }]);
});

test("a running unit wins over a finished one; job_done clears the job and its failures", () => {
  let state = run(
    { type: "config", data: CONFIG },
    { type: "worker_status", data: { id: 1, status: "busy" } },
    { type: "job_progress", data: { job_id: "a", progress: 1, units: [{ position: 1, state: "done", worker: "GPU 1" }] } },
    { type: "job_progress", data: { job_id: "b", progress: 0, units: [{ position: 3, state: "running", worker: "GPU 1",
                                                                        progress: 0.25 }] } },
  );
  assert.equal(workerCards(state)[0].progress.text, "unit 3 · 25%");
  state = reduce(state, { type: "worker_failed",
                          data: { job_id: "b", worker_id: 1, message: "Worker GPU 1: refused", rerun: true } });
  assert.equal(workerCards(state)[0].failure, "Worker GPU 1: refused");
  assert.equal(workerCards(state)[0].progress, null, "a failed worker's unit is shown as failed, not as its job");
  state = reduce(state, { type: "job_done", data: { job_id: "b", units_missing: [] } });
  assert.equal(workerCards(state)[0].progress.text, "unit 1 · done");
  assert.equal(workerCards(state)[0].failure, null);
  state = reduce(state, { type: "job_done", data: { job_id: "a" } });
  assert.equal(workerCards(state)[0].progress, null);
  assert.deepEqual(state.lastJob, { job_id: "a" });
});

test("jobs listed by GET /multigpu/status are shown with the master's own progress; settled jobs are left out", () => {
  const state = run({ type: "config", data: CONFIG }, {
    type: "status",
    data: { workers: [], jobs: [
      { job_id: "j", settled: false, progress: 0.75,
        units: [{ position: 1, state: "done", worker_id: 1, worker: "GPU 1", progress: 1 },
                { position: 2, state: "running", worker_id: "box", worker: "Box", progress: 0.5 }] },
      { job_id: "old", settled: true, progress: 1, units: [] },
    ] },
  });
  assert.deepEqual(Object.keys(state.jobs), ["j"]);
  assert.equal(state.jobs.j.progress, 0.75, "the master's figure, not one derived here");
  assert.deepEqual(state.jobs.j.units.map((u) => [u.worker, u.progress]), [["GPU 1", 1], ["Box", 0.5]]);
});

test("the master card follows ComfyUI's own queue and progress events", () => {
  let state = run(
    { type: "config", data: CONFIG },
    { type: "master_stats", data: { devices: [{ name: "cpu", vram_total: 4 * GIB, vram_free: 3 * GIB }] } },
    { type: "master_queue", data: { exec_info: { queue_remaining: 1 } } },
  );
  let card = masterCard(state, "127.0.0.1:8188");
  assert.equal(card.status, "busy");
  assert.equal(card.vram.text, "1.0 GB / 4.0 GB");
  state = reduce(state, { type: "master_progress", data: { value: 3, max: 10 } });
  card = masterCard(state, "h:1");
  assert.deepEqual(card.progress, { fraction: 0.3, text: "step 3/10" });
  state = reduce(state, { type: "master_executing", node: "5" });
  assert.notEqual(masterCard(state).progress, null);
  state = reduce(state, { type: "master_executing", node: null });
  state = reduce(state, { type: "master_queue", data: { exec_info: { queue_remaining: 0 } } });
  card = masterCard(state);
  assert.equal(card.progress, null);
  assert.equal(card.status, "idle");
  assert.equal(card.address, "127.0.0.1:8188");
});

test("removing and saving workers edit the config in the state", () => {
  let state = run({ type: "config", data: CONFIG }, { type: "worker_status", data: { id: 1, status: "idle" } });
  state = reduce(state, { type: "worker_removed", data: { id: 1 } });
  assert.deepEqual(workerCards(state).map((c) => c.id), ["box"]);
  assert.equal(state.workers["1"], undefined);
  state = reduce(state, { type: "worker_saved", data: { worker: { id: 7, port: 9000, enabled: true } } });
  assert.deepEqual(workerCards(state).map((c) => c.id), ["box", 7]);
});

test("auth: a refused token is remembered until a new one is saved", () => {
  let state = run({ type: "auth_rejected", message: "missing or wrong token" });
  assert.equal(state.auth.rejected, "missing or wrong token");
  state = reduce(state, { type: "token_saved" });
  assert.equal(state.auth.rejected, null);
});

test("the token prompt tells how to create a token where there is none, and that it is wrong where there is", () => {
  const refused = (configured) => run({ type: "auth_rejected", message: "the master's words", configured }).auth;
  const none = tokenPrompt(refused(false), false);
  assert.match(none, /^No API token is configured on this master yet/);
  assert.ok(none.includes(`in ComfyUI's folder run ${TOKEN_COMMAND} (Windows: ${TOKEN_COMMAND_WINDOWS})`));
  assert.match(none, /paste the token it prints/);
  const wrong = tokenPrompt(refused(true), true);
  assert.match(wrong, /^This master has an API token, and the one this browser has is missing or wrong/);
  assert.ok(wrong.includes(TOKEN_COMMAND));
  assert.equal(tokenPrompt(refused(undefined), true), "The master refused the token: the master's words",
               "a 401 that does not say keeps the neutral text");
  assert.equal(tokenPrompt(initialState().auth, false), null);
  assert.equal(tokenPrompt({ required: true, configured: null, rejected: null }, false),
               "This master needs its API token for changes. It is kept in this browser only.");
  assert.equal(tokenPrompt({ required: true, configured: true, rejected: null }, true), null, "a token is stored");
  assert.match(tokenPrompt({ required: true, configured: true, rejected: null }, false), /missing or wrong/);
});

test("what the master says about its token is kept: config, status, then a 401 that says, and one that does not", () => {
  let state = run({ type: "config", data: { ...CONFIG, auth: { token_required: true, token_configured: true } } });
  assert.equal(state.auth.configured, true);
  state = reduce(state, { type: "auth_rejected", message: "no token yet", configured: false });
  assert.equal(state.auth.configured, false);
  state = reduce(state, { type: "auth_rejected", message: "refused", configured: null });
  assert.equal(state.auth.configured, false, "a 401 without token_configured changes nothing");
  state = reduce(state, { type: "status", data: { master: { token_required: true, token_configured: true } } });
  assert.equal(state.auth.configured, true);
  assert.equal(run({ type: "config", data: { ...CONFIG, auth: undefined } }).auth.configured, null,
               "a master that does not say leaves it unknown");
});

test("a CPU instance's memory meter says RAM, a GPU's says VRAM", () => {
  for (const [name, type] of [["cpu", "cpu"], ["CPU", undefined], ["cpu (12 threads)", null], [null, "cpu"]]) {
    assert.equal(memoryLabel(name, type), "RAM", `${name} / ${type}`);
  }
  for (const [name, type] of [["cuda:0 NVIDIA H200 : cudaMallocAsync", "cuda"], ["mps", "mps"], [null, null],
                              ["xpu:0 Intel Arc", "xpu"], [{ name: "cpu" }, 3]]) {
    assert.equal(memoryLabel(name, type), "VRAM", `${name} / ${type}`);
  }
  const state = run(
    { type: "config", data: CONFIG },
    { type: "status", data: { workers: [{ id: 1, status: "idle", device: "cpu", vram_total: 8 * GIB, vram_free: GIB },
                                        { id: "box", status: "idle", device: "cuda:0 RTX" }], jobs: [] } },
    { type: "master_stats", data: { devices: [{ name: "CPU", type: "cpu", vram_total: GIB, vram_free: GIB }] } },
  );
  assert.deepEqual(workerCards(state).map((card) => card.vramLabel), ["RAM", "VRAM"]);
  assert.equal(masterCard(state).vramLabel, "RAM");
  const gpu = reduce(state, { type: "master_stats", data: { devices: [{ name: "cuda:0 RTX", type: "cuda" }] } });
  assert.equal(masterCard(gpu).vramLabel, "VRAM");
  assert.equal(masterCard(initialState()).vramLabel, "VRAM", "before the master's stats arrive");
});

test("an instance without the /multigpu routes is passive until a master's config arrives", () => {
  let state = run({ type: "error", message: "down" }, { type: "passive" });
  assert.equal(state.passive, true);
  assert.equal(state.error, null, "no error banner: the message says what this instance is");
  assert.match(PASSIVE_MESSAGE, /^This ComfyUI is not a Multi-GPU master: the extension is passive here/);
  assert.equal(reduce(state, { type: "passive" }).passive, true);
  state = reduce(state, { type: "config", data: CONFIG });
  assert.equal(state.passive, false);
  assert.equal(initialState().passive, false);
});

test("unknown actions and events without ids leave the state unchanged", () => {
  const state = initialState();
  assert.equal(reduce(state, { type: "nope" }), state);
  assert.equal(reduce(state, { type: "worker_status", data: {} }), state);
  assert.equal(reduce(state, { type: "job_progress", data: {} }), state);
  assert.equal(reduce(state, { type: "master_progress", data: { value: 1, max: 0 } }), state);
});

test("formatting", () => {
  assert.equal(formatBytes(1.5 * GIB), "1.5 GB");
  assert.equal(formatBytes(null), "—");
  assert.equal(vramUsage(0, 0), null);
  assert.deepEqual(vramUsage(4 * GIB, null), { text: "? / 4.0 GB", fraction: 0 });
  assert.equal(formatAddress("http://127.0.0.1:8189"), "127.0.0.1:8189");
  assert.equal(formatAddress("https://gpu.example.com/comfy"), "https://gpu.example.com/comfy");
  assert.equal(workerAddress({ host: "::1", port: 5 }), "http://[::1]:5");
  assert.equal(workerAddress({ host: "https://x.example/", port: 5 }), "https://x.example");
  assert.equal(summary(run({ type: "config", data: CONFIG })), "2 workers: 1 offline, 1 disabled");
  assert.equal(summary(run({ type: "config", data: { ...CONFIG, workers: [] } })), "No workers configured");
});

test("polling is never faster than the health TTL (nor than 2 s)", () => {
  assert.equal(pollIntervalMs({ health_ttl: 6 }), 6000);
  assert.equal(pollIntervalMs({ health_ttl: 0.5 }), 2000);
  assert.equal(pollIntervalMs(undefined), 6000);
});

test("the store notifies subscribers only on a change", () => {
  const store = createStore(reduce, initialState());
  const seen = [];
  const stop = store.subscribe((state, action) => seen.push(action.type));
  store.dispatch({ type: "nope" });
  store.dispatch({ type: "error", message: "down" });
  stop();
  store.dispatch({ type: "error", message: "still down" });
  assert.deepEqual(seen, ["error"]);
  assert.equal(store.state.error, "still down");
});

test("each card shows what the open workflow's Value nodes give that participant", () => {
  const cfg = readValueNode(12, "Multi-GPU Value", [{ name: "default", value: "7" }, { name: "values", value: '{"1": 5.5}' }],
                            "cfg");
  const text = readValueNode(13, "Style", [{ name: "default", value: "oil" }, { name: "values", value: "{broken" }], null);
  assert.deepEqual(cfg, { id: "12", label: "Value 12 (cfg)", default: "7", values: { 1: 5.5 } });
  assert.deepEqual(text.values, {}, "values that are not a JSON object show as none");
  let state = run({ type: "config", data: CONFIG }, { type: "workflowValues", values: [cfg, text] });
  const [gpu1, box] = workerCards(state);
  assert.deepEqual(gpu1.values, ["Value 12 (cfg): 5.5", "Style: oil (default)"]);
  assert.deepEqual(box.values, ["Value 12 (cfg): 7 (default)", "Style: oil (default)"]);
  assert.deepEqual(masterCard(state, "x").values, ["Value 12 (cfg): 7", "Style: oil"]);
  const same = reduce(state, { type: "workflowValues", values: [{ ...cfg }, { ...text }] });
  assert.equal(same, state, "an unchanged list does not redraw the panel");
  assert.deepEqual(valueLines([{ label: "Long", default: "x".repeat(100), values: {} }], null), [`Long: ${"x".repeat(57)}...`]);
});

test("the master's card says when it only coordinates", () => {
  let state = run({ type: "config", data: CONFIG });
  assert.equal(masterCard(state, "x").role, null);
  state = run({ type: "config", data: { ...CONFIG, master: { ...CONFIG.master, participates: false } } });
  assert.equal(masterCard(state, "x").role, "Coordinator only: the workers make its share");
});

test("a job's time left and the cluster's line", () => {
  let state = run({ type: "config", data: CONFIG },
                  { type: "job_progress", data: { job_id: "abcdef0123", progress: 0.5, units: [{}, {}], eta_seconds: 130 } });
  assert.equal(activeJobs(state)[0].text, "2 unit(s) · 50% · about 2 min left");
  state = reduce(state, { type: "job_progress", data: { job_id: "abcdef0123", progress: 0.1, units: [{}], eta_seconds: null } });
  assert.equal(activeJobs(state)[0].text, "1 unit(s) · 10%");
  assert.equal(clusterLine(state), null);
  state = reduce(state, { type: "status", data: { workers: [], jobs: [], cluster: { line: "3 prompts: 1 running, 2 queued" } } });
  assert.equal(clusterLine(state), "3 prompts: 1 running, 2 queued");
  assert.deepEqual([formatDuration(0.2), formatDuration(59), formatDuration(150), formatDuration(5400)],
                   ["1 s", "59 s", "3 min", "1.5 h"]);
});

test("a worker's card shows its unit's newest preview frame until that unit ends", () => {
  const frame = (position, data, jobId = "job-1") => ({ type: "preview", data: {
    job_id: jobId, position, worker_id: 1, worker: "GPU 1", mime: data ? "image/jpeg" : null, data } });
  let state = run({ type: "config", data: CONFIG }, frame(1, "AAAA"), frame(1, "BBBB"));
  assert.deepEqual(workerCards(state)[0].preview,
                   { src: "data:image/jpeg;base64,BBBB", alt: "Live preview of GPU 1, unit 1" });
  assert.equal(workerCards(state)[1].preview, null);
  assert.equal(reduce(state, frame(0, null)), state, "the end of another unit leaves the thumbnail");
  assert.equal(reduce(state, frame(1, null, "job-0")), state, "so does the end of another job's unit");
  state = reduce(state, frame(1, null));
  assert.equal(workerCards(state)[0].preview, null);
  state = run({ type: "config", data: CONFIG }, frame(2, "CCCC"), { type: "job_done", data: { job_id: "job-1" } });
  assert.equal(workerCards(state)[0].preview, null, "a finished job takes its thumbnails with it");
  state = run({ type: "config", data: CONFIG }, frame(2, "CCCC"), { type: "worker_removed", data: { id: 1 } });
  assert.deepEqual(state.previews, {});
});

test("only a JPEG or PNG in base64 becomes an image source", () => {
  assert.equal(previewSource("image/png", "iVBORw0KGgo="), "data:image/png;base64,iVBORw0KGgo=");
  assert.equal(previewSource("image/svg+xml", "PHN2Zz4="), null);
  assert.equal(previewSource("image/jpeg", "\"><script>"), null);
  assert.equal(previewSource("image/jpeg", null), null);
  const state = run({ type: "config", data: CONFIG },
                    { type: "preview", data: { job_id: "j", position: 1, worker_id: 1, mime: "text/html", data: "PGI+" } });
  assert.equal(workerCards(state)[0].preview, null);
});

test("the registration for the events is renewed at a third of its life, 10 s when the master gave none", () => {
  assert.equal(renewMs({ on: true, expires_in: 30 }), 10000);
  assert.equal(renewMs(null), 10000);
  assert.equal(renewMs({ expires_in: 0.3 }), 1000);
});
