// Shows the master's Multi-GPU messages (a worker left out of a job) as toasts.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

function toast(severity, detail) {
  const toasts = app.extensionManager?.toast;
  if (toasts) toasts.add({ severity, summary: "Multi-GPU", detail, life: 8000 });
  else console.warn(`[Multi-GPU] ${detail}`);
}

app.registerExtension({
  name: "ComfyUI-Distributed.multigpu",
  setup() {
    api.addEventListener("multigpu.worker_failed", (event) => toast("warn", event.detail.message));
  },
});
