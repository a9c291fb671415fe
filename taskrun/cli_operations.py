"""``taskrun workflow`` and ``taskrun env``: workflow runs and task environments."""

from __future__ import annotations

import sys
from datetime import datetime

from taskrun import fmt
from taskrun.errors import TaskRunError


def open_service(args):
    """The service over the data dir, opened without supervising (every command that
    needs more than ``taskrun.lite``'s reads). Imported here: the database layer is
    most of a command's start."""
    from taskrun.service.facade import Service
    from taskrun.settings import load

    return Service(load()).open()


_open = open_service
_table = fmt.table


def cmd_workflow(args) -> int:
    svc = _open(args)
    if args.action == "list":
        rows = [[str(w["id"]), w["task"], w["status"], w["started_at"][:19],
                 fmt.duration(w["duration"]) if w["duration"] is not None else "-",
                 str(len(w["repairs"]))] for w in svc.list_workflows(limit=args.limit)]
        print(_table(rows, ["ID", "STARTED AT TASK", "STATUS", "STARTED", "DURATION",
                            "REPAIRS"]))
        return 0
    if args.id is None:
        raise TaskRunError(f"taskrun workflow {args.action} needs a workflow run id")
    if args.action == "repair":
        done = svc.repair_workflow(args.id, by="cli")["repaired"]
        print(f"workflow {args.id}: repair #{done['repair']} re-runs {', '.join(done['tasks'])}")
        return 0
    wf = svc.cancel_workflow(args.id, by="cli") if args.action == "cancel" \
        else svc.get_workflow(args.id)
    print(f"workflow {wf['id']} ({wf['task']}): {wf['status']}"
          + (f", {len(wf['repairs'])} repair(s)" if wf["repairs"] else ""))
    rows = [[n["task"], n["status"], ",".join(map(str, n["runs"])) or "-",
             ", ".join(n["upstreams"]) or "-", n["reason"] or ""] for n in wf["nodes"]]
    print(_table(rows, ["TASK", "STATUS", "RUNS", "AFTER", "WHY"]))
    return 0


def cmd_env(args) -> int:
    svc = _open(args)
    if args.action == "prune":
        removed = svc.prune_environments()
        print(f"removed {len(removed)} environment(s)" +
              "".join(f"\n  {ident}" for ident in removed))
        return 0
    envs = svc.list_environments()
    rows = [[e["id"][:12], fmt.size(e["size"]),
             ", ".join(f"{n} {v}" for n, v in e["packages"].items())[:60],
             ", ".join(e["tasks"]) or "-",
             datetime.fromtimestamp(e["last_used"]).strftime("%Y-%m-%d %H:%M")]
            for e in envs]
    print(_table(rows, ["ENVIRONMENT", "SIZE", "PACKAGES", "TASKS", "LAST USED"]))
    print(f"{len(envs)} environment(s), {fmt.size(svc.environments_size())} on disk "
          "(shared files counted once)", file=sys.stderr)
    return 0
