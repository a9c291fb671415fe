"""The database: what has happened and what is queued.

``db`` (engines per dialect, sessions, migrations at start), ``models`` (the
SQLModel tables and their public shapes), ``schema`` and ``migrations``,
``fastsql`` (the lean statements of the run path), ``queries`` (run history:
filters, pages, stats), ``readonly_sql`` (the SQL console's guard), ``versions``
(every saved version of a task), ``environments`` (fingerprints of a run's
interpreter) and ``failures`` (failure signatures and groups). Imports ``store``
and the foundations only.
"""
