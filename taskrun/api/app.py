"""REST API: a thin translation of HTTP to ``service`` calls.

Keeps the original service's paths (``/api/tasks``, ``/api/logs``,
``/api/system/...``) and its field names (``task_id``, ``content``) as aliases.
Errors are ``{"detail": "..."}`` with the status code of the typed error.
"""

from __future__ import annotations

import hmac
import json
import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi import Path as ApiPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from taskrun import __version__, storage
from taskrun.access.auth import ANONYMOUS_ADMIN, Identity
from taskrun.api.access_routes import access_routers
from taskrun.api.limits import BodyLimit
from taskrun.api.operations_routes import operations_router
from taskrun.api.roles import SIGNED_ROUTES, required_role
from taskrun.api.shapes import (
    ERROR_RESPONSES,
    EXECUTE_BODY,
    MAX_BODY_BYTES,
    MAX_INT,
    MAX_UPLOADS,
    ExecuteRequest,
    Health,
    LogChunkOut,
    LogFile,
    QueryAnswer,
    QueryRequest,
    RowId,
    RunAccepted,
    TaskCreate,
    TaskDetail,
    TaskSummary,
    TaskUpdate,
    VersionDetail,
)
from taskrun.errors import (
    AlreadyActive,
    Forbidden,
    InvalidCode,
    InvalidParams,
    NotReady,
    StaleWrite,
    TaskRunError,
    TooManyAttempts,
    Unauthorized,
)
from taskrun.history.models import RunPublic, VersionPublic
from taskrun.runs import logs
from taskrun.service.facade import RunFilter, Service, default_service
from taskrun.service.peers import PEER_HEADER
from taskrun.store import outputs

# ---- app -----------------------------------------------------------------

def create_api(get_service: Callable[[], Service] = default_service) -> FastAPI:
    def service() -> Service:
        try:
            return get_service()
        except Exception as exc:
            raise NotReady(f"The service is not ready: {exc}") from exc

    def authorize(request: Request, svc: Service = Depends(service)) -> Identity:
        """Every route passes here (an app-wide dependency): bearer token and role."""
        route = request.scope.get("route")
        need = required_role(request.method, getattr(route, "path", ""))
        if need is None or not svc.auth.enabled:
            return ANONYMOUS_ADMIN
        query = request.query_params
        if "sig" in query:
            # A link the dashboard or a peer handed out: a GET of one of the routes
            # that need one, its method and path signed, minutes from expiry.
            path = getattr(route, "path", "")
            if request.method == "GET" and path in SIGNED_ROUTES and svc.auth.verify_signed(
                    request.url.path, query.get("exp", ""), query["sig"], "GET"):
                request.state.identity = identity = Identity("signed-link", "viewer")
                return identity
            raise Unauthorized("This link is not valid (expired, altered, or not for this).")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        scraper = svc.settings.metrics_token
        if scraper and getattr(route, "path", "") == "/metrics" and request.method == "GET" \
                and scheme.lower() == "bearer" and hmac.compare_digest(
                    token.strip().encode(), scraper.encode()):
            return Identity("metrics", "viewer")  # (that token opens this route alone)
        identity = svc.auth.check_token(token.strip()) if scheme.lower() == "bearer" else None
        if identity is None:
            raise Unauthorized("A valid API token is required: 'Authorization: Bearer <token>'.")
        if not identity.can(need):
            raise Forbidden(f"This needs the {need} role; the token has {identity.role}.")
        request.state.identity = identity
        return identity

    def who(request: Request) -> str:
        identity = getattr(request.state, "identity", ANONYMOUS_ADMIN)
        return identity.name

    api = FastAPI(title="Task Run Service API", version=__version__, docs_url="/docs",
                  openapi_url="/openapi.json", redoc_url=None,
                  dependencies=[Depends(authorize)], responses=ERROR_RESPONSES)

    @api.middleware("http")
    async def _latency(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        try:  # by route template: a bounded set of label values
            get_service().metrics.api.labels(
                request.method, getattr(route, "path", "(none)"),
                str(response.status_code)).observe(time.perf_counter() - started)
        except Exception:
            pass  # (the service is not ready yet: nothing to count into)
        return response

    @api.exception_handler(TaskRunError)
    async def _typed_error(_request: Request, exc: TaskRunError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, InvalidCode):
            body.update(line=exc.line, column=exc.column, message=exc.message)
        if isinstance(exc, AlreadyActive):
            body.update(active_run_id=exc.run_id, active_status=exc.status)
        if isinstance(exc, StaleWrite):
            body.update(current_sha=exc.current_sha)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, TooManyAttempts):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return JSONResponse(body, status_code=exc.http_status, headers=headers)

    @api.exception_handler(sa.exc.DBAPIError)
    async def _database_down(_request: Request, exc: sa.exc.DBAPIError) -> JSONResponse:
        # A read that met the database down (its server unreachable, a disk full):
        # the same worded 503 as a refused write, not a 500.
        typed = storage.unavailable(exc, None, "read the run history")
        if typed is None:
            raise exc
        return JSONResponse({"detail": str(typed)}, status_code=typed.http_status)

    def body_limit(scope: dict) -> int:
        """2 MB, and for an execute with file parts, room for each file's own cap
        (held to it again as it is kept)."""
        headers = dict(scope.get("headers") or ())
        if scope["path"].endswith("/execute") and headers.get(
                b"content-type", b"").startswith(b"multipart/form-data"):
            try:
                each = get_service().settings.upload_max_mb
            except Exception:  # (not ready: the route says so)
                each = 0
            return MAX_BODY_BYTES + int(each * (1 << 20)) * MAX_UPLOADS
        return MAX_BODY_BYTES

    api.add_middleware(BodyLimit, limit_for=body_limit)

    tasks = APIRouter(prefix="/tasks", tags=["tasks"])
    logs_router = APIRouter(prefix="/logs", tags=["logs"])
    system = APIRouter(prefix="/system", tags=["system"])

    # -- runs first: "/tasks/runs" must not be taken for a task named "runs".

    @tasks.get("/runs", response_model=list[RunPublic])
    def list_runs(svc: Service = Depends(service), task: str | None = None,
                  status: str | None = None, trigger: str | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  limit: int | None = Query(None, ge=1, le=500),
                  offset: int = Query(0, ge=0, le=MAX_INT),
                  before: int | None = Query(None, ge=1, le=MAX_INT, description="keyset paging: "
                                             "runs older than this id")):
        """Active runs; with any filter or paging parameter, a page of the whole history."""
        if not any((task, status, trigger, since, until, limit, offset, before)):
            return svc.active_runs()
        flt = RunFilter(task=task, status=status, trigger=trigger, since=since, until=until)
        return svc.list_runs(flt, limit or 50, offset, before)

    @tasks.get("/runs/{run_id}", response_model=RunPublic)
    def get_run(run_id: RowId, svc: Service = Depends(service)):
        return svc.get_run(run_id)

    @tasks.post("/runs/{run_id}/cancel", response_model=RunPublic)
    def cancel_run(run_id: RowId, request: Request, svc: Service = Depends(service)):
        return svc.cancel(run_id, by=who(request))

    @tasks.get("/runs/{run_id}/samples")
    def run_samples(run_id: RowId, svc: Service = Depends(service)) -> list[dict]:
        svc.get_run(run_id)
        return svc.run_samples(run_id)

    @tasks.get("/runs/{run_id}/diff")
    def run_diff(run_id: RowId, svc: Service = Depends(service),
                 against: str = Query("last_good", description="`last_good` or a run id")
                 ) -> dict:
        """What differs from another run (default: the task's last succeeded run before
        it): code as a unified diff, params, settings, duration and peak memory."""
        if against != "last_good" and not against.isdigit():
            raise InvalidParams("against: `last_good` or a run id")
        return svc.run_diff(run_id, None if against == "last_good" else int(against))

    @tasks.get("/runs/{run_id}/cells")
    def run_cells(run_id: RowId, svc: Service = Depends(service)) -> list[dict]:
        """What each ``# %%`` cell did: index, title, status, started_at, duration and its
        output's byte range in the log (``log_start``, ``log_end``), live while it runs.
        A file without markers is one cell. Each cell's ``displays`` (its last bare
        expression's value and its ``display()`` calls): ``{index, kind (table, chart,
        image, html, markdown, json, text), mime, rows?, columns?, size, truncated?,
        url}``."""
        out = svc.run_cells(run_id)
        for cell in out:
            for shown in cell.get("displays") or ():
                shown["url"] = f"/api/tasks/runs/{run_id}/displays/{shown['index']}"
        return out

    @tasks.get("/runs/{run_id}/notebook", responses={200: {"content": {
        "application/x-ipynb+json": {}}}})
    def run_notebook(run_id: RowId, svc: Service = Depends(service)) -> Response:
        """The run as a Jupyter notebook (nbformat 4.5): each cell with its output, its
        displays, its failure, and its timing in papermill's ``metadata.papermill``."""
        body = json.dumps(svc.run_notebook(run_id), indent=1, default=str)
        run = svc.get_run(run_id)
        return Response(body, media_type="application/x-ipynb+json", headers={
            "Content-Disposition": f'attachment; filename="{run.task}-{run.id}.ipynb"'})

    @tasks.get("/runs/{run_id}/displays/{index}")
    def run_display(run_id: RowId, index: int = ApiPath(ge=0, le=1_000_000),
                    svc: Service = Depends(service)) -> dict:
        """One display of a cell: ``{kind, mime, data, rows?, columns?, truncated?}``;
        a table's ``data`` is ``{columns, dtypes, rows}`` (its first rows), a chart's its
        Plotly or Vega-Lite JSON, an image base64 PNG or SVG text, HTML sanitized."""
        return svc.run_display(run_id, index)

    @tasks.get("/runs/{run_id}/outputs")
    def run_outputs(run_id: RowId, svc: Service = Depends(service)) -> list[dict]:
        """What the run left in `TASKRUN_OUTPUT_DIR`, recorded at its end: `name` (a path
        in that dir), `size`, `sha256`, `kind` (table, image, chart, text, other) and,
        for a table, `rows` and `columns` ([{name, type}]); `note` says what could not
        be read."""
        return svc.run_outputs(run_id)

    @tasks.get("/runs/{run_id}/outputs/{name:path}",
               responses={200: {"content": {"application/octet-stream": {}}}})
    def run_output(run_id: RowId, name: str, request: Request, svc: Service = Depends(service)):
        """One output's bytes (only a name the run's outputs list; links not followed)."""
        entry, stream = svc.output_stream(run_id, name,
                                          forward=PEER_HEADER not in request.headers)
        base = name.rsplit("/", 1)[-1]
        headers = {"Content-Disposition": "attachment; filename*=UTF-8''"
                                          + urllib.parse.quote(base),
                   "Content-Length": str(entry["size"]), "X-Content-Type-Options": "nosniff"}
        return StreamingResponse(stream, media_type=outputs.media_type(name), headers=headers)

    @tasks.get("/runs/{run_id}/preview/{name:path}")
    def run_output_preview(run_id: RowId, name: str, request: Request,
                           svc: Service = Depends(service),
                           rows: int = Query(outputs.PREVIEW_ROWS, ge=1,
                                             le=outputs.PREVIEW_MAX)) -> dict:
        """A table output's first `rows` rows: `{"columns", "rows": [[...]], "total"}`."""
        return svc.output_preview(run_id, name, rows, forward=PEER_HEADER not in request.headers)

    @api.get("/uploads/{sha}", tags=["tasks"],
             responses={200: {"content": {"application/octet-stream": {}}}})
    def upload(sha: str = ApiPath(pattern="^[0-9a-f]{64}$"), svc: Service = Depends(service)):
        """An upload kept by this server, by its sha256 (what a server sharing the database
        fetches for a run it claimed; never forwarded)."""
        f = svc.uploads.open(sha)

        def blocks():
            with f:
                while block := f.read(256 * 1024):
                    yield block

        return StreamingResponse(blocks(), media_type="application/octet-stream")

    @tasks.get("/runs/{run_id}/attempts", response_model=list[RunPublic])
    def run_attempts(run_id: RowId, svc: Service = Depends(service)):
        """The run's retry chain, first attempt to last."""
        return svc.attempts(run_id)

    @tasks.get("/runs/{run_id}/deliveries")
    def run_deliveries(run_id: RowId, request: Request,
                       svc: Service = Depends(service)) -> list[dict]:
        """Webhook notifications of the run's end and how they went (targets in full for
        admins only: a webhook URL may carry its token)."""
        identity = getattr(request.state, "identity", ANONYMOUS_ADMIN)
        return svc.deliveries(run_id, full_targets=identity.can("admin"))

    @tasks.get("", response_model=list[TaskSummary])
    def list_tasks(svc: Service = Depends(service)):
        return svc.list_tasks()

    @tasks.post("", response_model=TaskDetail, status_code=201)
    def create_task(body: TaskCreate, request: Request, svc: Service = Depends(service)):
        if body.notebook is not None:
            return svc.create_task_from_notebook(body.id, body.notebook, author=who(request))
        return svc.create_task(body.id, body.code, author=who(request))

    @tasks.get("/{task_id}", response_model=TaskDetail)
    def get_task(task_id: str, svc: Service = Depends(service)):
        return svc.get_task(task_id)

    @tasks.put("/{task_id}", response_model=TaskDetail)
    def update_task(task_id: str, body: TaskUpdate, request: Request,
                    svc: Service = Depends(service)):
        return svc.update_task(task_id, body.code, body.base_sha, author=who(request))

    @tasks.delete("/{task_id}", status_code=204)
    def delete_task(task_id: str, request: Request, svc: Service = Depends(service)):
        svc.delete_task(task_id, author=who(request))
        return Response(status_code=204)

    @tasks.post("/{task_id}/execute", response_model=RunAccepted, status_code=202,
                openapi_extra=EXECUTE_BODY)
    async def execute(task_id: str, request: Request, svc: Service = Depends(service)):
        """Queue a run. JSON: `{"params": {...}}`. With file params: `multipart/form-data`,
        a `params` field (that JSON object) and one file part per file param, named
        after it. Every upload is checked before anything is queued."""
        kind = request.headers.get("content-type", "")
        files: dict[str, tuple[str, Any]] = {}
        if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            try:
                form = await request.form(max_files=MAX_UPLOADS, max_fields=MAX_UPLOADS + 1)
            except Exception as exc:  # a malformed body (Starlette's parser says why)
                raise InvalidParams(f"The multipart body cannot be read: {exc}") from None
            params: Any = {}
            for key, value in form.multi_items():
                if isinstance(value, str):
                    if key != "params":
                        raise InvalidParams(f"unknown form field {key[:80]!r}: params go in "
                                            "the 'params' field as a JSON object")
                    try:
                        params = json.loads(value or "{}")
                    except ValueError:
                        raise InvalidParams("the 'params' field is not JSON") from None
                elif key in files:
                    raise InvalidParams(f"more than one file for param {key[:80]!r}")
                else:
                    files[key] = (value.filename or "", value.file)
        else:
            raw = await request.body()
            try:
                body = ExecuteRequest.model_validate_json(raw) if raw.strip() else None
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ())) or "body"
                raise InvalidParams(f"The body is not a valid execute request: {where}: "
                                    f"{first.get('msg')}") from None
            params = (body.params if body else None) or {}
        try:
            run = await run_in_threadpool(svc.submit, task_id, params, "api", who(request),
                                          files or None)
        finally:
            for _, stream in files.values():
                stream.close()
        return run.model_dump() | {"run_id": run.id}

    @tasks.get("/{task_id}/schedule")
    def get_schedule(task_id: str, svc: Service = Depends(service)) -> dict:
        """The task's cron schedules in words, the next ticks, paused or not."""
        return svc.schedule(task_id)

    @tasks.post("/{task_id}/schedule/pause")
    def pause_schedule(task_id: str, request: Request, svc: Service = Depends(service)) -> dict:
        return svc.pause_schedule(task_id, True, actor=who(request))

    @tasks.post("/{task_id}/schedule/resume")
    def resume_schedule(task_id: str, request: Request,
                        svc: Service = Depends(service)) -> dict:
        return svc.pause_schedule(task_id, False, actor=who(request))

    @tasks.get("/{task_id}/versions", response_model=list[VersionPublic])
    def versions(task_id: str, svc: Service = Depends(service),
                 limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_INT)):
        return svc.task_versions(task_id, limit, offset)

    @tasks.get("/{task_id}/versions/{ref}", response_model=VersionDetail)
    def version(task_id: str, ref: str, svc: Service = Depends(service)):
        v = svc.get_version(task_id, ref)
        return VersionDetail(id=v.id, task=v.task, sha=v.sha, created_at=v.created_at,
                             author=v.author, note=v.note, size=len(v.content),
                             content=v.content)

    @tasks.post("/{task_id}/versions/{ref}/restore", response_model=TaskDetail)
    def restore(task_id: str, ref: str, request: Request, svc: Service = Depends(service)):
        return svc.restore_version(task_id, ref, author=who(request))

    # -- logs: the app log before the "{name}" pattern.

    @logs_router.get("", response_model=list[LogFile])
    def list_logs(svc: Service = Depends(service), task: str | None = None,
                  limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_INT)):
        return svc.list_logs(limit, offset, task)

    @logs_router.get("/app.log", response_model=LogChunkOut)
    def app_log(svc: Service = Depends(service), lines: int = Query(100, ge=1, le=5000),
                level: str | None = None):
        return svc.app_log(lines, level).as_dict()

    @logs_router.get("/{name}", response_model=LogChunkOut)
    def read_log(name: str, request: Request, svc: Service = Depends(service),
                 offset: int = Query(0, ge=0, le=MAX_INT),
                 max_bytes: int = Query(logs.MAX_READ, ge=1, le=logs.MAX_READ),
                 tail: int | None = Query(None, ge=1, le=logs.MAX_READ),
                 lines: int | None = Query(None, ge=1, le=10000)):
        run = svc.run_for_log(name)
        forward = PEER_HEADER not in request.headers  # a peer's read: our file only
        return svc.read_log(run.id, offset, max_bytes, tail, lines, forward=forward).as_dict()

    @logs_router.get("/{name}/download")
    def download_log(name: str, request: Request, svc: Service = Depends(service)):
        run = svc.run_for_log(name)
        stream = svc.log_stream(run.id, forward=PEER_HEADER not in request.headers)
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        if stream is None:
            svc.read_log(run.id)  # raises the same NotFound as reading would
            return Response(b"", media_type="text/plain", headers=headers)
        return StreamingResponse(stream, media_type="text/plain", headers=headers)

    @system.get("/info")
    def info(svc: Service = Depends(service)) -> dict:
        return svc.system_info() | {"supervisor": svc.supervisor_status()}

    @system.get("/process")
    def process(svc: Service = Depends(service)) -> dict:
        return svc.process_info()

    @system.get("/processes")
    def processes(svc: Service = Depends(service)) -> list[dict]:
        return svc.python_processes()

    @system.get("/locks")
    def locks(svc: Service = Depends(service)) -> list[dict]:
        return svc.held_locks()

    @system.get("/replicas")
    def replicas(svc: Service = Depends(service)) -> list[dict]:
        """Servers sharing the database: host, data dir, last heartbeat, runs held."""
        return svc.replicas()

    @system.get("/samples")
    def samples(svc: Service = Depends(service)) -> list[dict]:
        return svc.system_samples()

    @system.get("/health", response_model=Health,
                responses={503: {"model": Health, "description": "not ready"}})
    def health(svc: Service = Depends(service)):
        report = svc.health()
        return JSONResponse(Health(**report).model_dump(), status_code=200 if report["ok"] else 503)

    tokens, auth, secrets = access_routers(service, who)
    operations = operations_router(service, who)

    @api.get("/dependencies", tags=["tasks"])
    def dependencies(svc: Service = Depends(service)) -> list[dict]:
        """Chained tasks: each ``after`` link as upstream -> downstream."""
        return [{"upstream": u, "downstream": d, "on": on} for u, d, on in svc.dependencies()]

    @api.get("/failures", tags=["tasks"])
    def failure_groups(svc: Service = Depends(service), task: str | None = None,
                       since: datetime | None = None) -> list[dict]:
        """Unsuccessful runs grouped by cause: a traceback's exception and innermost frame
        in the task's file, its message with numbers, ids and quoted values taken out;
        timeouts, cancels, signals and lost runs by their kind. Newest group first; a
        group is ``resolved`` when its tasks have succeeded since it last occurred."""
        return svc.failure_groups(task, since)

    @api.post("/query", tags=["history"], response_model=QueryAnswer)
    def query(body: QueryRequest, svc: Service = Depends(service)):
        """Read-only SQL over the run history (tables `run`, `task_version`, `run_sample`,
        `environment`; SQLite only), for viewers and up: columns and rows (blobs as
        hex), at most `max_rows` of them and 16 MiB, a value at most 1 MiB, 5 s."""
        result = svc.query(body.sql, body.max_rows)
        rows = [[v.hex() if isinstance(v, bytes) else v for v in row] for row in result.rows]
        return QueryAnswer(columns=result.columns, rows=rows, truncated=result.truncated,
                           elapsed=round(result.elapsed, 4))

    @api.get("/audit", tags=["audit"])
    def audit_trail(svc: Service = Depends(service), actor: str | None = None,
                    action: str | None = None, limit: int = Query(100, ge=1, le=500),
                    offset: int = Query(0, ge=0, le=MAX_INT)) -> list[dict]:
        """Who did what and when (admins only)."""
        return svc.audit_events(limit, offset, actor, action)

    for router in (tasks, logs_router, system, tokens, auth, secrets, operations):
        api.include_router(router)
    return api
