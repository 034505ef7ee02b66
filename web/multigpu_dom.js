// Small DOM helpers for the Multi-GPU panel: element creation, buttons that show they are busy,
// and meters. Elements are built once and updated in place, so a click is never lost to a redraw
// while progress events arrive several times a second.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

const running = new WeakSet();

/** A button with a PrimeIcons icon; `run` is awaited with the button disabled meanwhile. */
export function button(icon, label, run, { action, iconOnly = false, title, kind = "" } = {}) {
  const el = h("button", {
    type: "button", class: `mgpu-button ${iconOnly ? "mgpu-icon-button" : ""} ${kind}`.trim(),
    title: title || label, "aria-label": title || label, dataset: action ? { action } : undefined,
  }, h("i", { class: `pi ${icon}`, "aria-hidden": "true" }), iconOnly ? null : h("span", { text: label }));
  el.addEventListener("click", async (event) => {
    event.preventDefault();
    if (running.has(el)) return;
    running.add(el);
    el.disabled = true;
    el.classList.add("mgpu-running");
    try {
      await run(event);
    } finally {
      running.delete(el);
      el.classList.remove("mgpu-running");
      el.disabled = el.dataset.unavailable === "true";
    }
  });
  return el;
}

/** Shows or hides a button and enables it unless it is running. */
export function setAvailable(el, visible, enabled = true) {
  el.hidden = !visible;
  el.dataset.unavailable = String(!enabled);
  el.disabled = running.has(el) || !enabled;
}

/** A labelled bar; `set({fraction, text})` fills it (null hides it), `setLabel` renames it (VRAM or RAM). */
export function meter(label, kind) {
  const fill = h("div", { class: "mgpu-bar-fill" });
  const text = h("span", { class: "mgpu-meter-text" });
  const name = h("span", { class: "mgpu-meter-label", text: label });
  const el = h("div", { class: `mgpu-meter mgpu-meter-${kind}`, dataset: { meter: kind } },
    name,
    h("div", { class: "mgpu-bar" }, fill),
    text);
  return {
    el,
    setLabel(next) {
      if (next && name.textContent !== next) name.textContent = next;
    },
    set(value) {
      el.hidden = !value;
      if (!value) return;
      fill.style.width = `${Math.round(Math.min(Math.max(value.fraction, 0), 1) * 1000) / 10}%`;
      text.textContent = value.text;
      el.dataset.fraction = String(value.fraction);
      if (value.state) el.dataset.state = value.state;
    },
  };
}

export function setText(el, text) {
  el.hidden = !text;
  if (el.textContent !== (text || "")) el.textContent = text || "";
}
