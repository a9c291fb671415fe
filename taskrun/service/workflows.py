"""The service's workflow runs: list, show, repair, cancel (a part of ``Service``)."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from taskrun.access import audit
from taskrun.automation import workflows
from taskrun.errors import Conflict, NotFound
from taskrun.history.models import Run, Workflow, WorkflowNode
from taskrun.history.queries import MAX_PAGE
from taskrun.service.shared import changes_view

log = logging.getLogger("taskrun.service")
_W, _N, _R = Workflow.__table__, WorkflowNode.__table__, Run.__table__


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


class WorkflowRuns:
    def list_workflows(self, task: str | None = None, status: str | None = None,
                       limit: int = 50, offset: int = 0) -> list[dict]:
        """Workflow runs, newest first (``task``: those that started at it or include it)."""
        query = sa.select(_W).order_by(_W.c.id.desc()).limit(min(limit, MAX_PAGE)) \
            .offset(offset)
        if status:
            query = query.where(_W.c.status == status)
        if task:
            query = query.where(_W.c.id.in_(sa.select(_N.c.workflow_id)
                                            .where(_N.c.task == task)))
        with self.db.connect() as c:
            rows = c.execute(query).all()
            counts: dict[int, dict[str, int]] = {}
            if rows:
                for wid, node_status, n in c.execute(
                        sa.select(_N.c.workflow_id, _N.c.status, sa.func.count())
                        .where(_N.c.workflow_id.in_([r.id for r in rows]))
                        .group_by(_N.c.workflow_id, _N.c.status)):
                    counts.setdefault(wid, {})[node_status] = n
        return [self._summary(r, counts.get(r.id, {})) for r in rows]

    @staticmethod
    def _summary(row, counts: dict[str, int]) -> dict:
        ended = row.finished_at
        duration = (ended - row.started_at).total_seconds() if ended else None
        return {"id": row.id, "task": row.task, "status": row.status,
                "started_at": _iso(row.started_at), "finished_at": _iso(ended),
                "duration": duration, "repairs": row.repairs or [],
                "cancelled_by": row.cancelled_by, "nodes": counts}

    def get_workflow(self, wid: int) -> dict:
        """A workflow run with each node: its state, its runs (attempts and repairs), why
        it was skipped, and its upstreams in the plan."""
        with self.db.connect() as c:
            row = c.execute(sa.select(_W).where(_W.c.id == wid)).first()
            if row is None:
                raise NotFound(f"Workflow run {wid} does not exist.")
            nodes = c.execute(sa.select(_N).where(_N.c.workflow_id == wid)).all()
            runs = c.execute(sa.select(_R.c.id, _R.c.task, _R.c.status, _R.c.started_at,
                                       _R.c.finished_at).where(_R.c.workflow_id == wid)
                             .order_by(_R.c.id)).all()
        by_task: dict[str, list] = {}
        for r in runs:
            by_task.setdefault(r.task, []).append(r)
        out = self._summary(row, {})
        out.pop("nodes")
        out["plan"] = row.plan
        out["nodes"] = []
        for node in sorted(nodes, key=lambda n: list(row.plan).index(n.task)
                           if n.task in row.plan else 0):
            mine = by_task.get(node.task, [])
            latest = next((r for r in mine if r.id == node.run_id), None)
            status = node.status
            if status == workflows.QUEUED and latest is not None:
                status = str(latest.status)  # queued or running, as its run is now
            out["nodes"].append({
                "task": node.task, "status": status, "reason": node.reason,
                "run_id": node.run_id, "runs": [r.id for r in mine], "repair": node.repair,
                "upstreams": row.plan.get(node.task, []),
                "started_at": _iso(latest.started_at) if latest else None,
                "finished_at": _iso(latest.finished_at) if latest else None})
        return out

    @changes_view
    def repair_workflow(self, wid: int, by: str = "user") -> dict:
        """Re-run, in the same workflow run, every node that did not succeed (and so what
        depends on them), with each task's current code."""
        infos = {i.name: i for i in self.store.list()}
        with self.db.begin() as c:
            done = workflows.repair(c, self.settings, wid, infos, by)
            audit.record(self.db, by, "workflow.repair", str(wid),
                         f"#{done['repair']}: {', '.join(done['tasks'])}", conn=c)
        if self.supervisor:
            self.supervisor.wake()
        return {**self.get_workflow(wid), "repaired": done}

    @changes_view
    def cancel_workflow(self, wid: int, by: str = "user") -> dict:
        """Cancel its queued and running runs and skip what has not started."""
        with self.db.begin() as c:
            active = workflows.cancel(c, wid, by)
            audit.record(self.db, by, "workflow.cancel", str(wid), "", conn=c)
        for run_id in active:
            try:
                self.cancel(run_id, by)
            except Conflict:
                pass  # it ended meanwhile
        return self.get_workflow(wid)
