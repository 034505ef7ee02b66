"""A page of another site, in real headless Chromium, against a real loopback master without a token.

Why: a page the user visits in another tab can send "simple" requests (a ``text/plain`` POST, no CORS
preflight) to ``http://127.0.0.1:8188`` from itself and from a sandboxed iframe (``Origin: null``,
which ComfyUI 0.3.64's own origin check lets through), and can open websockets to the master. Only a
real browser shows what it really sends. The page (``cross_site/attack.html``) is served from another
loopback address (127.0.0.2); it tries to set ``queue_mode``, add a worker, change a worker's
``extra_args``, set a token, launch workers and register for the events, with and without ``/api``,
while its sockets listen. A distributed job then runs. Nothing may change on the master and neither
socket may receive a ``multigpu.*`` event.

Skipped, with the reason, like the sidebar test (``COMFYUI_PATH``, Node.js, ``npm ci``, Chromium).
"""

from __future__ import annotations

import functools
import json
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser.browser_support import CHROMIUM, NODE, ROOT, skip_reason
from tests.real.cluster import Cluster, image_workflow

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "cross_site_page.mjs"
PAGES = HERE / "cross_site"
OTHER_SITE = "127.0.0.2"

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.mark.timeout(600)
def test_a_page_of_another_site_changes_nothing_and_hears_nothing(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, workers=(), plain=("w1",))
    server = ThreadingHTTPServer((OTHER_SITE, 0), functools.partial(_Quiet, directory=str(PAGES)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cluster.use_workers(cluster.w1)
        before = cluster.config_path.read_bytes()
        url = f"http://{OTHER_SITE}:{server.server_address[1]}/attack.html?master={cluster.master.url}"
        browser = subprocess.Popen([NODE, str(SCRIPT), url, CHROMIUM or ""], cwd=ROOT, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert browser.stdout is not None and browser.stdin is not None
            ready = browser.stdout.readline().strip()
            assert ready == "READY", f"{ready}\n{browser.stderr.read() if browser.stderr else ''}"
            entry, events, _ = cluster.run(image_workflow(seed=31, delay=0.5))  # a registered client, as the panel
            browser.stdin.write("go\n")
            browser.stdin.flush()
            out, err = browser.communicate(timeout=60)
        finally:
            if browser.poll() is None:
                browser.kill()
                browser.communicate()
        assert browser.returncode == 0, err[-4000:]
        seen = json.loads(out.strip().splitlines()[-1])
    finally:
        server.shutdown()
        server.server_close()
        cluster.stop()
    assert entry["status"]["status_str"] == "success"
    assert any(e["type"] == "multigpu.job_done" for e in events), "the registered client got the job's events"
    assert cluster.config_path.read_bytes() == before, "a page of another site changed the configuration"
    sent = {(r["origin"], r["path"]) for r in seen if r["kind"] == "sent"}
    assert ("iframe", "/multigpu/config/update_setting") in sent and ("page", "/api/multigpu/events") in sent, \
        f"the browser did not even send the requests: {seen}"
    iframe_socket = [r for r in seen if r["origin"] == "iframe" and r["kind"].startswith("ws-")]
    assert iframe_socket and iframe_socket[0]["kind"] == "ws-open", "the sandboxed iframe's socket did not open"
    assert any(r["kind"] == "ws-message" and r["type"] == "status" for r in iframe_socket), "it heard nothing at all"
    leaked = [r for r in seen if r["kind"] == "ws-message" and str(r["type"]).startswith("multigpu.")]
    assert leaked == [], leaked
