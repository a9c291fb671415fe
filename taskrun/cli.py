"""Command line: ``python -m taskrun …``, a thin translation of argv to ``service`` calls.

Works on the same data dir and settings as the server. ``run`` (without
``--detach``) starts a supervisor in this process that executes only the run it
submitted, streams its log, and exits with the task's exit code.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from taskrun import fmt, lite
from taskrun.cli_operations import cmd_env, cmd_workflow
from taskrun.cli_operations import open_service as _open
from taskrun.errors import TaskRunError
from taskrun.fmt import table as _table
from taskrun.settings import SECRET_SETTINGS, SETTINGS, load
from taskrun.status import ACTIVE, ROLES, RunStatus

if TYPE_CHECKING:
    from taskrun.service.facade import Service

EXIT_ERROR = 2  # bad input, unknown task or run, refused run
EXIT_NOT_READY = 3


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def cmd_list(args) -> int:
    settings = load()
    conn = lite.connect(settings)
    if conn is not None:
        with closing(conn):
            tasks = lite.list_tasks(conn, settings)
    else:
        tasks = [{**t, "last_status": t["last_run"]["status"] if t["last_run"] else None}
                 for t in _open(args).list_tasks()]
    rows = []
    for t in tasks:
        rows.append([t["name"], t["state"], t["last_status"] or "-",
                     "-" if t["success_rate"] is None else f"{t['success_rate']:.0%}",
                     (f"ERROR: {t['error']}" if t["error"] else t["description"])[:60]])
    print(_table(rows, ["TASK", "STATE", "LAST RUN", "SUCCESS", "DESCRIPTION"]))
    return 0


def cmd_show(args) -> int:
    task = _open(args).get_task(args.task)
    if args.json:
        print(json.dumps(task, indent=2, default=str))
        return 0
    print(f"{task['name']}: {task['description'] or '(no description)'}")
    print(f"sha {task['sha'][:12]} · {task['size']} bytes")
    if task["error"]:
        print(f"error: {task['error']}")
    if task["metadata"]:
        meta = task["metadata"]
        print(f"timeout {meta['timeout'] or 'default'} · concurrency {meta['concurrency']}")
        for name, p in meta["params"].items():
            print(f"  param {name}: {p['type']} = {p['default']!r}  {p['help']}")
    print("---")
    print(task["code"], end="" if task["code"].endswith("\n") else "\n")
    return 0


def _stream(svc: Service, run_id: int, offset: int = 0, poll: float = 0.1) -> tuple[int, object]:
    """Print a run's log as it grows until the run ends; returns (offset, final run)."""
    while True:
        run = svc.get_run(run_id)
        chunk = svc.read_log(run_id, offset)
        if chunk.content:
            sys.stdout.write(chunk.content)
            sys.stdout.flush()
        offset = chunk.next_offset
        if run.status not in ACTIVE and chunk.next_offset >= chunk.size:
            return offset, run
        if not chunk.content:
            time.sleep(poll)


def _exit_code(run) -> int:
    if run.status == RunStatus.SUCCEEDED:
        return 0
    if run.exit_code is not None and run.exit_code > 0:
        return run.exit_code
    if run.exit_code is not None and run.exit_code < 0:
        return 128 - run.exit_code  # the shell's convention for "killed by signal N"
    return 1


def _split_files(pairs: list[tuple[str, str]]) -> tuple[dict, dict]:
    """(params, files): ``name=@path`` is the file at ``path`` for a file param."""
    params, files = {}, {}
    for key, value in pairs:
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                files[key] = (path.name, open(path, "rb"))  # noqa: SIM115 (cmd_run closes it)
            except OSError as exc:
                raise SystemExit(f"--param {key}: cannot read {path}: {exc.strerror}") from None
        else:
            params[key] = value
    return params, files


def cmd_run(args) -> int:
    params, files = _split_files(args.param or [])
    try:
        return _run(args, params, files)
    finally:
        for _, f in files.values():
            f.close()


def _run(args, params: dict, files: dict) -> int:
    from taskrun.service.facade import Service

    svc = Service(load())
    if args.detach:
        svc.open()
        run = svc.submit(args.task, params, trigger="cli", user="cli", files=files)
        print(run.id)
        return 0
    svc.open()
    run = svc.submit(args.task, params, trigger="cli", user="cli", files=files)
    claim = {run.id}
    svc.start(claim_only=claim, sample_system=False)
    print(f"run {run.id} of {args.task} queued", file=sys.stderr)
    try:
        _, final = _stream(svc, run.id)
    except KeyboardInterrupt:
        svc.cancel(run.id, by="cli")
        final = svc.wait(run.id, svc.settings.kill_grace + 10)
    finally:
        svc.stop()
    summary = f"run {final.id}: {final.status}"
    if final.error:
        summary += f" ({final.error})"
    print(summary + f" in {fmt.duration(final.duration)}", file=sys.stderr)
    return _exit_code(final)


def cmd_runs(args) -> int:
    svc = _open(args)
    from taskrun.service.facade import RunFilter

    runs = svc.list_runs(RunFilter(task=args.task, status=args.status, trigger=args.trigger),
                         args.limit, args.offset)
    rows = [[str(r.id), r.task, r.status, r.trigger, f"{r.queued_at:%Y-%m-%d %H:%M:%S}",
             fmt.duration(r.duration), "" if r.exit_code is None else str(r.exit_code)]
            for r in runs]
    print(_table(rows, ["ID", "TASK", "STATUS", "TRIGGER", "QUEUED (UTC)", "DURATION", "EXIT"]))
    return 0


def cmd_status(args) -> int:
    conn = None if args.json else lite.connect(load())
    if conn is None:
        run = _open(args).get_run(args.run_id)
        if args.json:
            print(run.model_dump_json(indent=2))
            return 0
        data = run.model_dump()
    else:
        with closing(conn):
            data = lite.get_run(conn, args.run_id)
    fields = ["id", "task", "status", "trigger", "requested_by", "params", "queued_at",
              "started_at", "finished_at", "duration", "exit_code", "signal", "error",
              "cancelled_by", "pid", "code_sha", "peak_rss", "cpu_seconds", "progress"]
    for key in fields:
        if data.get(key) not in (None, {}, ""):
            print(f"{key:13} {data[key]}")
    return 0


def cmd_logs(args) -> int:
    svc = _open(args)
    if args.follow:
        _stream(svc, args.run_id)
        return 0
    chunk = svc.read_log(args.run_id, tail_bytes=args.tail) if args.tail else None
    if chunk is not None:
        sys.stdout.write(chunk.content)
        return 0
    offset = 0
    while True:
        chunk = svc.read_log(args.run_id, offset)
        sys.stdout.write(chunk.content)
        if chunk.next_offset >= chunk.size or chunk.next_offset == offset:
            return 0
        offset = chunk.next_offset


def cmd_cancel(args) -> int:
    run = _open(args).cancel(args.run_id, by="cli")
    print(f"run {run.id}: {run.status}"
          + (" (cancel requested)" if run.status == RunStatus.RUNNING else ""))
    return 0


def cmd_versions(args) -> int:
    svc = _open(args)
    rows = [[str(v.id), f"{v.created_at:%Y-%m-%d %H:%M:%S}", v.sha[:12], v.author or "-",
             v.note or ""] for v in svc.task_versions(args.task)]
    print(_table(rows, ["ID", "SAVED (UTC)", "SHA", "BY", "NOTE"]))
    return 0


def cmd_prune(args) -> int:
    result = _open(args).prune(dry_run=args.dry_run)
    verb = "would prune" if args.dry_run else "pruned"
    print(f"{verb} {result.runs} run(s)" + ("" if args.dry_run else
                                           f", {result.log_bytes} bytes of logs"))
    return 0


def cmd_token(args) -> int:
    auth = _open(args).auth
    if args.action == "create":
        token_id, token = auth.create_token(args.name, args.role, created_by="cli")
        print(f"token {token_id} ({args.name}, {args.role}); shown only now:", file=sys.stderr)
        print(token)
    elif args.action == "revoke":
        auth.revoke_token(args.id, actor="cli")
        print(f"token {args.id} revoked")
    else:
        rows = [[str(t["id"]), t["name"], t["role"], f"{t['created_at']:%Y-%m-%d %H:%M}",
                 f"{t['last_used_at']:%Y-%m-%d %H:%M}" if t["last_used_at"] else "never",
                 "revoked" if t["revoked_at"] else "active"] for t in auth.tokens()]
        print(_table(rows, ["ID", "NAME", "ROLE", "CREATED (UTC)", "LAST USED", "STATE"]))
    return 0


def cmd_user(args) -> int:
    auth = _open(args).auth
    if args.action == "set":
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else \
            getpass.getpass(f"Password for {args.name}: ")
        auth.set_user(args.name, password, args.role, actor="cli")
        print(f"user {args.name} ({args.role}) saved")
    elif args.action == "delete":
        auth.delete_user(args.name, actor="cli")
        print(f"user {args.name} deleted")
    else:
        rows = [[u["name"], u["role"], f"{u['created_at']:%Y-%m-%d %H:%M}"] for u in auth.users()]
        print(_table(rows, ["USER", "ROLE", "CREATED (UTC)"]))
    return 0


def cmd_session(args) -> int:
    sessions = _open(args).auth.sessions
    if args.action == "revoke":
        sessions.revoke(args.id, actor="cli")
        print(f"session {args.id} revoked")
        return 0
    rows = [[str(x["id"]), x["user_name"], x["client"] or "-",
             f"{x['created_at']:%Y-%m-%d %H:%M}", f"{x['last_used_at']:%Y-%m-%d %H:%M}",
             f"{x['expires_at']:%Y-%m-%d %H:%M}"] for x in sessions.active()]
    print(_table(rows, ["ID", "USER", "CLIENT", "SIGNED IN (UTC)", "LAST USED", "EXPIRES"]))
    return 0


def cmd_secret(args) -> int:
    svc = _open(args)
    if args.action == "set":
        value = sys.stdin.readline().rstrip("\n") if args.value_stdin else \
            getpass.getpass(f"Value of {args.name}: ")
        svc.set_secret(args.name, value, args.task, actor="cli")
        print(f"secret {args.name} saved for {args.task or 'all tasks'}")
    elif args.action == "delete":
        svc.delete_secret(args.name, args.task, actor="cli")
        print(f"secret {args.name} deleted")
    else:
        rows = [[i.name, i.task or "(all tasks)", f"{i.updated_at:%Y-%m-%d %H:%M}",
                 i.updated_by or ""] for i in svc.list_secrets(args.task)]
        print(_table(rows, ["SECRET", "TASK", "UPDATED (UTC)", "BY"]))
    return 0


def cmd_schedule(args) -> int:
    svc = _open(args)
    if args.action in ("pause", "resume"):
        svc.pause_schedule(args.task, args.action == "pause", actor="cli")
        print(f"schedule of {args.task} {args.action}d")
        return 0
    rows = []
    for task in svc.list_tasks():
        info = svc.schedule(task["name"])
        for sched in info["schedules"]:
            nxt = "paused" if info["paused"] else (
                f"{info['next'][0]:%Y-%m-%d %H:%M %Z}" if info["next"] else "")
            rows.append([task["name"], sched["cron"], sched["description"], info["timezone"],
                         nxt])
    print(_table(rows, ["TASK", "CRON", "WHEN", "ZONE", "NEXT"]))
    return 0


def cmd_settings(args) -> int:
    current = load()
    rows = []
    for s in SETTINGS:
        value = str(getattr(current, s.name.removeprefix("TASKRUN_").lower()))
        if s.name in SECRET_SETTINGS:
            value = "(set)" if value else "(not set)"
        rows.append([s.name, value])
    print(_table(rows, ["SETTING", "VALUE"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskrun", description="Task Run Service command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list tasks with their state and last run")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="show a task's metadata and code")
    p.add_argument("task")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("run", help="run a task: stream its output and exit with its exit code")
    p.add_argument("task")
    p.add_argument("--param", "-p", action="append", type=_param, metavar="NAME=VALUE",
                   help="a param value (repeatable); NAME=@path uploads a file to a file param")
    p.add_argument("--detach", "-d", action="store_true",
                   help="only queue the run (a server executes it) and print its id")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("runs", help="run history, newest first")
    p.add_argument("--task")
    p.add_argument("--status", help="one or more statuses, comma-separated")
    p.add_argument("--trigger")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("status", help="one run's details")
    p.add_argument("run_id", type=int)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print a run's log")
    p.add_argument("run_id", type=int)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    p.add_argument("--tail", type=int, metavar="BYTES", help="only the last BYTES bytes")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel a queued or running run")
    p.add_argument("run_id", type=int)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("versions", help="saved versions of a task")
    p.add_argument("task")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("prune", help="remove finished runs and logs past the retention "
                       "settings (the server also does this hourly)")
    p.add_argument("--dry-run", action="store_true", help="only count what would go")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("workflow", help="workflow runs (pipelines through `after`): list, "
                       "show, repair, cancel")
    p.add_argument("action", choices=["list", "show", "repair", "cancel"])
    p.add_argument("id", type=int, nargs="?", help="the workflow run's id (its first run's)")
    p.add_argument("--limit", type=int, default=30)
    p.set_defaults(func=cmd_workflow)

    p = sub.add_parser("env", help="task environments (from tasks' dependencies): list, prune")
    p.add_argument("action", choices=["list", "prune"])
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("token", help="API tokens: create, list, revoke")
    tsub = p.add_subparsers(dest="action", required=True)
    t = tsub.add_parser("create", help="create a token and print it (only this once)")
    t.add_argument("name")
    t.add_argument("--role", choices=ROLES, default="viewer")
    tsub.add_parser("list", help="every token, without the secret")
    t = tsub.add_parser("revoke", help="revoke a token by id")
    t.add_argument("id", type=int)
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("user", help="dashboard users: set (create or change), list, delete")
    usub = p.add_subparsers(dest="action", required=True)
    u = usub.add_parser("set", help="create a user or change its password and role")
    u.add_argument("name")
    u.add_argument("--role", choices=ROLES, default="viewer")
    u.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input instead of a prompt")
    usub.add_parser("list", help="every user")
    u = usub.add_parser("delete", help="delete a user")
    u.add_argument("name")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser("session", help="dashboard sign-ins: list, revoke")
    xsub = p.add_subparsers(dest="action", required=True)
    xsub.add_parser("list", help="every live session")
    t = xsub.add_parser("revoke", help="sign a browser out by session id")
    t.add_argument("id", type=int)
    p.set_defaults(func=cmd_session)

    p = sub.add_parser("secret", help="task secrets: set, list, delete (values never shown)")
    ssub = p.add_subparsers(dest="action", required=True)
    t = ssub.add_parser("set", help="store a secret (prompted for, or read from stdin)")
    t.add_argument("name")
    t.add_argument("--task", help="only for this task (default: any task may ask for it)")
    t.add_argument("--value-stdin", action="store_true",
                   help="read the value from standard input instead of a prompt")
    t = ssub.add_parser("list", help="names and scopes of stored secrets")
    t.add_argument("--task", help="secrets this task can see")
    t = ssub.add_parser("delete", help="delete a secret")
    t.add_argument("name")
    t.add_argument("--task", help="the task it belongs to (default: the shared one)")
    p.set_defaults(func=cmd_secret)

    p = sub.add_parser("schedule", help="task schedules: list, pause, resume")
    ssub = p.add_subparsers(dest="action", required=True)
    ssub.add_parser("list", help="every schedule with its next run")
    for verb in ("pause", "resume"):
        t = ssub.add_parser(verb, help=f"{verb} a task's schedule")
        t.add_argument("task")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("settings", help="every TASKRUN_* setting and its current value")
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TaskRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        # 503s (a full or read-only data dir, a locked database): try again later.
        return EXIT_NOT_READY if exc.http_status == 503 else EXIT_ERROR
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
