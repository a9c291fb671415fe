"""The zygote: a Python process with a task's ``preload`` modules imported, forking runs.

Run as ``python -u -c <this file's source> <tasks dir> <modules as JSON> <fd>`` with
the curated task environment (never the server's secrets), and never imports
the service, so it holds no database connection across forks.

On each request from the supervisor (the socket on ``fd``) it forks a *spare*:
a child that forks the spare and exits at once, so the spare is re-parented to
the supervisor (a child subreaper), which waits on it like any other run. The
spare does everything that does not depend on the run ahead of time (its own
session, stdin, closing inherited descriptors, the first-use costs of the
parser and of ``os.environ``), then blocks on its own socket, whose other end
goes to the supervisor. The supervisor hands a run to a ready spare directly
(JSON + the log and lock descriptors) and asks for another once the run has
ended: the fork and its copy-on-write page faults stay off the launch path.
Standalone on purpose: the standard library only.
"""

import atexit
import builtins
import ctypes
import gc
import io
import itertools
import json
import os
import resource
import signal
import socket
import sys
import threading
import traceback
import types
import weakref
from importlib.machinery import SourceFileLoader

PR_SET_NAME = 15
# Process names (what ps and the System page show; a run's process takes a marker).
ZYGOTE_NAME = "taskrun-zygote"
SPARE_NAME = "taskrun-spare"
_LIBC = ctypes.CDLL(None, use_errno=True)


def set_comm(name: str) -> None:
    """The process name other tools see (and the supervisor's marker for forked children)."""
    _LIBC.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def exit_code(exc: SystemExit) -> int:
    """What the interpreter does with ``sys.exit(x)``."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def spare(channel: socket.socket) -> None:
    """In a spare: get ready for any run, wait for one, run it (or exit if none comes)."""
    set_comm(SPARE_NAME)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    for name in os.listdir("/proc/self/fd"):  # close_fds: only the channel stays
        fd = int(name)
        if fd > 2 and fd != channel.fileno():
            try:
                os.close(fd)
            except OSError:
                pass
    # The wrappers name fds 1 and 2, which become the run's log when it comes.
    stdin = stdio(0, "<stdin>", "r")
    stdout = stdio(1, "<stdout>", "w")
    stderr = stdio(2, "<stderr>", "w", errors="backslashreplace")
    # First uses that cost ~1 ms in a fresh fork, paid now rather than by the run:
    # the parser's one-time set-up, and the C environment's allocations.
    compile(b"pass\n", "<warm-up>", "exec")
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(saved)
    rehearse()
    request, fds = recv_msg(channel)
    if request is None:
        os._exit(0)  # dropped by the supervisor (or it is gone) before any run came
    channel.close()
    sys.stdin = sys.__stdin__ = stdin
    sys.stdout = sys.__stdout__ = stdout
    sys.stderr = sys.__stderr__ = stderr
    run_task(request, fds)


def rehearse() -> None:
    """A run's steps once, on nothing, while the spare waits for a run.

    Each page a run's steps touch (the reference counts of the functions, types and
    modules they use) is copied on its first write in a fork: ~1-2 us each, and
    most of a no-op run's time. Touched here, they are copied before a run waits
    on them. Nothing is left behind: no file, module, descriptor or setting.
    """
    json.loads(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}))
    sys.stdin, sys.stdout, sys.stderr = sys.stdin, sys.stdout, sys.stderr
    os.dup2(0, 0)
    os.chdir(os.getcwd())
    set_environ(dict(os.environ))
    sys.argv, sys.path[0] = sys.argv, sys.path[0]
    run_main(os.devnull, register=False)
    flush()
    list(itertools.islice(reversed(sys.modules), 1))
    weakref.ref(types.ModuleType("__main__"))
    flush_open_files()
    gc.collect()
    json.dumps({"exit": 0, "cpu": cpu_seconds()}).encode()
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close()


def stdio(fd: int, name: str, mode: str, errors: str = "strict") -> io.TextIOWrapper:
    """A standard stream as ``python -u`` makes it (see CPython's create_stdio)."""
    raw = io.FileIO(fd, mode, closefd=False)
    raw.name = name
    # -u: stdout and stderr unbuffered; stdin keeps its buffer; all written through.
    binary = io.BufferedReader(raw) if mode == "r" else raw
    text = io.TextIOWrapper(binary, encoding="utf-8", errors=errors, write_through=True)
    text.mode = mode
    return text


def run_task(request: dict, fds: list[int]) -> None:
    """Become what ``python -u script`` would have been, and run it."""
    log_fd = fds[0]
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    if log_fd > 2:
        os.close(log_fd)  # the lock descriptors stay open, as pass_fds keeps them
    set_comm(request["comm"])
    if request.get("uid") is not None:
        # The zygote runs as root (the server does); the run is the task uid's, with no
        # groups, before a line of the task's code, as a cold run is (``backends.wall``).
        uid = request["uid"]
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.chdir(request["cwd"])
    set_environ(request["env"])
    script = request["script"]
    sys.argv = [script]
    sys.path[0] = os.path.dirname(script)
    if "numpy" in sys.modules:  # a cold run seeds numpy from the OS; so does this one
        try:
            sys.modules["numpy"].random.seed()
        except Exception:
            pass
    imported_before = len(sys.modules)
    me = os.getpid()
    code = 0
    try:
        if request.get("cells"):
            run_cells(script, request["runner"], request["cells"])
        else:
            run_main(script)
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
    try:
        finalize_modules(imported_before)
    except BaseException:
        pass
    flush()
    report_end(request.get("end"), me, fds[1:], code)
    os._exit(code)


def report_end(address: str | None, me: int, lock_fds: list[int], code: int) -> None:
    """Tell the supervisor how the run ended, ahead of the exit itself.

    The exit tears down this process's copy of the zygote's page tables, which
    takes from half a millisecond to several with a large preload, before the
    parent hears of it. The run's locks go first, as they would at the exit. The
    report is a datagram to the supervisor's abstract socket (no descriptor is held
    while the task runs); the supervisor checks the sender's pid with the kernel.
    """
    if not address or os.getpid() != me:
        return  # (or a fork the task made, which went on past the end of its script)
    for fd in lock_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    report = {"exit": code, "cpu": cpu_seconds(), "rss": peak_rss()}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(json.dumps(report).encode(), "\0" + address)
    except OSError:
        pass  # the supervisor learns of the end from the exit, as for a cold run


def peak_rss() -> int:
    """The high-water mark of this process's resident memory and of its waited-for
    children's (the kernel's, in bytes: no sample can miss it). ``resource`` is
    imported with the zygote: at a run's end imports fail (``finalize_modules``)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024


def cpu_seconds() -> float:
    """This process's CPU time and its waited-for children's: what ``wait4`` reports."""
    user, system, children_user, children_system, _ = os.times()
    return user + system + children_user + children_system


def set_environ(env: dict) -> None:
    """Make ``os.environ`` (and the C environment) ``env``, changing only what differs.

    The order comes out as a cold run's: the zygote's environment is the start of
    every run's, so kept keys keep their places and new ones follow in order.
    """
    for key in [key for key in os.environ if key not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def run_main(script: str, register: bool = True) -> None:
    """Run the script as ``python script`` does: in a fresh ``__main__`` set up the same way
    (made ``sys.modules["__main__"]`` unless ``register`` is false: the rehearsal).

    (Not ``runpy.run_path``: its ``__main__`` differs from the interpreter's in
    ``__loader__``, ``__package__`` and ``__builtins__``, and it opens the file
    three times.)
    """
    main = types.ModuleType("__main__")
    main.__dict__.update(__annotations__={}, __builtins__=builtins,
                         __loader__=SourceFileLoader("__main__", script),
                         __file__=script, __cached__=None)
    if register:
        sys.modules["__main__"] = main
    with io.open_code(script) as f:
        source = f.read()
    exec(compile(source, script, "exec", dont_inherit=True), main.__dict__)


def run_cells(script: str, runner: str, record: str) -> None:
    """A file in ``# %%`` cells, through the cell runner (loaded in the fork: only such a
    run pays for it)."""
    namespace = {"__name__": "taskrun_cell_main", "__builtins__": builtins, "__file__": runner}
    # (its cached bytecode: compiling the runner in every fork costs 1.7 ms)
    exec(SourceFileLoader("taskrun_cell_main", runner).get_code("taskrun_cell_main"),
         namespace)
    main = namespace["new_main"](script)
    namespace["run"](script, record, main.__dict__)


def finalize_modules(imported_before: int) -> None:
    """What the interpreter's shutdown does to a script's objects, for ``__main__`` and
    the modules the run imported (CPython's ``finalize_modules``): without it a warm run
    would end without flushing the files it left open or calling its objects' ``__del__``.

    ``imported_before`` is the number of modules there were when the run started: the
    run's own imports come after them (``sys.modules`` keeps its order). The preloaded
    modules are not touched, not even read: every reference taken to one of them
    would copy a page the run shares with the zygote (for a small preload, 0.3 ms).
    So, unlike at a real shutdown, a ``__del__`` can still import a preloaded module.
    """
    builtins._ = None
    for name in _SYS_DELETES:
        setattr(sys, name, None)
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__
    count = max(0, len(sys.modules) - imported_before)
    names = list(itertools.islice(reversed(sys.modules), count))[::-1]
    if "__main__" not in names:
        names.insert(0, "__main__")
    survivors = []
    for name in names:  # in the order they were imported, as the interpreter does
        module = sys.modules.pop(name, None)
        try:
            survivors.append(weakref.ref(module))
        except TypeError:
            pass
        del module
    # Imports of anything not loaded fail from here on (sys.meta_path is None), as
    # in an interpreter shutting down. It also empties sys.modules, so that even
    # ``import io`` fails, and tracebacks print without their source lines; only
    # the latter is done here: emptying it would copy every preloaded module's page.
    sys.modules["io"] = None
    # The collector finalizes the objects of a cycle in an order of its own, which in
    # a fork can close a file's raw descriptor before its buffers are flushed.
    flush_open_files()
    gc.collect()
    # Modules kept alive (by cycles through their functions, or by references from
    # elsewhere) have their globals cleared, last imported first, as the interpreter does.
    for ref in reversed(survivors):
        module = ref()
        if module is not None:
            clear_module_dict(vars(module))
        del module
    gc.collect()
    flush_open_files()  # what is left is closed by the exit, as the interpreter's would be


def flush_open_files() -> None:
    """Flush every buffered file still open (text wrappers before their buffers)."""
    files = [f for f in gc.get_objects() if isinstance(f, (io.TextIOWrapper, io.BufferedWriter,
                                                            io.BufferedRandom))]
    files.sort(key=lambda f: not isinstance(f, io.TextIOWrapper))
    for f in files:
        try:
            if not f.closed:
                f.flush()
        except Exception:
            pass


_SYS_DELETES = ("path", "argv", "ps1", "ps2", "last_type", "last_value", "last_traceback",
                "path_hooks", "path_importer_cache", "meta_path", "__interactivehook__")


def clear_module_dict(d: dict) -> None:
    """CPython's ``_PyModule_ClearDict``: names with one leading underscore first."""
    for key in list(d):
        if isinstance(key, str) and key[:1] == "_" and key[1:2] != "_":
            d[key] = None
    for key in list(d):
        if key != "__builtins__":
            d[key] = None


def print_exception(script: str) -> None:
    """The traceback as a cold run prints it: from the task's own frames (no runpy)."""
    kind, value, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    # None for a syntax error: the interpreter prints it without a traceback header.
    traceback.print_exception(kind, value, tb)


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


def recv_msg(sock: socket.socket, flags: int = 0):
    """(message, fds); (None, []) at end of stream. ``flags`` apply to the first read."""
    head, fds, _, _ = socket.recv_fds(sock, 4, 16, flags)
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
    """Fork a spare for each request; the reply carries its pid and its channel."""
    while True:
        try:
            request, _ = recv_msg(sock)
        except OSError:
            return
        if request is None:
            return  # the supervisor is gone: so are we
        reply, channel = fork_spare(sock)
        try:
            send_msg(sock, reply, [channel.fileno()] if channel else [])
        except OSError:
            return  # the supervisor is gone; the spare sees its channel close and exits
        finally:
            if channel is not None:
                channel.close()


def fork_spare(sock: socket.socket) -> tuple[dict, socket.socket | None]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    try:
        middle = os.fork()
    except OSError as exc:
        for end in (ours, theirs):
            end.close()
        for fd in (read_end, write_end):
            os.close(fd)
        return {"error": f"fork failed: {exc}"}, None
    if middle == 0:  # the short-lived middle process
        try:
            os.close(read_end)
            pid = os.fork()
            if pid == 0:
                os.close(write_end)
                sock.close()
                ours.close()
                try:
                    spare(theirs)
                finally:
                    os._exit(70)
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    theirs.close()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(middle, 0)  # after this the spare belongs to the subreaper
    if not raw:
        ours.close()
        return {"error": "fork failed"}, None
    return {"pid": int(raw)}, ours


def main() -> None:
    tasks_dir, modules, fd = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    set_comm(ZYGOTE_NAME)
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
    compile(b"pass\n", "<warm-up>", "exec")  # the parser's one-time set-up, inherited
    # What is loaded now is shared by every run: frozen, a run's garbage collections
    # never visit (and so never copy) those pages. A pandas task allocating a little:
    # 28 % faster, a third less private memory.
    gc.collect()
    gc.freeze()
    send_msg(sock, {"ready": True, "failed": failed, "files": files})
    serve(sock)


if __name__ == "__main__":
    main()
