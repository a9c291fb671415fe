"""The run path: claim -> launch -> watch -> finish, and what keeps it honest.

``supervisor`` (the loop), ``queueing`` (submits and claims in the database),
``locks`` (the per-task lock and the slots), ``watch``/``watch_remote``/``watchers``
(seeing a run end, locally or on a cluster), ``pending`` (end records to retry),
``recovery`` and ``replicas`` (runs left by a server that stopped), ``logs``,
``run_files`` (a run's dir: inputs, outputs and their checks), ``output_checks``,
``rundiff`` and ``retention``. Imports ``backends``, ``access``, ``history``,
``store`` and the foundations; never ``service`` or ``automation`` at run time.
"""
