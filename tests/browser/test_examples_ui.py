"""The shipped UI examples in real headless Chromium against a real master with one worker.

Why: ComfyUI offers every custom node's ``example_workflows/`` as templates, and only the real frontend says
whether a file loads (a file it cannot read shows "Workflow does not contain a valid version", a node it does not
know a "missing nodes" dialog). This starts a master with this extension and one plain worker (tier 3, like
``tests/real``), then runs ``examples_ui.mjs`` (playwright-core driving Debian's ``chromium``): it lists the
templates ComfyUI serves, loads each example through ComfyUI's templates route with no toast, dialog or page
error, and runs the CPU-sized example from the UI to its end on the master and the worker (the random SD1.5
checkpoint under the example's checkpoint name). Then, outside the browser: the frontend's own API prompt of each
example is the example's ``api_workflows/`` graph, and so is what ``comfy_distributed.graph.ui_workflow`` makes of the
workflow as the frontend saves it, with the master's ``/object_info``.

``COMFYUI_FRONT_END_ROOT`` runs the master with a newer frontend (the ``static`` folder of
comfyui-frontend-package). Skipped, with the reason, where ``browser_support.skip_reason`` says
(``COMFYUI_PATH``, Node.js, ``node_modules/playwright-core``, Chromium). Screenshots go to ``test-artifacts/browser-examples/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from comfy_distributed.graph.ui_format import parse_ui_workflow
from comfy_distributed.graph.ui_workflow import to_api_prompt
from tests.browser.browser_support import CHROMIUM, FRONT_END_ROOT, run_driver, skip_reason
from tests.real.cluster import Cluster
from tests.real.harness import ComfyInstance, http_json, link_model, random_sd15

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "examples_ui.mjs"
ARTIFACTS = ROOT / "test-artifacts" / "browser-examples"
PACK = "ComfyUI-Distributed"
"""The extension's folder name under custom_nodes, which names its templates."""
EXAMPLES = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))
RUN_EXAMPLE = "txt2img_cpu"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
"""The checkpoint the examples name; the test links the random SD1.5 one under this name."""

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


class ExamplesCluster(Cluster):
    """A master (with a newer frontend when ``COMFYUI_FRONT_END_ROOT`` names one) and one worker."""

    def _start(self, name: str, base: Path, **kwargs) -> ComfyInstance:
        if name == "master" and FRONT_END_ROOT:
            kwargs["extra_args"] = [*(kwargs.get("extra_args") or []), "--front-end-root", FRONT_END_ROOT]
        return super()._start(name, base, **kwargs)


def _api_graph(name: str) -> dict:
    return json.loads((ROOT / "api_workflows" / f"{name}.json").read_text())


def _without_meta(output: dict) -> dict:
    """The frontend's prompt as Export (API) writes it, less the titles it adds (``_meta``, ignored by ComfyUI)."""
    return {node_id: {"class_type": node["class_type"], "inputs": node["inputs"]} for node_id, node in output.items()}


def drive_browser(tmp_path: Path) -> tuple[dict, dict]:
    """Start the cluster, run the driver; its report and the master's ``/object_info``."""
    checkpoint = random_sd15()
    cluster = ExamplesCluster(tmp_path, workers=("w1",))
    try:
        for instance in (cluster.master, cluster.w1):
            link_model(instance.base_dir, "checkpoints", checkpoint, CHECKPOINT)
        # the tiled upscale's Load Image names example.png, as its note says to provide (newer frontends mark a
        # Load Image whose file the master lacks as an error)
        Image.new("RGB", (64, 48), (90, 120, 200)).save(cluster.master.base_dir / "input" / "example.png")
        cluster.use_workers(cluster.w1)
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        plan = {"master": cluster.master.url, "chromium": CHROMIUM, "artifacts": str(ARTIFACTS),
                "report": str(ARTIFACTS / "report.json"), "pack": PACK, "names": EXAMPLES,
                "run": {"name": RUN_EXAMPLE, "timeout_ms": 600_000}}
        run_driver(SCRIPT, plan, tmp_path / "plan.json", cluster.master, timeout=900)
        return json.loads(Path(plan["report"]).read_text()), \
            http_json("GET", f"{cluster.master.url}/object_info", timeout=60)
    finally:
        cluster.stop()


@pytest.mark.timeout(1200)
def test_every_example_loads_and_the_cpu_example_runs(tmp_path: Path) -> None:
    report, object_info = drive_browser(tmp_path)
    startup = report["startup"]
    assert not startup["dialogs"], f"the page opened with {startup['dialogs']}"
    ours = [e for e in startup["page_errors"] if f"/extensions/{PACK}/" in e]
    assert not ours, f"this extension's script failed as the page opened: {ours}"
    assert sorted(report["templates"].get(PACK, [])) == EXAMPLES, report["templates"]
    for name in EXAMPLES:
        seen = report["examples"][name]
        assert seen["status"] == 200, f"{name}: the templates route answered {seen['status']}"
        assert not seen["toasts"] and not seen["dialogs"], f"{name}: {seen['toasts']} {seen['dialogs']}"
        assert not seen["page_errors"] and not seen["node_errors"], f"{name}: {seen['page_errors']} {seen['node_errors']}"
        expected = _api_graph(name)
        assert _without_meta(seen["output"]) == expected, f"{name}: the frontend's own API prompt differs"
        converted = to_api_prompt(parse_ui_workflow(seen["saved"]), object_info)
        assert converted.prompt == expected, f"{name}: the workflow as the frontend saves it converts otherwise"

    run = report["run"]
    assert run["ended"] and run["ended"]["type"] == "execution_success", run
    assert run["images"] == 2, f"the master's image and the worker's: {run['images']}"
    assert run["events"].get("multigpu.job_progress", 0) >= 1 and run["events"].get("multigpu.job_done") == 1, run
    assert not run["events"].get("multigpu.worker_failed"), run
    assert not run["toasts"] and not run["dialogs"] and not run["page_errors"], run
