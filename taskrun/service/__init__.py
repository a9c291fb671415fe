"""The one facade the dashboard, the API and the CLI call.

``facade`` holds ``Service`` (tasks, runs, logs, users, schedules), ``outputs`` its
run products (outputs, previews, uploads), ``peers`` the reads served by another
server sharing the database, ``monitor`` the system samples and ``shared`` the
dashboard's cached views. Imports every concern below it; nothing below imports it.
"""

from taskrun.service.facade import Service

__all__ = ["Service"]
