"""Workflow runs: a run and the runs its end sets off through ``after``, as one unit.

A run of a task that other tasks follow starts a workflow run (its id is that run's
id) when it ends: the plan is that task and its downstream closure, each a node.
From then on, each end of a run in it advances it, in the same transaction as the
end's follow-up, with the workflow's row locked: a node starts once every one of
its upstreams in the plan has ended as it wants (``after_on``; ``after_mode =
"any"``: once one has), or is skipped, with the reason, once one cannot. The
decision to start a node is a compare-and-set of its row from ``waiting``, so it
is made once, whichever server sees the last upstream end.

Upstreams outside the plan are not waited for. Repair sets every node that did
not succeed waiting again and advances: what succeeded stays as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from taskrun.errors import Conflict, NotFound
from taskrun.history.models import Run, Workflow, WorkflowNode, utcnow
from taskrun.runs import queueing
from taskrun.settings import Settings
from taskrun.status import RunStatus

log = logging.getLogger("taskrun.workflows")

_W = Workflow.__table__
_N = WorkflowNode.__table__
_R = Run.__table__
WAITING, QUEUED, SKIPPED = "waiting", "queued", "skipped"
ENDED = {s.value for s in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT,
                           RunStatus.CANCELLED, RunStatus.LOST, RunStatus.SKIPPED)}
REPAIRABLE = ENDED - {RunStatus.SUCCEEDED.value}


def downstream(infos: Mapping[str, Any], task: str) -> dict[str, list[str]]:
    """The plan of a workflow started at ``task``: it and every task downstream of it,
    each with its upstreams in the plan (in its ``after`` order)."""
    followers: dict[str, list[str]] = {}
    for name, info in infos.items():
        for up in (info.meta.after if info.meta else ()):
            followers.setdefault(up, []).append(name)
    seen, todo = {task}, [task]
    while todo:
        for follower in followers.get(todo.pop(), ()):
            if follower not in seen:
                seen.add(follower)
                todo.append(follower)
    return {name: [] if name == task else [u for u in infos[name].meta.after if u in seen]
            for name in sorted(seen)}


def on_end(c: sa.Connection, settings: Settings, run, infos: Mapping[str, Any]) -> int:
    """A run's end (its last attempt): start its workflow run, or record the end in its
    own and advance it. How many runs that queued."""
    wid = run.workflow_id
    if wid is None:
        if not any(i.meta and run.task in i.meta.after for i in infos.values()):
            return 0  # no task follows it: no workflow
        plan = downstream(infos, run.task)
        wid = run.id
        c.execute(sa.insert(_W).values(
            id=wid, task=run.task, status="running", plan=plan, repairs=[],
            started_at=run.started_at or run.queued_at))
        c.execute(sa.insert(_N), [
            {"workflow_id": wid, "task": name, "status": WAITING, "run_id": None,
             "reason": None, "repair": 0} for name in plan])
        c.execute(sa.update(_R).where(_R.c.id == run.id).values(workflow_id=wid))
    elif not _lock(c, wid):
        return 0
    node = c.execute(sa.select(_N).where(_N.c.workflow_id == wid, _N.c.task == run.task)
                     ).first()
    queued = 0
    if node is not None and node.items is not None:  # one item of a for-each node
        queued += _item_ended(c, settings, wid, node, run, infos.get(run.task))
    else:
        c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task == run.task)
                  .values(status=str(run.status), run_id=run.id))
    return queued + advance(c, settings, wid, infos, run.id)


def _lock(c: sa.Connection, wid: int) -> bool:
    """Take the workflow's row for this transaction (PostgreSQL: ``FOR UPDATE``, so two
    servers ending two upstreams of one join decide one after the other; SQLite
    writes one transaction at a time anyway)."""
    return c.execute(sa.select(_W.c.id).where(_W.c.id == wid).with_for_update()).first() \
        is not None


def _satisfies(info, status: str) -> bool:
    on = info.meta.after_on if info and info.meta else "success"
    if status == SKIPPED:
        return False  # it did not run: nothing downstream of it can follow it
    return status == RunStatus.SUCCEEDED or (on == "always" and status in ENDED)


def advance(c: sa.Connection, settings: Settings, wid: int, infos: Mapping[str, Any],
            upstream_run: int | None = None) -> int:
    """Start every node whose upstreams allow it, skip every one they rule out (and so
    on down), then settle the workflow's status. How many runs it queued."""
    plan = c.execute(sa.select(_W.c.plan).where(_W.c.id == wid)).scalar_one()
    nodes = {r.task: r for r in c.execute(sa.select(_N).where(_N.c.workflow_id == wid))}
    status = {t: n.status for t, n in nodes.items()}
    queued = 0
    changed = True
    while changed:
        changed = False
        for task, ups in plan.items():
            if status.get(task) != WAITING:
                continue
            info = infos.get(task)
            decision, reason = _decide(info, ups, status)
            if decision == "wait":
                continue
            changed = True
            if decision == "skip":
                status[task] = SKIPPED
                c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task == task,
                                              _N.c.status == WAITING)
                          .values(status=SKIPPED, reason=reason, run_id=None))
                continue
            # Compare-and-set: one transaction makes this node's run, whichever it is.
            if not c.execute(sa.update(_N).where(
                    _N.c.workflow_id == wid, _N.c.task == task, _N.c.status == WAITING)
                    .values(status=QUEUED, reason=None)).rowcount:
                status[task] = QUEUED
                continue
            if info.meta.for_each:
                node = c.execute(sa.select(_N).where(_N.c.workflow_id == wid,
                                                     _N.c.task == task)).first()
                added, status[task] = _start_items(c, settings, wid, node, info, nodes)
                queued += added
                continue
            by = upstream_run or wid
            run_id, skipped = queueing.queue_or_skip(
                c, settings, task, info.meta, "chain", f"after:{','.join(ups) or task}",
                "could not be queued", upstream_run=by, workflow_id=wid)
            if skipped is None:
                status[task] = QUEUED
                queued += 1
                c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task == task)
                          .values(run_id=run_id))
                log.info("workflow %d: %s queued as run %d", wid, task, run_id)
            else:
                status[task] = SKIPPED
                c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task == task)
                          .values(status=SKIPPED, run_id=run_id, reason=skipped))
    settle(c, wid, status)
    return queued


# ---- for each -----------------------------------------------------------------

def _start_items(c: sa.Connection, settings: Settings, wid: int, node, info,
                 nodes: Mapping[str, Any]) -> tuple[int, str]:
    """A for-each node set going: one run per item of its upstream's result (those that
    already succeeded for that same result are kept: a repair re-runs the rest)."""
    up = nodes.get(info.meta.for_each)
    up_run = c.execute(sa.select(_N.c.run_id).where(
        _N.c.workflow_id == wid, _N.c.task == info.meta.for_each)).scalar() if up else None
    result = c.execute(sa.select(_R.c.result).where(_R.c.id == up_run)).scalar() \
        if up_run else None
    previous = node.items or {}
    if previous.get("from") == up_run and previous.get("list") is not None:
        items = [it if it["status"] == RunStatus.SUCCEEDED else
                 {**it, "run_id": None, "status": "pending"} for it in previous["list"]]
    elif isinstance(result, list):
        items = [{"value": v, "run_id": None, "status": "pending"} for v in result]
    else:
        reason = (f"for_each: the result of {info.meta.for_each} is not a list "
                  f"(it is {type(result).__name__})")
        c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task == node.task)
                  .values(status=RunStatus.FAILED.value, reason=reason, items=None))
        return 0, RunStatus.FAILED.value
    return _fill(c, settings, wid, node.task, info, {"from": up_run, "list": items})


def _fill(c: sa.Connection, settings: Settings, wid: int, task: str, info,
          items: dict) -> tuple[int, str]:
    """Queue pending items up to the node's concurrency; the node's status once none
    is pending or active."""
    entries = items["list"]
    active = sum(1 for it in entries if it["status"] in (QUEUED, "running"))
    limit = info.meta.for_each_concurrency if info and info.meta else 1
    queued = 0
    for it in entries:
        if active >= limit or info is None or info.meta is None:
            break
        if it["status"] != "pending":
            continue
        run_id, _ = queueing.queue_run(c, settings, task, info.meta,
                                       queueing.resolve_params(info.meta, {}), "chain",
                                       f"for_each:{info.meta.for_each}", check_policy=False,
                                       upstream_run=items["from"], workflow_id=wid)
        it.update(run_id=run_id, status=QUEUED)
        active += 1
        queued += 1
    failed = [it for it in entries if it["status"] in ENDED and
              it["status"] != RunStatus.SUCCEEDED]
    if any(it["status"] in ("pending", QUEUED) for it in entries):
        status, reason = QUEUED, None
    elif failed:
        status, reason = RunStatus.FAILED.value, f"{len(failed)} of {len(entries)} item(s) " \
                                                 "did not succeed"
    else:
        status, reason = RunStatus.SUCCEEDED.value, None
    last = next((it["run_id"] for it in reversed(entries) if it["run_id"]), None)
    c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task == task)
              .values(status=status, reason=reason, items=items, run_id=last))
    return queued, status


def _item_ended(c: sa.Connection, settings: Settings, wid: int, node, run, info) -> int:
    items = dict(node.items)
    items["list"] = [{**it, "status": str(run.status)} if it["run_id"] == run.id else it
                     for it in items.get("list", [])]
    return _fill(c, settings, wid, node.task, info, items)[0]


def retried(c: sa.Connection, wid: int, task: str, old: int, new: int) -> None:
    """A step's run retried: the node (or its item) follows the new attempt."""
    node = c.execute(sa.select(_N).where(_N.c.workflow_id == wid, _N.c.task == task)).first()
    if node is None:
        return
    if node.items is not None:
        items = dict(node.items)
        items["list"] = [{**it, "run_id": new} if it["run_id"] == old else it
                         for it in items.get("list", [])]
        c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task == task)
                  .values(items=items))
    else:
        c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task == task)
                  .values(run_id=new))


def _decide(info, ups: list[str], status: dict[str, str]) -> tuple[str, str | None]:
    """"start", "skip" (with why) or "wait", for a waiting node with these upstreams."""
    if info is None or info.meta is None:
        return "skip", "the task no longer exists or its settings do not parse"
    ended = [u for u in ups if status.get(u) in ENDED]
    good = [u for u in ended if _satisfies(info, status[u])]
    bad = [u for u in ended if u not in good]
    if info.meta.after_mode == "any" and ups:
        if good:
            return "start", None
        if len(ended) == len(ups):
            return "skip", "no upstream ended as it wants: " + _why(bad, status)
        return "wait", None
    if bad:
        return "skip", "upstream " + _why(bad, status)
    return ("start", None) if len(good) == len(ups) else ("wait", None)


def _why(tasks: list[str], status: dict[str, str]) -> str:
    return ", ".join(f"{t} {status[t] if status[t] != SKIPPED else 'was skipped'}"
                     for t in tasks)


def settle(c: sa.Connection, wid: int, status: Mapping[str, str] | None = None) -> str:
    """The workflow's status from its nodes': running while any may still run."""
    if status is None:
        status = {r.task: r.status for r in c.execute(
            sa.select(_N.c.task, _N.c.status).where(_N.c.workflow_id == wid))}
    row = c.execute(sa.select(_W.c.status, _W.c.cancelled_by).where(_W.c.id == wid)).first()
    if any(s in (WAITING, QUEUED) for s in status.values()):
        new = "running"
    elif row.cancelled_by:
        new = "cancelled"
    else:
        new = "succeeded" if all(s == RunStatus.SUCCEEDED for s in status.values()) \
            else "failed"
    if new != row.status:
        c.execute(sa.update(_W).where(_W.c.id == wid).values(
            status=new, finished_at=None if new == "running" else utcnow()))
    return new


def repair(c: sa.Connection, settings: Settings, wid: int, infos: Mapping[str, Any],
           by: str | None, now: datetime | None = None) -> dict:
    """Every node that did not succeed set going again, in this workflow run."""
    if not _lock(c, wid):
        raise NotFound(f"Workflow run {wid} does not exist.")
    nodes = {r.task: r for r in c.execute(sa.select(_N).where(_N.c.workflow_id == wid))}
    if any(n.status in (WAITING, QUEUED) for n in nodes.values()):
        raise Conflict(f"Workflow run {wid} is still running: repair it once it has ended.")
    again = sorted(t for t, n in nodes.items() if n.status in REPAIRABLE)
    if not again:
        raise Conflict(f"Workflow run {wid} has nothing to repair: every task succeeded.")
    repairs = list(c.execute(sa.select(_W.c.repairs).where(_W.c.id == wid)).scalar_one())
    number = len(repairs) + 1
    repairs.append({"number": number, "by": by, "at": (now or utcnow()).isoformat(),
                    "tasks": again})
    c.execute(sa.update(_W).where(_W.c.id == wid).values(
        repairs=repairs, status="running", finished_at=None, cancelled_by=None))
    c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.task.in_(again))
              .values(status=WAITING, reason=None, repair=number))
    queued = advance(c, settings, wid, infos)
    log.info("workflow %d repaired (#%d by %s): %s; %d run(s) queued", wid, number,
             by or "-", ", ".join(again), queued)
    return {"repair": number, "tasks": again, "queued": queued}


def cancel(c: sa.Connection, wid: int, by: str) -> list[int]:
    """Mark it cancelled and skip what has not started; the ids of its active runs
    (the caller cancels them: their ends settle it)."""
    if not _lock(c, wid):
        raise NotFound(f"Workflow run {wid} does not exist.")
    c.execute(sa.update(_W).where(_W.c.id == wid).values(cancelled_by=by))
    c.execute(sa.update(_N).where(_N.c.workflow_id == wid, _N.c.status == WAITING)
              .values(status=SKIPPED, reason=f"the workflow run was cancelled by {by}"))
    active = [r[0] for r in c.execute(sa.select(_N.c.run_id).where(
        _N.c.workflow_id == wid, _N.c.status == QUEUED, _N.c.run_id.is_not(None)))]
    settle(c, wid)
    return active
