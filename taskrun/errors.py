"""Typed errors the adapters (UI, API, CLI) turn into messages and status codes."""

from __future__ import annotations


class TaskRunError(Exception):
    """Base class: ``str(err)`` is a message fit to show a user."""

    http_status = 400


class SettingsError(TaskRunError):
    pass


class Unauthorized(TaskRunError):
    http_status = 401


class Forbidden(TaskRunError):
    http_status = 403


class NotFound(TaskRunError):
    http_status = 404


class InvalidName(TaskRunError):
    http_status = 422


class InvalidCode(TaskRunError):
    """The code does not compile; carries the position for editor annotations."""

    http_status = 422

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.message = message
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line else ""
        super().__init__(f"Syntax error at {where}{message}")


class InvalidMetadata(TaskRunError):
    http_status = 422


class InvalidParams(TaskRunError):
    http_status = 422


class Conflict(TaskRunError):
    http_status = 409


class AlreadyExists(Conflict):
    pass


class StaleWrite(Conflict):
    """The file changed since the editor loaded it."""

    def __init__(self, message: str, current_sha: str):
        self.current_sha = current_sha
        super().__init__(message)


class AlreadyActive(Conflict):
    """The task's policy forbids a second run while one is queued or running."""

    def __init__(self, task: str, run_id: int, status: str):
        self.task = task
        self.run_id = run_id
        self.status = status
        super().__init__(
            f"Task '{task}' already has an active run #{run_id} ({status}); "
            "its concurrency policy is 'forbid'."
        )


class TaskBusy(Conflict):
    pass


class QueueFull(TaskRunError):
    http_status = 429


class TooManyAttempts(TaskRunError):
    """Sign-ins refused for a while after repeated failures (``retry_after`` seconds)."""

    http_status = 429

    def __init__(self, message: str, retry_after: float):
        self.retry_after = retry_after
        super().__init__(message)


class NotReady(TaskRunError):
    http_status = 503


class ClusterUnavailable(TaskRunError):
    """The cluster a run goes to (Ray) does not answer: nothing was queued."""

    http_status = 503


class StorageUnavailable(TaskRunError):
    """A write the service cannot make now: a full disk, a read-only or broken data
    dir, a database locked past its busy timeout. Nothing was changed; try again."""

    http_status = 503


class DependencyError(TaskRunError):
    """A task's declared dependencies cannot be resolved or installed (uv's words)."""

    http_status = 422
