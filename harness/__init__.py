"""Helpers shared by the real tier of the tests and the benchmarks, outside both: :mod:`.comfy_process` starts,
stops and drives real ComfyUI processes, :mod:`.redis_server` a real Redis for the shared pool, and
:mod:`.agent_process` the pool's agents as processes. Neither imports the other for them (no benchmark imports a
test module's process control, and nothing here imports pytest)."""
