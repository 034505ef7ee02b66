"""Unknown keys of gpu_config.json: kept in the file, reported where they are with the key they may mean."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from comfy_distributed.comfy.adapter import log_config_warnings, startup_warnings
from comfy_distributed.config import ConfigStore, GpuConfig, load_config, parse_config, unknown_key_warnings

EXAMPLE = Path(__file__).resolve().parents[2] / "gpu_config.example.json"


def worker(**fields) -> dict:
    return {"id": 1, "name": "GPU 1", "port": 8189, **fields}


@pytest.mark.parametrize("data, warning", [
    ({"worker": []}, "top level: unknown key 'worker' (did you mean 'workers'?) is ignored"),
    ({"worker_timeout": 5}, "top level: unknown key 'worker_timeout' (it is a key of settings) is ignored"),
    ({"master": {"prot": 8188}}, "master: unknown key 'prot' (did you mean 'port'?) is ignored"),
    ({"master": {"Port": 8188}}, "master: unknown key 'Port' (did you mean 'port'?) is ignored"),
    ({"master": {"name": "main"}}, "master: unknown key 'name' (it is a key of a worker) is ignored"),
    ({"workers": [worker(enabeld=False)]},
     "worker 1 (GPU 1): unknown key 'enabeld' (did you mean 'enabled'?) is ignored"),
    ({"workers": [worker(cuda=1)]}, "worker 1 (GPU 1): unknown key 'cuda' (did you mean 'cuda_device'?) is ignored"),
    ({"workers": [{"id": "box", "port": 8189, "hots": "10.0.0.2"}]},
     "worker box: unknown key 'hots' (did you mean 'host'?) is ignored"),
    ({"workers": [worker(ssh={"host": "box", "comfyui_path": "/srv/ComfyUI", "keyfile": "~/.ssh/id"})]},
     "worker 1 (GPU 1), ssh: unknown key 'keyfile' (did you mean 'key_file'?) is ignored"),
    ({"settings": {"worker_timout": 30}},
     "settings: unknown key 'worker_timout' (did you mean 'worker_timeout'?) is ignored"),
    ({"settings": {"queue_mod": "all"}}, "settings: unknown key 'queue_mod' (did you mean 'queue_mode'?) is ignored"),
    ({"settings": {"color": "blue"}}, "settings: unknown key 'color' is ignored"),
], ids=lambda value: json.dumps(value)[:40] if isinstance(value, dict) else "")
def test_an_unknown_key_is_reported_where_it_is_with_the_key_it_may_mean(data, warning):
    assert unknown_key_warnings(parse_config(data)) == [warning]


def test_a_worker_is_named_by_its_id_and_name_never_its_place_in_the_list():
    config = parse_config({"workers": [{"id": 7, "port": 8189}, {"id": 3, "name": "GPU 3", "port": 8190, "x": 1}]})
    assert unknown_key_warnings(config) == ["worker 3 (GPU 3): unknown key 'x' is ignored"]


def test_every_level_in_file_order_and_notes_left_out():
    config = parse_config({
        "_comment": "my cluster", "master": {"_note": "x", "cuda": 0},
        "workers": [worker(enabeld=True, _why="fast")], "settings": {"retries": 3},
    })
    assert [w.split(":")[0] for w in unknown_key_warnings(config)] == ["master", "worker 1 (GPU 1)", "settings"]


def test_the_known_keys_and_the_example_give_no_warning():
    assert unknown_key_warnings(GpuConfig()) == []
    assert unknown_key_warnings(load_config(EXAMPLE)) == []


def test_unknown_keys_are_still_kept_in_a_saved_file(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"workers": [worker(enabeld=False)]}))
    ConfigStore(path).update_data(lambda data: data["workers"][0].update(port=8191))
    saved = json.loads(path.read_text())
    assert saved["workers"][0]["enabeld"] is False and saved["workers"][0]["port"] == 8191


def test_the_store_reports_the_warnings_of_a_changed_file_not_those_it_already_held(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"settings": {"worker_timout": 30}}))
    store, reported = ConfigStore(path), []
    store.get()  # the version the master reads at start (and says itself)
    store.report_warnings(reported.append)
    store.get()
    assert reported == []
    path.write_text(json.dumps({"settings": {"worker_timout": 30}, "master": {"port": 8188}}))
    store.get()
    assert reported == [], "same unknown keys: nothing new to say"
    path.write_text(json.dumps({"workers": [worker(enabeld=False)]}))
    store.get()
    assert reported == [["worker 1 (GPU 1): unknown key 'enabeld' (did you mean 'enabled'?) is ignored"]]
    path.write_text(json.dumps({"workers": [worker(enabled=False)], "master": {}}))  # sizes differ: a new stamp
    store.get()
    path.write_text(json.dumps({"workers": [worker(enabeld=False)], "settings": {}}))
    store.get()
    assert len(reported) == 2, "a typo that comes back after a fix is said again"


def test_the_master_says_them_at_start_and_when_the_file_changes(caplog):
    config = parse_config({"workers": [worker(enabeld=False)]})
    assert startup_warnings(config, public=False, source="/x/gpu_config.json") == [
        "/x/gpu_config.json: worker 1 (GPU 1): unknown key 'enabeld' (did you mean 'enabled'?) is ignored"]
    with caplog.at_level(logging.WARNING, logger="comfy_distributed"):
        log_config_warnings("/x/gpu_config.json")(unknown_key_warnings(config))
    assert caplog.messages == ["Multi-GPU: /x/gpu_config.json changed: worker 1 (GPU 1): unknown key 'enabeld' "
                               "(did you mean 'enabled'?) is ignored"]


def test_many_or_long_unknown_keys_are_reported_within_bounds():
    from comfy_distributed.config import GpuConfig
    from comfy_distributed.config.unknown_keys import MAX_KEY_SHOWN, MAX_WARNINGS, unknown_key_warnings

    config = GpuConfig.model_validate({"master": {"k" * 5000: 1}, "settings": {f"junk{i}": i for i in range(50)}})
    lines = unknown_key_warnings(config)
    assert lines[0].startswith("master: unknown key 'kkk") and "k" * (MAX_KEY_SHOWN + 1) not in lines[0]
    assert len(lines) == MAX_WARNINGS + 1 and lines[-1] == f"... and {51 - MAX_WARNINGS} more unknown keys"
    assert all(len(line) < MAX_KEY_SHOWN + 200 for line in lines)
