// The shared pool in the panel: its heading and a card per live agent, from GET /multigpu/status' pool. No DOM and
// no network here (unit-tested in tests/web/). Every value is text the master read from the pool's agents, which
// may be hostile: the DOM layer shows it as text only.

import { formatPercent } from "./multigpu_state.js";

const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;
const text = (value) => (typeof value === "string" && value ? value : null);
const count = (value) => (Number.isInteger(value) && value >= 0 ? value : null);

/** What the master says of its pool, or null without a pool (or from an answer not in its shape). */
function poolOf(state) {
  const pool = state.pool;
  return pool && typeof pool === "object" && typeof pool.pool === "string" ? pool : null;
}

function agentsOf(pool) {
  return (Array.isArray(pool.agents) ? pool.agents : [])
    .filter((agent) => agent && typeof agent === "object" && text(agent.name) && text(agent.id));
}

/** The unit an agent runs ({jobId, position, attempt, mine}), or null: it runs none. `mine`: the job is this
 *  master's (the pool's busy.master is the master's own pool id), null when the master did not say its id. */
export function agentUnit(busy, masterId) {
  if (!busy || typeof busy !== "object" || !text(busy.job_id)) return null;
  const mine = text(masterId) && text(busy.master) ? busy.master === masterId : null;
  return { jobId: busy.job_id, position: count(busy.position), attempt: count(busy.attempt), mine };
}

/** "unit 2 · attempt 1 · job 01234567 (this master's)" */
function unitLine(unit) {
  const whose = unit.mine === true ? " (this master's)" : unit.mine === false ? " (another master's)" : "";
  return [unit.position !== null ? `unit ${unit.position}` : "a unit",
          unit.attempt !== null ? `attempt ${unit.attempt}` : null,
          `job ${unit.jobId.slice(0, 8)}${whose}`].filter(Boolean).join(" · ");
}

/** The progress of the unit an agent runs for this master, from the job's units the master reports (its other
 *  masters' jobs are not known here). */
function unitProgress(unit, jobs) {
  const job = unit && unit.mine ? jobs[unit.jobId] : null;
  const found = job && (job.units || []).find((u) => u.position === unit.position);
  if (!found) return null;
  const fraction = Math.min(Math.max(Number(found.progress) || 0, 0), 1);
  const text = `unit ${unit.position} · ${formatPercent(fraction)}`;
  return { jobId: unit.jobId, fraction, state: found.state, text };
}

/** How an agent stands: its ComfyUI does not answer (it takes no unit), it runs a unit, or it is idle. */
function agentStatus(agent, unit) {
  if (!agent.comfyui) return { status: "error", statusText: "No ComfyUI" };
  return unit ? { status: "busy", statusText: "Running" } : { status: "idle", statusText: "Idle" };
}

export const AGENT_MANAGED = "Managed on its own machine";

/** A card per live agent of the pool, in the master's order; none without a pool or before it answered. */
export function agentCards(state) {
  const pool = poolOf(state);
  if (!pool || !pool.joined) return [];
  return agentsOf(pool).map((agent) => {
    const unit = agentUnit(agent.busy, pool.master);
    const tags = (Array.isArray(agent.tags) ? agent.tags : []).filter((tag) => text(tag));
    return {
      id: String(agent.id),
      name: agent.name,
      ...agentStatus(agent, unit),
      tags: tags.length ? `tags: ${tags.join(", ")}` : "no tags",
      unit: unit ? unitLine(unit) : null,
      mine: unit ? unit.mine : null,
      checkpoint: text(agent.checkpoint) ? `checkpoint: ${agent.checkpoint}` : null,
      failure: agent.comfyui ? null : "Its ComfyUI does not answer: it takes no unit",
      progress: unitProgress(unit, state.jobs || {}),
    };
  });
}

/** The pool's heading: its label, whether the master reached it, and how its agents stand; null without a pool. */
export function poolHeading(state) {
  const pool = poolOf(state);
  if (!pool) return null;
  const title = `Shared ${pool.pool}`;
  if (!pool.joined) return { title, line: "Not reached yet (the master keeps trying)", joined: false };
  const cards = agentCards(state);
  const running = cards.filter((card) => card.unit !== null);
  const mine = running.filter((card) => card.mine === true).length;
  const down = cards.filter((card) => card.status === "error").length;
  const parts = [`Joined · ${plural(cards.length, "agent")}`];
  if (running.length) parts.push(`${running.length} running a unit${mine ? ` (${mine} of this master's)` : ""}`);
  if (down) parts.push(`${down} without ComfyUI`);
  return { title, line: parts.join(", "), joined: true };
}

/** The pool's part of the panel's summary line (agents are counted apart from the configured workers); null
 *  without a pool. */
export function poolSummary(state) {
  const pool = poolOf(state);
  if (!pool) return null;
  if (!pool.joined) return "pool not reached yet";
  const cards = agentCards(state);
  const counts = ["busy", "idle", "error"].map((status) => [status, cards.filter((c) => c.status === status).length]);
  const words = { busy: "running", idle: "idle", error: "without ComfyUI" };
  const parts = counts.filter(([, n]) => n).map(([status, n]) => `${n} ${words[status]}`);
  return cards.length ? `${plural(cards.length, "pool agent")}: ${parts.join(", ")}` : "no pool agent live";
}
