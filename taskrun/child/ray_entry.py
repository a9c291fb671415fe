"""The entrypoint of a run on a Ray cluster: ``python -u .taskrun/ray_entry.py``.

Shipped in the job's working dir beside the task's code (the version recorded for
the run), and run by Ray's job supervisor on the node it picked. It runs the task
as ``python -u <task file>`` would (or through the cell runner), in the job's
working dir, with the run's environment, and keeps what a local run guarantees:

- the run's environment comes in a file (``.taskrun/run.json``), removed once read:
  secrets are not in the job's ``runtime_env``, which the Ray dashboard shows;
- everything the task starts stays in this process's tree (a child subreaper), so
  Ray's stop reaches it, and whatever is left when the task ends is killed;
- the exit status is the task's: its code, or death by the same signal;
- what the service needs besides the output goes into the output itself, as control
  records (``\\x1e<nonce> <kind> <json>``) the service takes out of the log: the
  start, progress lines, cell events, and at the end the exit code, CPU time and
  peak memory of the task's tree.

Standalone on purpose: the standard library only (the node has no taskrun).
"""

import base64
import ctypes
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

SEP = "\x1e"
PR_SET_CHILD_SUBREAPER = 36
PROGRESS_EVERY_S = 0.25
FILE_BLOCK = 36 * 1024  # a file's bytes per record: 48 KB of base64, under 64 KB a line
MAX_FILES = 1000


def emit(nonce: str, kind: str, body=None) -> None:
    try:
        os.write(1, f"{SEP}{nonce} {kind} {json.dumps(body)}\n".encode())
    except OSError:
        pass


def subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def children(me: int) -> list[int]:
    """Processes whose parent is ``me`` (with the subreaper: every orphan of the task)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(name))
    return found


def kill_leftovers() -> None:
    """SIGKILL what the task left running, until nothing is left (orphans come back here)."""
    me = os.getpid()
    for _ in range(100):
        left = children(me)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in left:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


class Progress(threading.Thread):
    """Forwards the latest line the task wrote to its progress file."""

    def __init__(self, path: str, nonce: str):
        super().__init__(daemon=True)
        self.path, self.nonce = path, nonce
        self.stopped = threading.Event()
        self.seen = None

    def check(self) -> None:
        try:
            stat = os.stat(self.path)
            if (stat.st_mtime_ns, stat.st_size) == self.seen or stat.st_size > 64 * 1024:
                return
            self.seen = (stat.st_mtime_ns, stat.st_size)
            with open(self.path, encoding="utf-8", errors="replace") as f:
                lines = f.read().strip().splitlines()
        except OSError:
            return
        if lines:
            emit(self.nonce, "progress", lines[-1][:500])

    def run(self) -> None:
        while not self.stopped.wait(PROGRESS_EVERY_S):
            self.check()


def _regular(path: str):
    """An open file if ``path`` is a regular file reached without a link; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def send_outputs(nonce: str, produced: str, limit: int) -> None:
    """The run's outputs and result, into the output as ``file`` records the service
    writes back into the run's own dir (the node's copy goes with the job). Links
    are not followed; past ``limit`` bytes in all, a file is named, not sent."""
    root = os.path.join(produced, "outputs")
    sent = 0
    names = []
    for folder, dirs, files in os.walk(root):  # (os.walk does not follow links)
        dirs.sort()
        for name in sorted(files):
            names.append(os.path.relpath(os.path.join(folder, name), root))
    names = [("outputs/" + n) for n in names[:MAX_FILES]] + ["result.json"]
    for name in names:
        f = _regular(os.path.join(produced, name))
        if f is None:
            if os.path.lexists(os.path.join(produced, name)):
                emit(nonce, "file", {"name": name, "left": "link"})  # (named, not followed)
            continue
        with f:
            size = os.fstat(f.fileno()).st_size
            if sent + size > limit:
                emit(nonce, "file", {"name": name, "left": size})
                continue
            sent += size
            offset = 0
            while True:
                block = f.read(FILE_BLOCK)
                emit(nonce, "file", {"name": name, "offset": offset,
                                     "data": base64.b64encode(block).decode()})
                offset += len(block)
                if len(block) < FILE_BLOCK:
                    break


def main() -> None:
    here = os.getcwd()
    spec_path = os.path.join(here, ".taskrun", "run.json")
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        os.unlink(spec_path)  # it holds the run's secrets
    except OSError:
        pass
    nonce = spec["nonce"]
    emit(nonce, "start", {"host": socket.gethostname(), "pid": os.getpid()})
    subreaper()
    progress_path = os.path.join(tempfile.mkdtemp(prefix="taskrun-"), "progress")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_JOB_STOP_")}
    env.update(spec["env"])
    env["TASKRUN_PROGRESS_FILE"] = progress_path
    for name, relative in spec.get("inputs", {}).items():
        path = os.path.join(here, relative)
        os.chmod(path, 0o444)
        env[name] = path
    produced = tempfile.mkdtemp(prefix="taskrun-run-")
    outputs = os.path.join(produced, "outputs")
    os.mkdir(outputs)
    env["TASKRUN_OUTPUT_DIR"] = outputs
    env["TASKRUN_RESULT_FILE"] = os.path.join(produced, "result.json")
    script = os.path.join(here, spec["script"])
    argv = [sys.executable, "-u"]
    if spec.get("cells"):
        argv += [os.path.join(here, ".taskrun", "cell_main.py"), f"stream:{nonce}"]
    argv.append(script)
    # Ray's stop signals this process and the task's whole tree: the task decides
    # what to do with it; this one waits for the task and then cleans up.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    started = time.monotonic()
    child = subprocess.Popen(argv, env=env, cwd=here, stdin=subprocess.DEVNULL)
    progress = Progress(progress_path, nonce)
    progress.start()
    while True:
        try:
            _, status, usage = os.wait4(child.pid, 0)
            break
        except InterruptedError:
            continue
    progress.stopped.set()
    progress.check()
    code = os.waitstatus_to_exitcode(status)
    kill_leftovers()  # (nothing writes to its outputs while they are sent)
    send_outputs(nonce, produced, spec.get("outputs_max", 100 << 20))
    emit(nonce, "end", {"exit": code, "cpu": round(usage.ru_utime + usage.ru_stime, 3),
                        "rss": usage.ru_maxrss * 1024,
                        "seconds": round(time.monotonic() - started, 3)})
    kill_leftovers()
    sys.stdout.flush()
    if code < 0:  # died by a signal: so does this process, for Ray to see it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)
    os._exit(code)


if __name__ == "__main__":
    main()
