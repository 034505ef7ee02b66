// What the panel's buttons and forms do: call the master's API, feed the answers to the store,
// and report the outcome as a toast. A refused token is remembered in the store so that the panel
// asks for it. No DOM: unit-tested with a fake client and store (tests/web/).

import { describeClearMemory, describeLaunch } from "./multigpu_client.js";

export function createActions(store, client, notify) {
  const dispatch = (type, data, extra = {}) => store.dispatch({ type, data, ...extra });

  /** A 401 brings the token prompt, told whether the master has a token at all. */
  function askForToken(error) {
    if (error.status !== 401) return;
    dispatch("auth_rejected", null, { message: error.message, configured: error.tokenConfigured });
  }

  /** Runs one API call; a refusal becomes a toast (and the token prompt on 401). Returns the answer or null. */
  async function attempt(summary, call, { quiet = false } = {}) {
    try {
      return await call();
    } catch (error) {
      askForToken(error);
      if (!quiet) notify("error", summary, error.message);
      return null;
    }
  }

  async function refreshConfig() {
    try {
      dispatch("config", await client.getConfig());
      return true;
    } catch (error) {
      if (error.routeMissing) {  // ComfyUI's own 404: this instance has no /multigpu routes (a worker)
        dispatch("passive");
        return false;
      }
      askForToken(error);  // a public master needs the token for reads too
      dispatch("error", null, { message: `Multi-GPU configuration: ${error.message}` });
      return false;
    }
  }

  async function refreshStatus() {
    if (store.state.passive) return;  // nothing to ask; a reconnect's refreshConfig checks again
    const since = store.state.seq;
    try {
      dispatch("status", await client.getStatus(), { since });
    } catch (error) {
      dispatch("error", null, { message: `Multi-GPU status: ${error.message}` });
    }
    try {
      dispatch("master_stats", await client.masterStats());
    } catch {
      // the master's own stats are a nicety; the status banner already tells when it is down
    }
  }

  async function refresh() {
    if (await refreshConfig()) await refreshStatus();
  }

  return {
    refreshConfig,
    refreshStatus,
    refresh,

    async setEnabled(workerId, enabled) {
      const answer = await attempt(`Could not ${enabled ? "enable" : "disable"} the worker`,
        () => client.updateWorker({ worker_id: workerId, enabled }));
      if (answer) dispatch("worker_saved", answer);
      return !!answer;
    },

    async clearMemory(target, label) {
      const answer = await attempt(`Could not clear VRAM (${label})`, () => client.clearMemory(target));
      if (answer) {
        const outcome = describeClearMemory(answer);
        notify(outcome.severity, "Clear VRAM", outcome.text);
      }
      return answer;
    },

    async launch(workerIds) {
      if (!workerIds.length) {
        notify("info", "Launch workers", "Every enabled worker is already running");
        return null;
      }
      const answer = await attempt("Could not launch workers", () => client.launchWorkers(workerIds));
      if (answer) {
        const outcome = describeLaunch(answer);
        notify(outcome.severity, "Launch workers", outcome.text);
      }
      await refreshStatus();
      return answer;
    },

    /** A launched worker's last log lines, or null: with `quiet`, none is not worth a toast (offline notices). */
    async logs(workerId, lines, { quiet = false } = {}) {
      try {
        return (await client.workerLogs(workerId, lines)).lines || [];
      } catch (error) {
        if (!quiet) {
          askForToken(error);
          notify("warn", "Worker log", error.message || String(error));
        }
        return null;
      }
    },

    /** Register (on) or end this page's websocket client for the master's events, with the live previews or not;
     *  the answer, or null (quiet: a refusal shows on the next status refresh, and an older master has no such
     *  route). */
    async watchEvents(clientId, on, previews) {
      try {
        return await client.watchEvents(clientId, on, previews);
      } catch {
        return null;
      }
    },

    async restart(workerId, name) {
      const answer = await attempt(`Could not restart ${name}`, () => client.restartWorker(workerId));
      if (answer) notify("success", "Restart", `Restarting ${name}`);
      await refreshStatus();
      return answer;
    },

    /** Add (editing = null) or update a worker; a refusal is returned for the form instead of a toast. */
    async saveWorker(payload, editing) {
      try {
        const answer = editing ? await client.updateWorker(payload) : await client.addWorker(payload);
        dispatch("worker_saved", answer);
        return { ok: true, worker: answer.worker };
      } catch (error) {
        askForToken(error);
        return { ok: false, error: error.message };
      }
    },

    async removeWorker(workerId, name) {
      const answer = await attempt(`Could not remove ${name}`, () => client.removeWorker(workerId));
      if (answer) {
        dispatch("worker_removed", { id: workerId });
        notify("success", "Workers", `${name} removed`);
      }
      return !!answer;
    },

    /** Saves one setting; returns {ok} or {ok: false, error} for the row. */
    async saveSetting(settingKey, value) {
      try {
        const answer = await client.updateSetting(settingKey, value);
        dispatch("settings", answer.settings);
        if (settingKey === "api_token") {
          client.setToken(value);  // this browser keeps working with the token it just set
          await refreshConfig();
        }
        return { ok: true };
      } catch (error) {
        askForToken(error);
        return { ok: false, error: error.message };
      }
    },

    async saveToken(token) {
      client.setToken(token.trim());
      dispatch("token_saved");
      await refresh();  // a public master shows nothing until the token is known
    },
  };
}
