"""Task files and the files runs take and make, on disk.

``tasks`` (names, atomic writes, the tasks folder), ``metadata`` (the PEP 723 block
and ``[tool.taskrun]``: params, schedules, outputs), ``cells`` (``# %%`` splitting),
``templates`` (new-task starters), ``uploads`` (file params kept once per content)
and ``outputs`` (what a run leaves in its output dir: kinds, rows, columns).
Imports only the foundations (``settings``, ``status``, ``errors``, ``storage``).
"""
