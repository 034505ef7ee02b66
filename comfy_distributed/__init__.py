"""ComfyUI-Distributed: one ComfyUI over many GPUs. The importable core needs no ComfyUI.

The package's map, by layer from the bottom (imports only point down):

- foundations: :mod:`.errors` (one error tree), :mod:`.events` (every ``multigpu.*`` event);
- :mod:`.config`: ``gpu_config.json`` as typed models, bounded JSON reading;
- :mod:`.host`: what the extension needs from ComfyUI as one interface, and the running extension for the nodes;
- :mod:`.graph`: API-format prompt surgery (worker prompts, Values), the UI format converted;
- :mod:`.worker_client`: one remote ComfyUI over its native HTTP + websocket API;
- :mod:`.cluster`: the participants (health, preflight, speeds, loaded models, previews, the counters);
- :mod:`.engine`: plan, the pure scheduler, the runner, a job's records and the owner of jobs of a kind;
- the job kinds: :mod:`.collector` (a Collector's batch), :mod:`.tiles` (tiles of one image),
  :mod:`.queue_mode` (whole prompts);
- :mod:`.pool`: the shared GPU pool on Redis (the agent, and the master's broker client);
- :mod:`.api`: the ``/multigpu`` routes, their guard, models and OpenAPI document;
- :mod:`.comfy`: the ComfyUI it runs in, met (the only importer of ComfyUI's modules) and wired to everything;
- tools: :mod:`.launcher` (starting instances, local and SSH), :mod:`.cli` (``comfy-distributed ...``).

``docs/architecture.md`` follows one job through them.
"""

__version__ = "0.1.0"
