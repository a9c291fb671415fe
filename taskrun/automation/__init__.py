"""What happens without a person asking: schedules, follow-ups, notifications.

``engine`` (the thread that drives them), ``scheduler`` (cron and intervals),
``followups`` (retries and chains after a run ends) and ``notify`` (webhooks and
e-mail). Imports ``runs`` and below; the supervisor is handed an engine by the
service rather than importing this package.
"""
