import json
import os
from pathlib import Path

import pytest

from comfy_distributed.config import ConfigStore, GpuConfig, load_config, parse_config, save_config
from comfy_distributed.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_example_file_is_valid():
    config = load_config(ROOT / "gpu_config.example.json")
    assert [w.id for w in config.enabled_workers()] == [1]
    assert config.workers[2].base_url == "http://192.168.1.100:8188"


def test_seed_readme_example_parses(tmp_path):
    seed = {
        "master": {"port": 8080, "cuda_device": 0, "extra_args": "--mmap-torch-files --listen"},
        "workers": [
            {"id": 1, "name": "GPU 1", "cuda_device": 1, "port": 8180, "enabled": True, "extra_args": "--listen"},
            {"id": 3, "name": "Remote GPU", "host": "192.168.1.100", "port": 8190, "enabled": True,
             "extra_args": "--enable-cors-header --listen"},
        ],
        "settings": {},
    }
    config = load_config(write(tmp_path / "gpu_config.json", seed))
    assert config.master.port == 8080
    assert [w.base_url for w in config.workers] == ["http://127.0.0.1:8180", "http://192.168.1.100:8190"]


def test_missing_file_is_master_only(tmp_path):
    config = load_config(tmp_path / "nope.json")
    assert config.workers == [] and config.enabled_workers() == []


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"workers": [{"id": 1, "port": 70000}]}, "workers[0].port"),
        ({"workers": [{"id": 1, "port": "abc"}]}, "workers[0].port"),
        ({"workers": [{"id": 1}]}, "workers[0].port: Field required"),
        ({"workers": [{"id": 1, "port": 8189, "host": "file:///etc/passwd"}]}, "workers[0].host"),
        ({"workers": [{"id": 1, "port": 8189, "host": "bad host/../x"}]}, "workers[0].host"),
        ({"workers": [{"id": 1, "port": 8189}, {"id": 1, "port": 8190}]}, "workers[1].id"),
        ({"workers": [{"id": 1, "port": 8189}, {"id": 2, "port": 8189}]}, "address http://127.0.0.1:8189"),
        ({"master": {"port": 0}}, "master.port"),
        ({"settings": {"worker_timeout": -1}}, "settings.worker_timeout"),
        ({"workers": {"id": 1}}, "workers: Input should be a valid list"),
        ([], "the top level must be a JSON object"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, data, expected):
    path = write(tmp_path / "gpu_config.json", data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_invalid_json_names_line(tmp_path):
    path = write(tmp_path / "gpu_config.json", '{"workers": [\n  {"id": 1,}\n]}')
    with pytest.raises(ConfigError, match=r"not valid JSON: .* line 2"):
        load_config(path)


def test_unknown_keys_survive_round_trip(tmp_path):
    data = {
        "master": {"port": 8188, "theme": "dark"},
        "workers": [{"id": "a", "port": 8189, "gpu_model": "3090", "nested": {"x": [1, 2]}}],
        "settings": {"my_plugin_option": True},
        "comment": "kept",
    }
    path = write(tmp_path / "gpu_config.json", data)
    save_config(path, load_config(path))
    saved = json.loads(path.read_text())
    assert saved["comment"] == "kept"
    assert saved["master"]["theme"] == "dark"
    assert saved["workers"][0]["gpu_model"] == "3090" and saved["workers"][0]["nested"] == {"x": [1, 2]}
    assert saved["settings"]["my_plugin_option"] is True


def test_store_never_overwrites_a_bad_file(tmp_path):
    path = write(tmp_path / "gpu_config.json", '{"workers": [{"id": 1, "port": "x"}]}')
    before = path.read_bytes()
    store = ConfigStore(path)
    with pytest.raises(ConfigError):
        store.get()
    with pytest.raises(ConfigError):
        store.update(lambda config: None)
    assert path.read_bytes() == before


def test_store_update_is_validated_and_atomic(tmp_path):
    path = write(tmp_path / "gpu_config.json", {"workers": [{"id": 1, "port": 8189}]})
    store = ConfigStore(path)

    def bad(config: GpuConfig) -> None:
        config.workers[0].port = 8189
        config.workers.append(config.workers[0].model_copy())

    with pytest.raises(ConfigError, match="workers\\[1\\].id"):
        store.update(bad)
    assert json.loads(path.read_text()) == {"workers": [{"id": 1, "port": 8189}]}

    def disable(config: GpuConfig) -> None:
        config.workers[0].enabled = False

    store.update(disable)
    assert json.loads(path.read_text())["workers"][0]["enabled"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_config.json"]  # no temp file left behind


def test_store_sees_edits_made_by_hand(tmp_path):
    path = write(tmp_path / "gpu_config.json", {"workers": [{"id": 1, "port": 8189}]})
    store = ConfigStore(path)
    assert len(store.get().enabled_workers()) == 1
    write(path, {"workers": [{"id": 1, "port": 8189, "enabled": False}, {"id": 2, "port": 8190}]})
    os.utime(path, ns=(1, 1))  # a different stamp even within the file system's time resolution
    assert [w.id for w in store.get().enabled_workers()] == [2]


@pytest.mark.parametrize(
    "host, url",
    [
        ("10.0.0.5", "http://10.0.0.5:8189"),
        ("gpu-box.local", "http://gpu-box.local:8189"),
        ("::1", "http://[::1]:8189"),
        ("https://abc.proxy.example.com", "https://abc.proxy.example.com"),
        ("http://10.0.0.5:9000/", "http://10.0.0.5:9000"),
    ],
)
def test_worker_address(host, url):
    config = parse_config({"workers": [{"id": 1, "port": 8189, "host": host}]})
    assert config.workers[0].base_url == url
