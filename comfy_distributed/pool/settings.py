"""Which pool a master (or the CLI) uses: ``settings.pool`` of gpu_config.json, or ``COMFY_DISTRIBUTED_POOL``.

The environment variable holds a URL only and wins over the file's, as a deployment's environment usually does (a
container started with the pool's address); the pool's name is then ``default``, and the file's ``tags`` and
``weight``, when it has a pool, still apply. Both are checked by the same
model, :class:`~..config.PoolConfig`; what may be shown of either is :func:`~..config.redacted_url`'s form.
"""

from __future__ import annotations

import os
from typing import Mapping

from pydantic import ValidationError

from ..config import PoolConfig, Settings, redacted_url
from ..errors import PoolError
from .protocol import validation_text

POOL_ENV = "COMFY_DISTRIBUTED_POOL"
DEFAULT_POOL = "default"


def parse_pool(url: str, name: str = DEFAULT_POOL, source: str = "the pool URL") -> PoolConfig:
    """A checked pool config; PoolError naming ``source`` and what is wrong (never quoting the URL)."""
    try:
        return PoolConfig(url=url, name=name)
    except ValidationError as exc:
        raise PoolError(f"{source}: {validation_text(exc).removeprefix('url: ').removeprefix('Value error, ')}") \
            from None


def pool_config(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> PoolConfig | None:
    """The pool this master uses: ``$COMFY_DISTRIBUTED_POOL`` when set, else ``settings.pool``; None: no pool."""
    url = (os.environ if environ is None else environ).get(POOL_ENV, "").strip()
    filed = settings.pool if settings is not None else None
    if url:
        pool = parse_pool(url, DEFAULT_POOL, POOL_ENV)
        return pool.model_copy(update={"tags": filed.tags, "weight": filed.weight}) if filed is not None else pool
    return filed


def pool_label(pool: PoolConfig) -> str:
    """The pool in a message: its name and its URL without the password."""
    return f"pool {pool.name!r} at {redacted_url(pool.url)}"
