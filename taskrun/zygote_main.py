"""The zygote: a Python process with a task's ``preload`` modules imported, forking runs.

Run as ``python -u -c <this file's source> <tasks dir> <modules as JSON> <fd>`` with
the curated task environment (never the server's secrets), and never imports
the service, so it holds no database connection across forks. It reads launch
requests from the socket on fd 3 (JSON + file descriptors), and for each forks
a child that forks the run's process and exits at once: the run's process is
then re-parented to the supervisor (a child subreaper), which waits on it like
any other run. Standalone on purpose: the standard library only.
"""

import atexit
import ctypes
import io
import json
import os
import pkgutil  # noqa: F401  (runpy.run_path imports it lazily: once here, not per run)
import runpy
import signal
import socket
import sys
import threading
import traceback

PR_SET_NAME = 15


def set_comm(name: str) -> None:
    """The process name other tools see (and the supervisor's marker for forked children)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except OSError:
        pass


def exit_code(exc: SystemExit) -> int:
    """What the interpreter does with ``sys.exit(x)``."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_task(request: dict, fds: list[int]) -> None:
    """In the run's process: become what ``python -u script`` would have been, and run it."""
    os.setsid()
    log_fd, keep = fds[0], set(fds[1:])
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for name in os.listdir("/proc/self/fd"):  # close_fds, except the run's lock fds
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    set_comm(request["comm"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = request["script"]
    sys.argv = [script]
    sys.path[0] = os.path.dirname(script)
    # -u: unbuffered binary layer, text written through at once, as at interpreter start.
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False),
                                                 encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False),
                                                   encoding="utf-8", write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False),
                                                   encoding="utf-8", errors="backslashreplace",
                                                   write_through=True)
    if "numpy" in sys.modules:  # a cold run seeds numpy from the OS; so does this one
        try:
            sys.modules["numpy"].random.seed()
        except Exception:
            pass
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exit_code(exc)
    except KeyboardInterrupt:
        print_exception(script)
        flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        print_exception(script)
        code = 1
    try:
        threading._shutdown()  # wait for non-daemon threads, as the interpreter does
        atexit._run_exitfuncs()
    except BaseException:
        pass
    flush()
    os._exit(code)


def print_exception(script: str) -> None:
    """The traceback as a cold run prints it: from the task's own frames (no runpy)."""
    kind, value, tb = sys.exc_info()
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    traceback.print_exception(kind, value, tb or first)


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def send_msg(sock: socket.socket, obj, fds=()) -> None:
    """A length-prefixed JSON message, with file descriptors on its first byte."""
    body = json.dumps(obj).encode()
    data = len(body).to_bytes(4, "big") + body
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def recv_msg(sock: socket.socket):
    """(message, fds); (None, []) at end of stream."""
    head, fds, _, _ = socket.recv_fds(sock, 4, 16)
    while head and len(head) < 4:
        more = sock.recv(4 - len(head))
        if not more:
            return None, fds
        head += more
    if not head:
        return None, fds
    size, body = int.from_bytes(head, "big"), b""
    while len(body) < size:
        more = sock.recv(min(size - len(body), 1 << 20))
        if not more:
            return None, fds
        body += more
    return json.loads(body), fds


def serve(sock: socket.socket) -> None:
    while True:
        try:
            request, fds = recv_msg(sock)
        except OSError:
            return
        if request is None:
            return  # the supervisor is gone: so are we
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:  # the short-lived middle process
            try:
                os.close(read_end)
                pid = os.fork()
                if pid == 0:
                    os.close(write_end)
                    sock.close()
                    try:
                        run_task(request, fds)
                    finally:
                        os._exit(70)
                os.write(write_end, str(pid).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            raw = pipe.read()
        os.waitpid(middle, 0)  # after this the run's process belongs to the subreaper
        for fd in fds:
            os.close(fd)
        send_msg(sock, {"pid": int(raw)} if raw else {"error": "fork failed"})


def main() -> None:
    tasks_dir, modules, fd = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    sys.argv = [sys.argv[0]]
    sys.path[0] = tasks_dir  # imports resolve as they would for a task file
    sock = socket.socket(fileno=fd)
    failed = []
    for name in modules:
        try:
            __import__(name)
        except BaseException as exc:  # reported; the tasks will import it themselves
            failed.append(f"{name}: {exc!r}")
    files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}
                   - {""})
    send_msg(sock, {"ready": True, "failed": failed, "files": files})
    serve(sock)


if __name__ == "__main__":
    main()
