// What a newcomer's walkthrough found in the panel: names cut short, a master called coordinator while it makes
// images, number inputs too narrow for their values, and the config's warnings not shown.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { inputChars, settingRows } from "../../web/multigpu_forms.js";
import { configWarnings, initialState, masterCard, reduce, workerCards } from "../../web/multigpu_state.js";

const CSS = readFileSync(new URL("../../web/multigpu.css", import.meta.url), "utf-8");
const FORM = JSON.parse(readFileSync(new URL("./settings_form.json", import.meta.url), "utf-8"));
const LONG = "CPU worker on the big machine under the desk";
const CONFIG = {
  master: { port: 8188, cuda_device: 0, extra_args: "" },
  workers: [{ id: 1, name: LONG, port: 8189, cuda_device: null, enabled: true, host: null, extra_args: "--cpu" }],
  settings: { launch_timeout: 600, worker_timeout: 600, max_retries: 2, max_forward_mb: 1048576 },
  settings_form: FORM,
  auth: { token_configured: false, token_required: false },
};

/** The declarations of the CSS rule whose selector is exactly `selector`. */
function rule(selector) {
  const found = CSS.split("}").map((block) => block.split("{")).find(([head]) => head.trim().endsWith(selector));
  return found ? found[1] : "";
}

test("a worker's full name reaches its card, and the card's name wraps instead of being cut", () => {
  const state = reduce(initialState(), { type: "config", data: CONFIG });
  assert.equal(workerCards(state)[0].name, LONG);
  const name = rule(".mgpu-name");
  assert.ok(name, "a .mgpu-name rule");
  assert.doesNotMatch(name, /nowrap|ellipsis/, "the name is not clipped to one line");
  assert.match(name, /overflow-wrap/);
});

test("the master is tagged coordinator only when it takes no part in jobs", () => {
  assert.doesNotMatch(CSS, /content:\s*"coordinator"/, "the stylesheet does not call every master a coordinator");
  const taking = reduce(initialState(), { type: "config", data: CONFIG });
  assert.equal(masterCard(taking, "x").tag, null);
  const coordinating = reduce(initialState(), {
    type: "config", data: { ...CONFIG, master: { ...CONFIG.master, participates: false } },
  });
  assert.equal(masterCard(coordinating, "x").tag, "coordinator");
});

test("number inputs are as wide as their largest value", () => {
  const rows = settingRows(CONFIG.settings, {}, FORM);
  const chars = Object.fromEntries(rows.map((row) => [row.key, inputChars(row)]));
  assert.ok(chars.launch_timeout >= "3600".length + 2, "launch_timeout: 600 of at most 3600 s, with decimals");
  assert.ok(chars.worker_timeout >= "86400".length, "worker_timeout: up to 86400 s");
  assert.ok(chars.max_forward_mb >= "1048576".length, "max_forward_mb: up to 1048576 MiB");
  assert.ok(chars.max_retries >= 2, "max_retries: up to 10");
  for (const row of rows) {
    if (row.kind === "integer" || row.kind === "number") {
      assert.ok(inputChars(row) >= String(row.value).length, `${row.key} shows its value ${row.value} whole`);
    } else {
      assert.equal(inputChars(row), null, `${row.key} (${row.kind}) takes the width it is given`);
    }
  }
  assert.equal(inputChars({ kind: "integer", value: 5 }), 10, "no bounds: room for a large number");
});

test("the master's config warnings are kept from its status answer and shown until they are gone", () => {
  let state = reduce(initialState(), { type: "config", data: CONFIG });
  assert.deepEqual(configWarnings(state), []);
  const lines = ["worker 1 (GPU 1): unknown key 'enabeld' (did you mean 'enabled'?) is ignored"];
  state = reduce(state, { type: "status", data: { workers: [], jobs: [], config_warnings: lines } });
  assert.deepEqual(configWarnings(state), lines);
  const same = reduce(state, { type: "status", data: { workers: [], jobs: [], config_warnings: [...lines] } });
  assert.equal(configWarnings(same), configWarnings(state), "unchanged lines: the same list, the box is not redrawn");
  state = reduce(state, { type: "status", data: { workers: [], jobs: [], config_warnings: [] } });
  assert.deepEqual(configWarnings(state), []);
  const older = reduce(state, { type: "status", data: { workers: [], jobs: [] } });
  assert.deepEqual(configWarnings(older), [], "a master without the field: no warnings");
  const odd = reduce(state, { type: "status", data: { workers: [], jobs: [], config_warnings: ["x", 3, null, " "] } });
  assert.deepEqual(configWarnings(odd), ["x"], "only lines of text");
});
