// Drives the Multi-GPU sidebar panel in headless Chromium (Debian's, through playwright-core)
// against the master of a real ComfyUI cluster that test_sidebar_panel.py started.
//
//   node tests/browser/sidebar_panel.mjs PLAN.json
//
// PLAN.json: {master, token, ttl, config_path, artifacts, report, chromium, workflow, preview_workflow,
//             workers: {"1": {url, pid, requests_log}, "2": {...}}, spare_port}
// Each step prints one line; screenshots go to plan.artifacts; a JSON report of what was seen
// (timings, skipped steps) goes to plan.report. Exit code 0 only when every step passed.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf-8"));
const report = { steps: [], skipped: [], timings: {}, screenshots: [], extension_errors: [], launched_pids: [],
                 launched: false };
const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(50);
  }
}

const readConfig = () => JSON.parse(fs.readFileSync(plan.config_path, "utf-8"));
const configWorker = (id) => readConfig().workers.find((w) => String(w.id) === String(id));
const freeRequests = (id) => {
  try {
    return fs.readFileSync(plan.workers[id].requests_log, "utf-8").split("\n").filter((l) => l === "POST /free").length;
  } catch {
    return 0;
  }
};

let page;
let context;
const statusRequests = [];

async function shot(name, { panelOnly = false } = {}) {
  const file = path.join(plan.artifacts, `${name}.png`);
  if (panelOnly) {
    // the sidebar scrolls: make the window tall enough for the whole panel, then put it back
    const viewport = page.viewportSize();
    const height = await page.locator(".mgpu-panel").evaluate((el) => el.scrollHeight);
    await page.setViewportSize({ width: viewport.width, height: Math.max(viewport.height, height + 120) });
    await page.locator(".mgpu-panel").screenshot({ path: file });
    await page.setViewportSize(viewport);
  } else {
    await page.screenshot({ path: file });
  }
  report.screenshots.push(file);
}

async function step(name, run) {
  const started = Date.now();
  try {
    const note = await run();
    report.steps.push({ name, ok: true, ms: Date.now() - started, note: note || null });
    console.log(`ok   ${name} (${Date.now() - started} ms)${note ? `: ${note}` : ""}`);
  } catch (error) {
    report.steps.push({ name, ok: false, ms: Date.now() - started, error: String(error.stack || error) });
    console.log(`FAIL ${name}: ${error.stack || error}`);
    if (page) await page.screenshot({ path: path.join(plan.artifacts, `failure-${name}.png`) }).catch(() => {});
    throw error;
  }
}

const card = (id) => page.locator(`.mgpu-card[data-worker-id="${id}"]`);
const cardStatus = (id) => card(id).getAttribute("data-status");
const waitStatus = (id, status, timeoutMs) =>
  until(`worker ${id} ${status}`, timeoutMs, async () => (await cardStatus(id)) === status);
// PrimeVue's toast up to frontend 1.2x, reka-ui's (an <li data-testid="toast">) in newer ones
const toast = (text) => page.locator('.p-toast-message, [data-testid="toast"]', { hasText: text });
const setting = (key) => page.locator(`.mgpu-setting[data-setting="${key}"]`);
// the sidebar button, by the name it is announced with (its tooltip), on every frontend: older ones give it the class
// multigpu-tab-button, newer ones (1.3x+) a data-testid instead
const tabButton = () => page.getByRole("button", { name: "Multi-GPU: workers, VRAM and settings" });

/** Queue the workflow from the UI itself (load it into the graph, press Run's code path). */
async function queueFromUi(workflow = plan.workflow) {
  await page.evaluate(async (chosen) => {
    const { app } = window.comfyAPI.app;
    await app.loadApiJson(chosen, "multigpu-browser-test");
    await app.queuePrompt(0, 1);
  }, workflow);
}

async function waitJobDone(timeoutMs) {
  await until("the job to finish", timeoutMs, async () =>
    (await page.locator(".mgpu-jobs .mgpu-meter").count()) === 0
    && (await page.locator('.mgpu-master[data-status="idle"]').count()) === 1);
}

/** Clicks a launcher button; the response if the master has the route, false (a skip) when it has not. */
async function clickLauncher(selector, route) {
  const answer = page.waitForResponse((r) => r.url().includes(route) && r.request().method() === "POST");
  await page.locator(selector).click();
  const response = await answer;
  // ComfyUI answers a POST to a path it has no route for with a plain-text 404 or 405
  if ([404, 405].includes(response.status()) && !(await response.text()).includes('"error"')) {
    report.skipped.push(`${route}: the master answers ${response.status()} (route not built yet)`);
    await toast("not available on this master").first().waitFor({ timeout: 5000 });
    return false;
  }
  return response;
}

async function main() {
  fs.mkdirSync(plan.artifacts, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "multigpu-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: plan.chromium, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1440, height: 1000 },
  });
  try {
    page = context.pages()[0] || await context.newPage();
    page.on("request", (request) => {
      if (request.method() === "GET" && new URL(request.url()).pathname.endsWith("/multigpu/status")) {
        statusRequests.push(Date.now());
      }
    });
    page.on("pageerror", (error) => {
      console.log(`page error: ${error.message}`);
      if (String(error.stack).includes("/extensions/ComfyUI-Distributed/")) report.extension_errors.push(error.stack);
    });
    // a wider sidebar than the default 20% (the splitter keeps its sizes in localStorage)
    await page.addInitScript(() => {
      for (const key of ["unified-sidebar", "multigpu"]) localStorage.setItem(key, "[27,73]");
    });
    await run();
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function run() {
  await step("open the Multi-GPU tab", async () => {
    // a new ComfyUI user gets the template browser first: mark the tutorial as done, like a returning user
    const settings = await fetch(`${plan.master}/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });
    if (!settings.ok) throw new Error(`POST /settings answered ${settings.status}`);
    await page.goto(plan.master);
    await page.waitForFunction(() => window.comfyAPI?.app?.app?.extensionManager, null, { timeout: 90000 });
    await tabButton().click();
    await page.locator(".mgpu-panel .mgpu-master").waitFor({ timeout: 15000 });
  });

  await step("enter the API token the master requires", async () => {
    await page.locator(".mgpu-token").waitFor({ timeout: 10000 });
    await page.locator('.mgpu-token input[name="token"]').fill(plan.token);
    await page.locator('[data-action="save-token"]').click();
    await page.locator(".mgpu-token").waitFor({ state: "hidden", timeout: 5000 });
    const stored = await page.evaluate(() => localStorage.getItem("ComfyUI-Distributed.api_token"));
    if (stored !== plan.token) throw new Error("the token is not kept in localStorage");
  });

  await step("both workers idle", async () => {
    await waitStatus(1, "idle", 15000);
    await waitStatus(2, "idle", 15000);
    const text = await card(1).locator(".mgpu-meta").textContent();
    if (!text.includes(new URL(plan.workers["1"].url).host)) throw new Error(`card 1 shows ${text}`);
    await shot("01-workers-idle");
    return text;
  });

  await step("a Multi-GPU Value node: a row per worker in the node; each card shows its value", async () => {
    await page.evaluate(async () => {
      const { app } = window.comfyAPI.app;
      await app.loadApiJson({ 1: { class_type: "MultiGPUValue", inputs: { default: "7", values: '{"1": "5.5"}' } } },
                            "multigpu-values");
    });
    const cell = page.locator('.mgpu-value-table input[data-worker-id="2"]');
    await cell.waitFor({ timeout: 10000 });
    const first = await page.locator('.mgpu-value-table input[data-worker-id="1"]').inputValue();
    if (first !== "5.5") throw new Error(`the table shows ${first} for worker 1`);
    await cell.fill("9");
    await cell.dispatchEvent("change");
    const saved = await page.evaluate(() => {
      const { app } = window.comfyAPI.app;
      const node = (app.graph._nodes || app.graph.nodes).find((n) => n.type === "MultiGPUValue");
      return node.widgets.find((w) => w.name === "values").value;
    });
    if (JSON.parse(saved)["2"] !== "9") throw new Error(`the node's values are ${saved}`);
    const expect = { 1: "Value 1: 5.5", 2: "Value 1: 9" };
    for (const [id, line] of Object.entries(expect)) {
      await until(`card ${id} shows "${line}"`, 5000,
        async () => ((await card(id).locator(".mgpu-values").textContent()) || "").includes(line));
    }
    await until("the master's card shows the default", 5000,
      async () => ((await page.locator(".mgpu-master .mgpu-values").textContent()) || "").includes("Value 1: 7"));
    await shot("01b-value-node");
    await shot("01b-value-node-panel", { panelOnly: true });
    return `saved ${saved}`;
  });

  await step("edit the workers' CUDA devices through the form", async () => {
    for (const id of ["1", "2"]) {
      await card(id).locator('[data-action="edit"]').click();
      const form = page.locator(".mgpu-worker-form");
      await form.locator('input[name="cuda_device"]').fill(id);
      await form.locator('[data-action="save-worker"]').click();
      await form.waitFor({ state: "hidden", timeout: 5000 });
      await until(`cuda_device of worker ${id} in the file`, 5000, () => configWorker(id).cuda_device === Number(id));
      await until(`card ${id} shows CUDA ${id}`, 5000,
        async () => (await card(id).locator(".mgpu-meta").textContent()).includes(`CUDA ${id}`));
    }
  });

  await step("run a job from the UI and see its progress", async () => {
    await queueFromUi();
    const seen = await until("a worker card showing a running unit", 30000, async () => {
      for (const id of ["1", "2"]) {
        const meter = card(id).locator('[data-meter="progress"]');
        if (await meter.isVisible() && (await meter.getAttribute("data-state")) === "running"
            && Number(await meter.getAttribute("data-fraction")) > 0) return id;
      }
      return null;
    });
    await page.locator(".mgpu-jobs .mgpu-meter").first().waitFor({ timeout: 5000 });
    await shot("02-job-progress");
    await shot("02-job-progress-panel", { panelOnly: true });
    const text = await card(seen).locator('[data-meter="progress"] .mgpu-meter-text').textContent();
    await waitJobDone(60000);
    await waitStatus(1, "idle", 10000);
    await waitStatus(2, "idle", 10000);
    return `worker ${seen} showed "${text}"`;
  });

  await step("a worker's live preview on its card while it samples, gone when its unit ends", async () => {
    // the workers run with --preview-method latent2rgb; the open panel holds the master's preview lease
    await queueFromUi(plan.preview_workflow);
    const preview = (id) => card(id).locator('img[data-part="preview"]');
    const seen = await until("a worker card showing a live preview", 240000, async () => {
      for (const id of ["1", "2"]) {
        const img = preview(id);
        if (await img.isVisible() && ((await img.getAttribute("src")) || "").startsWith("data:image/jpeg;base64,")
            && await img.evaluate((el) => el.complete && el.naturalWidth > 0)) return id;
      }
      return null;
    });
    const alt = await preview(seen).getAttribute("alt");
    if (!/^Live preview of GPU \d+ \(w\d\), unit \d+$/.test(alt || "")) throw new Error(`the preview's alt text is "${alt}"`);
    await shot("02b-live-preview");
    await shot("02b-live-preview-panel", { panelOnly: true });
    const frames = new Set();
    await until("a new frame on the same card", 60000, async () => {
      frames.add(await preview(seen).getAttribute("src"));
      return frames.size > 1 || !(await preview(seen).isVisible());
    });
    await waitJobDone(300000);
    for (const id of ["1", "2"]) {
      await until(`no preview left on card ${id}`, 10000, async () => !(await preview(id).isVisible()));
    }
    return `worker ${seen}: "${alt}", ${frames.size} frame(s) seen`;
  });

  await step("clear one worker's VRAM: it gets POST /free", async () => {
    const before = { 1: freeRequests("1"), 2: freeRequests("2") };
    await card(2).locator('[data-action="clear"]').click();
    await toast("VRAM cleared on 1 instance").first().waitFor({ timeout: 10000 });
    await until("worker 2 receiving POST /free", 5000, () => freeRequests("2") === before[2] + 1);
    if (freeRequests("1") !== before[1]) throw new Error("worker 1 was freed too");
  });

  await step("clear all VRAM: every enabled worker and the master", async () => {
    const before = { 1: freeRequests("1"), 2: freeRequests("2") };
    await page.locator('[data-action="clear-all"]').click();
    await toast("VRAM cleared on 3 instances").first().waitFor({ timeout: 10000 });
    await until("both workers receiving POST /free", 5000,
      () => freeRequests("1") === before[1] + 1 && freeRequests("2") === before[2] + 1);
  });

  await step("disable worker 1: the config file changes", async () => {
    await card(1).locator(".mgpu-switch").click();
    await until("enabled: false for worker 1 in the file", 5000, () => configWorker("1").enabled === false);
    await waitStatus(1, "disabled", 5000);
    await shot("03-worker-disabled", { panelOnly: true });
  });

  await step("kill worker 2 during a job: offline within the TTL and a toast", async () => {
    await queueFromUi();
    await until("worker 2 running its unit", 30000, async () =>
      (await card(2).locator('[data-meter="progress"]').getAttribute("data-state")) === "running");
    const killed = Date.now();
    process.kill(-plan.workers["2"].pid, "SIGKILL");  // its process group: ComfyUI was started in its own session
    await waitStatus(2, "offline", plan.ttl * 1000 + 1000);
    const seconds = (Date.now() - killed) / 1000;
    report.timings.offline_after_kill_s = seconds;
    if (seconds > plan.ttl) throw new Error(`offline after ${seconds}s, the TTL is ${plan.ttl}s`);
    await toast("Multi-GPU worker failed").first().waitFor({ timeout: 15000 });
    await shot("04-worker-offline-toast");
    await waitJobDone(60000);
    return `offline ${seconds.toFixed(2)} s after the kill (TTL ${plan.ttl} s)`;
  });

  await step("launch the offline worker", async () => {
    await until("the Launch button of worker 2", 5000, () => card(2).locator('[data-action="launch"]').isVisible());
    const response = await clickLauncher('.mgpu-card[data-worker-id="2"] [data-action="launch"]', "/multigpu/workers/launch");
    if (!response) return "skipped: the master has no POST /multigpu/workers/launch yet";
    const body = await response.json();
    for (const entry of body.workers || []) if (entry.pid) report.launched_pids.push(entry.pid);
    const entry = (body.workers || []).find((w) => String(w.worker_id) === "2");
    if (!response.ok() || !entry || !entry.ok) throw new Error(`launch answered ${response.status()}: ${JSON.stringify(body)}`);
    await toast("Launching").first().waitFor({ timeout: 5000 });
    const seen = await until("worker 2 launching", 5000, async () => {
      const status = await cardStatus(2);
      return ["launching", "idle"].includes(status) ? status : null;
    });
    await waitStatus(2, "idle", 120000);
    report.launched = true;
    return `answered ${response.status()}, the card showed ${seen} then idle`;
  });

  await step("the launched worker's log from its card; the cluster's line in the header", async () => {
    if (!report.launched) return "skipped: nothing was launched";
    await card(2).locator('[data-action="logs"]').click();
    const log = card(2).locator(".mgpu-log");
    await log.waitFor({ state: "visible", timeout: 10000 });
    const text = await log.textContent();
    if (!text.includes("To see the GUI go to")) throw new Error(`the log shows: ${text.slice(-400)}`);
    const line = await until("the cluster's line", 15000, async () => {
      const shown = await page.locator('[data-part="cluster"]').textContent().catch(() => "");
      return shown && shown.includes("prompt") ? shown : null;
    });
    await shot("06b-worker-log", { panelOnly: true });
    await card(2).locator('[data-action="logs"]').click();
    await log.waitFor({ state: "hidden", timeout: 5000 });
    return `header: ${line}`;
  });

  await step("add a worker: the form refuses a bad port, then saves", async () => {
    await page.locator('[data-action="add-worker"]').click();
    const form = page.locator(".mgpu-worker-form");
    await form.locator('input[name="name"]').fill("Spare GPU");
    await form.locator('input[name="port"]').fill("70000");
    await form.locator('[data-action="save-worker"]').click();
    const error = await form.locator('[data-error="port"]').textContent();
    if (!/between 1 and 65535/.test(error)) throw new Error(`no port error, got "${error}"`);
    await shot("05-worker-form-error", { panelOnly: true });
    if (readConfig().workers.length !== 2) throw new Error("an invalid worker reached the file");
    await form.locator('input[name="port"]').fill(String(plan.spare_port));
    await form.locator('[data-action="save-worker"]').click();
    await form.waitFor({ state: "hidden", timeout: 5000 });
    const added = await until("the new worker in the file", 5000,
      () => readConfig().workers.find((w) => w.port === plan.spare_port));
    await card(added.id).waitFor({ timeout: 5000 });
    report.added_worker_id = added.id;
    return `added as id ${added.id}`;
  });

  await step("remove the added worker after confirming", async () => {
    const id = report.added_worker_id;
    await card(id).locator('[data-action="remove"]').click();
    // PrimeVue's dialog up to frontend 1.2x, a role="dialog" element in newer ones
    await page.locator('.p-dialog button, [role="dialog"] button', { hasText: "Delete" }).first().click();
    await until("the worker gone from the file", 5000, () => !configWorker(id));
    await card(id).waitFor({ state: "detached", timeout: 5000 });
  });

  await step("settings: rendered from the config, saved through the API", async () => {
    await page.locator(".mgpu-settings > summary").click();
    const input = setting("worker_timeout").locator("input");
    await input.fill("120");
    await input.press("Enter");
    await setting("worker_timeout").locator(".mgpu-ok").waitFor({ timeout: 5000 });
    await until("worker_timeout 120 in the file", 5000, () => readConfig().settings.worker_timeout === 120);
    await input.fill("-5");
    await input.press("Enter");
    const error = await setting("worker_timeout").locator(".mgpu-field-error").textContent();
    if (!/more than 0/.test(error)) throw new Error(`no bound error, got "${error}"`);
    const keys = await page.locator(".mgpu-setting").evaluateAll((rows) => rows.map((r) => r.dataset.setting));
    const missing = Object.keys(readConfig().settings).filter((k) => k !== "api_token" && !keys.includes(k));
    if (missing.length) throw new Error(`settings not shown: ${missing}`);
    for (const choice of ["scheduling_mode", "queue_mode", "queue_routing"]) {  // drawn from the master's settings_form
      if (await setting(choice).locator("select").count() !== 1) throw new Error(`${choice} is not a choice list`);
    }
    const routing = setting("queue_routing").locator("select");
    const offered = await routing.locator("option").evaluateAll((options) => options.map((o) => o.value));
    if (!offered.includes("model_aware") || !offered.includes("least_busy")) {
      throw new Error(`queue_routing offers ${offered}`);
    }
    await routing.selectOption("least_busy");
    await until("queue_routing least_busy in the file", 5000,
      () => readConfig().settings.queue_routing === "least_busy");
    await routing.selectOption("model_aware");
    await until("queue_routing model_aware in the file", 5000,
      () => readConfig().settings.queue_routing === "model_aware");
    const tokenValue = await setting("api_token").locator("input").inputValue();
    if (tokenValue) throw new Error("the token field is not empty");
    await input.fill("150");  // a new value: the poll may have put the saved 120 back into the field meanwhile
    await input.press("Enter");
    await setting("worker_timeout").locator(".mgpu-ok").waitFor({ timeout: 5000 });
    await until("worker_timeout 150 in the file", 5000, () => readConfig().settings.worker_timeout === 150);
    await shot("06-settings", { panelOnly: true });
    return `${keys.length} settings shown`;
  });

  await step("enable worker 1 again; restart a worker", async () => {
    await card(1).locator(".mgpu-switch").click();
    await until("enabled: true for worker 1 in the file", 5000, () => configWorker("1").enabled === true);
    await waitStatus(1, "idle", 10000);
    const target = report.launched ? "2" : "1";  // the launcher restarts the workers it started itself
    const response = await clickLauncher(`.mgpu-card[data-worker-id="${target}"] [data-action="restart"]`,
                                         "/multigpu/workers/restart");
    if (!response) return "restart skipped: the master has no POST /multigpu/workers/restart yet";
    const body = await response.json();
    if (body.worker && body.worker.pid) report.launched_pids.push(body.worker.pid);
    if (!response.ok()) {
      if (report.launched) throw new Error(`restart answered ${response.status()}: ${JSON.stringify(body)}`);
      await toast("Could not restart").first().waitFor({ timeout: 5000 });  // the master's reason, shown
      return `worker 1 (not started by the launcher): ${response.status()} "${body.error}", shown in a toast`;
    }
    await until(`worker ${target} restarting`, 10000, async () => (await cardStatus(target)) !== "idle");
    await waitStatus(target, "idle", 120000);
    return `worker ${target} restarted and idle again`;
  });

  await step("close and reopen the tab; final state; no page error from the extension", async () => {
    await tabButton().click();
    await page.locator(".mgpu-panel").waitFor({ state: "detached", timeout: 5000 });
    await tabButton().click();
    await waitStatus(1, "idle", 5000);
    await waitStatus(2, report.launched ? "idle" : "offline", 5000);
    await shot("07-final", { panelOnly: true });
    if (report.extension_errors.length) throw new Error(`page errors:\n${report.extension_errors.join("\n")}`);
  });

  await step("status polled no faster than the health TTL", async () => {
    // events bring status changes and progress; GET /multigpu/status only refreshes VRAM: one at page load, one
    // each time the tab opens (twice here), then one per TTL, plus one after each launch or restart click and
    // one once the token is entered (a public master shows nothing until then)
    const seconds = (statusRequests.at(-1) - statusRequests[0]) / 1000;
    const allowed = Math.floor(seconds / plan.ttl) + 1 + 2 + 2 + 1;
    report.timings.status_requests = statusRequests.length;
    if (statusRequests.length > allowed) {
      throw new Error(`${statusRequests.length} status requests in ${seconds.toFixed(1)} s (at most ${allowed})`);
    }
    return `${statusRequests.length} requests in ${seconds.toFixed(1)} s`;
  });

  await step("a master that only coordinates says so on its card", async () => {
    const config = readConfig();
    fs.writeFileSync(plan.config_path, JSON.stringify({ ...config, master: { ...config.master, participates: false } }));
    await tabButton().click();
    await page.locator(".mgpu-panel").waitFor({ state: "detached", timeout: 5000 });
    await tabButton().click();  // the panel reads the config as it opens
    const text = await until("the master's card saying it only coordinates", 10000, async () => {
      const shown = (await page.locator(".mgpu-master .mgpu-detail:not(.mgpu-failure)").textContent()) || "";
      return shown.includes("Coordinator only") ? shown : null;
    });
    await shot("08-coordinator-only", { panelOnly: true });
    fs.writeFileSync(plan.config_path, JSON.stringify(config));
    return text;
  });

  await step("a pool's agents as cards, a hostile agent's words as text (the pool added to the status)", async () => {
    // no Redis here: the master's own status answer, with a pool as a master that joined one gives it
    const hostile = '<img src=x onerror="window.__mgpuInjected = true">';
    const pool = { pool: "pool 'browser' at redis://127.0.0.1:6379/0", joined: true, master: "m-self", agents: [
      { id: "a1", name: hostile, tags: [hostile], comfyui: true, checkpoint: hostile,
        busy: { job_id: "0123456789abcdef", position: 1, attempt: 2, master: "m-other" } },
      { id: "a2", name: "Idle agent", tags: [], comfyui: false, busy: null, checkpoint: null },
    ] };
    const withPool = async (route) => {
      const response = await route.fetch();
      await route.fulfill({ response, json: { ...(await response.json()), pool } });
    };
    await page.route("**/multigpu/status", withPool);
    try {
      const agent = page.locator('.mgpu-pool .mgpu-card[data-agent-id="a1"]');
      await agent.waitFor({ timeout: 5000 + plan.ttl * 2000 });
      const name = await agent.locator('[data-part="name"]').textContent();
      if (name !== hostile) throw new Error(`the agent's name shows as "${name}"`);
      const unit = await agent.locator('[data-part="unit"]').textContent();
      if (!unit.includes("(another master's)")) throw new Error(`its unit shows as "${unit}"`);
      if (await page.locator(".mgpu-pool img").count()) throw new Error("an agent's words became an element");
      if (await agent.locator("button").count()) throw new Error("an agent's card has a button");
      if (await page.evaluate(() => window.__mgpuInjected)) throw new Error("an agent's words ran as markup");
      const down = await page.locator('.mgpu-card[data-agent-id="a2"]').getAttribute("data-status");
      if (down !== "error") throw new Error(`an agent without ComfyUI shows as ${down}`);
      const summaryLine = await page.locator(".mgpu-header .mgpu-summary").first().textContent();
      if (!summaryLine.includes("2 pool agents")) throw new Error(`the summary says "${summaryLine}"`);
      await shot("09-pool-agents", { panelOnly: true });
      return summaryLine;
    } finally {
      await page.unroute("**/multigpu/status", withPool);
    }
  });
}

let code = 0;
try {
  await main();
} catch {
  code = 1;
} finally {
  fs.writeFileSync(plan.report, JSON.stringify(report, null, 2));
}
process.exit(code);
