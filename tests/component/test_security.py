"""The master's own defences: Host check, token on public masters, what the API may set, the result intake,
config edge cases and the Collector's stash (issue "Safe by default")."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
import tracemalloc

import pytest

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.config import ConfigStore, load_config
from comfy_distributed.errors import ConfigError
from tests.component.api_support import TOKEN, Master, Started, first_prompt, png_bytes, workflow, write_config
from tests.standin import StandinComfy
from tests.waiting import closed_port

ROUTES = [("GET", "/multigpu/config"), ("GET", "/multigpu/status"), ("GET", "/multigpu/openapi.json"),
          ("POST", "/multigpu/config/update_worker"), ("POST", "/multigpu/config/add_worker"),
          ("POST", "/multigpu/config/remove_worker"), ("POST", "/multigpu/config/update_setting"),
          ("POST", "/multigpu/prepare_job"), ("POST", "/multigpu/clear_memory"),
          ("POST", "/multigpu/job_complete")]
REBINDING = {"Host": "attacker.example:8188", "Origin": "http://attacker.example:8188"}


@pytest.fixture
async def make_master(tmp_path, monkeypatch):
    started = Started()

    async def factory(workers: list[dict] | None = None, public: bool = False, **settings) -> Master:
        path = write_config(started.config_path(tmp_path), workers if workers is not None else [
            {"id": 1, "name": "GPU 1", "port": closed_port(), "headers": {"X-Proxy-Key": "proxy-secret"},
             "ssh": {"host": "gpu-box", "user": "alice", "key_file": "/home/alice/.ssh/id_gpu",
                     "comfyui_path": "/srv/comfy"}, "notes": "private note"}], **settings)
        return await started.start(Master(path, public=public))

    yield factory
    await started.close()


# --- 1. DNS rebinding: the Host check -------------------------------------------------------

@pytest.mark.parametrize("method,path", ROUTES)
async def test_rebinding_request_is_refused_on_every_route(make_master, method, path):
    master = await make_master()
    before = master.path.read_bytes()
    body = {"worker_id": 1, "extra_args": "--listen"} if path.endswith("update_worker") else {}
    status, answer = await master.call(method, path, body if method == "POST" else None, headers=REBINDING)
    assert status == 403, answer
    assert "settings.allowed_hosts" in answer["error"] and answer["host"] == "attacker.example:8188"
    assert master.path.read_bytes() == before


@pytest.mark.parametrize("host", ["127.0.0.1:8188", "localhost:8188", "LOCALHOST", "[::1]:8188", "127.0.0.2",
                                  "localhost."])
async def test_loopback_hosts_are_accepted(make_master, host):
    master = await make_master()
    status, _ = await master.call("GET", "/multigpu/config", headers={"Host": host})
    assert status == 200


async def test_a_listed_host_name_is_accepted(make_master):
    master = await make_master(allowed_hosts=["mybox.local"])
    status, _ = await master.call("GET", "/multigpu/config", headers={"Host": "MyBox.local:8188"})
    assert status == 200
    status, _ = await master.call("GET", "/multigpu/config", headers={"Host": "mybox.local.attacker.example"})
    assert status == 403


async def test_a_listed_ipv6_address_is_accepted_with_or_without_brackets(make_master):
    master = await make_master(allowed_hosts=["[fd00::1]", "fd00::2"])
    assert load_config(master.path).settings.allowed_hosts == ["fd00::1", "fd00::2"]
    for host in ("[fd00::1]:8188", "[FD00::2]"):
        status, _ = await master.call("GET", "/multigpu/config", headers={"Host": host})
        assert status == 200, host
    status, _ = await master.call("GET", "/multigpu/config", headers={"Host": "[fd00::3]:8188"})
    assert status == 403


async def test_rebinding_cannot_launch_set_a_token_or_free_memory(make_master):
    master = await make_master()
    for path, body in (("/multigpu/config/update_setting", {"key": "api_token", "value": "x" * 20}),
                       ("/multigpu/clear_memory", {}), ("/multigpu/config/add_worker", {"port": 9100})):
        status, _ = await master.call("POST", path, body, headers=REBINDING)
        assert status == 403
    assert master.freed == 0 and load_config(master.path).settings.api_token is None


def test_host_names_and_public_masters():
    from comfy_distributed.api.access import host_name, is_public

    assert host_name("[::1]:8188") == "::1" and host_name("Localhost:1") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("evil.example.:80") == "evil.example"
    assert not is_public("127.0.0.1", None)
    assert is_public("127.0.0.1", "*"), "--enable-cors-header lets every page read the answers"
    assert is_public("0.0.0.0,::", None)


# --- 10. a public master needs the token for reads too ----------------------------------------

async def test_public_master_needs_the_token_for_reads(make_master, monkeypatch):
    master = await make_master(public=True)
    for path in ("/multigpu/config", "/multigpu/status"):
        status, body = await master.call("GET", path, headers=REBINDING)
        assert status == 401 and "api_token" in body["error"]
    master.api.env_token = TOKEN  # as COMFY_DISTRIBUTED_TOKEN read at start
    status, body = await master.call("GET", "/multigpu/config")
    assert status == 401
    status, body = await master.call("GET", "/multigpu/config", token=TOKEN, headers={"Host": "192.168.1.5:8188"})
    assert status == 200 and body["auth"]["public"] is True
    status, _ = await master.call("GET", "/multigpu/openapi.json")
    assert status == 200


async def test_config_view_redacts_ssh_and_unknown_keys(make_master):
    master = await make_master()
    status, body = await master.call("GET", "/multigpu/config")
    text = json.dumps(body)
    assert status == 200
    assert body["workers"][0]["ssh"] == {"host": "gpu-box"}
    for secret in ("alice", "id_gpu", "/srv/comfy", "private note", "proxy-secret"):
        assert secret not in text
    assert json.loads(master.path.read_text())["workers"][0]["notes"] == "private note"  # the file keeps it


# --- 2. launch flags through the API -----------------------------------------------------------

@pytest.mark.parametrize("extra_args,flag", [
    ("--base-directory /tmp/x", "--base-directory"), ("--listen --base-directory=/tmp/x", "--base-directory"),
    ("--input-directory /tmp", "--input-directory"), ("--output-directory=/tmp", "--output-directory"),
    ("--temp-directory /t", "--temp-directory"), ("--user-directory /u", "--user-directory"),
    ("--front-end-root /f", "--front-end-root"), ("--extra-model-paths-config a.yaml", "--extra-model-paths-config"),
    ("--base-dir /tmp", "--base-dir"), ("--some-new-directory /x", "--some-new-directory"),
    ("'--front-end-root' /x", "--front-end-root"), ("--database-url sqlite:////tmp/x.db", "--database-url"),
])
async def test_api_refuses_flags_that_move_comfyui_folders(make_master, extra_args, flag):
    master = await make_master()
    before = master.path.read_bytes()
    status, body = await master.call("POST", "/multigpu/config/update_worker", {"worker_id": 1, "extra_args": extra_args})
    assert status == 400 and flag in body["error"] and flag in body["flags"]
    status, body = await master.call("POST", "/multigpu/config/add_worker", {"port": 9555, "extra_args": extra_args})
    assert status == 400 and flag in body["error"]
    assert master.path.read_bytes() == before


@pytest.mark.parametrize("extra_args", ["--listen", "--highvram", "--reserve-vram 2", "--enable-cors-header",
                                        "--mmap-torch-files --listen --reserve-vram 2", "--cpu", ""])
async def test_api_keeps_ordinary_flags(make_master, extra_args):
    master = await make_master()
    status, body = await master.call("POST", "/multigpu/config/update_worker", {"worker_id": 1, "extra_args": extra_args})
    assert status == 200, body
    assert load_config(master.path).workers[0].extra_args == extra_args


async def test_unbalanced_quotes_are_a_clear_400(make_master):
    master = await make_master()
    status, body = await master.call("POST", "/multigpu/config/update_worker", {"worker_id": 1, "extra_args": "'--x"})
    assert status == 400 and "extra_args" in body["error"]


def test_file_may_still_say_anything(tmp_path):
    from comfy_distributed.api.access import forbidden_launch_flags

    path = write_config(tmp_path / "gpu_config.json", [{"id": 1, "port": 9001, "extra_args": "--base-directory /x"}])
    assert load_config(path).workers[0].extra_args == "--base-directory /x"
    assert forbidden_launch_flags("--base-directory /x") == ["--base-directory"]


# --- 4. headers never follow a changed address ---------------------------------------------------

async def test_changing_the_address_drops_stored_headers(make_master):
    master = await make_master()
    status, body = await master.call("POST", "/multigpu/config/update_worker",
                                     {"worker_id": 1, "host": "elsewhere.example"})
    assert status == 200 and body["worker"]["headers"] == {}
    assert load_config(master.path).workers[0].headers == {}


async def test_masked_headers_cannot_follow_a_new_address(make_master):
    master = await make_master()
    status, body = await master.call("POST", "/multigpu/config/update_worker",
                                     {"worker_id": 1, "port": 9777, "headers": {"X-Proxy-Key": "***"}})
    assert status == 400 and "again" in body["error"]
    assert load_config(master.path).workers[0].headers == {"X-Proxy-Key": "proxy-secret"}
    status, body = await master.call("POST", "/multigpu/config/update_worker",
                                     {"worker_id": 1, "port": 9777, "headers": {"X-Proxy-Key": "new-secret"}})
    assert status == 200 and load_config(master.path).workers[0].headers == {"X-Proxy-Key": "new-secret"}
    status, body = await master.call("POST", "/multigpu/config/update_worker",
                                     {"worker_id": 1, "name": "renamed", "headers": {"X-Proxy-Key": "***"}})
    assert status == 200 and load_config(master.path).workers[0].headers == {"X-Proxy-Key": "new-secret"}


# --- 3. the result intake: identity before the body ------------------------------------------------

async def _junk(total: int, chunk: bytes):
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)


async def test_junk_callback_is_refused_before_its_body_is_read(make_master):
    master = await make_master(workers=[])
    chunk = b'{"a":1},' * 8192
    tracemalloc.start()
    try:
        started = time.monotonic()
        response = await master.client.post(
            "/multigpu/job_complete", data=_junk(60 * 1024 * 1024, chunk),
            headers={"X-MultiGPU-Job": "x" * 32, "X-MultiGPU-Worker": "1", "X-MultiGPU-Share-Token": "guess",
                     "Content-Type": "application/json"})
        status = response.status
        body = await response.json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 404 and "no job" in body["error"]
    assert peak < 20 * 1024 * 1024, f"the master held {peak / 2**20:.0f} MiB for a refused callback"
    status, _ = await master.call("GET", "/multigpu/config")
    assert status == 200 and time.monotonic() - started < 30


async def test_a_share_owner_cannot_bloat_the_master_either(tmp_path, monkeypatch):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.gate = asyncio.Event()
        path = write_config(tmp_path / "gpu_config.json", [{"id": 1, "port": w1.port}])
        master = Master(path)
        await master.client.start_server()
        try:
            _, job = master.orchestrator.prepare(workflow())
            master.orchestrator.start(job)
            share = (await first_prompt(w1))["extra_data"]["multigpu"]
            who = {"X-MultiGPU-Job": job.job_id, "X-MultiGPU-Worker": "1",
                   "X-MultiGPU-Share-Token": share["share_token"]}
            tiny = b'{"outputs": {"3": [' + b"{}," * 3_000_000 + b'{}]}}'
            status, body = await master.call("POST", "/multigpu/job_complete", raw=tiny, headers=who)
            assert status == 400 and "outputs" in body["error"]
            big = b'{"outputs": {"3": ["' + b"A" * (100 * 1024 * 1024) + b'"]}}'
            status, body = await master.call("POST", "/multigpu/job_complete", raw=big, headers=who)
            assert status == 413
            png = base64.b64encode(png_bytes()).decode()
            status, body = await master.call("POST", "/multigpu/job_complete", {"outputs": {"3": [png]}}, headers=who)
            assert status == 200
            result = await asyncio.to_thread(master.orchestrator.collect, job.job_id, "3", lambda: False)
            assert [len(blobs) for _, blobs in result.images] == [1]
            w1.gate.set()
        finally:
            await master.client.close()


@pytest.mark.parametrize("field,value", [("job_id", ["J"]), ("share_token", {"s": 1}), ("worker_id", 1.0),
                                         ("worker_id", True), ("worker_id", ["1"]), ("job_id", "other")])
def test_identity_in_the_body_must_equal_its_header_exactly(field, value):
    from comfy_distributed.api.access import ApiError
    from comfy_distributed.api.job_complete import parse_results

    identity = ("J", "1", "s")
    assert parse_results(json.dumps({"worker_id": 1, "job_id": "J", "outputs": {}}).encode(), identity, 1) == {}
    with pytest.raises(ApiError, match=field):
        parse_results(json.dumps({field: value, "outputs": {}}).encode(), identity, 1)


def test_nesting_depth_skips_strings_with_escapes_and_brackets():
    from comfy_distributed.config.json_limits import MAX_DEPTH, loads_bounded, nesting_depth

    assert nesting_depth(b'{"a": "[[[\\\"{{{", "b": [[1]]}') == 3
    assert nesting_depth(b'["' + b"x" * 5_000_000 + b'"]') == 1
    assert loads_bounded(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(ValueError, match="deeper"):
        loads_bounded(b'{"s": "]]]", "x": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}")


async def test_job_complete_needs_the_token_when_one_is_configured(make_master, monkeypatch):
    master = await make_master(workers=[])
    master.api.env_token = TOKEN
    who = {"X-MultiGPU-Job": "j", "X-MultiGPU-Worker": "1", "X-MultiGPU-Share-Token": "s"}
    status, _ = await master.call("POST", "/multigpu/job_complete", {"outputs": {}}, headers=who)
    assert status == 401
    status, _ = await master.call("POST", "/multigpu/job_complete", {"outputs": {}}, headers=who, token=TOKEN)
    assert status == 404


# --- 11. config edge cases -------------------------------------------------------------------------

@pytest.mark.parametrize("content,words", [
    (b'{"workers": [], "settings": {"x": "\xff\xfe"}}', "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
])
def test_unreadable_config_files_are_config_errors(tmp_path, content, words):
    path = tmp_path / "gpu_config.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=words):
        ConfigStore(path).get()


def test_config_under_a_file_is_a_config_error(tmp_path):
    (tmp_path / "not-a-folder").write_text("x")
    store = ConfigStore(tmp_path / "not-a-folder" / "gpu_config.json")
    with pytest.raises(ConfigError, match="cannot be read"):
        store.get()
    with pytest.raises(ConfigError, match="cannot be saved"):
        from comfy_distributed.config import GpuConfig, save_config
        save_config(store.path, GpuConfig())


async def test_broken_config_is_a_409_not_a_500(make_master):
    master = await make_master()
    master.path.write_bytes(b'{"workers": [\xff]}')
    for method, path in (("GET", "/multigpu/config"), ("POST", "/multigpu/config/update_worker")):
        status, body = await master.call(method, path, {"worker_id": 1, "enabled": False} if method == "POST" else None)
        assert status == 409 and "UTF-8" in body["error"]


def test_prompt_with_a_broken_config_fails_loudly_not_on_the_master_alone(tmp_path):
    from comfy_distributed.collector.orchestrator import Orchestrator

    path = tmp_path / "gpu_config.json"
    path.write_bytes(b"[" * 100_000)
    _, job = Orchestrator(Cluster(ConfigStore(path))).prepare(workflow())
    assert job is not None and "nested too deeply" in (job.error or "")


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
async def test_file_holding_the_token_is_owner_only(make_master):
    master = await make_master()
    os.chmod(master.path, 0o644)
    status, _ = await master.call("POST", "/multigpu/config/update_setting", {"key": "api_token", "value": TOKEN})
    assert status == 200
    assert stat.S_IMODE(master.path.stat().st_mode) == 0o600


# --- 12. the Collector's stash is freed when its job ends --------------------------------------------

async def test_stash_is_freed_when_a_master_rerun_is_cancelled(tmp_path, monkeypatch):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.gate = asyncio.Event()
        path = write_config(tmp_path / "gpu_config.json", [{"id": 1, "port": w1.port}])
        master = Master(path)
        await master.client.close()  # only its orchestrator is needed here
        _, job = master.orchestrator.prepare(workflow())
        master.orchestrator.start(job, prompt_id="p1")
        master.orchestrator.stash(job.job_id, "3", {0: {"images": object()}})
        assert master.orchestrator.stashed() == 1
        # the master's re-run failed: its prompt ended, and the reaper cancels the job
        assert master.orchestrator.cancel_prompts({"p1"}, "the master's prompt ended") == 1
        assert master.orchestrator.stashed() == 0
        w1.gate.set()
        deadline = time.monotonic() + 10
        while not job.closed and time.monotonic() < deadline:  # the job releases its connections
            await asyncio.sleep(0.02)
        assert job.closed
        await master.orchestrator.close()  # the workers' sessions, kept across jobs, close with the master
        await master.orchestrator.cluster.close()
