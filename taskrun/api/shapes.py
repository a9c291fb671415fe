"""The API's request and response shapes (pydantic), apart from the tables."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path as ApiPath
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from taskrun import __version__
from taskrun.history.models import RunPublic, VersionPublic

MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_UPLOADS = 8  # file parts in one execute request
_PARAMS_SCHEMA = {"type": "object", "additionalProperties": True, "nullable": True,
                  "description": "param name: value"}
EXECUTE_BODY = {"requestBody": {"required": False, "content": {
    "application/json": {"schema": {"type": "object", "additionalProperties": False,
                                    "properties": {"params": _PARAMS_SCHEMA}}},
    "multipart/form-data": {"schema": {
        "type": "object", "properties": {"params": {"type": "string", "description":
                                                    "the params as a JSON object"}},
        "additionalProperties": {"type": "string", "format": "binary"},
        "description": "one file part per file param, named after it"}}}}}


# ---- shapes --------------------------------------------------------------

class TaskCreate(BaseModel):
    """A new task: its ``code``, or a ``notebook`` (an ``.ipynb``'s JSON) written as a
    file in ``# %%`` cells, its outputs dropped."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(validation_alias=AliasChoices("id", "task_id", "name"), max_length=200)
    code: str | None = Field(default=None, validation_alias=AliasChoices("code", "content"),
                             max_length=1024 * 1024)
    notebook: dict | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TaskCreate:
        if (self.code is None) == (self.notebook is None):
            raise ValueError("give the task's code or a notebook, one of them")
        return self


class TaskUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(validation_alias=AliasChoices("code", "content"), max_length=1024 * 1024)
    base_sha: str | None = Field(default=None, max_length=64)


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] | None = None


class TaskBase(BaseModel):
    id: str
    name: str
    description: str
    metadata: dict | None
    error: str | None
    sha: str
    size: int
    modified: str | None


class TaskSummary(TaskBase):
    state: str
    active: dict[str, int]
    last_run: dict | None
    success_rate: float | None
    recent_runs: int


class TaskEnvironment(BaseModel):
    """What a version declares (PEP 723 ``dependencies``) and what it resolved to."""

    dependencies: list[str]
    requires_python: str | None = None
    resolved: dict[str, str] | None = None  # {package: version}, None until resolved
    summary: str | None = None
    error: str | None = None


class TaskDetail(TaskBase):
    code: str
    environment: TaskEnvironment | None = None


class RunAccepted(RunPublic):
    run_id: int


class VersionDetail(VersionPublic):
    content: str


MAX_INT = 2**63 - 1  # SQLite's integers: larger ids are refused as invalid, not a 500
RowId = Annotated[int, ApiPath(ge=1, le=MAX_INT)]  # a run's or a token's id in a path


class ErrorOut(BaseModel):
    """Every error: a message, or (request validation) a list of what was wrong where."""

    detail: str | list[dict[str, Any]]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": why} for code, why in [
        (400, "bad request (e.g. a body that is not JSON)"),
        (401, "no or an invalid API token"), (403, "the token's role is too weak"),
        (404, "no such task, run, log or version"),
        (409, "conflict: already exists, active run, stale write"),
        (413, "request body too large"), (422, "invalid input"), (429, "queue full"),
        (503, "the service is not ready")]}


class LogChunkOut(BaseModel):
    content: str
    offset: int
    next_offset: int
    size: int
    complete: bool


class LogFile(BaseModel):
    name: str
    run_id: int
    task: str
    status: str
    size: int
    modified: datetime


class Health(BaseModel):
    status: str
    ok: bool
    checks: dict
    version: str = __version__



class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(min_length=1, max_length=64 * 1024)


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=64)
    password: str = Field(max_length=1024)
    remember: bool = True


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    role: str = "viewer"


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, max_length=100_000,
                     examples=["SELECT task, status, count(*) FROM run GROUP BY 1, 2"])
    max_rows: int = Field(1000, ge=1, le=10_000)


class QueryAnswer(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed: float
