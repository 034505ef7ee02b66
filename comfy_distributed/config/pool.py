"""``settings.pool``: where the shared pool's Redis is and which pool on it this master uses.

The URL may carry a Redis ACL user and password (``redis://user:password@host:6379/0``) and TLS (``rediss://``).
It is checked here, when the config is read, so that a typo is reported naming the field instead of surfacing as a
connection error minutes later; :func:`redacted_url` is the only form of it that leaves the master (the API, logs,
the CLI's messages), since the password is in it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_POOL_URL = 2000
"""Characters of a pool URL (a long password included)."""

POOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""A pool's name: it becomes part of every Redis key of the pool (``cdp:{name}:...``)."""

MAX_POOL_WEIGHT = 1000.0

TLS_QUERY_KEYS = frozenset({"ssl_ca_certs", "ssl_cert_reqs", "ssl_check_hostname"})
"""The only query keys a ``rediss://`` URL may carry: a private CA, and whether to check the certificate."""

HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                      r"[A-Za-z0-9])?)*$")
"""A DNS host name (labels of letters, digits and inner hyphens); a worker's host and the pool's are checked by it."""

TAG = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""An agent's tag (what its GPU offers, e.g. ``gpu48``): from ``--tags`` or a worker's ``pool_tags``; a master's
``settings.pool.tags`` requires them."""
MAX_TAGS = 32
AGENT_NAME = re.compile(r"[\w .:@()+-]{1,100}")
"""An agent's display name: letters, digits, spaces and ``_ . : @ ( ) + -``, at most 100 characters."""


def is_ip(value: str) -> bool:
    """Whether ``value`` is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_loopback_name(address: str) -> bool:
    """``localhost`` or a loopback IP address (``127.0.0.0/8``, ``::1``), brackets allowed."""
    name = address.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_pool_url(value: str) -> str:
    """``value`` when it is a ``redis://`` or ``rediss://`` URL redis-py can use; ValueError saying what is wrong.

    The message never quotes the URL (it may hold a password)."""
    value = value.strip()
    if not value or len(value) > MAX_POOL_URL:
        raise ValueError(f"must be a redis:// or rediss:// URL of 1 to {MAX_POOL_URL} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must start with redis:// (or rediss:// for TLS), e.g. redis://127.0.0.1:6379/0")
    host = parts.hostname or ""
    if not (is_ip(host) or HOSTNAME.match(host)):
        raise ValueError("must name a host: redis://[user:password@]host[:port][/db]")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("has port 0; give a port from 1 to 65535 or none (6379)")
    if parts.path not in ("", "/") and not re.fullmatch(r"/\d{1,5}", parts.path):
        raise ValueError("may end in /DB, a database number (e.g. /0), and nothing else")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    _check_query(parts.scheme, parts.query)
    return value


def _check_query(scheme: str, query: str) -> None:
    if not query:
        return
    keys = {key for key, _ in parse_qsl(query, keep_blank_values=True)}
    if scheme != "rediss" or not keys <= TLS_QUERY_KEYS:
        raise ValueError(f"may carry no query but, for rediss://, {', '.join(sorted(TLS_QUERY_KEYS))}")


def redacted_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (and no query): what may be shown or logged."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    if parts.username or parts.password is not None:
        user = quote(parts.username or "", safe="")
        netloc = f"{user}:***@{netloc}" if parts.password is not None else f"{user}@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"


class PoolConfig(BaseModel):
    """``settings.pool``: ``{"url": "redis://[user:password@]host:port/db", "name": "default", "tags": [],
    "weight": 1}``.

    ``tags``: every unit of this master goes only to agents that offer all of them (``["gpu48"]`` keeps its work on
    the 48 GB cards). ``weight``: this master's share of the pool while other masters wait too (2: twice the agents
    of a master of weight 1)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    url: str
    name: str = "default"
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    weight: float = Field(1.0, gt=0, le=MAX_POOL_WEIGHT, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_pool_url(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not POOL_NAME.fullmatch(value):
            raise ValueError("must be 1 to 64 letters, digits, '_', '.', '-' (it is part of every key of the pool)")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        bad = [tag for tag in value if not TAG.fullmatch(tag)]
        if bad:
            raise ValueError(f"tag {bad[0][:64]!r}: 1 to 64 letters, digits, '_', '.', '-'")
        return sorted(set(value))

    def public(self) -> dict[str, Any]:
        """What the API shows: the URL without its password."""
        return {"url": redacted_url(self.url), "name": self.name, "tags": list(self.tags), "weight": self.weight}

    @property
    def has_password(self) -> bool:
        return urlsplit(self.url).password is not None
