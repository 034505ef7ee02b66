// The shared pool in the panel: its heading, a card per live agent (state, unit, whose job, checkpoint), the summary
// line, and the cards drawn as text and kept in place, in a small stand-in for the DOM.
import assert from "node:assert/strict";
import { test } from "node:test";

import { agentCards, agentUnit, poolHeading, poolSummary } from "../../web/multigpu_pool.js";
import { initialState, reduce, summary } from "../../web/multigpu_state.js";

const HOSTILE = "<img src=x onerror=alert(1)>";
const LABEL = "pool 'team' at redis://h:6379/0";
const POOL = {
  pool: LABEL, joined: true, master: "m-self", agents: [
    { id: "a", name: "Ana 4090", tags: ["gpu24", "sdxl"], comfyui: true, checkpoint: "sd15.safetensors",
      busy: { job_id: "0123456789abcdef", position: 2, attempt: 1, master: "m-self" } },
    { id: "b", name: "Bo", tags: [], comfyui: true, checkpoint: null,
      busy: { job_id: "fedcba9876543210", position: 0, attempt: 3, master: "m-other" } },
    { id: "c", name: "Cy", tags: [], comfyui: false, busy: null, checkpoint: null },
    { id: "d", name: "Di", tags: ["cpu"], comfyui: true, busy: null, checkpoint: null },
  ],
};

function withPool(pool, ...more) {
  return [{ type: "status", data: { workers: [], jobs: [], pool } }, ...more].reduce(reduce, initialState());
}

test("no pool: no heading, no card, nothing in the summary", () => {
  const state = withPool(undefined);
  assert.equal(poolHeading(state), null);
  assert.deepEqual(agentCards(state), []);
  assert.equal(poolSummary(state), null);
});

test("a pool the master has not reached yet says so, with no card", () => {
  const state = withPool({ pool: LABEL, joined: false, master: "m-self", agents: [] });
  assert.deepEqual(poolHeading(state),
                   { title: `Shared ${LABEL}`, line: "Not reached yet (the master keeps trying)", joined: false });
  assert.deepEqual(agentCards(state), []);
  assert.equal(poolSummary(state), "pool not reached yet");
});

test("each agent's card: its state, its unit and whether the job is this master's, its tags and checkpoint", () => {
  const cards = agentCards(withPool(POOL));
  assert.deepEqual(cards.map((c) => [c.id, c.status, c.statusText]),
                   [["a", "busy", "Running"], ["b", "busy", "Running"], ["c", "error", "No ComfyUI"],
                    ["d", "idle", "Idle"]]);
  assert.equal(cards[0].unit, "unit 2 · attempt 1 · job 01234567 (this master's)");
  assert.equal(cards[0].mine, true);
  assert.equal(cards[1].unit, "unit 0 · attempt 3 · job fedcba98 (another master's)");
  assert.equal(cards[1].mine, false);
  assert.equal(cards[3].unit, null);
  assert.equal(cards[0].tags, "tags: gpu24, sdxl");
  assert.equal(cards[2].tags, "no tags");
  assert.equal(cards[0].checkpoint, "checkpoint: sd15.safetensors");
  assert.equal(cards[1].checkpoint, null);
  assert.equal(cards[2].failure, "Its ComfyUI does not answer: it takes no unit");
  assert.equal(cards[0].failure, null);
});

test("whose job is unknown when the master does not say its pool id (an older master)", () => {
  assert.equal(agentUnit({ job_id: "j", position: 1, attempt: 1, master: "m" }, undefined).mine, null);
  const cards = agentCards(withPool({ ...POOL, master: undefined }));
  assert.equal(cards[0].unit, "unit 2 · attempt 1 · job 01234567");
  assert.equal(agentUnit(null, "m"), null);
  assert.equal(agentUnit({ position: 1 }, "m"), null, "no job id: not a unit");
});

test("the unit an agent runs for this master shows its progress from the job's units; another master's none", () => {
  const state = withPool(POOL, { type: "job_progress", data: { job_id: "0123456789abcdef", progress: 0.3, units: [
    { position: 2, state: "running", worker_id: "pool-1", worker: "pool", progress: 0.5 }] } });
  const cards = agentCards(state);
  assert.deepEqual(cards[0].progress,
                   { jobId: "0123456789abcdef", fraction: 0.5, state: "running", text: "unit 2 · 50%" });
  assert.equal(cards[1].progress, null);
});

test("the pool's heading counts its agents; the summary counts them apart from the workers", () => {
  const state = withPool(POOL);
  assert.deepEqual(poolHeading(state), { title: `Shared ${LABEL}`, joined: true,
    line: "Joined · 4 agents, 2 running a unit (1 of this master's), 1 without ComfyUI" });
  assert.equal(poolSummary(state), "4 pool agents: 2 running, 1 idle, 1 without ComfyUI");
  assert.equal(summary(state), "No workers configured", "the workers' count leaves the agents out");
  assert.equal(poolSummary(withPool({ ...POOL, agents: [] })), "no pool agent live");
});

test("an agent not in the status' shape is left out, and its strings are kept as they are", () => {
  const state = withPool({ ...POOL, agents: [null, { id: "x" }, { name: "no id" },
    { id: "h", name: HOSTILE, tags: [HOSTILE, 7], comfyui: true, checkpoint: HOSTILE, busy: null }] });
  const cards = agentCards(state);
  assert.equal(cards.length, 1);
  assert.equal(cards[0].name, HOSTILE);
  assert.equal(cards[0].tags, `tags: ${HOSTILE}`);
  assert.equal(cards[0].checkpoint, `checkpoint: ${HOSTILE}`);
});

// --- the cards in a stand-in DOM -----------------------------------------------------------

/** Just enough of the DOM for the pool's cards; markup is refused (innerHTML throws), so text stays text. */
class FakeElement {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.children = [];
    this.dataset = {};
    this.style = {};
    this.attributes = {};
    this.hidden = false;
    this.title = "";
    this.className = "";
    this.text = "";
    this.redraws = 0;
  }

  get textContent() {
    return this.text + this.children.map((child) => child.textContent).join("");
  }

  set textContent(value) {
    this.children = [];
    this.text = String(value);
  }

  set innerHTML(value) {
    throw new Error(`markup set on a ${this.tagName}: ${value}`);
  }

  append(...nodes) {
    for (const node of nodes) {
      if (typeof node === "string") this.text += node;
      else this.children.push(node);
    }
  }

  replaceChildren(...nodes) {
    this.redraws += 1;
    this.children = [];
    this.text = "";
    this.append(...nodes);
  }

  setAttribute(name, value) { this.attributes[name] = String(value); }

  addEventListener() {}

  /** Every element below this one (itself first) for which `match` holds. */
  all(match) {
    return [this, ...this.children.flatMap((child) => child.all(() => true))].filter(match);
  }
}

const created = [];
globalThis.document = {
  createElement(tag) {
    const el = new FakeElement(tag);
    created.push(el);
    return el;
  },
};
const { createPoolSection } = await import("../../web/multigpu_pool_panel.js");

const part = (card, name) => card.all((el) => el.dataset.part === name)[0];

test("the cards show a hostile agent's name, tags and checkpoint as text", () => {
  created.length = 0;
  const section = createPoolSection();
  section.update(withPool({ ...POOL, agents: [
    { id: "h", name: HOSTILE, tags: [HOSTILE], comfyui: true, checkpoint: HOSTILE, busy: null }] }));
  const [card] = section.el.all((el) => el.dataset.agentId === "h");
  assert.equal(part(card, "name").textContent, HOSTILE);
  assert.equal(part(card, "tags").textContent, `tags: ${HOSTILE}`);
  assert.equal(part(card, "checkpoint").textContent, `checkpoint: ${HOSTILE}`);
  assert.deepEqual(created.filter((el) => el.tagName === "IMG"), [], "no element made from an agent's words");
  assert.equal(card.all((el) => el.dataset.action !== undefined).length, 0, "no button: the master cannot act on it");
  assert.match(card.textContent, /Managed on its own machine/);
});

test("the pool's cards are kept, not redrawn, when a status answer changes nothing", () => {
  const section = createPoolSection();
  section.update(withPool(POOL));
  const list = section.el.children[2];
  const cards = [...list.children];
  assert.equal(section.el.hidden, false);
  assert.deepEqual(cards.map((card) => card.dataset.agentId), ["a", "b", "c", "d"]);
  assert.equal(part(section.el, "pool-line").textContent,
               "Joined · 4 agents, 2 running a unit (1 of this master's), 1 without ComfyUI");
  assert.equal(cards[0].dataset.status, "busy");
  assert.equal(part(cards[0], "unit").dataset.mine, "true");
  const redraws = list.redraws;
  section.update(withPool(structuredClone(POOL)));
  assert.equal(list.redraws, redraws, "the same agents: the list is not redrawn");
  assert.ok(list.children.every((card, i) => card === cards[i]), "each card is the same element");
  const idle = structuredClone(POOL);
  idle.agents[0].busy = null;
  section.update(withPool(idle));
  assert.equal(list.redraws, redraws, "an agent that changed is updated in its card");
  assert.equal(list.children[0].dataset.status, "idle");
  assert.equal(part(list.children[0], "unit").hidden, true);
  section.update(withPool({ ...POOL, agents: POOL.agents.slice(1) }));
  assert.deepEqual(list.children.map((card) => card.dataset.agentId), ["b", "c", "d"], "a gone agent's card goes");
  section.update(withPool(undefined));
  assert.equal(section.el.hidden, true, "no pool: the section is hidden");
});
