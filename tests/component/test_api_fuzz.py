"""Property tests: whatever a client sends to a /multigpu route, the API holds its rules.

Every example runs against the real aiohttp app (``ApiUnderTest``: port 0, a fresh
gpu_config.json whose workers point at loopback ports nothing listens on, plus for some
tests a local stub worker). Whatever is sent, ``check_reply`` requires: no 5xx, only
statuses the OpenAPI document lists for the route, a JSON body with an ``error`` string
on every refusal, successes that match their documented schema, and a config file that
is still valid JSON and a valid config: unchanged by a refusal or by a route that does
not edit it, with no temporary file left beside it.

The bodies come in three families: (a) arbitrary bytes, malformed and non-object JSON;
(b) objects shaped by the documented request schema with wrong types, missing and extra
fields, huge and nested values, path- and URL-like strings, unicode, control characters,
NaN-like tokens and very large ints; (c) bodies over the size limit. Each runs on a
private master without a token and with one, and on a public master with one; the token
is sent in one of several right or wrong ways, the Host header names this master or
another one (``check_access``), and job_complete's identity headers are right or wrong.

``MULTIGPU_FUZZ_EXAMPLES`` sets the examples per test (default 40: about 30 s in all).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from comfy_distributed.api.handlers import MAX_BODY, TOKEN_ENV
from comfy_distributed.api.job_complete import JOB_HEADER, SHARE_HEADER, WORKER_HEADER
from comfy_distributed.config import public_view
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS
from tests.component.openapi_support import (
    ALLOWED_HOST,
    CONFIG_PATHS,
    PNG,
    PNG_B64,
    TOKEN,
    ApiUnderTest,
    Reply,
    body_limit,
    check_reply,
    needs_token,
    operation,
    operations,
    oversize_body,
    request_schema,
    resolve,
    strict_json,
    workflow,
)

EXAMPLES = int(os.environ.get("MULTIGPU_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # keep the work tree clean; a failure prints its minimal example and a reproduce blob
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)
JOB_COMPLETE = "/multigpu/job_complete"
ENDPOINTS = [(method, path) for method, path, _op in operations()]
POSTS = [(method, path) for method, path, op in operations() if "requestBody" in op]
MODES = ("open", "token", "public")
"""A private master without a token, one with a token, and a public master (with a token: it has to)."""
SETTINGS = {"allowed_hosts": [ALLOWED_HOST]}


def fuzzed_api(tmp_path: Path, mode: str, **kwargs: Any) -> ApiUnderTest:
    return ApiUnderTest(fresh_directory(tmp_path), token=None if mode == "open" else TOKEN, public=mode == "public",
                        settings=SETTINGS, **kwargs)


def endpoint_id(endpoint: tuple[str, str]) -> str:
    return f"{endpoint[0]}-{endpoint[1].removeprefix('/multigpu/').replace('/', '.')}"



# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text inserted as it is: what json.dumps cannot write (NaN, 1e999, 5000 digits, deep nesting)."""

    text: str


def encode(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(encode(v) for v in value) + "]"
    return json.dumps(value)


NASTY_STRINGS = [
    "", " ", "../../etc/passwd", "..\\..\\Windows\\System32", "C:\\Windows", "C:\\Windows\\System32\\cmd.exe",
    "/etc/passwd", "~/.ssh/id_rsa", "\\\\server\\share\\x", "http://evil", "https://evil.example:8443/x?y=1#z",
    "http://127.0.0.1:1/", "file:///etc/passwd", "ftp://x", "javascript:alert(1)", "data:text/html,<b>",
    "http://user:pw@host/", "http://[::1]:99999", "\x00", "a\x00b", "\r\nX-Injected: 1", "line\nbreak", "\t", "\x7f",
    "\x1b[31m", "\u202e\u202d", "\u2028", "\ufeff", "\ud800", "\udfff", "\U0001f600", "名前", "Ω≈ç√", "NaN", "nan",
    "Infinity", "-Infinity", "inf", "1e999", "-0", "0x10", "1_000", "null", "true", "undefined", "None", "***",
    "%s%s%n", "{{7*7}}", "${jndi:ldap://evil/a}", "' OR 1=1 --", "<script>alert(1)</script>", "a" * 101,
    "a" * 2001, "a" * 4097, "a" * 60_000,
]
BIG_INTS = [2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**100, -(10**100), 10**4000]
RAW_TOKENS = [Raw(text) for text in (
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", "-0", "0e0", "1.0e-400", "9" * 5000, "-" + "9" * 5000,
    "[" * 900 + "]" * 900, '{"a":' * 900 + "1" + "}" * 900, "[" * 30_000 + "]" * 30_000,
)]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(BIG_INTS),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20), st.sampled_from(NASTY_STRINGS),
    st.sampled_from(RAW_TOKENS),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
short_nasty = st.sampled_from([s for s in NASTY_STRINGS if len(s) < 100])
field_names = st.one_of(
    st.text(max_size=12), short_nasty,
    st.sampled_from(["id", "worker_id", "workerId", "__proto__", "constructor", "Name", "name ", "ENABLED", "keys",
                     "job", "token", "api_token", "settings", "workers", "master"]),
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for a (subset) JSON Schema, or close to it."""
    if "$ref" in schema:
        return from_schema(resolve(schema["$ref"]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    for alternatives in ("oneOf", "anyOf"):
        if alternatives in schema:
            return st.one_of([from_schema(sub) for sub in schema[alternatives]])
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else list(declared or [])
    options: list[st.SearchStrategy[Any]] = []
    for kind in types:
        if kind == "integer":
            options.append(st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum")))
        elif kind == "number":
            options.append(st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"),
                                     allow_nan=False, allow_infinity=False))
        elif kind == "string":
            if "pattern" in schema:
                options.append(st.from_regex(schema["pattern"], fullmatch=True))
            else:
                options.append(st.text(max_size=min(schema.get("maxLength", 30), 30)))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
        elif kind == "array":
            options.append(st.lists(from_schema(schema.get("items", {})), max_size=4))
        elif kind == "object":
            extra = schema.get("additionalProperties", True)
            values = from_schema(extra) if isinstance(extra, dict) else json_values
            options.append(st.dictionaries(st.text(max_size=10), values, max_size=4))
    return st.one_of(options) if options else json_values


# --- prompts for prepare_job ------------------------------------------------------------------

node_ids = st.one_of(
    st.sampled_from(["1", "2", "3", "4", "10", "\u00b2", "\u0661\u0662", "-1", " 1", "0x10", "1" * 50, "", "01"]),
    st.text(max_size=6))
class_types = st.one_of(
    st.sampled_from([COLLECTOR_CLASS, DISTRIBUTOR_CLASS, "PrimitiveInt", "DistributedTestImage", "SaveImage",
                     "PreviewImage"]),
    st.text(max_size=10), json_scalars)
links = st.tuples(st.one_of(node_ids, st.integers(-2, 20), json_scalars),
                  st.one_of(st.integers(-1, 3), st.booleans(), json_scalars)).map(list)
node_inputs = st.dictionaries(
    st.one_of(st.sampled_from(["seed", "images", "batch_size", "value", "width"]), st.text(max_size=5)),
    st.one_of(links, st.integers(-1, 2**64 + 1), json_values), max_size=4)
nodes = st.one_of(
    st.fixed_dictionaries({"class_type": class_types}, optional={"inputs": st.one_of(node_inputs, json_values)}),
    json_values)


def _collector_renamed(flow: dict[str, Any], node_id: str) -> dict[str, Any]:
    """The workflow with its Collector under another id (its consumer follows)."""
    flow[node_id] = flow.pop("3")
    flow["4"]["inputs"]["images"] = [node_id, 0]
    return flow


prompts = st.one_of(
    st.dictionaries(node_ids, nodes, max_size=6),
    st.builds(_collector_renamed, st.builds(workflow), node_ids),
    st.builds(workflow, seed=st.one_of(st.integers(0, 2**64 - 1), st.integers(), st.sampled_from(BIG_INTS),
                                       json_scalars, links, st.just(["5", 0]))),
    st.builds(lambda flow, extra: {**flow, **extra}, st.builds(workflow), st.dictionaries(node_ids, nodes, max_size=3)),
    json_values,
)

# --- bodies shaped by the document ------------------------------------------------------------

ABSENT = object()


@dataclass
class Context:
    """What a plausible value may refer to: the API's workers, ports and (for job_complete) an open share."""

    api: ApiUnderTest
    share: dict[str, Any] | None = None

    @property
    def ids(self) -> list[Any]:
        return [1, 2, "gpu-c", "stub", "1", "2", "GPU-C", 3, 404, "404", 0, -1]

    @property
    def ports(self) -> list[int]:
        return list(self.api.ports) + ([self.api.stub.port] if self.api.stub else [])

    def hosts(self) -> list[Any]:
        stub = self.api.stub.port if self.api.stub else 1
        held = self.api.ports[0]
        return [
            None, "", "127.0.0.1", "localhost", "::1", "[::1]", "10.0.0.7", "evil", "a" * 254, "a..b", "-a", "a_b",
            "http://evil", "https://evil.example/path", "file:///etc/passwd", "../../etc/passwd", "C:\\Windows",
            "http://a:0", "http://[::1", "http://a:99999", "http://a?q=1", "http://a#f", "http://u:p@a", "gopher://a",
            f"http://127.0.0.1:{stub}", f"http://127.0.0.1:{stub}/sub/", f"http://127.0.0.1:{stub}/\x01",
            f"http://127.0.0.1:{stub}/ a", f"http://127.0.0.1:{stub}/%zz", f"http://127.0.0.1:{stub}/\u00e9",
            f"http://127.0.0.1:{held}/x", f"https://127.0.0.1:{held}",
        ]

    def plausible(self, name: str, prop: dict[str, Any]) -> st.SearchStrategy[Any]:
        """Values a client might really send for ``name``: right, near misses and hostile ones."""
        if name in ("worker_id", "id"):
            if self.share is not None:
                return st.sampled_from([self.share["worker_id"], str(self.share["worker_id"]), 1, "nope"])
            return st.sampled_from(self.ids)
        if name == "port":
            return st.one_of(st.sampled_from(self.ports), st.integers(-1, 70_000), st.sampled_from(BIG_INTS))
        if name == "host":
            return st.one_of(st.sampled_from(self.hosts()), st.text(max_size=30))
        if name == "headers":
            header_names = st.one_of(
                st.sampled_from(["Authorization", "X-A", "X-Test", "Cookie", "bad name", "", "X\x00", "\u00e9",
                                 "a" * 129, "Host", "Content-Length"]),
                st.text(max_size=10))
            header_values = st.one_of(
                st.sampled_from(["***", "Bearer x", "a\x01b", "a\x7fb", "\x1b[0m", "\u00e9", "\u2028", "\ud800",
                                 "a\r\nb", "a\nb", "a\x00b", "a" * 4097, "", " ", "a\tb"]),
                st.text(max_size=20))
            return st.dictionaries(header_names, header_values, max_size=4)
        if name in ("name", "extra_args"):
            return st.one_of(short_nasty, st.text(max_size=40), st.sampled_from(["a" * 100, "a" * 2000]))
        if name == "enabled":
            return st.booleans()
        if name == "cuda_device":
            return st.one_of(st.none(), st.integers(-2, 16), st.sampled_from(BIG_INTS))
        if name == "key":
            return st.one_of(from_schema(prop), short_nasty, st.sampled_from(["API_TOKEN", "workers", "master"]))
        if name == "value":
            return st.one_of(
                st.sampled_from([0, -1, 0.001, 1, 5, 600, 86_400, 86_401, 1e308, -1e308, TOKEN, "short",
                                 "has a space in it 1234", "a" * 257, "\x00" * 20, None, True, False]),
                st.floats(allow_nan=False, allow_infinity=False), json_scalars)
        if name == "prompt":
            return prompts
        if name == "worker_ids":
            return st.lists(st.one_of(st.sampled_from(self.ids), json_scalars), max_size=4)
        if name == "master":
            return st.booleans()
        if name in ("job_id", "share_token") and self.share is not None:
            return st.sampled_from([self.share[name], self.share[name] + "x", self.share[name][:-1], "", "nope"])
        if name == "outputs":
            images = st.one_of(
                st.sampled_from([PNG_B64, "", "%%", "bm90IGEgcG5n", "iVBORw0KGgo", PNG_B64 + "=", PNG_B64[:-2],
                                 " " + PNG_B64, base64.b64encode(PNG * 1000).decode()]),
                st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()), json_scalars)
            return st.dictionaries(st.one_of(st.sampled_from(["3", "1", "", "x", "03"]), st.text(max_size=4)),
                                   st.lists(images, max_size=3), max_size=3)
        return from_schema(prop)

    def valid(self, path: str) -> st.SearchStrategy[dict[str, Any]]:
        """Bodies that should be accepted (give or take an address already in use)."""
        names = st.text(st.characters(min_codepoint=32, exclude_characters="\x7f"), max_size=30)
        hosts = st.sampled_from([None, "", "127.0.0.1", "localhost", "10.0.0.7", "gpu-box.lan", "::1",
                                 f"http://127.0.0.1:{self.ports[-1]}/sub", "https://tunnel.example/w"])
        headers = st.dictionaries(st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True),
                                  st.one_of(st.just("***"), st.from_regex(r"[ -~]{0,40}", fullmatch=True)),
                                  max_size=3)
        worker = {"name": names, "enabled": st.booleans(), "host": hosts, "port": st.sampled_from(self.ports),
                  "cuda_device": st.one_of(st.none(), st.integers(0, 8)), "extra_args": names, "headers": headers}
        ids = st.sampled_from([1, 2, "gpu-c", "stub", "1"])
        if path == "/multigpu/config/update_worker":
            return st.fixed_dictionaries({"worker_id": ids}, optional=worker).filter(lambda body: len(body) > 1)
        if path == "/multigpu/config/add_worker":
            stub_urls = st.integers(0, 10**6).map(lambda n: f"http://127.0.0.1:{self.ports[-1]}/w{n}")
            return st.fixed_dictionaries(
                {"port": st.one_of(st.integers(1, 65_535), st.sampled_from(self.ports))},
                optional={**{k: v for k, v in worker.items() if k != "port"}, "host": st.one_of(hosts, stub_urls),
                          "id": st.one_of(st.integers(5, 10**6),
                                          st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True))})
        if path == "/multigpu/config/remove_worker":
            return st.fixed_dictionaries({"worker_id": ids})
        if path == "/multigpu/config/update_setting":
            return st.one_of(
                st.fixed_dictionaries({"key": st.just("worker_timeout"), "value": st.floats(0.001, 86_400)}),
                st.fixed_dictionaries({"key": st.just("connect_timeout"), "value": st.floats(0.001, 600)}),
                st.fixed_dictionaries({"key": st.just("request_timeout"), "value": st.integers(1, 3600)}),
                st.fixed_dictionaries({"key": st.just("api_token"),
                                       "value": st.one_of(st.none(), st.just(TOKEN),
                                                          st.from_regex(r"[\x21-\x7e]{16,64}", fullmatch=True))}))
        if path == "/multigpu/prepare_job":
            return st.fixed_dictionaries({"prompt": st.one_of(
                st.builds(workflow, seed=st.integers(0, 2**64 - 1), batch=st.integers(1, 8)),
                st.builds(_collector_renamed, st.builds(workflow), node_ids))})
        if path == "/multigpu/clear_memory":
            return st.fixed_dictionaries({}, optional={"worker_ids": st.lists(ids, max_size=3),
                                                       "master": st.booleans()})
        if path == "/multigpu/workers/launch":
            return st.fixed_dictionaries({}, optional={"worker_ids": st.lists(ids, max_size=3)})
        if path == "/multigpu/workers/restart":
            return st.fixed_dictionaries({"worker_id": ids})
        if path == "/multigpu/workers/logs":
            return st.fixed_dictionaries({"worker_id": ids}, optional={"lines": st.integers(1, 1000)})
        if path == "/multigpu/events":
            return st.fixed_dictionaries({"on": st.booleans(),
                                          "client_id": st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)},
                                         optional={"previews": st.booleans()})
        if path == JOB_COMPLETE:  # who posts is in the headers; the body may repeat it
            assert self.share is not None
            share = {key: st.just(self.share[key]) for key in ("job_id", "worker_id", "share_token")}
            return st.fixed_dictionaries({"outputs": st.just({"3": [PNG_B64]})}, optional=share)
        raise AssertionError(f"no valid bodies known for {path}")

    def body(self, method: str, path: str) -> st.SearchStrategy[dict[str, Any]]:
        """Mostly a valid body with a few mutations; sometimes every field drawn at random."""
        properties = request_schema(method, path)["properties"]
        fields = {name: st.one_of(st.just(ABSENT), self.plausible(name, prop), self.plausible(name, prop),
                                  from_schema(prop), json_values)
                  for name, prop in properties.items()}
        extras = st.one_of(st.just({}), st.just({}), st.just({}),
                           st.dictionaries(field_names, json_values, min_size=1, max_size=2))

        def combine(parts: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
            chosen, extra = parts
            body = {name: value for name, value in chosen.items() if value is not ABSENT}
            return {**extra, **body}

        @st.composite
        def mutated(draw: Any) -> dict[str, Any]:
            body = dict(draw(self.valid(path)))
            for _ in range(draw(st.integers(0, 3))):
                action = draw(st.sampled_from(["drop", "replace", "replace", "add"]))
                if action == "drop" and body:
                    del body[draw(st.sampled_from(sorted(body)))]
                elif action == "replace":
                    name = draw(st.sampled_from(sorted(properties)))
                    body[name] = draw(st.one_of(self.plausible(name, properties[name]), json_values))
                else:
                    body[draw(field_names)] = draw(json_values)
            return body

        return st.one_of(mutated(), mutated(), st.tuples(st.fixed_dictionaries(fields), extras).map(combine))


# --- malformed bodies -------------------------------------------------------------------------

MALFORMED = [
    b"", b" ", b"{", b"}", b'{"a"', b'{"a":}', b'{"a":1,}', b"{'a': 1}", b'{"a": 1} {"b": 2}', b"[1, 2", b"nul",
    b"null", b"true", b"false", b"0", b"-1", b'"string"', b"[]", b"[{}]", b"[1, 2, 3]", b"1e999", b"NaN",
    b"Infinity", b'{"port": NaN}', b'{"port": Infinity}', b'{"port": -Infinity}', b'{"value": 1e999}',
    b'{"worker_id": 1, "worker_id": 2}', b'{"worker_id": ' + b"9" * 5000 + b"}", b"\xef\xbb\xbf{}",
    '{"name": "é"}'.encode("utf-16"), '{"name": "é"}'.encode("latin-1"), b'{"name": "\xff\xfe"}',
    b'{"name": "\\ud800"}', b'{"name": "\\u0000"}', b'{"a": "\\x"}', b"\x00", b"\x00{}",
    b"[" * 100_000, b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n", b"a=1&b=2", b"<xml/>",
]
malformed_bodies = st.one_of(
    st.sampled_from(MALFORMED),
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: encode(v).encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=utf-16", "\u00e9/x"])

# --- the token, sent right and wrong ----------------------------------------------------------

AUTH_OK = {
    "bearer": {"Authorization": f"Bearer {TOKEN}"},
    "bearer-lowercase": {"Authorization": f"bearer {TOKEN}"},
    "bearer-padded": {"Authorization": f"Bearer   {TOKEN}"},
    "x-header": {"X-MultiGPU-Token": TOKEN},
}
AUTH_BAD = {
    "none": {},
    "wrong": {"Authorization": f"Bearer {TOKEN}x"},
    "prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "empty": {"Authorization": "Bearer "},
    "basic": {"Authorization": "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()},
    "no-scheme": {"Authorization": TOKEN},
    "x-header-wrong": {"X-MultiGPU-Token": TOKEN.upper()},
    "latin1": {"Authorization": "Bearer t\u00f6k\u00e9n-0123456789abcdef"},
}
auth_variants = st.sampled_from(["bearer"] * 8 + [v for v in AUTH_OK if v != "bearer"] + list(AUTH_BAD))

# --- the Host header, naming this master or another ---------------------------------------------

OUR_HOSTS = {"default": None, "localhost": "localhost:8188", "ipv6": "[::1]:8188", "loopback": "127.3.2.1",
             "upper": "LOCALHOST", "allowed": f"{ALLOWED_HOST}:8188"}
"""None: what the client sends by itself (127.0.0.1:port)."""
FOREIGN_HOSTS = {"foreign": "attacker.example", "foreign-port": "attacker.example:8188",
                 "rebinding": "127.0.0.1.attacker.example", "lan": "10.0.0.7", "empty": ""}
host_variants = st.sampled_from(["default"] * 20 + [v for v in OUR_HOSTS if v != "default"] + list(FOREIGN_HOSTS))


def host_headers(variant: str) -> dict[str, str]:
    host = OUR_HOSTS.get(variant) if variant in OUR_HOSTS else FOREIGN_HOSTS[variant]
    return {} if host is None else {"Host": host, "Origin": f"http://{host}"}


# --- job_complete's identity headers, right and wrong -------------------------------------------

IDENTITY_REFUSALS = {"none": 400, "no-share-token": 400, "blank-worker": 400, "too-long-job": 400,
                     "guessed-share-token": 403, "other-worker": 403, "unknown-job": 404}
identity_variants = st.sampled_from(["right"] * 8 + list(IDENTITY_REFUSALS))


def identity_headers(api: ApiUnderTest, variant: str) -> dict[str, str]:
    if api.share is None:
        return {}
    headers = api.identity_headers()
    if variant == "none":
        return {}
    if variant == "no-share-token":
        del headers[SHARE_HEADER]
    elif variant == "blank-worker":
        headers[WORKER_HEADER] = " "
    elif variant == "too-long-job":
        headers[JOB_HEADER] = "a" * 257
    elif variant == "guessed-share-token":
        headers[SHARE_HEADER] += "x"
    elif variant == "other-worker":
        headers[WORKER_HEADER] = "1"
    elif variant == "unknown-job":
        headers[JOB_HEADER] = "0" * 32
    return headers


def check_access(reply: Reply, mode: str, auth: str, host: str, identity: str = "right",
                 content_type: str | None = "application/json") -> bool:
    """The guard's and job_complete's identity answers, exactly when they are due; True when the
    request got past them (its body was then judged). A POST that is not JSON is refused once the
    token was right (415): a page of another site can send text/plain or a form without a preflight."""
    public, configured = mode == "public", mode != "open"
    if not public and host in FOREIGN_HOSTS:
        assert reply.status == 403, f"a private master served a request for another Host: {reply}"
        assert reply.data.get("host") == (FOREIGN_HOSTS[host] or "(none)"), str(reply)
        return False
    assert not (reply.status == 403 and "host" in reply.data), f"refused for its Host: {reply}"
    if host == "empty":  # Origin "http://" names no page at all, let alone the master's own: a cross-site request
        assert reply.status == 403 and reply.data.get("origin") == "http://", f"a cross-site request served: {reply}"
        return False
    if needs_token(reply.method, reply.path, public=public, configured=configured) and auth in AUTH_BAD:
        assert reply.status == 401, f"a guarded route answered without the token: {reply}"
        assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer"), f"no WWW-Authenticate: {reply}"
        return False
    assert reply.status != 401, f"refused although no token was needed or the right one was sent: {reply}"
    if reply.method == "POST" and (content_type or "").split(";")[0].strip().lower() != "application/json":
        assert reply.status == 415 and "application/json" in reply.error, f"a POST that is not JSON: {reply}"
        return False
    if reply.path == JOB_COMPLETE and identity != "right":
        assert reply.status == IDENTITY_REFUSALS[identity], f"identity {identity}: {reply}"
        return False
    return True


def fresh_directory(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


def only_our_loopback(api: ApiUnderTest) -> bool:
    """Whether every worker of the current config is one of our own refused ports or the stub."""
    allowed = set(api.ports) | ({api.stub.port} if api.stub else set())
    for worker in api.config().workers:
        parts = urlsplit(worker.base_url)
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            return False
        if host != "127.0.0.1" or port not in allowed or parts.scheme != "http":
            return False
    return True


async def check_config_change(api: ApiUnderTest, reply: Reply, body: Any) -> None:
    """After an accepted config change: the file says what the answer said, the API still serves
    it, and (when it points only at our own ports) status and clear_memory cope with it."""
    config = api.config()
    stored = public_view(config)
    if reply.path in ("/multigpu/config/update_worker", "/multigpu/config/add_worker"):
        assert reply.data["worker"] in stored["workers"], f"the answer is not what was saved: {reply}"
    elif reply.path == "/multigpu/config/update_setting":
        for key, value in reply.data["settings"].items():
            assert stored["settings"].get(key) == value, f"settings.{key}: {reply}"
    elif reply.path == "/multigpu/config/remove_worker":
        assert all(str(w["id"]) != str(body["worker_id"]) for w in stored["workers"]), str(reply)
    api.token = config.settings.api_token  # update_setting may have changed it
    before = api.path.read_bytes()
    view = await api.call("GET", "/multigpu/config")
    check_reply(view, api, before)
    if api.public and api.token is None:  # the token was removed: a public master now refuses everything
        assert view.status == 401 and "settings.api_token" in view.error, str(view)
        return
    assert view.status == 200 and view.data["workers"] == stored["workers"], str(view)
    if only_our_loopback(api):
        event("probed the changed config")
        for method, path, follow in (("POST", "/multigpu/clear_memory", {"master": False}),
                                     ("GET", "/multigpu/status", None)):
            answer = await api.call(method, path, follow)
            check_reply(answer, api, before)
            assert answer.status == 200, f"after {reply}: {answer}"


# --- (a) arbitrary bytes, malformed and non-object JSON ---------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=endpoint_id)
@FUZZ
@given(data=st.data())
async def test_malformed_bodies_are_refused_cleanly(tmp_path, endpoint, mode, data):
    method, path = endpoint
    async with fuzzed_api(tmp_path, mode, share=path == JOB_COMPLETE) as api:
        if path == JOB_COMPLETE:
            await api.open_share()
        raw = data.draw(malformed_bodies, label="body")
        content_type = data.draw(content_types, label="content type")
        variant = data.draw(auth_variants, label="auth")
        host = data.draw(host_variants, label="host")
        identity = data.draw(identity_variants, label="identity") if path == JOB_COMPLETE else "right"
        params = data.draw(st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=2), label="query")
        headers = {**(AUTH_OK.get(variant) or AUTH_BAD[variant]), **host_headers(host),
                   **identity_headers(api, identity)}
        if content_type:
            headers["Content-Type"] = content_type
        before = api.path.read_bytes()
        reply = await api.call(method, path, raw=raw, headers=headers, auth=False, identity=False, params=params)
        check_reply(reply, api, before)
        # no Content-Type drawn: the call sends JSON's, as every client of ours does
        if not check_access(reply, mode, variant, host, identity, content_type or "application/json"):
            return
        if method == "GET":
            assert reply.status == 200, str(reply)
        elif raw == b"" and not operation(method, path)["requestBody"].get("required", False):
            assert reply.status != 400, f"the document says the body may be omitted: {reply}"
        elif not is_json_object(raw):  # nothing may be accepted
            assert 400 <= reply.status < 500, str(reply)
            assert api.path.read_bytes() == before


def is_json_object(raw: bytes) -> bool:
    """Whether ``raw`` is a JSON object, counting the byte order mark and UTF-16/32 that a parser
    may accept (RFC 8259 section 8.1), so that such a body may be served."""
    try:
        return isinstance(strict_json(raw), dict)
    except (ValueError, RecursionError):
        return False


# --- (b) objects shaped by the documented schema ----------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("endpoint", POSTS, ids=endpoint_id)
@FUZZ
@given(data=st.data())
async def test_schema_shaped_bodies_keep_the_rules(tmp_path, endpoint, mode, data):
    method, path = endpoint
    async with fuzzed_api(tmp_path, mode, stub=True, share=path == JOB_COMPLETE) as api:
        share = await api.open_share() if path == JOB_COMPLETE else None
        body = data.draw(Context(api, share).body(method, path), label="body")
        variant = data.draw(auth_variants, label="auth")
        host = data.draw(host_variants, label="host")
        identity = data.draw(identity_variants, label="identity") if path == JOB_COMPLETE else "right"
        raw = encode(body).encode("utf-8", "surrogatepass")
        headers = {"Content-Type": "application/json", **(AUTH_OK.get(variant) or AUTH_BAD[variant]),
                   **host_headers(host), **identity_headers(api, identity)}
        limit = body_limit(path, api)
        before = api.path.read_bytes()
        reply = await api.call(method, path, raw=raw, headers=headers, auth=False, identity=False,
                               describe=f"auth={variant} host={host} identity={identity} body={raw[:800]!r}")
        check_reply(reply, api, before)
        event(f"status {reply.status}")
        if not check_access(reply, mode, variant, host, identity):
            return
        if len(raw) > limit:
            assert reply.status == 413, str(reply)
        if reply.status < 300 and path in CONFIG_PATHS:
            await check_config_change(api, reply, body)


# --- (c) bodies over the limit ----------------------------------------------------------------

LIMITED = [endpoint for endpoint in POSTS if endpoint[1] != JOB_COMPLETE and body_limit(endpoint[1]) == MAX_BODY]
"""job_complete's limit is its share's: test_openapi's test_job_complete_reads_what_the_share_may_carry_and_no_more."""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("endpoint", LIMITED, ids=endpoint_id)
@settings(FUZZ, max_examples=max(EXAMPLES // 4, 5))
@given(size=st.one_of(st.just(MAX_BODY + 1), st.integers(MAX_BODY + 1, 4 * MAX_BODY), st.just(1 << 20)),
       declared=st.booleans())
async def test_oversize_bodies_are_refused_with_413(tmp_path, endpoint, mode, size, declared):
    method, path = endpoint
    async with fuzzed_api(tmp_path, mode) as api:
        headers = {"Content-Type": "application/json"}
        if declared:
            headers["Content-Length"] = str(size)  # else the body goes chunked, its size unknown until read
        before = api.path.read_bytes()
        reply = await api.call(method, path, raw=oversize_body(size, chunk=16_384), headers=headers,
                               describe=f"{size} bytes, declared={declared}")
        check_reply(reply, api, before)
        assert reply.status == 413, str(reply)
        assert str(MAX_BODY) in reply.error
        assert api.path.read_bytes() == before


@pytest.mark.parametrize("endpoint", LIMITED, ids=endpoint_id)
async def test_a_body_of_exactly_the_limit_is_read(tmp_path, endpoint):
    method, path = endpoint
    async with ApiUnderTest(tmp_path) as api:
        for declared in (True, False):
            headers = {"Content-Type": "application/json"}
            if declared:
                headers["Content-Length"] = str(MAX_BODY)
            before = api.path.read_bytes()
            reply = await api.call(method, path, raw=oversize_body(MAX_BODY, chunk=10_000), headers=headers)
            check_reply(reply, api, before)
            assert reply.status == 400, str(reply)  # read and judged: a name that long is not allowed
            assert "larger than" not in reply.error


# --- the token --------------------------------------------------------------------------------


async def _call_each_way(api: ApiUnderTest, method: str, path: str, variants: dict[str, dict[str, str]],
                         body: Any) -> dict[str, Reply]:
    replies = {}
    for variant, headers in variants.items():
        before = api.path.read_bytes()
        reply = await api.call(method, path, body, headers=headers, auth=False, describe=f"auth={variant}")
        check_reply(reply, api, before)
        replies[variant] = reply
    return replies


def _refusal_of_the_token(reply: Reply) -> None:
    assert reply.status == 401, str(reply)
    assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer"), str(reply)
    assert "token" in reply.error.lower(), str(reply)


@pytest.mark.parametrize("public", [False, True], ids=["private", "public"])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=endpoint_id)
async def test_a_configured_token_guards_what_x_token_required_says(tmp_path, endpoint, public):
    """A private master: the control routes (every POST but a watch of the previews, job_complete included); a
    public one: every route but the OpenAPI document, reads included."""
    method, path = endpoint
    body = {} if "requestBody" in operation(method, path) else None
    needed = needs_token(method, path, public=public, configured=True)
    control = method == "POST" and path != "/multigpu/events"
    assert needed == (path != "/multigpu/openapi.json" and (public or control)), "the rules changed?"
    async with ApiUnderTest(tmp_path, token=TOKEN, public=public) as api:
        refused = await _call_each_way(api, method, path, AUTH_BAD, body)
        for reply in refused.values():
            if needed:
                _refusal_of_the_token(reply)
            else:
                assert reply.status != 401, str(reply)
        if needed:
            assert api.path.read_bytes() == api.original and api.launches == []
        allowed = await _call_each_way(api, method, path, AUTH_OK, body)
        for reply in allowed.values():
            assert reply.status != 401, str(reply)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=endpoint_id)
async def test_public_master_without_a_token_refuses_every_route_but_the_document(tmp_path, endpoint):
    method, path = endpoint
    body = {} if "requestBody" in operation(method, path) else None
    async with ApiUnderTest(tmp_path, public=True) as api:
        replies = await _call_each_way(api, method, path, {**AUTH_OK, **AUTH_BAD}, body)
        for reply in replies.values():
            if needs_token(method, path, public=True, configured=False):
                _refusal_of_the_token(reply)
                assert "settings.api_token" in reply.error and TOKEN_ENV in reply.error, "say how to set one"
            else:
                assert reply.status == 200, str(reply)
        assert api.path.read_bytes() == api.original and api.launches == []


@pytest.mark.parametrize("public", [False, True])
async def test_token_from_the_environment_is_required(tmp_path, public):
    async with ApiUnderTest(tmp_path, public=public) as api:
        api.api.env_token = TOKEN  # as COMFY_DISTRIBUTED_TOKEN read at start
        for method, path in ENDPOINTS:
            body = {} if "requestBody" in operation(method, path) else None
            refused = await _call_each_way(api, method, path, {"none": {}, "wrong": AUTH_BAD["wrong"]}, body)
            allowed = await _call_each_way(api, method, path, {"bearer": AUTH_OK["bearer"]}, body)
            for reply in refused.values():
                if needs_token(method, path, public=public, configured=True):
                    _refusal_of_the_token(reply)
                else:
                    assert reply.status != 401, str(reply)
            assert allowed["bearer"].status != 401, str(allowed["bearer"])
        view = await api.call("GET", "/multigpu/config", headers=AUTH_OK["bearer"])
        assert view.data["auth"] == {"token_configured": True, "token_required": True, "public": public}
        assert TOKEN not in view.body.decode()


@pytest.mark.parametrize("public", [False, True], ids=["private", "public"])
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
async def test_the_auth_block_says_who_needs_the_token(tmp_path, public, token):
    async with ApiUnderTest(tmp_path, token=token, public=public) as api:
        config = await api.call("GET", "/multigpu/config")
        status = await api.call("GET", "/multigpu/status")
        for reply in (config, status):
            check_reply(reply, api, api.original)
        if public and token is None:  # nobody may read it: the answer says how to set a token
            assert config.status == status.status == 401, (str(config), str(status))
            return
        auth = {"token_configured": token is not None, "token_required": token is not None or public,
                "public": public}
        assert config.data["auth"] == auth, str(config)
        assert status.data["master"] == {"status": "online", **auth}, str(status)


# --- regressions: inputs that broke the API ------------------------------------------------


@pytest.mark.parametrize("collector_id", ["\u00b2", "\u00b9\u00b2", "1" * 4301, "\u0661\u0662", "\u2460"])
async def test_prepare_job_with_an_unusual_collector_id_is_not_a_server_error(tmp_path, collector_id):
    """Node ids are arbitrary strings: '²'.isdigit() is true but int('²') raises."""
    prompt = {collector_id: {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
              "1": {"class_type": "DistributedTestImage", "inputs": {"seed": 1}}}
    async with ApiUnderTest(tmp_path) as api:
        reply = await api.call("POST", "/multigpu/prepare_job", {"prompt": prompt})
        check_reply(reply, api, api.original)
        assert reply.status in (200, 400), str(reply)


@pytest.mark.parametrize("value", ["a\x01b", "a\x7fb", "\x1b[31m", "a\x0bb"])
async def test_worker_header_with_a_control_character_is_refused_or_harmless(tmp_path, value):
    """Either the config refuses the header value, or a worker with it is still probed without a 5xx."""
    async with ApiUnderTest(tmp_path, stub=True) as api:
        body = {"id": "hdr", "host": f"http://127.0.0.1:{api.stub.port}/hdr", "port": 1,
                "headers": {"X-Test": value}}
        reply = await api.call("POST", "/multigpu/config/add_worker", body)
        check_reply(reply, api, api.original)
        if reply.status == 400:
            assert "headers" in reply.error, str(reply)
            return
        assert reply.status == 201, str(reply)
        after = api.path.read_bytes()
        for method, path, follow in (("POST", "/multigpu/clear_memory", {"worker_ids": ["hdr"], "master": False}),
                                     ("GET", "/multigpu/status", None)):
            answer = await api.call(method, path, follow)
            check_reply(answer, api, after)
            assert answer.status == 200, str(answer)


@pytest.mark.parametrize("host", [
    "http://127.0.0.1 :8189", "http://127.0.0.1\x00:8189", "http://127.0.0.1:8189/\x01", "http://a b:8189",
    "http://127.0.0.1:0", "http://127.0.0.1:8189/\r\nX-Injected: 1",
])
async def test_worker_url_with_whitespace_control_characters_or_port_0_is_refused(tmp_path, host):
    async with ApiUnderTest(tmp_path) as api:
        reply = await api.call("POST", "/multigpu/config/add_worker", {"id": "u", "host": host, "port": 8189})
        check_reply(reply, api, api.original)
        assert reply.status == 400 and "host" in reply.error, str(reply)
