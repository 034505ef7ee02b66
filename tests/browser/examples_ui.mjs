// Loads every shipped UI example (example_workflows/) in headless Chromium, through ComfyUI's own templates route,
// and runs one of them to its end, against the master that test_examples_ui.py started.
//
//   node tests/browser/examples_ui.mjs PLAN.json
//
// PLAN.json: {master, chromium, artifacts, report, pack, names, run: {name, timeout_ms}}
// For each example the report holds what the frontend made of it: the toasts, dialogs and page errors that showed,
// its own API prompt (graphToPrompt) and the workflow as it saves it (graph.serialize). For the run: the prompt id,
// the multigpu.* events seen, how it ended and the toasts. Exit code 0 when the driver itself got through; the test
// judges the report.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf-8"));
const report = { templates: null, examples: {}, run: null };
const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let page;
let pageErrors = [];

// PrimeVue's toast and dialog up to frontend 1.2x, reka-ui's (data-testid="toast", role="dialog") in newer ones
async function shown() {
  return page.evaluate(() => {
    const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
    const texts = (selector) => [...document.querySelectorAll(selector)].filter(visible)
      .map((el) => (el.innerText || "").trim().slice(0, 500));
    return {
      toasts: texts('.p-toast-message, [data-testid="toast"]'),
      dialogs: texts('.p-dialog, [role="dialog"], [role="alertdialog"]'),
    };
  });
}

async function dismissAll() {
  await page.evaluate(() => {
    for (const button of document.querySelectorAll(".p-toast-close-button, [data-testid='toast'] button")) button.click();
  });
  await page.keyboard.press("Escape");
  await sleep(200);
}

async function loadExample(name) {
  pageErrors = [];
  const template = await page.evaluate(async ({ pack, name }) => {
    const response = await fetch(`/api/workflow_templates/${encodeURIComponent(pack)}/${name}.json`);
    if (!response.ok) return { status: response.status };
    const workflow = await response.json();
    const { app } = window.comfyAPI.app;
    await app.loadGraphData(workflow, true, true, name);
    return { status: response.status };
  }, { pack: plan.pack, name });
  await sleep(1500);  // toasts and dialogs of a load show within a frame or two
  const seen = await shown();
  const result = await page.evaluate(async () => {
    const { app } = window.comfyAPI.app;
    const nodes = app.graph._nodes || app.graph.nodes;
    const { output } = await app.graphToPrompt();
    return {
      output,
      saved: app.graph.serialize(),
      node_errors: nodes.filter((n) => n.has_errors).map((n) => `${n.id} ${n.type}`),
    };
  });
  await page.screenshot({ path: path.join(plan.artifacts, `${name}.png`) });
  report.examples[name] = { ...template, ...seen, ...result, page_errors: pageErrors };
  console.log(`loaded ${name}: HTTP ${template.status}, ${seen.toasts.length} toast(s), ${seen.dialogs.length} `
    + `dialog(s), ${pageErrors.length} page error(s)`);
  await dismissAll();
}

async function runExample(name, timeoutMs) {
  await loadExample(name);
  const started = Date.now();
  const queued = page.waitForResponse((r) => /\/prompt$/.test(new URL(r.url()).pathname)
    && r.request().method() === "POST", { timeout: 60000 });
  await page.evaluate(() => {
    const { api } = window.comfyAPI.api;
    window.__seen = { events: {}, ended: null };
    const count = (type) => api.addEventListener(type, (e) => {
      window.__seen.events[type] = (window.__seen.events[type] || 0) + 1;
      if (["execution_success", "execution_error", "execution_interrupted"].includes(type)) {
        window.__seen.ended = { type, detail: e.detail };
      }
    });
    for (const type of ["multigpu.job_progress", "multigpu.job_done", "multigpu.worker_failed", "multigpu.notice",
      "execution_start", "execution_success", "execution_error", "execution_interrupted"]) count(type);
    window.comfyAPI.app.app.queuePrompt(0, 1);
  });
  const answer = await (await queued).json();
  const promptId = answer.prompt_id;
  console.log(`queued ${name} as ${promptId}`);
  const deadline = Date.now() + timeoutMs;
  let seen;
  for (;;) {
    seen = await page.evaluate(() => window.__seen);
    if (seen.ended && seen.ended.detail && seen.ended.detail.prompt_id === promptId) break;
    if (Date.now() > deadline) break;
    await sleep(500);
  }
  const history = await page.evaluate(async (id) => (await (await fetch(`/api/history/${id}`)).json())[id] || null,
    promptId);
  const images = history ? Object.values(history.outputs || {}).reduce((n, o) => n + (o.images || []).length, 0) : 0;
  const after = await shown();
  await page.screenshot({ path: path.join(plan.artifacts, `${name}-run.png`) });
  report.run = { name, prompt_id: promptId, answer, seconds: (Date.now() - started) / 1000, events: seen.events,
    ended: seen.ended, status: history && history.status, images, ...after, page_errors: pageErrors };
  console.log(`ran ${name}: ${seen.ended ? seen.ended.type : "not finished"}, ${images} image(s) in `
    + `${report.run.seconds} s, events ${JSON.stringify(seen.events)}`);
}

async function main() {
  fs.mkdirSync(plan.artifacts, { recursive: true });
  // a new ComfyUI user gets the template browser first: mark the tutorial as done, like a returning user
  const settings = await fetch(`${plan.master}/settings/Comfy.TutorialCompleted`, { method: "POST", body: "true" });
  if (!settings.ok) throw new Error(`POST /settings answered ${settings.status}`);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "multigpu-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: plan.chromium, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1600, height: 1000 },
  });
  try {
    page = context.pages()[0] || await context.newPage();
    page.on("pageerror", (error) => {
      pageErrors.push(String(error.stack || error));
      console.log(`page error: ${error.message}`);
    });
    await page.goto(plan.master);
    await page.waitForFunction(() => window.comfyAPI?.app?.app?.graph && window.comfyAPI?.app?.app?.extensionManager,
      null, { timeout: 90000 });
    await sleep(1000);
    report.startup = { ...(await shown()), page_errors: pageErrors };
    await dismissAll();
    report.templates = await page.evaluate(async () => (await fetch("/api/workflow_templates")).json());
    for (const name of plan.names) await loadExample(name);
    if (plan.run) await runExample(plan.run.name, plan.run.timeout_ms);
  } finally {
    fs.writeFileSync(plan.report, JSON.stringify(report, null, 2));
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.log(`FAIL ${error.stack || error}`);
  process.exit(1);
});
