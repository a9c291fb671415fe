"""The REST API: a thin translation of HTTP to ``service`` calls (``app.create_api``).

``shapes`` holds what goes in and out, ``roles`` who may call what, ``app`` the
routes. Imports ``service`` and below; nothing of ours imports it but ``app.py``.
"""

from taskrun.api.app import create_api

__all__ = ["create_api"]
