"""The pool's protocol without Redis: settings and their redaction, values refused for size or shape, caps against
needs, and the fair order in which an agent serves jobs."""

from __future__ import annotations

import json

import pytest

from comfy_distributed.config import GpuConfig, public_view
from comfy_distributed.errors import PoolError, PoolProtocolError
from comfy_distributed.pool import fairness
from comfy_distributed.pool.caps import caps_of, lacks, needs_of
from comfy_distributed.pool.protocol import (MAX_UNIT_BYTES, Heartbeat, UnitEntry, decode, decode_reply, encode)
from comfy_distributed.pool.settings import POOL_ENV, parse_pool, pool_config
from comfy_distributed.config.pool import redacted_url


def test_pool_urls_are_checked_and_shown_without_their_password():
    pool = parse_pool("redis://ana:s3cret@redis.lan:6380/2", "studio")
    assert (pool.name, pool.has_password) == ("studio", True)
    assert redacted_url(pool.url) == "redis://ana:***@redis.lan:6380/2"
    assert redacted_url("rediss://:pw@10.0.0.1/0?ssl_cert_reqs=none") == "rediss://:***@10.0.0.1/0"
    assert parse_pool("rediss://h?ssl_ca_certs=/ca.pem").url.startswith("rediss://")
    for bad, words in [("http://h", "redis://"), ("redis://", "host"), ("redis://h:0", "port 0"),
                       ("redis://h/x", "/DB"), ("redis://h?ssl_cert_reqs=none", "query"),
                       ("redis://h:pw word@x", "spaces")]:
        with pytest.raises(PoolError, match=words):
            parse_pool(bad)
    with pytest.raises(PoolError) as refused:
        parse_pool("redis://u:topsecret@h:99999")
    assert "topsecret" not in str(refused.value)
    with pytest.raises(PoolError, match="letters"):
        parse_pool("redis://h", "a b")


def test_the_environment_wins_over_the_file_and_the_api_never_shows_the_password():
    config = GpuConfig.model_validate({"settings": {"pool": {"url": "redis://:pw@h:6379/0", "name": "lab"}}})
    assert pool_config(config.settings, {}).name == "lab"
    assert pool_config(config.settings, {POOL_ENV: "redis://other:1"}).url == "redis://other:1"
    assert pool_config(None, {}) is None
    shown = public_view(config)["settings"]["pool"]
    assert shown == {"url": "redis://:***@h:6379/0", "name": "lab", "tags": [], "weight": 1.0} and "pw" not in json.dumps(public_view(config))
    assert public_view(GpuConfig())["settings"]["pool"] is None


def test_the_config_file_with_a_pool_password_is_saved_owner_only(tmp_path):
    from comfy_distributed.config import save_config

    path = tmp_path / "gpu_config.json"
    save_config(path, GpuConfig.model_validate({"settings": {"pool": {"url": "redis://:pw@h"}}}))
    assert path.stat().st_mode & 0o777 == 0o600


def test_values_read_from_redis_are_refused_for_size_or_shape():
    beat = Heartbeat(id="abc", name="gpu one", tags=["gpu24"])
    assert decode(Heartbeat, encode(beat), 1000, "hb") == beat
    for raw, words in [(b"x" * 2000, "cap"), (b"{", "not JSON"), (b"[" * 500 + b"]" * 500, "not JSON"),
                       (b'{"id": "a b", "name": "n"}', "id"), (b'{"id": "a", "name": "n\\n"}', "name"),
                       (None, "missing"), (b'{"id": "a", "name": "n", "comfyui": NaN}', "not JSON")]:
        with pytest.raises(PoolProtocolError, match=words):
            decode(Heartbeat, raw, 1000, "hb")
    good = {"job_id": "j", "position": 0, "attempt": 0, "deadline": 1.0, "prompt": {"1": {"class_type": "X"}}}
    assert decode(UnitEntry, json.dumps(good).encode(), MAX_UNIT_BYTES, "u").prompt["1"]["class_type"] == "X"
    for change in ({"prompt": {}}, {"prompt": {"1": {"inputs": {}}}}, {"position": -1},
                   {"files": [{"sha256": "0" * 64, "name": "../x.png"}]},
                   {"files": [{"sha256": "0" * 64, "name": "x.png", "subfolder": "a/../.."}]}):
        with pytest.raises(PoolProtocolError):
            decode(UnitEntry, json.dumps({**good, **change}).encode(), MAX_UNIT_BYTES, "u")
    infinite = json.dumps(good).replace('"deadline": 1.0', '"deadline": 1e999').encode()  # valid JSON, infinite
    with pytest.raises(PoolProtocolError, match="finite"):
        decode(UnitEntry, infinite, MAX_UNIT_BYTES, "u")


def test_a_done_reply_carries_its_files_within_the_caps():
    head = {"job_id": "j", "position": 1, "attempt": 2, "agent": "a", "agent_name": "A",
            "outputs": {"9": {"images": [{"filename": "x.png", "type": "temp", "field": "f0"}]}}}
    fields = {b"kind": b"done", b"head": json.dumps(head).encode(), b"f0": b"12345"}
    reply = decode_reply(fields, 5, 100)
    assert reply.key == ("j", 1, 2) and reply.outputs["9"]["images"][0].data == b"12345"
    with pytest.raises(PoolProtocolError, match="cap"):
        decode_reply(fields, 4, 100)
    with pytest.raises(PoolProtocolError, match="does not carry"):
        decode_reply({b"kind": b"done", b"head": fields[b"head"]}, 5, 100)
    with pytest.raises(PoolProtocolError, match="kind"):
        decode_reply({b"kind": b"boom", b"head": fields[b"head"]}, 5, 100)
    preview = {**head, "mime": "image/png"}
    with pytest.raises(PoolProtocolError, match="not the image/png"):
        decode_reply({b"kind": b"preview", b"head": json.dumps(preview).encode(), b"image": b"GIF89a"}, 5, 100)


OBJECT_INFO = {
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"]]}}},
    "KSampler": {"input": {"required": {"sampler_name": ["COMBO", {"options": ["euler", "dpmpp_2m"]}],
                                        "seed": ["INT", {}]}}},
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}]}}},
    "LoadImage": {"input": {"required": {"image": [["cat.png"]]}}},
}


def test_caps_cover_needs_only_where_the_agent_has_every_class_and_choice():
    caps = caps_of(OBJECT_INFO)
    assert caps.classes["KSampler"] == {"sampler_name": ["euler", "dpmpp_2m"]}
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
              "2": {"class_type": "KSampler", "inputs": {"sampler_name": "euler", "seed": 3}},
              "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "any text at all", "clip": ["1", 1]}},
              "4": {"class_type": "LoadImage", "inputs": {"image": "dog.png"}}}
    assert lacks(caps, needs_of(prompt, {"dog.png"})) == [], "prompt texts and uploaded files are no choices"
    assert lacks(caps, needs_of(prompt)) == ["image 'dog.png' (LoadImage)"]
    prompt["1"]["inputs"]["ckpt_name"] = "c.safetensors"
    prompt["5"] = {"class_type": "Upscaler", "inputs": {}}
    assert lacks(caps, needs_of(prompt, {"dog.png"})) == ["node class Upscaler",
                                                          "ckpt_name 'c.safetensors' (CheckpointLoaderSimple)"]


def serve(turns: int, jobs: list[tuple[str, float]], has_work=lambda job: True) -> list[str]:
    """An agent's choices over ``turns`` turns: the first job in fair order that has work is served."""
    credit: dict[str, float] = {}
    served = []
    for _ in range(turns):
        empty = []
        for job in fairness.order(jobs, credit):
            if has_work(job):
                credit = fairness.charge(jobs, credit, job, empty)
                served.append(job)
                break
            empty.append(job)
    return served


def test_equal_jobs_are_served_in_turn_starting_with_the_oldest():
    assert serve(6, [("a", 1.0), ("b", 1.0)]) == ["a", "b", "a", "b", "a", "b"]
    assert serve(6, [("a", 1.0), ("b", 1.0), ("c", 1.0)]) == ["a", "b", "c", "a", "b", "c"]


def test_a_weight_gives_a_job_that_much_more_of_the_pool():
    served = serve(30, [("a", 2.0), ("b", 1.0)])
    assert (served.count("a"), served.count("b")) == (20, 10)


def test_a_job_without_work_earns_nothing_and_a_new_job_gets_the_next_turn():
    served = serve(5, [("a", 1.0), ("idle", 1.0)], has_work=lambda job: job == "a")
    assert served == ["a"] * 5
    credit: dict[str, float] = {}
    for _ in range(7):  # a big job alone for a while
        credit = fairness.charge([("big", 1.0)], credit, "big")
    both = [("big", 1.0), ("small", 1.0)]
    assert fairness.order(both, credit)[0] == "small", "the small job has the very next turn"
    served = []
    for _ in range(10):
        served.append(fairness.order(both, credit)[0])
        credit = fairness.charge(both, credit, served[-1])
    assert served[0] == "small" and served.count("small") == 5, f"then they share evenly: {served}"
    old = [("a", 1.0), ("b", 1.0)]
    assert fairness.order(old, fairness.charge(old, {}, "b"))[0] == "a", "booked jobs: as before"


def test_a_tie_goes_to_the_job_of_the_agents_loaded_checkpoint_and_only_a_tie():
    jobs = [("old", 1.0), ("same-model", 1.0)]
    assert fairness.order(jobs, {}) == ["old", "same-model"]
    assert fairness.order(jobs, {}, loaded={"same-model"}) == ["same-model", "old"], "a tie: the loaded model first"
    credit = fairness.charge(jobs, {}, "same-model")
    assert fairness.order(jobs, credit, loaded={"same-model"}) == ["old", "same-model"], "never at fairness' cost"
