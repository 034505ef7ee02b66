"""``gpu_config.json`` is owner-only whenever we write it, whatever secret it holds (or none yet)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from comfy_distributed.config import ConfigStore, load_config, save_config

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_worker_headers_without_a_token_are_saved_owner_only(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"workers": [{"id": 1, "port": 8189}]}))
    path.chmod(0o644)  # as a user or an editor may have left it
    store = ConfigStore(path)
    store.update_data(lambda data: data["workers"][0].update(headers={"Authorization": "Bearer proxy-secret"}))
    assert load_config(path).settings.api_token is None
    assert load_config(path).workers[0].headers == {"Authorization": "Bearer proxy-secret"}
    assert mode(path) == 0o600


@pytest.mark.parametrize("content", [
    {},
    {"workers": [{"id": 1, "host": "10.0.0.2", "port": 8188, "ssh": {"host": "10.0.0.2", "user": "me",
                                                                        "comfyui_path": "/srv/ComfyUI"}}]},
])
def test_every_save_is_owner_only(tmp_path, content):
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps(content))
    path.chmod(0o664)
    save_config(path, load_config(path), json.loads(path.read_text()))
    assert mode(path) == 0o600
    assert json.loads(path.read_text()) == content, "only the mode changed"
