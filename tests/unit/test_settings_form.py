"""The panel's settings form comes from the Settings model: every field, its bounds, its choices."""

from __future__ import annotations

import json
from pathlib import Path

from comfy_distributed.config import Settings, settings_form

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_described_with_the_models_rules():
    form = {row["key"]: row for row in settings_form()}
    assert list(form) == list(Settings.model_fields)
    assert form["queue_mode"]["kind"] == "enum" and form["queue_mode"]["options"] == ["off", "no_collector", "all"]
    assert form["scheduling_mode"]["options"] == ["static", "weighted", "dynamic"]
    assert form["queue_routing"]["kind"] == "enum" and form["queue_routing"]["options"] == ["model_aware", "least_busy"]
    assert (form["worker_timeout"]["kind"], form["worker_timeout"]["max"], form["worker_timeout"]["unit"]) == \
        ("number", 86400, "s")
    assert (form["worker_timeout"]["min"], form["worker_timeout"]["min_inclusive"]) == (0, False)
    assert (form["heartbeat_interval"]["min"], form["heartbeat_interval"]["min_inclusive"]) == (0.1, True)
    assert form["max_retries"]["kind"] == "integer" and form["max_retries"]["max"] == 10
    assert form["api_token"]["kind"] == "secret" and form["api_token"]["label"] == "API token"
    assert form["allowed_hosts"]["kind"] == "json", "a list is edited in gpu_config.json"
    assert all(row["help"] for row in form.values()), "every setting says what it does"


def test_the_js_tests_copy_of_the_form_is_current():
    committed = json.loads((ROOT / "tests" / "web" / "settings_form.json").read_text(encoding="utf-8"))
    assert committed == settings_form(), "regenerate tests/web/settings_form.json from settings_form()"
