"""Programs that run inside a task's own process, on the far side of the wall.

``cell_main`` runs a file in ``# %%`` cells, ``zygote_main`` is the warm-start
zygote, ``ray_entry`` is a run's entrypoint on a Ray cluster. Each is started as a
script by path (``python -u <file>``), so each imports the standard library only and
nothing of ``taskrun`` (checked by the import contracts in ``pyproject.toml``).
"""
