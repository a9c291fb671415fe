"""Task settings from the PEP 723 inline metadata block, ``[tool.taskrun]``.

Parsed with ``tomllib`` from the file's text; the task is never executed to
read them. Submitted params are checked against the declared ones in ``params``.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from taskrun.errors import InvalidMetadata, InvalidParams
from taskrun.status import Concurrency
from taskrun.store.params import coerce

# The reference regular expression from PEP 723.
BLOCK_RE = re.compile(
    r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$"
)
PARAM_TYPES = ("str", "int", "float", "bool", "date", "choice", "file")
KNOWN_KEYS = {"description", "timeout", "concurrency", "params", "env", "memory_mb",
              "cpu_seconds", "secrets", "schedule", "timezone", "misfire", "retries",
              "retry_delay", "retry_backoff", "retry_max_delay", "webhook", "email", "notify",
              "after", "after_on", "after_mode", "for_each", "for_each_concurrency", "launch",
              "preload", "backend", "resources", "outputs"}
MISFIRE = ("skip", "once")
NOTIFY = ("failure", "success", "always")
AFTER_ON = ("success", "always")
AFTER_MODE = ("all", "any")
LAUNCH = ("cold", "warm")
BACKENDS = ("local", "ray")
RESOURCE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")  # an environment name, <= 64
# Letters, digits, '_' and '-', 1-64 characters, starting with a letter or digit.
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
WEBHOOK_RE = re.compile(r"https?://[^\s/]+\S*")
EMAIL_RE = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+")
MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
EXTENSION_RE = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._-]{0,15}$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str = "str"
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    required: bool = False
    accept: tuple[str, ...] = ()  # a file param: the extensions it takes (lower case)
    max_mb: float | None = None  # a file param: its size cap (else TASKRUN_UPLOAD_MAX_MB)


@dataclass(frozen=True)
class OutputSpec:
    """``[tool.taskrun.outputs."<name>"]``: what a successful run must have produced."""

    name: str  # a path relative to the run's output dir
    required: bool = False
    min_rows: int | None = None
    max_rows: int | None = None
    columns: tuple[str, ...] = ()  # columns the table must have (others may be there too)


@dataclass(frozen=True)
class TaskMeta:
    description: str = ""
    timeout: float | None = None
    concurrency: Concurrency = Concurrency.FORBID
    params: tuple[Param, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    memory_mb: int | None = None  # address-space limit of the task process
    cpu_seconds: int | None = None  # CPU-time limit of the task process
    secrets: tuple[str, ...] = ()  # names of stored secrets put into its environment
    schedules: tuple[str, ...] = ()  # cron expressions
    timezone: str | None = None  # IANA zone of the schedules (default TASKRUN_TIMEZONE)
    misfire: str = "skip"  # after downtime: skip missed ticks, or run once to catch up
    retries: int = 0
    retry_delay: float = 10.0  # seconds before the first retry, then times retry_backoff
    retry_backoff: float = 2.0
    retry_max_delay: float = 600.0
    webhooks: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()  # addresses mailed on the same ends (needs TASKRUN_SMTP_URL)
    notify: str = "failure"  # which ends are posted to the webhooks
    after: tuple[str, ...] = ()  # run when these tasks end (see after_on, after_mode)
    after_on: str = "success"
    after_mode: str = "all"  # in a workflow run: wait for "all" upstreams, or "any" one
    for_each: str | None = None  # an upstream whose result (a list) it runs once per item of
    for_each_concurrency: int = 4  # items run at once
    launch: str = "cold"  # "warm": fork from a zygote with ``preload`` imported
    preload: tuple[str, ...] = ()
    backend: str | None = None  # "local" or "ray"; None: the server's TASKRUN_BACKEND
    # What a run needs of a cluster node: num_cpus, memory_mb, num_gpus, custom names
    resources: tuple[tuple[str, float], ...] = ()
    outputs: tuple[OutputSpec, ...] = ()  # expectations checked when a run succeeds
    # The block's own (PEP 723) keys: what the task's environment holds (``envs``)
    dependencies: tuple[str, ...] = ()
    requires_python: str | None = None
    has_block: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "timeout": self.timeout,
            "concurrency": self.concurrency.value,
            "params": {p.name: {"type": p.type, "default": p.default, "help": p.help,
                                "choices": list(p.choices), "required": p.required}
                       | ({"accept": list(p.accept), "max_mb": p.max_mb}
                          if p.type == "file" else {})
                       for p in self.params},
            "env": dict(self.env),
            "memory_mb": self.memory_mb,
            "cpu_seconds": self.cpu_seconds,
            "secrets": list(self.secrets),
            "schedule": list(self.schedules),
            "timezone": self.timezone,
            "misfire": self.misfire,
            "retries": self.retries,
            "retry_delay": self.retry_delay,
            "retry_backoff": self.retry_backoff,
            "retry_max_delay": self.retry_max_delay,
            "webhook": list(self.webhooks),
            "email": list(self.emails),
            "notify": self.notify,
            "after": list(self.after),
            "after_on": self.after_on,
            "after_mode": self.after_mode,
            "for_each": self.for_each,
            "for_each_concurrency": self.for_each_concurrency,
            "launch": self.launch,
            "preload": list(self.preload),
            "backend": self.backend,
            "resources": dict(self.resources),
            "outputs": {o.name: {"required": o.required, "min_rows": o.min_rows,
                                 "max_rows": o.max_rows, "columns": list(o.columns)}
                        for o in self.outputs},
            "dependencies": list(self.dependencies),
            "requires_python": self.requires_python,
        }


def find_block(code: str) -> re.Match | None:
    blocks = [m for m in BLOCK_RE.finditer(code) if m.group("type") == "script"]
    if len(blocks) > 1:
        raise InvalidMetadata("more than one '# /// script' block")
    return blocks[0] if blocks else None


def block_toml(match: re.Match) -> str:
    return "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in match.group("content").splitlines(keepends=True)
    )


def _docstring_line(code: str) -> str:
    try:
        doc = ast.get_docstring(ast.parse(code)) or ""
    except (SyntaxError, ValueError):
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _param(name: str, spec: Any) -> Param:
    if not ENV_NAME_RE.match(name):
        raise InvalidMetadata(f"param name {name!r} must be an identifier")
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise InvalidMetadata(f"param '{name}' must be a table like {{ type = \"str\" }}")
    ptype = spec.get("type", "str")
    if ptype not in PARAM_TYPES:
        raise InvalidMetadata(f"param '{name}': type must be one of {', '.join(PARAM_TYPES)}")
    choices = tuple(str(c) for c in spec.get("choices", ()))
    if ptype == "choice" and not choices:
        raise InvalidMetadata(f"param '{name}': type 'choice' needs a 'choices' list")
    accept, max_mb = _file_spec(name, ptype, spec)
    param = Param(name=name, type=ptype, default=spec.get("default"),
                  help=str(spec.get("help", "")), choices=choices,
                  required=bool(spec.get("required", False)), accept=accept, max_mb=max_mb)
    if param.default is not None:
        try:
            coerce(param, param.default)
        except InvalidParams as exc:
            raise InvalidMetadata(f"default of {exc}") from None
    return param


def _file_spec(name: str, ptype: str, spec: dict) -> tuple[tuple[str, ...], float | None]:
    """A file param's ``accept`` (extensions) and ``max_mb``; refused on other types."""
    if ptype != "file":
        if "accept" in spec or "max_mb" in spec:
            raise InvalidMetadata(f"param '{name}': accept and max_mb are for type 'file'")
        return (), None
    if spec.get("default") is not None:
        raise InvalidMetadata(f"param '{name}': a file param has no default")
    accept = spec.get("accept", [])
    accept = [accept] if isinstance(accept, str) else accept
    if not isinstance(accept, list) or not all(
            isinstance(a, str) and EXTENSION_RE.match(a) for a in accept):
        raise InvalidMetadata(f"param '{name}': accept must be a list of extensions, "
                              "e.g. [\".csv\", \".parquet\"]")
    max_mb = spec.get("max_mb")
    if max_mb is not None and (isinstance(max_mb, bool) or not isinstance(max_mb, int | float)
                               or max_mb <= 0):
        raise InvalidMetadata(f"param '{name}': max_mb must be a number > 0")
    return tuple(dict.fromkeys(a.lower() for a in accept)), \
        None if max_mb is None else float(max_mb)


def _outputs(conf: dict) -> tuple[OutputSpec, ...]:
    """``[tool.taskrun.outputs."orders.csv"]`` tables: each output's expectations."""
    from taskrun.store.outputs import check_name

    table = conf.get("outputs", {})
    if not isinstance(table, dict):
        raise InvalidMetadata('outputs must be a table, e.g. [tool.taskrun.outputs."a.csv"]')
    specs = []
    for name, spec in table.items():
        try:
            check_name(name)
        except ValueError as exc:
            raise InvalidMetadata(f"outputs: {exc}") from None
        if not isinstance(spec, dict):
            raise InvalidMetadata(f"outputs.{name!r} must be a table, e.g. {{ min_rows = 1 }}")
        unknown = set(spec) - {"required", "min_rows", "max_rows", "columns"}
        if unknown:
            raise InvalidMetadata(f"outputs.{name!r}: unknown key(s) {', '.join(sorted(unknown))}"
                                  " (known: columns, max_rows, min_rows, required)")
        rows = {}
        for key in ("min_rows", "max_rows"):
            value = spec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise InvalidMetadata(f"outputs.{name!r}: {key} must be a whole number >= 0")
            rows[key] = value
        columns = spec.get("columns", [])
        if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
            raise InvalidMetadata(f"outputs.{name!r}: columns must be a list of names")
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise InvalidMetadata(f"outputs.{name!r}: required must be true or false")
        specs.append(OutputSpec(name=name, required=required, columns=tuple(columns), **rows))
    return tuple(specs)


def parse(code: str) -> TaskMeta:
    """The task's settings; raises InvalidMetadata naming what is wrong. The literal
    assignments of a parameters cell (``# %% tags=["parameters"]``) are params too,
    typed from their values, unless ``[tool.taskrun.params]`` declares them."""
    meta = _parse(code)
    inferred = [p for p in _cell_params(code) if p.name not in {q.name for q in meta.params}]
    return replace(meta, params=meta.params + tuple(inferred)) if inferred else meta


DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _cell_params(code: str) -> list[Param]:
    from taskrun.store.notebooks import parameters

    out = []
    for name, value in parameters(code):
        if not ENV_NAME_RE.match(name):
            continue
        if isinstance(value, bool):
            kind = "bool"
        elif isinstance(value, int):
            kind = "int"
        elif isinstance(value, float):
            kind = "float"
        elif isinstance(value, str):
            kind = "date" if DATE_RE.match(value) else "str"
        else:
            continue  # (a list, a dict, None: not a param the run dialog can give)
        out.append(Param(name=name, type=kind, default=value,
                         help="from the notebook's parameters cell"))
    return out


def _parse(code: str) -> TaskMeta:
    match = find_block(code)
    doc = _docstring_line(code)
    if match is None:
        return TaskMeta(description=doc)
    try:
        data = tomllib.loads(block_toml(match))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidMetadata(f"metadata block is not valid TOML: {exc}") from None
    conf = data.get("tool", {}).get("taskrun", {})
    if not isinstance(conf, dict):
        raise InvalidMetadata("[tool.taskrun] must be a table")
    unknown = set(conf) - KNOWN_KEYS
    if unknown:
        raise InvalidMetadata(
            f"unknown [tool.taskrun] key(s): {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(KNOWN_KEYS))})")
    description = conf.get("description", doc)
    if not isinstance(description, str):
        raise InvalidMetadata("description must be a string")
    timeout = conf.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or timeout <= 0):
        raise InvalidMetadata("timeout must be a number of seconds > 0")
    try:
        concurrency = Concurrency(conf.get("concurrency", "forbid"))
    except ValueError:
        raise InvalidMetadata("concurrency must be one of forbid, queue, parallel") from None
    params_conf = conf.get("params", {})
    if not isinstance(params_conf, dict):
        raise InvalidMetadata("[tool.taskrun.params] must be a table")
    env = conf.get("env", {})
    if not isinstance(env, dict) or not all(
            ENV_NAME_RE.match(k) and isinstance(v, str | int | float) for k, v in env.items()):
        raise InvalidMetadata("env must map variable names to strings")
    limits = {}
    for key in ("memory_mb", "cpu_seconds"):
        value = conf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            raise InvalidMetadata(f"{key} must be a whole number > 0")
        limits[key] = value
    secrets = conf.get("secrets", [])
    if isinstance(secrets, str):
        secrets = [secrets]
    if not isinstance(secrets, list) or not all(
            isinstance(n, str) and SECRET_NAME_RE.match(n) for n in secrets):
        raise InvalidMetadata("secrets must be a list of variable names, e.g. [\"DB_PASSWORD\"]")
    return TaskMeta(
        **limits,
        **_automation(conf),
        **_dependencies(data),
        secrets=tuple(dict.fromkeys(secrets)),
        description=description.strip(),
        timeout=float(timeout) if timeout is not None else None,
        concurrency=concurrency,
        params=tuple(_param(n, s) for n, s in params_conf.items()),
        env={k: str(v) for k, v in env.items()},
        has_block=True,
    )


def _str_list(conf: dict, key: str, pattern: re.Pattern | None = None,
              what: str = "") -> list:
    """A string or list of strings; each must match ``pattern`` (else: "is not <what>")."""
    value = conf.get(key, [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidMetadata(f"{key} must be a string or a list of strings")
    items = [v.strip() for v in value]
    for item in items:
        if pattern is not None and not pattern.fullmatch(item):
            raise InvalidMetadata(f"{key}: {item[:80]!r} is not {what}")
    return items


def _number(conf: dict, key: str, default: float, low: float, high: float) -> float:
    value = conf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidMetadata(f"{key} must be a number from {low:g} to {high:g}")
    return float(value)


def _choice(conf: dict, key: str, choices: tuple[str, ...]) -> str:
    value = conf.get(key, choices[0])
    if value not in choices:
        raise InvalidMetadata(f"{key} must be one of {', '.join(choices)}")
    return value


def _automation(conf: dict) -> dict[str, Any]:
    """Schedules, retries, webhooks, chaining and launch mode, each checked."""
    from croniter import croniter

    schedules = _str_list(conf, "schedule")
    for expr in schedules:
        if not croniter.is_valid(expr):
            raise InvalidMetadata(f"schedule {expr!r} is not a valid cron expression "
                                  "(e.g. \"0 6 * * *\": every day at 06:00)")
    timezone = conf.get("timezone")
    if timezone is not None:
        check_timezone(timezone)
    retries = conf.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise InvalidMetadata("retries must be a whole number from 0 to 100")
    webhooks = _str_list(conf, "webhook", WEBHOOK_RE, "an http:// or https:// URL")
    emails = _str_list(conf, "email", EMAIL_RE, "an e-mail address")
    after = _str_list(conf, "after", TASK_NAME_RE, "a task name")
    preload = _str_list(conf, "preload", MODULE_RE, "a module name")
    for_each = conf.get("for_each")
    if for_each is not None and (not isinstance(for_each, str) or for_each not in after):
        raise InvalidMetadata("for_each must name one of the tasks in after (it runs once "
                              "per item of that task's result, a JSON list)")
    return {
        "for_each": for_each,
        "for_each_concurrency": int(_number(conf, "for_each_concurrency",
                                            TaskMeta.for_each_concurrency, 1, 1000)),
        "schedules": tuple(schedules), "timezone": timezone,
        "misfire": _choice(conf, "misfire", MISFIRE), "retries": retries,
        "retry_delay": _number(conf, "retry_delay", TaskMeta.retry_delay, 0, 86400),
        "retry_backoff": _number(conf, "retry_backoff", TaskMeta.retry_backoff, 1, 10),
        "retry_max_delay": _number(conf, "retry_max_delay", TaskMeta.retry_max_delay, 0, 86400),
        "webhooks": tuple(webhooks), "emails": tuple(emails),
        "notify": _choice(conf, "notify", NOTIFY),
        "after": tuple(dict.fromkeys(after)), "after_on": _choice(conf, "after_on", AFTER_ON),
        "after_mode": _choice(conf, "after_mode", AFTER_MODE),
        "launch": _choice(conf, "launch", LAUNCH), "preload": tuple(preload),
        "backend": _backend(conf), "resources": _resources(conf),
        "outputs": _outputs(conf),
    }


def _backend(conf: dict) -> str | None:
    value = conf.get("backend")
    if value is not None and value not in BACKENDS:
        raise InvalidMetadata(f"backend must be one of {', '.join(BACKENDS)}")
    return value


def _resources(conf: dict) -> tuple[tuple[str, float], ...]:
    """``[tool.taskrun.resources]``: what a run needs of the node it runs on."""
    table = conf.get("resources", {})
    if not isinstance(table, dict):
        raise InvalidMetadata("resources must be a table, e.g. { num_cpus = 2, memory_mb = 4096 }")
    out = []
    for name, value in table.items():
        if not isinstance(name, str) or not RESOURCE_RE.match(name):
            raise InvalidMetadata(f"resource name {str(name)[:80]!r} is not valid")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not \
                0 <= value <= 1e12:
            raise InvalidMetadata(f"resource {name} must be a non-negative number")
        if name == "memory_mb" and not value > 0:
            raise InvalidMetadata("resources.memory_mb must be positive")
        out.append((name, float(value)))
    return tuple(sorted(out))


def check_timezone(name: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not isinstance(name, str) or not name:
            raise ValueError
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        raise InvalidMetadata(f"timezone {str(name)[:80]!r} is not an IANA time zone "
                              "(e.g. \"Europe/Berlin\")") from None
    return name


def _dependencies(data: dict) -> dict[str, Any]:
    """The block's ``dependencies`` and ``requires-python``, checked as PEP 508 requires.

    Direct references (``name @ url``) are refused: a URL or a path would let a task
    file pick what the server downloads and reads, past the site's own index."""
    deps = data.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise InvalidMetadata("dependencies must be a list of requirement strings, "
                              'e.g. ["pandas>=2", "tabulate==0.9.0"]')
    checked = []
    for dep in deps:
        if any(ch in dep for ch in "\r\n\x00") or len(dep) > 500:
            raise InvalidMetadata(f"dependencies: {dep[:60]!r} is not a requirement")
        try:
            req = Requirement(dep)
        except InvalidRequirement as exc:
            raise InvalidMetadata(f"dependencies: {dep!r} is not a requirement ({exc})") from None
        if req.url:
            raise InvalidMetadata(f"dependencies: {dep!r} names a URL; only packages from "
                                  "the server's index are allowed")
        checked.append(str(req))
    python = data.get("requires-python")
    if python is not None:
        try:
            SpecifierSet(python) if isinstance(python, str) else None
        except InvalidSpecifier:
            python = None
        if not isinstance(python, str) or not python.strip():
            raise InvalidMetadata("requires-python must be a version specifier, e.g. \">=3.11\"")
    return {"dependencies": tuple(checked), "requires_python": python}
