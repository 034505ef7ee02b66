"""The ``/multigpu`` HTTP API of a master: one route table, its guard, its models and its OpenAPI document.

Every route is a row of :mod:`.routes` (path, method, who may call it, its body, its answers); the guard in
:mod:`.access` reads that row for every request (host, cross-site and JSON-only checks, token), and
:mod:`.openapi` writes ``openapi.json`` from the same table. Request bodies are the pydantic models of
:mod:`.schemas_in` (read by :mod:`.http_json`: bounded, strict, a refusal naming the field), answers those of
:mod:`.schemas_out`. The handlers: :mod:`.handlers` (config, settings, job plans, status, VRAM, events),
:mod:`.launch` (start, restart, logs), :mod:`.job_complete` (results a worker running this extension posts
itself); :mod:`.audience` keeps the client ids that may receive ``multigpu.*`` events, and :mod:`.panel_contract`
writes what the sidebar panel shares with Python into ``web/multigpu_contract.js``.
"""
