"""Where the extension meets the ComfyUI it runs in: the top of the package, which wires everything below.

:mod:`.adapter` implements :class:`~..host.interface.Host` over ComfyUI's server and queue (the only module that
imports ComfyUI's) and ``install``, called by the repository's root ``__init__``, which puts the running
extension in :mod:`..host.runtime` for the nodes; :mod:`.prompt_hook` turns a queued prompt into a distributed job
(or a forwarded one); :mod:`.role` says whether this ComfyUI is the master or a worker; :mod:`.node_catalog` lists
every node class.
"""
