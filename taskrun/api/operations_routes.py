"""Routes of running the service and its pipelines: metrics, workflow runs, task
environments (``app`` includes them)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends, Query, Request, Response

from taskrun.api.shapes import MAX_INT, RowId
from taskrun.metrics import CONTENT_TYPE as METRICS_TYPE
from taskrun.service.facade import Service


def operations_router(service: Callable[[], Service], who: Callable[[Request], str]
                      ) -> APIRouter:
    """The router, over the app's own ``service`` dependency."""
    router = APIRouter()

    @router.get("/metrics", tags=["system"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def metrics(svc: Service = Depends(service)) -> Response:
        """This server's metrics in Prometheus' text format: runs started and finished by
        task and status, run duration and queue wait, queued and running runs, slots,
        the lease's age, environment builds, log bytes, API latency. A viewer's token,
        or ``TASKRUN_METRICS_TOKEN`` (which opens this route only)."""
        return Response(svc.metrics_text(), media_type=METRICS_TYPE)

    @router.get("/workflows", tags=["workflows"])
    def workflows_list(svc: Service = Depends(service), task: str | None = None,
                       status: str | None = None, limit: int = Query(50, ge=1, le=500),
                       offset: int = Query(0, ge=0, le=MAX_INT)) -> list[dict]:
        """Workflow runs (a run and the runs its end set off through ``after``), newest
        first; ``task``: those that include it."""
        return svc.list_workflows(task, status, limit, offset)

    @router.get("/workflows/{wid}", tags=["workflows"])
    def workflow_show(wid: RowId, svc: Service = Depends(service)) -> dict:
        """A workflow run: each node's state, its runs, why it was skipped, its upstreams."""
        return svc.get_workflow(wid)

    @router.post("/workflows/{wid}/repair", tags=["workflows"])
    def workflow_repair(wid: RowId, request: Request,
                        svc: Service = Depends(service)) -> dict:
        """Re-run every node that did not succeed, and what depends on them, in the same
        workflow run, with each task's current code (operators)."""
        return svc.repair_workflow(wid, by=who(request))

    @router.post("/workflows/{wid}/cancel", tags=["workflows"])
    def workflow_cancel(wid: RowId, request: Request,
                        svc: Service = Depends(service)) -> dict:
        """Cancel its queued and running runs and skip the rest (operators)."""
        return svc.cancel_workflow(wid, by=who(request))

    @router.get("/environments", tags=["tasks"])
    def environments(svc: Service = Depends(service)) -> list[dict]:
        """Task environments on this server (built from tasks' declared dependencies):
        each with its size on disk (files shared with others counted in each), its
        packages, the tasks whose current version uses it, and its last use."""
        return svc.list_environments()

    @router.post("/environments/prune", tags=["tasks"])
    def prune_environments(svc: Service = Depends(service)) -> dict:
        """Remove environments no current version uses and no run used within
        ``TASKRUN_ENV_KEEP_DAYS`` (admins)."""
        return {"removed": svc.prune_environments()}

    return router
