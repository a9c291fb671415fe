"""Notebook-style runs: a task file in ``# %%`` cells, run cell by cell.

Run as ``python -u <this file> <record> <script>`` (a cold run), or loaded by a warm
run's fork (``zygote_main``). Either way the script runs in one interpreter, in a
``__main__`` set up as ``python script`` sets it up, its top-level statements in order
and with one set of globals: exactly as it runs top to bottom. Around each cell one
line of JSON goes to the record (a file of the run's own): where the cell's output
starts in the log, when it started, how it ended and the process's peak memory by
then. Tracebacks, exit codes and signals are the script's: this runner's own frames
are left out of a traceback, ``SystemExit`` goes through, a signal kills the process
as it would have. A file without a cell marker is not run through here at all.

Standalone on purpose (the standard library only): the server imports ``split`` from
it to show a version's cells, and a run pays for nothing else.
"""

import ast
import io
import json
import os
import re
import sys
import time
import types
from bisect import bisect_right

# "# %%", "#%%", "# %% load orders", "# %% [markdown]": the percent format's markers
# (VS Code, PyCharm, Spyder, Jupytext); "# %%%" is not one.
MARKER = re.compile(r"#\s?%%(?!%)(.*)$")
NEEDLE = b"%%"  # the server's cheap test: a file without it has no cells


TAGS = re.compile(r"tags\s*=\s*\[([^\]]*)\]")


def is_parameters(title: str) -> bool:
    """papermill's and Jupytext's parameters cell: ``tags=["parameters"]`` or
    ``[parameters]`` in its title."""
    tags = TAGS.search(title)
    if tags and "parameters" in [t.strip().strip("'\"") for t in tags.group(1).split(",")]:
        return True
    return "[parameters]" in title.lower()


def assigned(body: list) -> list[str]:
    """The names a parameters cell assigns (``x = 1``, ``x: int = 1``)."""
    names = []
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and \
                isinstance(stmt.targets[0], ast.Name):
            names.append(stmt.targets[0].id)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and \
                stmt.value is not None:
            names.append(stmt.target.id)
    return names


def _inject(namespace: dict, names: list[str]) -> None:
    """A run's params replace the parameters cell's values, right after it ran (as
    papermill's injected cell does)."""
    try:
        given = json.loads(os.environ.get("TASKRUN_PARAMS") or "{}")
    except ValueError:
        return
    for name in names:
        if isinstance(given, dict) and name in given:
            namespace[name] = _like(namespace.get(name), given[name])


def _like(old, new):
    """``new`` (a param as the run got it) of the type the cell gave ``old``."""
    try:
        if isinstance(old, bool):
            return new if isinstance(new, bool) else str(new).lower() in ("1", "true", "yes")
        if isinstance(old, int):
            return int(new)
        if isinstance(old, float):
            return float(new)
    except (TypeError, ValueError):
        pass
    return new


def _first_line(stmt: ast.stmt) -> int:
    decorators = getattr(stmt, "decorator_list", None)
    return decorators[0].lineno if decorators else stmt.lineno


def _is_preamble(stmt: ast.stmt, position: int) -> bool:
    """A docstring or a ``from __future__`` import: not a cell of its own."""
    if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
        return True
    return (position == 0 and isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str))


def split(source: str, tree: ast.Module | None = None) -> list[dict]:
    """The cells of ``source``: ``[{index, title, line, end_line, first, last}]``, where
    ``first:last`` slices the module's top-level statements; ``[]`` without markers.

    A marker is a comment line at the start of a line, outside every top-level
    statement (so not inside a string or an indented block). Code before the first
    marker is a cell only when it holds statements (a docstring, ``__future__``
    imports, comments and the metadata block are not); so is any cell.
    """
    if tree is None:
        tree = ast.parse(source)
    body = tree.body
    starts = [_first_line(s) for s in body]
    lines = source.splitlines()
    markers = []
    for number, text in enumerate(lines, 1):
        if not text.startswith("#"):
            continue
        match = MARKER.match(text)
        if match is None:
            continue
        k = bisect_right(starts, number) - 1  # the last statement starting at or before it
        if k >= 0 and body[k].end_lineno >= number:
            continue  # inside a statement
        markers.append((number, match.group(1).strip()))
    if not markers:
        return []
    bounds = [(0, ""), *markers]  # (line after which the cell's statements start, title)
    cells = []
    carried = 0  # statements of a cell without code, run with the next one
    k = 0
    for j, (line, title) in enumerate(bounds):
        end = bounds[j + 1][0] if j + 1 < len(bounds) else len(lines) + 1
        first = k  # this cell's statements: first:k (with what an empty one before left)
        while k < len(body) and starts[k] < end:
            k += 1
        own = [i for i in range(first, k) if not (j == 0 and _is_preamble(body[i], i))]
        if not own:
            continue
        cells.append({"index": len(cells), "title": title,
                      "line": line if j else starts[first], "end_line": end - 1,
                      "first": carried, "last": k})
        carried = k
    if cells:
        cells[-1]["end_line"] = len(lines)
    return cells


def future_flags(tree: ast.Module) -> int:
    """The compiler flags of the module's ``from __future__`` imports, for every cell."""
    import __future__
    flags = 0
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
            for alias in stmt.names:
                feature = getattr(__future__, alias.name, None)
                flags |= getattr(feature, "compiler_flag", 0)
    return flags


class Record:
    """The run's cell record: one JSON line per event, appended; a write that fails
    (a full disk) loses that event, never the run.

    ``stream:<nonce>`` (a run on a cluster, whose log is all that comes back) writes
    each event into the output instead, as a control record the service takes out
    and files at the place in the log it came in (``backends.ray_entry``).
    """

    def __init__(self, path: str):
        self.prefix = ""
        if path.startswith("stream:"):
            self.fd, self.prefix = 1, f"\x1e{path[7:]} cell "
            return
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError:
            self.fd = -1

    def write(self, event: dict) -> None:
        if self.fd >= 0:
            try:
                os.write(self.fd, (self.prefix + json.dumps(event) + "\n").encode())
            except OSError:
                pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _log_offset() -> int | None:
    try:
        return os.fstat(1).st_size
    except OSError:
        return None


def peak_rss() -> int | None:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _exit_status(exc: SystemExit) -> str:
    code = exc.code
    return "succeeded" if code is None or code == 0 else "failed"


class Displays:
    """``display()`` and a cell's last expression: each value a display of the cell that
    is running (``displays``, loaded on the first one), its event in the record."""

    def __init__(self, record: Record):
        self.record = record
        self.cell = 0
        self.module = None
        self.shown: set[int] = set()  # figures displayed in this cell (not shown again)

    def display(self, *values, **_options) -> None:
        if not os.environ.get("TASKRUN_DISPLAY_DIR"):
            return  # (where displays are not kept: a run on a cluster)
        for value in values:
            if self.module is None:
                import importlib.util
                spec = importlib.util.spec_from_file_location(
                    "taskrun_displays", os.path.join(os.path.dirname(__file__), "displays.py"))
                self.module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(self.module)
            if type(value).__module__.startswith("matplotlib"):
                self.shown.add(id(value))
            event = self.module.show(value, self.cell)
            if event is not None:
                self.record.write(event)

    def route(self) -> None:
        """``IPython.display.display`` goes here where the task imported IPython."""
        ipython = sys.modules.get("IPython.display")
        if ipython is not None and getattr(ipython, "display", None) is not self.display:
            ipython.display = self.display
        core = sys.modules.get("IPython.core.display_functions")
        if core is not None and getattr(core, "display", None) is not self.display:
            core.display = self.display

    def figures(self) -> None:
        """Figures left open at a cell's end are shown and closed (the inline backend)."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        try:
            for number in pyplot.get_fignums():
                figure = pyplot.figure(number)
                if id(figure) not in self.shown:
                    self.display(figure)
            pyplot.close("all")
        except Exception:
            pass
        self.shown.clear()


def _trailing_semicolon(lines: list[str], stmt: ast.stmt) -> bool:
    """``df;``: the value is not shown (as in IPython)."""
    rest = lines[stmt.end_lineno - 1][stmt.end_col_offset:] if stmt.end_lineno else ""
    return rest.lstrip().startswith(";")


def _cell_code(script: str, body: list, flags: int, lines: list[str]):
    """(the statements' code, the last expression's code or None)."""
    last = None
    if body and isinstance(body[-1], ast.Expr) and not _trailing_semicolon(lines, body[-1]):
        last = compile(ast.Expression(body[-1].value), script, "eval", flags=flags,
                       dont_inherit=True)
        body = body[:-1]
    module = ast.Module(body=body, type_ignores=[])
    return compile(module, script, "exec", flags=flags, dont_inherit=True), last


def run(script: str, record_path: str, namespace: dict) -> None:
    """Run ``script`` in ``namespace`` cell by cell; what it raises goes to the caller."""
    with io.open_code(script) as f:
        source = f.read()
    # The whole file first: its syntax errors are reported as the interpreter does.
    whole = compile(source, script, "exec", dont_inherit=True)
    tree = compile(source, script, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    cells = split(source.decode("utf-8", "replace"), tree)
    if not cells:
        exec(whole, namespace)
        return
    del whole
    flags = future_flags(tree)
    record = Record(record_path)
    record.write({"cells": [{k: c[k] for k in ("index", "title", "line", "end_line")}
                            for c in cells]})
    shows = Displays(record)
    import builtins
    if not hasattr(builtins, "display"):
        builtins.display = shows.display
    lines = source.decode("utf-8", "replace").splitlines()
    for cell in cells:
        body = tree.body[cell["first"]:cell["last"]]
        code, last = _cell_code(script, body, flags, lines)
        _flush()
        shows.cell = cell["index"]
        shows.route()
        record.write({"i": cell["index"], "start": time.time(), "offset": _log_offset()})
        try:
            exec(code, namespace)
            if is_parameters(cell["title"]):
                _inject(namespace, assigned(body))
            if last is not None:
                shows.route()
                value = eval(last, namespace)
                if value is not None:
                    shows.display(value)
            shows.figures()
        except SystemExit as exc:
            record.write({"i": cell["index"], "end": time.time(), "status": _exit_status(exc),
                          "rss": peak_rss()})
            raise
        except BaseException:
            shows.figures()
            record.write({"i": cell["index"], "end": time.time(), "status": "failed",
                          "rss": peak_rss()})
            raise
        _flush()
        record.write({"i": cell["index"], "end": time.time(), "status": "succeeded",
                      "rss": peak_rss()})


def new_main(script: str) -> types.ModuleType:
    """A ``__main__`` as ``python script`` makes it, registered in ``sys.modules``."""
    import builtins
    from importlib.machinery import SourceFileLoader
    main = types.ModuleType("__main__")
    main.__dict__.update(__annotations__={}, __builtins__=builtins,
                         __loader__=SourceFileLoader("__main__", script),
                         __file__=script, __cached__=None)
    sys.modules["__main__"] = main
    return main


def _script_traceback(script: str):
    kind, value, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    # (The hook prints the exception's own traceback, so that is the one cut.)
    return kind, value.with_traceback(tb), tb


def main() -> None:
    record_path, script = sys.argv[1], sys.argv[2]
    sys.argv = [script]
    sys.path[0] = os.path.dirname(script)
    namespace = new_main(script).__dict__
    try:
        run(script, record_path, namespace)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        import signal
        import traceback
        traceback.print_exception(*_script_traceback(script))
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        # As the interpreter reports an uncaught exception, from the script's own frames.
        sys.excepthook(*_script_traceback(script))
        sys.exit(1)


if __name__ == "__main__":
    main()
