"""Tiles of one image (or one frame batch) as units: a Tile Split and a Tile Merge bracket any per-tile pipeline.

:mod:`.grid` cuts the grid, crops a tile and blends the feathered merge; :mod:`.graph` finds Split/Merge pairs in
a prompt and builds each tile's worker prompt; :mod:`.jobs` is the tile job, a job kind of its own
(:class:`~.jobs.TileUnits`: the crops uploaded before each tile), started on the orchestrator; :mod:`.nodes` are
the nodes users place, :mod:`.expanded` the internal ones a Merge expands into, and :mod:`.upscale` the Tiled
Upscale node.
"""
