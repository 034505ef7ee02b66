"""Where the extension meets the ComfyUI it runs in.

:mod:`.host` is what the extension needs from ComfyUI as one interface (``DetachedHost`` outside it);
:mod:`.adapter` its implementation over ComfyUI's server and queue and ``install``, called by the repository's
root ``__init__``; :mod:`.prompt_hook` turns a queued prompt into a distributed job (or a forwarded one);
:mod:`.runtime` holds the running extension (host, orchestrator, queue balancer) for the nodes;
:mod:`.role` says whether this ComfyUI is the master or a worker; :mod:`.node_catalog` lists every node class.
"""
