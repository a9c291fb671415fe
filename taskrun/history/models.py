"""SQLModel tables of the run history, and the public shapes built from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator):
    """Stores naive UTC (SQLite has no zones) and always hands back aware UTC."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use timezone-aware UTC")
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None

    @staticmethod
    def sqlite_processors():
        """(bind, result) for SQLite's driver in one step each: what the two above and
        SQLAlchemy's SQLite DATETIME do in turn (same text, same values back), for
        less (1.5 instead of 2.5 us to bind). Used by ``fastsql`` on a run's path."""
        return _utc_to_text, _text_to_utc


def _utc_to_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given; use timezone-aware UTC")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _text_to_utc(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _time(**kw: Any) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), **kw))


class RunBase(SQLModel):
    task: str = Field(max_length=64)
    status: str = Field(max_length=16)
    trigger: str = Field(default="manual", max_length=16)
    requested_by: str | None = None
    params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    concurrency: str = Field(default="forbid", max_length=16)
    timeout: float
    queued_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    started_at: datetime | None = _time()  # claimed by a supervisor
    spawned_at: datetime | None = _time()  # its process exists
    exited_at: datetime | None = _time()  # its process ended (seen by the watcher)
    finished_at: datetime | None = _time()  # the outcome is recorded
    exit_code: int | None = None
    signal: str | None = None
    error: str | None = None
    cancel_requested_by: str | None = None
    cancelled_by: str | None = None
    pid: int | None = None
    pid_created: float | None = None
    host: str | None = None
    owner: str | None = None
    code_sha: str | None = Field(default=None, max_length=64)
    log_path: str | None = None
    peak_rss: int | None = None
    cpu_seconds: float | None = None
    progress: float | None = None
    progress_message: str | None = None
    launch: str | None = Field(default=None, max_length=8)  # "cold" or "warm" (zygote)
    attempt: int = 1  # 2, 3, ... for retries
    retry_of: int | None = None  # the attempt this one retries
    upstream_run: int | None = None  # the run whose end triggered this one (chaining)
    scheduled_for: datetime | None = _time()  # the schedule tick it belongs to
    not_before: datetime | None = _time()  # not claimed before this (retry backoff)
    # False until its end has been acted on (retry, chained runs, webhooks): an
    # outbox, so each follow-up happens once even with several supervisors.
    followed_up: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})
    # A failed run's traceback: {exception, location, function, message} (``failures``).
    failure: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # A file in ``# %%`` cells: what each cell did (``cells.collect``); None otherwise.
    cells: list | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # What the run got beyond its code: {"id": its Environment, "secrets": {name: mark}}
    # (a mark is a keyed hash of the value: it tells a changed value, never the value).
    environment: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    backend: str | None = Field(default=None, max_length=16)  # where it ran: local, ray
    # A Ray run: {"job": submission id, "address", "node", "node_id", "dashboard": link}
    placement: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # What it produced (``outputs.describe_all``): [{name, size, sha256, kind, rows,
    # columns, note}], None when nothing; the JSON it wrote to TASKRUN_RESULT_FILE;
    # what the checks of its outputs found (``output_checks``).
    outputs: list | None = Field(default=None, sa_column=Column(JSON(none_as_null=True),
                                                                nullable=True))
    result: Any = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    # The workflow run it belongs to (its first run's id); None for a run with no
    # downstream tasks (``automation.workflows``).
    workflow_id: int | None = None
    output_warnings: list | None = Field(default=None,
                                         sa_column=Column(JSON(none_as_null=True), nullable=True))


class Run(RunBase, table=True):
    __table_args__ = (
        sa.Index("ix_run_task_id", "task", "id"),
        sa.Index("ix_run_status_id", "status", "id"),
        sa.Index("ix_run_status_task", "status", "task"),
        sa.Index("ix_run_queued_at", "queued_at"),
        # Only the few finished-but-not-followed-up rows are in this index.
        sa.Index("ix_run_follow_up", "id", sqlite_where=sa.text("followed_up = 0"),
                 postgresql_where=sa.text("NOT followed_up")),
        sa.Index("ix_run_retry_of", "retry_of", sqlite_where=sa.text("retry_of IS NOT NULL"),
                 postgresql_where=sa.text("retry_of IS NOT NULL")),
        # One run per schedule tick, even if two supervisors raced for it.
        sa.Index("ux_run_task_tick", "task", "scheduled_for", unique=True,
                 sqlite_where=sa.text("scheduled_for IS NOT NULL"),
                 postgresql_where=sa.text("scheduled_for IS NOT NULL")),
        sa.Index("ix_run_workflow", "workflow_id", sqlite_where=sa.text(
            "workflow_id IS NOT NULL"), postgresql_where=sa.text("workflow_id IS NOT NULL")),
    )
    id: int | None = Field(default=None, primary_key=True)


class Workflow(SQLModel, table=True):
    """A pipeline run: the runs one run's end set off through ``after``, as one unit."""

    __tablename__ = "workflow"
    id: int = Field(primary_key=True)  # its first run's id
    task: str = Field(max_length=64)  # the task it started from
    status: str = Field(max_length=16)  # running, succeeded, failed, cancelled
    started_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    finished_at: datetime | None = _time()
    plan: dict = Field(sa_column=Column(JSON, nullable=False))  # task -> upstreams in plan
    repairs: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    cancelled_by: str | None = None


class WorkflowNode(SQLModel, table=True):
    """A task of a workflow run: where it stands, and its latest run."""

    __tablename__ = "workflow_node"
    workflow_id: int = Field(primary_key=True)
    task: str = Field(primary_key=True, max_length=64)
    # waiting, queued (a run exists: queued or running), then its run's end or skipped
    status: str = Field(max_length=16)
    run_id: int | None = None
    reason: str | None = None
    repair: int = 0  # the repair that last set it going (0: the first pass)
    # A for-each node: {"from": the upstream run, "list": [{"value", "run_id", "status"}]}
    items: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class RunPublic(RunBase):
    id: int
    duration: float | None = None

    @classmethod
    def from_row(cls, row: dict) -> RunPublic:
        """From a Core result row: the hot read path, no ORM object in between."""
        fields = {k: row[k] for k in RunBase.model_fields}
        for key in ("queued_at", "started_at", "finished_at", "spawned_at", "exited_at",
                    "scheduled_for", "not_before"):
            if fields[key] is not None and fields[key].tzinfo is None:
                fields[key] = fields[key].replace(tzinfo=UTC)
        duration = None
        if fields["started_at"]:
            end = fields["finished_at"] or utcnow()
            duration = round((end - fields["started_at"]).total_seconds(), 3)
        return cls.built({**fields, "id": row["id"], "duration": duration})

    @classmethod
    def built(cls, values: dict) -> RunPublic:
        """A RunPublic of valid values, the fields left out taking their defaults:
        what ``model_construct`` makes, without its per-field default lookups
        (45 fields: 14 us -> 3 us here; twice on every run's path)."""
        model = cls.__new__(cls)
        fields = set(values)
        data = {**_PUBLIC_DEFAULTS, **values}  # (in the fields' order, as serialized)
        if "params" not in values:
            data["params"] = {}
        object.__setattr__(model, "__dict__", data)
        object.__setattr__(model, "__pydantic_fields_set__", fields)
        object.__setattr__(model, "__pydantic_extra__", None)
        object.__setattr__(model, "__pydantic_private__", None)
        return model

    @classmethod
    def of(cls, run: Run) -> RunPublic:
        duration = None
        if run.started_at:
            end = run.finished_at or utcnow()
            duration = round((end - run.started_at).total_seconds(), 3)
        # The row is already valid; skipping validation makes a page of 50 cheap.
        fields = {k: getattr(run, k) for k in RunBase.model_fields}
        return cls.model_construct(id=run.id, duration=duration, **fields)


class TaskVersion(SQLModel, table=True):
    __tablename__ = "task_version"
    __table_args__ = (sa.Index("ix_task_version_task_id", "task", "id"),
                      sa.Index("ix_task_version_deps_key", "deps_key"))
    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=64)
    sha: str = Field(max_length=64)
    content: str
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    author: str | None = None
    note: str | None = None
    # Its declared dependencies, resolved (``envs.locks``); None without any
    deps_key: str | None = Field(default=None, max_length=32)
    lock: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))


class VersionPublic(SQLModel):
    id: int
    task: str
    sha: str
    created_at: datetime
    author: str | None = None
    note: str | None = None
    size: int = 0


class Environment(SQLModel, table=True):
    """An interpreter, its installed distributions and the base environment runs get:
    stored once per distinct fingerprint, named by it, shared by the runs that had it."""

    id: str = Field(primary_key=True, max_length=32)
    python: str = Field(max_length=64)
    packages: dict = Field(sa_column=Column(JSON, nullable=False))  # {name: version}
    variables: dict = Field(sa_column=Column(JSON, nullable=False))  # the base environment
    first_seen: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class RunSample(SQLModel, table=True):
    __tablename__ = "run_sample"
    __table_args__ = (sa.Index("ix_run_sample_run_id", "run_id", "t"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int
    t: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    rss: int
    cpu_percent: float


class User(SQLModel, table=True):
    """A person who signs in to the dashboard; the password only as an argon2 hash."""

    __tablename__ = "user_account"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    password_hash: str
    role: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class ApiToken(SQLModel, table=True):
    """A bearer token for the REST API; only its sha256 is stored."""

    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    role: str = Field(max_length=16)
    created_by: str | None = None
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    last_used_at: datetime | None = _time()
    revoked_at: datetime | None = _time()


class WebSession(SQLModel, table=True):
    """A dashboard sign-in that lasts: the browser holds a random token in a cookie,
    the database its sha256 (as for API tokens), its user and its lifetime."""

    __tablename__ = "web_session"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    user_name: str = Field(max_length=64, index=True)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    last_used_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    persistent: bool = True  # False: the cookie ends with the browser session
    client: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=200)
    revoked_at: datetime | None = _time()


class Replica(SQLModel, table=True):
    """A supervisor sharing the database: where it is, and its lease (heartbeat)."""

    __tablename__ = "replica"
    owner: str = Field(primary_key=True, max_length=120)
    host: str = Field(max_length=255)
    home: str = Field(max_length=500)
    advertise_url: str = Field(max_length=500)
    # A keyed hash of its secret key: servers that read each other's files on signed
    # links must share the key; two marks that differ say they do not.
    key_mark: str | None = Field(default=None, max_length=32)
    started_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    heartbeat_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    stopped_at: datetime | None = _time()


class AuditEvent(SQLModel, table=True):
    """Who did what and when: sign-ins, task changes, runs started and cancelled, access."""

    __tablename__ = "audit_event"
    __table_args__ = (sa.Index("ix_audit_event_at", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    actor: str = Field(max_length=80)
    action: str = Field(max_length=40)
    target: str | None = Field(default=None, max_length=200)
    detail: str | None = None


class Secret(SQLModel, table=True):
    """A task secret, encrypted at rest; ``task`` is empty for one every task may ask for."""

    __tablename__ = "secret"
    __table_args__ = (sa.UniqueConstraint("task", "name", name="uq_secret_task_name"),)
    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(default="", max_length=64)
    name: str = Field(max_length=64)
    ciphertext: str
    updated_by: str | None = Field(default=None, max_length=80)
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class TaskSchedule(SQLModel, table=True):
    """Per task: its schedule paused or not, and the last tick handled (the claim)."""

    __tablename__ = "task_schedule"
    task: str = Field(primary_key=True, max_length=64)
    paused: bool = False
    last_tick: datetime | None = _time()
    updated_at: datetime | None = _time()
    updated_by: str | None = Field(default=None, max_length=80)


class Delivery(SQLModel, table=True):
    """One webhook notification of a run's end, retried with backoff until delivered."""

    __tablename__ = "delivery"
    __table_args__ = (sa.Index("ix_delivery_status_next", "status", "next_at"),
                      sa.Index("ix_delivery_run", "run_id"))
    id: int | None = Field(default=None, primary_key=True)
    run_id: int
    url: str
    event: str = Field(max_length=32)
    status: str = Field(default="pending", max_length=16)  # pending | delivered | failed
    attempts: int = 0
    next_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    claimed_until: datetime | None = _time()
    last_status: int | None = None
    last_error: str | None = None
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    delivered_at: datetime | None = _time()


# Every field, in order, with its default (None where it has none; ``params``, a
# dict, is made afresh for each: ``built``).
_PUBLIC_DEFAULTS = {name: None if field.is_required() or field.default_factory else field.default
                    for name, field in RunPublic.model_fields.items()}
