"""Where things are: ComfyUI's folder, the config, the state folder; how the CLI speaks to the user."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


from ..config import CONFIG_ENV, DEFAULT_CONFIG_PATH, GpuConfig, load_config, pool_agent_warnings
from ..errors import LaunchError, PoolError
from ..launcher import LaunchContext, Launcher, find_comfyui_root, probe_host, state_dir_for
from ..pool.settings import pool_config


TOKEN_ENV = "COMFY_DISTRIBUTED_TOKEN"



def say(message: str) -> None:
    print(message, flush=True)



@dataclass(slots=True)
class Setup:
    root: Path
    config_path: Path
    config: GpuConfig
    state_dir: Path

    def launcher(self) -> Launcher:
        return Launcher(self.config, LaunchContext(self.root, self.config_path, self.state_dir), say=say)

    @property
    def master_url(self) -> str:
        return f"http://{probe_host(self.config.master.extra_args)}:{self.config.master.port}"



def find_config(root: Path | None, explicit: str | None) -> tuple[Path, bool]:
    """``--config``, else ``COMFY_DISTRIBUTED_CONFIG``, else that of the extension installed in ``root`` (even when
    it has none yet: ``token`` creates it there), else this checkout's."""
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_file():
            raise LaunchError(f"--config {path} does not exist")
        return path, True
    if os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV]).expanduser().resolve()
        return path, path.is_file()
    candidates = []
    if root is not None and (root / "custom_nodes").is_dir():
        candidates = [folder / "gpu_config.json" for folder in sorted((root / "custom_nodes").iterdir())
                      if (folder / "comfy_distributed" / "__init__.py").is_file()]
    if not candidates:  # the extension is not installed in that ComfyUI: the config of the running copy
        candidates = [DEFAULT_CONFIG_PATH]
    found = next((c for c in candidates if c.is_file()), None)
    return (found or candidates[0]).resolve(), found is not None



def setup(args: argparse.Namespace, quiet: bool = False) -> Setup:
    root = find_comfyui_root(args.comfyui)
    config_path, exists = find_config(root, args.config)
    config = load_config(config_path)
    state = state_dir_for(root, args.state_dir)
    if not quiet:
        say(f"ComfyUI: {root}\nConfig:  {config_path}{'' if exists else ' (not found: master only)'}\n"
            f"State:   {state} (pid files and logs)")
        if not exists:
            say(f"  To add workers, copy gpu_config.example.json to {config_path} and edit it.")
        for warning in config_warnings(config):
            say(f"warning: {warning}")
    return Setup(root, config_path, config, state)



def config_warnings(config: GpuConfig) -> list[str]:
    """Settings that will not work the way a newcomer expects: an ssh worker the master will not find or that
    refuses it, a worker's ``pool_agent`` that does nothing (:func:`~..config.pool_agent_warnings`)."""
    warnings = []
    for index, worker in enumerate(config.workers):
        ssh = worker.ssh
        if ssh is None or not worker.enabled:
            continue
        if worker.host is None and ssh.host not in ("127.0.0.1", "localhost", "::1"):
            warnings.append(f"workers[{index}] is started on {ssh.host} but has no 'host': the master looks for it "
                            f"at 127.0.0.1:{worker.port}. Set workers[{index}].host to \"{ssh.host}\"")
        if worker.host not in (None, "127.0.0.1", "localhost") and "--listen" not in worker.extra_args:
            warnings.append(f"workers[{index}] has no --listen in extra_args, so ComfyUI on {ssh.host} accepts "
                            "connections from its own machine only: add --listen")
    try:
        pool_configured = pool_config(config.settings) is not None
    except PoolError as exc:  # a malformed COMFY_DISTRIBUTED_POOL: no agent can be started with it
        warnings.append(str(exc))
        pool_configured = False
    return [*warnings, *pool_agent_warnings(config, pool_configured)]



def auth_headers() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}
