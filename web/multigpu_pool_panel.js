// The shared pool's part of the Multi-GPU panel: a heading and a card per live agent, in the worker cards' look
// (multigpu.css). Built once and updated in place like the worker cards; every value goes in as text, never as
// markup, since an agent's name, tags and checkpoint are its own words.

import { h, meter, setText } from "./multigpu_dom.js";
import { AGENT_MANAGED, agentCards, poolHeading } from "./multigpu_pool.js";

/** One live agent of the shared pool, in a worker card's look, updated in place. Text only: its name, tags and
 *  checkpoint are the agent's own words. No buttons: the master has no route to an agent (it is managed on its own
 *  machine). */
function createAgentCard(id) {
  const dot = h("span", { class: "mgpu-dot" });
  const name = h("span", { class: "mgpu-name", dataset: { part: "name" } });
  const badge = h("span", { class: "mgpu-badge", dataset: { part: "state" } });
  const tags = h("div", { class: "mgpu-meta", dataset: { part: "tags" } });
  const unit = h("div", { class: "mgpu-detail", dataset: { part: "unit" } });
  const checkpoint = h("div", { class: "mgpu-detail", dataset: { part: "checkpoint" } });
  const failure = h("div", { class: "mgpu-detail mgpu-failure" });
  const progress = meter("Unit", "progress");
  const el = h("div", { class: "mgpu-card mgpu-agent", dataset: { agentId: id } },
    h("div", { class: "mgpu-card-head" }, dot, name, h("span", { class: "mgpu-tag", text: "pool agent" }), badge),
    tags, unit, checkpoint, failure, progress.el, h("div", { class: "mgpu-hint", text: AGENT_MANAGED }));
  return {
    el,
    update(vm) {
      for (const node of [el, dot, badge]) node.dataset.status = vm.status;
      dot.title = vm.statusText;
      setText(badge, vm.statusText);
      setText(name, vm.name);
      name.title = vm.name;
      setText(tags, vm.tags);
      setText(unit, vm.unit);
      unit.title = vm.unit || "";
      unit.dataset.mine = String(vm.mine);
      setText(checkpoint, vm.checkpoint);
      checkpoint.title = vm.checkpoint || "";
      setText(failure, vm.failure);
      progress.set(vm.progress);
    },
  };
}

/** The shared pool (GET /multigpu/status' pool): a heading and a card per live agent, hidden without a pool; cards
 *  are kept across updates by agent id, so nothing is redrawn that did not change. */
export function createPoolSection() {
  const title = h("div", { class: "mgpu-pool-title", dataset: { part: "pool-title" } });
  const line = h("div", { class: "mgpu-summary", dataset: { part: "pool-line" } });
  const list = h("div", { class: "mgpu-cards" });
  const el = h("section", { class: "mgpu-pool", dataset: { part: "pool" }, hidden: true }, title, line, list);
  const cards = new Map();
  return {
    el,
    update(state) {
      const heading = poolHeading(state);
      el.hidden = heading === null;
      if (heading === null) return;
      el.dataset.joined = String(heading.joined);
      setText(title, heading.title);
      title.title = heading.title;
      setText(line, heading.line);
      const order = [];
      const seen = new Set();
      for (const vm of agentCards(state)) {
        seen.add(vm.id);
        if (!cards.has(vm.id)) cards.set(vm.id, createAgentCard(vm.id));
        cards.get(vm.id).update(vm);
        order.push(cards.get(vm.id).el);
      }
      for (const id of [...cards.keys()]) if (!seen.has(id)) cards.delete(id);
      const same = order.length === list.children.length && order.every((card, i) => list.children[i] === card);
      if (!same) list.replaceChildren(...order);
    },
  };
}
